//! Where the text is: the strings of a request or answer that the model reads or
//! writes, by operation. DLP looks at these, never at raw JSON (keys, ids, numbers).

use std::borrow::Cow;
use std::collections::HashSet;

use serde_json::Value;
use unicase::UniCase;
use vigie_dlp::engine::{DlpError, Engine};
use vigie_dlp::stream::Transform;
use vigie_dlp::transform_parts;

use crate::api::Operation;

fn visit_str(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    if let Value::String(s) = v {
        f(s);
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

/// Keys whose string values are protocol structure — enumerations and the model
/// name. They are read like any text, but never rewritten: a finding in one refuses
/// the request (or stops the answer) instead. Everything else is text to rewrite: every
/// other string value, every object key (a schema's property names, metadata keys),
/// every integer. So a field a provider adds tomorrow is scanned by default.
pub const STRUCTURAL: &[&str] = &[
    "model",
    "role",
    "type",
    "object",
    "finish_reason",
    "stop_reason",
    "encoding_format",
    "media_type",
    "detail",
    "reasoning_effort",
    "service_tier",
];

fn structural(key: &str, v: &Value) -> bool {
    v.is_string() && STRUCTURAL.contains(&key)
}

/// Keys the model reads first, in this order — the system prompt and instructions, the
/// tool definitions (chat templates put them with the system prompt), then the
/// conversation; the others follow in the tree's order. Values are read together in
/// this order, so a value split between the system prompt and a message is found
/// whichever key sorts first.
const READ_FIRST: &[&str] = &[
    "system",
    "instructions",
    "tools",
    "functions",
    "messages",
    "input",
    "prompt",
];

fn read_rank(key: &str) -> usize {
    READ_FIRST
        .iter()
        .position(|r| *r == key)
        .unwrap_or(READ_FIRST.len())
}

/// What a text of a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string or number value: the flow the model reads, read together.
    Value,
    /// An object key: names, read together with the other keys.
    Key,
    /// A [`STRUCTURAL`] value: read with the keys, never rewritten.
    Structural,
}

/// One text of a document.
#[derive(Debug)]
pub struct Text<'a> {
    pub text: Cow<'a, str>,
    pub kind: Kind,
}

/// Largest magnitude a JSON number may have without being an exact integer: beyond
/// it a float no longer holds every digit it was written with, so DLP could not read
/// them (see [`collect`]).
pub const MAX_EXACT_FLOAT: f64 = 9_007_199_254_740_992.0;

/// Every text of a JSON document, in reading order (object keys in [`READ_FIRST`]'s
/// order, then the tree's): keys, string values, numbers as digits (`None` if a number was written
/// with digits its value cannot keep: more than `u64` holds, or a float beyond 2⁵³ —
/// no LLM API has such numbers; callers refuse the document).
pub fn collect<'a>(v: &'a Value, out: &mut Vec<Text<'a>>) -> Option<()> {
    let value = |t: Cow<'a, str>| Text {
        text: t,
        kind: Kind::Value,
    };
    match v {
        Value::String(s) => out.push(value(Cow::Borrowed(s))),
        Value::Number(n) => out.push(value(Cow::Owned(number_text(n)?))),
        Value::Array(items) => {
            for i in items {
                collect(i, out)?;
            }
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| read_rank(k));
            for (k, v) in entries {
                out.push(Text {
                    text: Cow::Borrowed(k),
                    kind: Kind::Key,
                });
                match v {
                    Value::String(s) if structural(k, v) => out.push(Text {
                        text: Cow::Borrowed(s),
                        kind: Kind::Structural,
                    }),
                    _ => collect(v, out)?,
                }
            }
        }
        _ => {}
    }
    Some(())
}

/// A number's digits as DLP reads them: integers as written, floats in their shortest
/// exact form (`185057800608491.0` and `1.85057800608491e14` both read
/// `185057800608491`), below one in scientific form.
fn number_text(n: &serde_json::Number) -> Option<String> {
    if n.is_i64() || n.is_u64() {
        return Some(n.to_string());
    }
    let f = n.as_f64()?;
    // Below one, the scientific form: `0.0000185057800608491` hides a NIR behind zeros
    // that `1.85057800608491e-5` shows.
    (f.is_finite() && f.abs() < MAX_EXACT_FLOAT).then(|| {
        if f == 0.0 || f.abs() >= 1.0 {
            format!("{f}")
        } else {
            format!("{f:e}")
        }
    })
}

/// Writes new texts back, walking as [`collect`] did: `next` is called once per text,
/// in the same order, and returns the replacement of those that changed. A changed
/// key renames its entry; a changed integer becomes a string; structural values are
/// left as they are (callers refuse those changes first).
pub fn rewrite(v: &mut Value, next: &mut dyn FnMut() -> Option<String>) {
    match v {
        Value::String(s) => {
            if let Some(new) = next() {
                *s = new;
            }
        }
        Value::Number(_) => {
            if let Some(new) = next() {
                *v = Value::String(new);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|i| rewrite(i, next)),
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = std::mem::take(map).into_iter().collect();
            entries.sort_by_key(|(k, _)| read_rank(k));
            // Keys so far, case-folded: built at the first rename only. Two keys
            // redacted to the same text (or to one another key has in another case) stay
            // distinct, so the body remains unambiguous.
            let mut seen: Option<HashSet<UniCase<String>>> = None;
            for (k, mut v) in entries {
                let skip = structural(&k, &v);
                let new = next();
                if new.is_some() && seen.is_none() {
                    seen = Some(map.keys().map(|e| UniCase::new(e.clone())).collect());
                }
                let mut k = new.unwrap_or(k);
                if skip {
                    next();
                } else {
                    rewrite(&mut v, next);
                }
                if let Some(seen) = seen.as_mut() {
                    while seen.contains(&UniCase::new(k.clone())) {
                        k.push('_');
                    }
                    seen.insert(UniCase::new(k.clone()));
                }
                map.insert(k, v);
            }
        }
        _ => {}
    }
}

/// What [`transform_tree`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rewrite {
    Unchanged,
    Changed,
    /// A finding in a structural value: nothing was rewritten; refuse the document.
    Structural,
    /// A number DLP cannot read exactly (see [`collect`]): refuse the document.
    Unreadable,
}

/// Runs `t` over every text of `tree` and writes the result back: the values read
/// together in document order (a value split across parts, messages or system and
/// user is found), the keys and structural values read together apart from them (so
/// a key between two halves of a value does not hide it).
pub fn transform_tree(
    engine: &Engine,
    tree: &mut Value,
    t: &mut dyn Transform,
) -> Result<Rewrite, DlpError> {
    // JSON inside strings (tool arguments, tool results) is read as its consumer will
    // decode it: escapes written out, so `\u0031` is a digit to DLP too.
    let canonicalized = super::escapes::canonicalize(tree);
    let mut texts = Vec::new();
    if collect(tree, &mut texts).is_none() {
        return Ok(Rewrite::Unreadable);
    }
    let (flow, apart): (Vec<usize>, Vec<usize>) =
        (0..texts.len()).partition(|&i| texts.get(i).is_some_and(|t| t.kind == Kind::Value));
    let mut new: Vec<Option<String>> = vec![None; texts.len()];
    for group in [flow, apart] {
        let parts: Vec<&str> = group
            .iter()
            .filter_map(|&i| texts.get(i).map(|t| t.text.as_ref()))
            .collect();
        for (i, n) in group.iter().zip(transform_parts(engine, &parts, t)?) {
            if let Some(slot) = new.get_mut(*i) {
                *slot = n;
            }
        }
    }
    if new.iter().all(Option::is_none) {
        return Ok(if canonicalized {
            Rewrite::Changed
        } else {
            Rewrite::Unchanged
        });
    }
    if texts
        .iter()
        .zip(&new)
        .any(|(t, n)| t.kind == Kind::Structural && n.is_some())
    {
        return Ok(Rewrite::Structural);
    }
    drop(texts);
    let mut new = new.into_iter();
    rewrite(tree, &mut || new.next().flatten());
    Ok(Rewrite::Changed)
}

/// Calls `f` on every string of a document (keys excepted): placeholders restored
/// wherever the model may have copied them.
pub fn visit_strings_mut(v: &mut Value, f: &mut dyn FnMut(&mut String)) {
    visit_all_strings(v, f);
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
        Operation::Embeddings
        | Operation::ListModels
        | Operation::RetrieveModel
        | Operation::CountTokens => {}
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

    fn answer(op: Operation, json: &str) -> Vec<String> {
        let mut v: Value = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        response_texts(op, &mut v, &mut |s: &mut String| out.push(s.clone()));
        out
    }

    fn texts(json: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(json).unwrap();
        let mut out = Vec::new();
        collect(&v, &mut out).unwrap();
        out.into_iter().map(|t| t.text.into_owned()).collect()
    }

    #[test]
    fn every_string_key_and_integer_is_text_but_structure() {
        assert_eq!(
            texts(
                r#"{"model":"m","messages":[{"role":"user","name":"n","content":[{"type":"text","text":"t"},
                {"type":"image_url","image_url":{"url":"data:text/plain,x","detail":"low"}}]}],
                "tools":[{"type":"function","function":{"name":"f","description":"d",
                "parameters":{"type":"object","properties":{"p":{"enum":["e"]}}}}}],
                "metadata":{"k":"v"},"user":"u","seed":185057800608491,"temperature":0.5,"stream":true}"#
            ),
            [
                // Tool definitions before the conversation (READ_FIRST), then the rest.
                "tools",
                "function",
                "description",
                "d",
                "name",
                "f",
                "parameters",
                "properties",
                "p",
                "enum",
                "e",
                "type",
                "object",
                "type",
                "function",
                "messages",
                "content",
                "text",
                "t",
                "type",
                "text",
                "image_url",
                "detail",
                "low",
                "url",
                "data:text/plain,x",
                "type",
                "image_url",
                "name",
                "n",
                "role",
                "user",
                "metadata",
                "k",
                "v",
                "model",
                "m",
                "seed",
                "185057800608491",
                "stream",
                "temperature",
                "5e-1",
                "user",
                "u"
            ]
        );
    }

    #[test]
    fn rewrite_walks_as_collect_does() {
        let json = r#"{"a":{"185057800608491":"x","role":"user"},"b":[1,"y"],"model":"m"}"#;
        let mut v: Value = serde_json::from_str(json).unwrap();
        let n = texts(json).len();
        let mut i = 0;
        rewrite(&mut v, &mut || {
            i += 1;
            Some(format!("<{i}>"))
        });
        assert_eq!(i, n);
        assert_eq!(
            v,
            serde_json::json!({"<1>": {"<2>": "<3>", "<4>": "user"}, "<6>": ["<7>", "<8>"], "<9>": "m"})
        );
    }

    #[test]
    fn keys_redacted_alike_stay_distinct_in_any_case() {
        let mut v: Value = serde_json::from_str(r#"{"a":1,"b":2,"[x]":3}"#).unwrap();
        // Texts in tree order: "[x]", 3, "a", 1, "b", 2 — "a" and "b" become "[X]".
        let x = || Some("[X]".to_string());
        let mut new = vec![None, None, x(), None, x(), None].into_iter();
        rewrite(&mut v, &mut || new.next().flatten());
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["[X]_", "[X]__", "[x]"]);
    }

    #[test]
    fn the_model_written_text_of_every_answer_shape() {
        assert_eq!(
            answer(
                Operation::ChatCompletions,
                r#"{"choices":[{"message":{"content":"answer","tool_calls":[{"function":{"arguments":"{}"}}],
                "function_call":{"name":"f","arguments":"{\"x\":1}"}}}]}"#,
            ),
            ["answer", "{}", "{\"x\":1}"]
        );
        assert_eq!(
            answer(
                Operation::Messages,
                r#"{"content":[{"type":"text","text":"t"}]}"#,
            ),
            ["t"]
        );
    }
}
