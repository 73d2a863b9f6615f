//! Token counts with a real tokenizer, for when the upstream reports none.
//!
//! `o200k_base` (GPT-4o family) for every model: exact for OpenAI's current models, an
//! approximation for open models (Mistral, Llama… use their own tokenizers, which the
//! sidecar does not ship). Estimates are flagged as such. The tokenizer is Vigie's
//! compact one ([`crate::bpe`]: tiktoken's counts, ~2 MiB of heap instead of ~46 MiB),
//! loaded on first use only.

use serde_json::Value;

/// Tokens in `text` (a bytes/4 approximation if the tokenizer could not load).
pub fn tokens(text: &str) -> u64 {
    match crate::bpe::O200K.as_ref() {
        Some(bpe) => bpe.count(text),
        None => (text.len() as u64).div_ceil(4),
    }
}

/// Tokens of what the model reads in a request — every string value but the protocol's
/// structure ([`vigie_wire::dlp::text::STRUCTURAL`]): messages, prompt, input, tool
/// descriptions and schemas — plus a few per message for the chat template. Reads the
/// request's parsed tree (never the bytes).
pub fn prompt_tokens(v: &Value) -> u64 {
    let messages = v
        .get("messages")
        .and_then(Value::as_array)
        .map_or(0, Vec::len) as u64;
    // OpenAI's documented overhead: 3 tokens per message, 3 to prime the answer.
    text_tokens(v) + 3 * messages + u64::from(messages > 0) * 3
}

fn text_tokens(v: &Value) -> u64 {
    use vigie_wire::dlp::text::STRUCTURAL;
    match v {
        Value::String(s) => tokens(s),
        Value::Array(items) => items.iter().map(text_tokens).sum(),
        Value::Object(map) => map
            .iter()
            .filter(|(k, v)| !(v.is_string() && STRUCTURAL.contains(&k.as_str())))
            .map(|(_, v)| text_tokens(v))
            .sum(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same counts as OpenAI's tiktoken (through tiktoken-rs), on text of every kind
    /// a prompt carries.
    #[test]
    fn counts_exactly_like_tiktoken() {
        let reference = tiktoken_rs::o200k_base().unwrap();
        let long_word = "anticonstitutionnellement".repeat(40);
        let digits = "0123456789".repeat(500);
        let texts = [
            "",
            " ",
            "Hello world",
            "Bonjour, pouvez-vous résumer la note de la préfecture ?",
            "Madame Sophie LEFÈVRE, née le 14/02/1987 à Lyon, demeurant 12 bis rue des Lilas, 75011 Paris.",
            "NIR 1 85 05 78 006 084 91, IBAN FR76 3000 6000 0112 3456 7890 189, tél. 06 12 34 56 78",
            "fn main() {\n    println!(\"{}\", x?);\n}\n\n\n   trailing   ",
            "日本語のテキストと絵文字 🎉🚀 et des espaces\u{00a0}insécables\u{202f}!",
            "I'm sure they'll say it's John's — we'd've known. SHOUTING'S FINE",
            "\t\r\n  \n\n mixed \r\n whitespace  ",
            &long_word,
            &digits,
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "{\"role\":\"user\",\"content\":\"Quels documents pour renouveler un passeport ?\"}",
        ];
        for t in texts {
            assert_eq!(
                tokens(t),
                reference.encode_ordinary(t).len() as u64,
                "{t:?}"
            );
        }
        // Random byte soup (valid UTF-8) of every script.
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for _ in 0..200 {
            let mut s = String::new();
            for _ in 0..64 {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let c = match rng % 6 {
                    0 => char::from(b' ' + (rng >> 8) as u8 % 95),
                    1 => char::from_u32(0xc0 + (rng >> 8) as u32 % 0x180).unwrap_or('é'),
                    2 => ['\n', '\t', ' ', '\u{a0}'][(rng >> 8) as usize % 4],
                    3 => char::from_u32(0x4e00 + (rng >> 8) as u32 % 0x500).unwrap_or('字'),
                    4 => char::from_u32(0x1f600 + (rng >> 8) as u32 % 0x40).unwrap_or('🙂'),
                    _ => char::from(b'0' + (rng >> 8) as u8 % 10),
                };
                s.push(c);
            }
            assert_eq!(
                tokens(&s),
                reference.encode_ordinary(&s).len() as u64,
                "{s:?}"
            );
        }
    }

    #[test]
    fn a_huge_piece_is_estimated_in_bounded_time_and_memory() {
        let run = "a".repeat(4 << 20);
        assert_eq!(tokens(&run), (4 << 20) / 4);
        // Just under the bound: exact.
        let reference = tiktoken_rs::o200k_base().unwrap();
        let word = "é".repeat(crate::bpe::MAX_PIECE / 2);
        assert_eq!(tokens(&word), reference.encode_ordinary(&word).len() as u64);
    }

    #[test]
    fn counts_with_o200k() {
        assert_eq!(tokens("Hello world"), 2);
        let n = tokens("Bonjour, pouvez-vous résumer la note de la préfecture ?");
        assert!((10..20).contains(&n), "{n}");
        let p = prompt_tokens(
            &serde_json::json!({"model":"m","messages":[{"role":"user","content":"Hello world"}]}),
        );
        assert_eq!(p, 2 + 3 + 3);
    }
}
