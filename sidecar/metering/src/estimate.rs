//! Token counts with a real tokenizer, for when the upstream reports none.
//!
//! `o200k_base` (GPT-4o family) for every model: exact for OpenAI's current models, an
//! approximation for open models (Mistral, Llama… use their own tokenizers, which the
//! sidecar does not ship; the gap has not been measured here). Estimates are flagged as
//! such. Loaded on first use only (it costs memory, and most upstreams report usage).

use std::sync::LazyLock;

use serde_json::Value;
use tiktoken_rs::CoreBPE;
use vigie_wire::api::Operation;

static BPE: LazyLock<Option<CoreBPE>> = LazyLock::new(|| tiktoken_rs::o200k_base().ok());

/// Tokens in `text` (a bytes/4 approximation if the tokenizer could not load).
pub fn tokens(text: &str) -> u64 {
    match BPE.as_ref() {
        Some(bpe) => bpe.encode_ordinary(text).len() as u64,
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Tokens of what the model reads in a request (messages, prompt, input), plus a few per
/// message for the chat template. Reads the request's parsed tree (never the bytes).
pub fn prompt_tokens(op: Operation, v: &mut Value) -> u64 {
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    let mut total = 0;
    vigie_wire::dlp::text::request_texts(op, v, &mut |s| total += tokens(s));
    // OpenAI's documented overhead: 3 tokens per message, 3 to prime the answer.
    total + 3 * messages + u64::from(messages > 0) * 3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_with_o200k() {
        assert_eq!(tokens("Hello world"), 2);
        let n = tokens("Bonjour, pouvez-vous résumer la note de la préfecture ?");
        assert!((10..20).contains(&n), "{n}");
        let p = prompt_tokens(
            Operation::ChatCompletions,
            &mut serde_json::json!({"model":"m","messages":[{"role":"user","content":"Hello world"}]}),
        );
        assert_eq!(p, 2 + 3 + 3);
    }
}
