//! JSON bodies and SSE frames of the OpenAI, Anthropic and vLLM wire formats.

use serde_json::{Value, json};

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn sse_data(v: &Value) -> String {
    format!("data: {v}\n\n")
}

pub fn sse_event(event: &str, v: &Value) -> String {
    format!("event: {event}\ndata: {v}\n\n")
}

pub const SSE_DONE: &str = "data: [DONE]\n\n";

pub fn openai_error(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

pub fn usage(prompt: u32, completion: u32) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

/// The shape of one generation, shared by every API flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Chat,
    Completions,
    Messages,
}

pub struct Ids<'a> {
    pub id: &'a str,
    pub model: &'a str,
    pub created: u64,
}

pub fn chat_chunk(ids: &Ids<'_>, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": ids.id, "object": "chat.completion.chunk", "created": ids.created, "model": ids.model,
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    })
}

pub fn completion_chunk(ids: &Ids<'_>, text: &str, finish: Option<&str>) -> Value {
    json!({
        "id": ids.id, "object": "text_completion", "created": ids.created, "model": ids.model,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]
    })
}

pub fn usage_chunk(api: Api, ids: &Ids<'_>, usage: Value) -> Value {
    let object = if api == Api::Chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    json!({"id": ids.id, "object": object, "created": ids.created, "model": ids.model, "choices": [], "usage": usage})
}

pub fn chat_completion(ids: &Ids<'_>, text: &str, finish: &str, usage: Option<Value>) -> Value {
    let mut v = json!({
        "id": ids.id, "object": "chat.completion", "created": ids.created, "model": ids.model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish}]
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}

pub fn text_completion(ids: &Ids<'_>, text: &str, finish: &str, usage: Option<Value>) -> Value {
    let mut v = json!({
        "id": ids.id, "object": "text_completion", "created": ids.created, "model": ids.model,
        "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish}]
    });
    if let Some(u) = usage {
        v["usage"] = u;
    }
    v
}

pub fn anthropic_message(ids: &Ids<'_>, text: &str, stop: &str, input: u32, output: u32) -> Value {
    json!({
        "id": ids.id, "type": "message", "role": "assistant", "model": ids.model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop, "stop_sequence": null,
        "usage": {"input_tokens": input, "output_tokens": output}
    })
}

pub fn anthropic_error(message: &str, kind: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_frames_end_with_blank_line() {
        assert_eq!(sse_data(&json!({"a": 1})), "data: {\"a\":1}\n\n");
        assert!(sse_event("ping", &json!({"type": "ping"})).starts_with("event: ping\ndata: "));
    }
}
