//! Where the text is: the strings of a request or answer that the model reads or
//! writes, by operation. DLP looks at these, never at raw JSON (keys, ids, numbers).

use serde_json::Value;

use crate::api::Operation;

fn visit_str(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Value::String(s) = v {
        f(s);
    }
}

fn visit_strings_or_list(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| visit_str(i, f)),
        _ => {}
    }
}

/// Every string value inside (tool inputs given as JSON objects).
fn visit_all_strings(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(items) => items.iter_mut().for_each(|i| visit_all_strings(i, f)),
        Value::Object(map) => map.values_mut().for_each(|i| visit_all_strings(i, f)),
        _ => {}
    }
}

/// OpenAI content: a string, or parts of which `{"type":"text","text":…}` carry text.
fn visit_openai_content(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(parts) => {
            for part in parts {
                if let Some(t) = part.get_mut("text") {
                    visit_str(t, f);
                }
            }
        }
        _ => {}
    }
}

fn visit_tool_calls(v: Option<&mut Value>, f: &mut dyn FnMut(&mut String)) {
    if let Some(Value::Array(calls)) = v {
        for call in calls {
            if let Some(args) = call.pointer_mut("/function/arguments") {
                visit_str(args, f);
            }
        }
    }
}

/// The legacy (pre-tools) `function_call` of a message.
fn visit_function_call(m: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Some(args) = m.pointer_mut("/function_call/arguments") {
        visit_str(args, f);
    }
}

/// Anthropic content: a string, or blocks (text, thinking, tool_use input, tool_result
/// content).
fn visit_anthropic_content(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match v {
        Value::String(s) => f(s),
        Value::Array(blocks) => {
            for b in blocks {
                match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = b.get_mut("text") {
                            visit_str(t, f);
                        }
                    }
                    Some("thinking") => {
                        if let Some(t) = b.get_mut("thinking") {
                            visit_str(t, f);
                        }
                    }
                    Some("tool_use") => {
                        if let Some(i) = b.get_mut("input") {
                            visit_all_strings(i, f);
                        }
                    }
                    Some("tool_result") => {
                        if let Some(c) = b.get_mut("content") {
                            visit_anthropic_content(c, f);
                        }
                    }
                    _ => {}
                }
            }
        }
        _ => {}
    }
}

/// The texts of a request the model will read.
pub fn request_texts(op: Operation, body: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match op {
        Operation::ChatCompletions => {
            if let Some(Value::Array(messages)) = body.get_mut("messages") {
                for m in messages {
                    if let Some(c) = m.get_mut("content") {
                        visit_openai_content(c, f);
                    }
                    visit_tool_calls(m.get_mut("tool_calls"), f);
                    visit_function_call(m, f);
                }
            }
        }
        Operation::Completions => {
            if let Some(p) = body.get_mut("prompt") {
                visit_strings_or_list(p, f);
            }
        }
        Operation::Embeddings => {
            if let Some(i) = body.get_mut("input") {
                visit_strings_or_list(i, f);
            }
        }
        Operation::Messages => {
            if let Some(s) = body.get_mut("system") {
                visit_anthropic_content(s, f);
            }
            if let Some(Value::Array(messages)) = body.get_mut("messages") {
                for m in messages {
                    if let Some(c) = m.get_mut("content") {
                        visit_anthropic_content(c, f);
                    }
                }
            }
        }
        Operation::ListModels => {}
    }
}

/// The texts of a complete (non-streamed) answer.
pub fn response_texts(op: Operation, body: &mut Value, f: &mut dyn FnMut(&mut String)) {
    match op {
        Operation::ChatCompletions => {
            if let Some(Value::Array(choices)) = body.get_mut("choices") {
                for c in choices {
                    if let Some(m) = c.get_mut("message") {
                        if let Some(content) = m.get_mut("content") {
                            visit_openai_content(content, f);
                        }
                        if let Some(r) = m.get_mut("reasoning_content") {
                            visit_str(r, f);
                        }
                        visit_tool_calls(m.get_mut("tool_calls"), f);
                        visit_function_call(m, f);
                    }
                }
            }
        }
        Operation::Completions => {
            if let Some(Value::Array(choices)) = body.get_mut("choices") {
                for c in choices {
                    if let Some(t) = c.get_mut("text") {
                        visit_str(t, f);
                    }
                }
            }
        }
        Operation::Messages => {
            if let Some(c) = body.get_mut("content") {
                visit_anthropic_content(c, f);
            }
        }
        Operation::Embeddings | Operation::ListModels => {}
    }
}

/// The texts the model wrote in one streamed event (OpenAI chunk or Anthropic event):
/// content, reasoning, tool-call and legacy function-call arguments, completions text;
/// Anthropic text, thinking and tool-input deltas. Read-only (metering counts them).
pub fn stream_event_texts(op: Operation, event: &Value, f: &mut dyn FnMut(&str)) {
    let mut visit = |v: &Value, pointers: &[&str]| {
        for p in pointers {
            if let Some(s) = v.pointer(p).and_then(Value::as_str) {
                f(s);
            }
        }
    };
    if op == Operation::Messages {
        visit(
            event,
            &["/delta/text", "/delta/thinking", "/delta/partial_json"],
        );
        return;
    }
    for c in event
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        visit(
            c,
            &[
                "/delta/content",
                "/delta/reasoning_content",
                "/delta/function_call/arguments",
                "/text",
            ],
        );
        for call in c
            .pointer("/delta/tool_calls")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            visit(call, &["/function/arguments"]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(op: Operation, json: &str, request: bool) -> Vec<String> {
        let mut v: Value = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        let mut f = |s: &mut String| out.push(s.clone());
        if request {
            request_texts(op, &mut v, &mut f);
        } else {
            response_texts(op, &mut v, &mut f);
        }
        out
    }

    #[test]
    fn finds_the_text_of_every_shape() {
        assert_eq!(
            collect(
                Operation::ChatCompletions,
                r#"{"model":"m","messages":[{"role":"system","content":"sys"},
                {"role":"user","content":[{"type":"text","text":"part"},{"type":"image_url","image_url":{"url":"u"}}]},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},
                {"role":"tool","tool_call_id":"c","content":"result"}]}"#,
                true
            ),
            ["sys", "part", "{\"a\":1}", "result"]
        );
        assert_eq!(
            collect(Operation::Completions, r#"{"prompt":["a","b"]}"#, true),
            ["a", "b"]
        );
        assert_eq!(
            collect(Operation::Embeddings, r#"{"input":"x"}"#, true),
            ["x"]
        );
        assert!(collect(Operation::Embeddings, r#"{"input":[1,2,3]}"#, true).is_empty());
        assert_eq!(
            collect(
                Operation::Messages,
                r#"{"system":[{"type":"text","text":"s"}],"messages":[{"role":"user","content":"u"},
                {"role":"assistant","content":[{"type":"tool_use","id":"t","name":"n","input":{"q":"v","n":2}}]},
                {"role":"user","content":[{"type":"tool_result","tool_use_id":"t","content":"r"}]}]}"#,
                true
            ),
            ["s", "u", "v", "r"]
        );
        assert_eq!(
            collect(
                Operation::ChatCompletions,
                r#"{"choices":[{"message":{"content":"answer","tool_calls":[{"function":{"arguments":"{}"}}],
                "function_call":{"name":"f","arguments":"{\"x\":1}"}}}]}"#,
                false
            ),
            ["answer", "{}", "{\"x\":1}"]
        );
        assert_eq!(
            collect(
                Operation::Messages,
                r#"{"content":[{"type":"text","text":"t"}]}"#,
                false
            ),
            ["t"]
        );
    }
}
