//! The few request fields the sidecar needs before forwarding, read without building a
//! full JSON tree; the body is rewritten only when the model name must change.

use serde::Deserialize;
use serde_json::Value;

use super::ApiError;

#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    pub model: String,
    pub stream: bool,
    /// `max_completion_tokens` or `max_tokens` (Anthropic: `max_tokens`), when set.
    pub max_tokens: Option<u64>,
    /// Sampling parameters, for telemetry (`gen_ai.request.*`); not checked here.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
}

/// Largest output a request may ask for: beyond any model's context, so a bigger value
/// is a mistake (or an attempt to reserve an absurd budget), refused up front.
pub const MAX_OUTPUT_TOKENS: u64 = 10_000_000;

#[derive(Deserialize)]
struct Head<'a> {
    #[serde(borrow, default)]
    model: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
}

/// Reads `model` and `stream`; the whole body must be a JSON object.
pub fn parse_head(body: &[u8]) -> Result<RequestHead, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request(
            "The request body is empty; a JSON object is expected.",
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid_request(
            "The request body is not valid UTF-8.",
        ));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
        ));
    }
    if nesting_exceeds(body, MAX_DEPTH) {
        return Err(ApiError::invalid_request(format!(
            "The JSON body is nested more than {MAX_DEPTH} levels deep."
        )));
    }
    let head: Head<'_> = serde_json::from_slice(body).map_err(|e| {
        // serde_json's message gives line and column and the expected token, not content.
        ApiError::invalid_request(format!(
            "We could not parse the JSON body of your request: {}",
            describe(&e)
        ))
    })?;
    let model = match head.model {
        Some(m) if !m.is_empty() => m.into_owned(),
        _ => {
            return Err(
                ApiError::invalid_request("You must provide a model parameter.")
                    .with_param("model"),
            );
        }
    };
    let mut max_tokens = None;
    for (param, v) in [
        ("max_completion_tokens", &head.max_completion_tokens),
        ("max_tokens", &head.max_tokens),
    ] {
        match v {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_OUTPUT_TOKENS).contains(&n) => {
                    max_tokens = max_tokens.or(Some(n));
                }
                _ => {
                    return Err(ApiError::invalid_request(format!(
                        "`{param}` must be an integer from 1 to {MAX_OUTPUT_TOKENS}."
                    ))
                    .with_param(param));
                }
            },
        }
    }
    Ok(RequestHead {
        model,
        stream: head.stream.unwrap_or(false),
        max_tokens,
        temperature: head.temperature.as_ref().and_then(Value::as_f64),
        top_p: head.top_p.as_ref().and_then(Value::as_f64),
    })
}

/// Deepest JSON nesting accepted (serde_json's own recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Whether arrays/objects nest deeper than `max`, in one pass over the bytes (strings,
/// and escapes inside them, are skipped). Skipping unknown fields would accept any
/// depth, and whatever parses the body later (DLP, the upstream) should not have to.
fn nesting_exceeds(body: &[u8], max: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "a field has the wrong type",
        Category::Io => "read error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Replaces the `model` field; used when a client alias maps to another upstream name.
pub fn rewrite_model(body: &[u8], model: &str) -> Result<Vec<u8>, ApiError> {
    let mut v: Value = serde_json::from_slice(body)
        .map_err(|_| ApiError::invalid_request("The request body must be a JSON object."))?;
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), Value::String(model.to_string()));
    }
    serde_json::to_vec(&v)
        .map_err(|_| ApiError::invalid_request("The request body could not be re-encoded."))
}

/// Longest completions prompt prefix used for affinity.
const PROMPT_PREFIX_BYTES: usize = 2048;

/// The stable head of a prompt, for KV-cache affinity: requests that share it share the
/// server's cached prefix blocks. Chat: the messages before the first user message (the
/// system prompt most apps share), or the first message when there are none (so a
/// conversation stays where its history is cached); Anthropic: `system`, else the first
/// message; completions: the first 2 KiB of the prompt. `None` when there is none.
pub fn prefix_key(op: super::Operation, body: &[u8]) -> Option<String> {
    use super::Operation;
    let v: Value = serde_json::from_slice(body).ok()?;
    let key = match op {
        Operation::ChatCompletions => {
            let messages = v.get("messages")?.as_array()?;
            let head = messages
                .iter()
                .position(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .unwrap_or(messages.len())
                .clamp(1, 4);
            serde_json::to_string(messages.get(..head)?).ok()?
        }
        Operation::Messages => match v.get("system") {
            Some(system) => serde_json::to_string(system).ok()?,
            None => serde_json::to_string(v.get("messages")?.as_array()?.first()?).ok()?,
        },
        Operation::Completions => {
            let prompt = match v.get("prompt")? {
                Value::String(p) => p.as_str(),
                Value::Array(items) => items.first()?.as_str()?,
                _ => return None,
            };
            let mut end = prompt.len().min(PROMPT_PREFIX_BYTES);
            while !prompt.is_char_boundary(end) {
                end -= 1;
            }
            prompt[..end].to_string()
        }
        Operation::Embeddings | Operation::ListModels => return None,
    };
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let h = parse_head(
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true,"temperature":0.2,"top_p":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            h,
            RequestHead {
                model: "m".into(),
                stream: true,
                max_tokens: None,
                temperature: Some(0.2),
                top_p: None,
            }
        );
        assert!(!parse_head(br#"{"model":"m"}"#).unwrap().stream);
        assert_eq!(
            parse_head(br#"{"model":"m","max_tokens":64}"#)
                .unwrap()
                .max_tokens,
            Some(64)
        );
        for bad in [
            r#"{"model":"m","max_tokens":-1}"#,
            r#"{"model":"m","max_tokens":0}"#,
            r#"{"model":"m","max_tokens":1.5}"#,
            r#"{"model":"m","max_tokens":"10"}"#,
            r#"{"model":"m","max_completion_tokens":99999999999}"#,
        ] {
            let e = parse_head(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(
                e.body()["error"]["param"]
                    .as_str()
                    .unwrap()
                    .starts_with("max_"),
                "{bad}"
            );
        }
        // Escaped model names are decoded.
        assert_eq!(parse_head(br#"{"model":"a\"b"}"#).unwrap().model, "a\"b");
    }

    #[test]
    fn rejects_bad_bodies_clearly() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "empty"),
            (b"[1,2]", "must be a JSON object"),
            (b"{\"model\": ", "unexpected end of input at line 1"),
            (b"{\"model\": 3}", "wrong type"),
            (b"{\"messages\": []}", "You must provide a model parameter."),
            (b"{\"model\": \"\"}", "You must provide a model parameter."),
            (b"{\"model\": \"m\xff\"}", "not valid UTF-8"),
        ];
        for (body, expected) in cases {
            let e = parse_head(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(
                e.message.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }

    #[test]
    fn error_messages_do_not_echo_content() {
        let e = parse_head(br#"{"model":"m","messages":[{"content":"SECRET-123"}] trailing"#)
            .unwrap_err();
        assert!(!e.message.contains("SECRET"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = format!(
            "{{\"model\":\"m\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = parse_head(body.as_bytes()).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("nested more than 128"), "{}", e.message);
        // Brackets inside strings do not count; 128 real levels are fine.
        let ok = format!(
            "{{\"model\":\"m\",\"s\":\"{}\\\"[[\",\"x\":{}{}}}",
            "[".repeat(500),
            "[".repeat(127),
            "]".repeat(127)
        );
        assert_eq!(parse_head(ok.as_bytes()).unwrap().model, "m");
    }

    #[test]
    fn rewrites_model_only() {
        let out = rewrite_model(br#"{"model":"alias","n":1}"#, "real").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"model": "real", "n": 1}));
    }

    #[test]
    fn prefix_key_is_the_stable_head_of_the_prompt() {
        use crate::api::Operation;
        let chat = |q: &str| {
            format!(
                r#"{{"model":"m","temperature":0.{},"messages":[{{"role":"system","content":"Tu es un assistant."}},{{"role":"user","content":"{q}"}},{{"role":"assistant","content":"x"}}]}}"#,
                q.len()
            )
        };
        let a = prefix_key(Operation::ChatCompletions, chat("Bonjour").as_bytes()).unwrap();
        let b = prefix_key(
            Operation::ChatCompletions,
            chat("Autre question").as_bytes(),
        )
        .unwrap();
        assert_eq!(
            a, b,
            "same system prompt, other question and parameters: same key"
        );
        assert!(a.contains("Tu es un assistant") && !a.contains("Bonjour"));
        // Without a system prompt, the first message keys the conversation.
        let c = prefix_key(
            Operation::ChatCompletions,
            br#"{"model":"m","messages":[{"role":"user","content":"Bonjour"},{"role":"assistant","content":"x"}]}"#,
        )
        .unwrap();
        assert!(c.contains("Bonjour"));
        assert!(prefix_key(Operation::Embeddings, br#"{"model":"m","input":"x"}"#).is_none());
        assert_eq!(
            prefix_key(
                Operation::Completions,
                br#"{"model":"m","prompt":["abc","d"]}"#
            )
            .as_deref(),
            Some("abc")
        );
    }
}
