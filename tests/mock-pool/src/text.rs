//! Prompt text and the mock's "tokenizer": whitespace-separated words.
//!
//! The mock's token counts are the ground truth tests compare metering against, so they
//! are simple and documented: a token is a maximal run of non-whitespace characters
//! together with the whitespace that follows it. Concatenating the tokens gives the
//! text back exactly, which is what echo mode relies on.

use serde_json::Value;

/// Splits `text` into tokens whose concatenation is `text`.
pub fn tokens(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut in_space = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            out.push(&text[start..i]);
            start = i;
            in_space = false;
        }
    }
    if start < text.len() {
        out.push(&text[start..]);
    }
    out
}

pub fn count(text: &str) -> u32 {
    u32::try_from(tokens(text).len()).unwrap_or(u32::MAX)
}

/// Text of an OpenAI `content` (string, or array of parts with `text`).
pub fn content_text(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// All prompt text of a chat / messages request (system included), for usage counts.
pub fn prompt_text(body: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(system) = body.get("system") {
        parts.push(content_text(system));
    }
    if let Some(messages) = body.get("messages").and_then(Value::as_array) {
        for m in messages {
            if let Some(c) = m.get("content") {
                parts.push(content_text(c));
            }
        }
    }
    match body.get("prompt") {
        Some(Value::Array(items)) => {
            parts.extend(items.iter().filter_map(Value::as_str).map(String::from))
        }
        Some(other) => parts.push(content_text(other)),
        None => {}
    }
    parts.join("\n")
}

/// The text echo mode streams back: the last user message, or the prompt.
pub fn echo_text(body: &Value) -> String {
    if let Some(messages) = body.get("messages").and_then(Value::as_array)
        && let Some(last) = messages
            .iter()
            .rev()
            .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
    {
        return last.get("content").map(content_text).unwrap_or_default();
    }
    match body.get("prompt") {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("\n"),
        Some(p) => content_text(p),
        None => String::new(),
    }
}

const WORDS: &[&str] = &[
    "Les",
    "pools",
    "GPU",
    "servent",
    "le",
    "modèle",
    "avec",
    "une",
    "latence",
    "faible",
    "et",
    "chaque",
    "jeton",
    "est",
    "compté",
    "exactement",
    "par",
    "la",
    "passerelle",
];

/// Deterministic generated answer of `n` tokens.
pub fn generated(n: u32) -> String {
    let mut s = String::new();
    for i in 0..n as usize {
        if i > 0 {
            s.push(' ');
        }
        s.push_str(WORDS[i % WORDS.len()]);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_concatenate_back() {
        for t in [
            "",
            "a",
            " a  b\nc ",
            "Mon NIR est 1 84 12 75 123 456 78.",
            "  ",
        ] {
            assert_eq!(tokens(t).concat(), t);
        }
        assert_eq!(count("a b  c"), 3);
        assert_eq!(count(""), 0);
    }

    #[test]
    fn generated_has_n_tokens() {
        assert_eq!(count(&generated(7)), 7);
        assert_eq!(generated(0), "");
    }

    #[test]
    fn prompt_and_echo_text() {
        let body = serde_json::json!({
            "messages": [
                {"role": "system", "content": "sys"},
                {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}
            ]
        });
        assert_eq!(prompt_text(&body), "sys\nhello world");
        assert_eq!(echo_text(&body), "hello world");
    }
}
