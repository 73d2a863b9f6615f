//! What metering changes in a request: a streaming OpenAI chat or completions request
//! that does not ask for usage gets `stream_options.include_usage = true`, so the
//! upstream reports exact figures; the extra chunk is stripped from the answer.

use serde_json::Value;
use vigie_wire::api::Operation;

/// The rewritten body (when it changed) and whether the usage chunk must be stripped.
pub fn ask_for_usage(op: Operation, body: &[u8]) -> (Option<Vec<u8>>, bool) {
    if !matches!(op, Operation::ChatCompletions | Operation::Completions) {
        return (None, false);
    }
    let Ok(mut v) = serde_json::from_slice::<Value>(body) else {
        return (None, false);
    };
    if v.get("stream").and_then(Value::as_bool) != Some(true) {
        return (None, false);
    }
    let asked = v
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if asked {
        return (None, false);
    }
    let Some(obj) = v.as_object_mut() else {
        return (None, false);
    };
    let options = obj
        .entry("stream_options")
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !options.is_object() {
        *options = Value::Object(serde_json::Map::new());
    }
    if let Some(o) = options.as_object_mut() {
        o.insert("include_usage".into(), Value::Bool(true));
    }
    match serde_json::to_vec(&v) {
        Ok(b) => (Some(b), true),
        Err(_) => (None, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_only_when_streaming_without_usage() {
        let (b, strip) = ask_for_usage(
            Operation::ChatCompletions,
            br#"{"model":"m","stream":true,"messages":[]}"#,
        );
        let v: Value = serde_json::from_slice(&b.unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert!(strip);
        let asked = br#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        assert_eq!(
            ask_for_usage(Operation::ChatCompletions, asked),
            (None, false)
        );
        assert_eq!(
            ask_for_usage(Operation::ChatCompletions, br#"{"model":"m"}"#),
            (None, false)
        );
        assert_eq!(
            ask_for_usage(Operation::Messages, br#"{"model":"m","stream":true}"#),
            (None, false)
        );
    }
}
