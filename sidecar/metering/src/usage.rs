//! Usage figures as upstreams report them.

use serde_json::Value;

/// Tokens of one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt: u64,
    pub completion: u64,
    /// Prompt tokens served from the provider's cache (included in `prompt`).
    pub cached_prompt: u64,
    /// Reasoning tokens (included in `completion`).
    pub reasoning: u64,
}

/// Where the figures come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSource {
    /// The upstream's own `usage`.
    Upstream,
    /// Counted with a tokenizer (no usage from the upstream, or the stream was cut).
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            UsageSource::Upstream => "upstream",
            UsageSource::Estimated => "estimated",
        }
    }
}

fn n(v: &Value, pointer: &str) -> Option<u64> {
    v.pointer(pointer).and_then(Value::as_u64)
}

/// OpenAI-style `usage` (chat, completions, embeddings); `None` if absent or null.
pub fn openai(usage: &Value) -> Option<Usage> {
    let prompt = n(usage, "/prompt_tokens")?;
    Some(Usage {
        prompt,
        completion: n(usage, "/completion_tokens").unwrap_or(0),
        cached_prompt: n(usage, "/prompt_tokens_details/cached_tokens").unwrap_or(0),
        reasoning: n(usage, "/completion_tokens_details/reasoning_tokens").unwrap_or(0),
    })
}

/// Anthropic `usage`: input tokens do not include cache reads and writes; they are added
/// so that `prompt` is every token the model read.
pub fn anthropic(usage: &Value) -> Option<Usage> {
    let input = n(usage, "/input_tokens");
    let output = n(usage, "/output_tokens");
    if input.is_none() && output.is_none() {
        return None;
    }
    let cache_read = n(usage, "/cache_read_input_tokens").unwrap_or(0);
    let cache_write = n(usage, "/cache_creation_input_tokens").unwrap_or(0);
    Some(Usage {
        prompt: input.unwrap_or(0) + cache_read + cache_write,
        completion: output.unwrap_or(0),
        cached_prompt: cache_read,
        reasoning: 0,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn openai_and_anthropic_shapes() {
        let u = openai(
            &json!({"prompt_tokens": 12, "completion_tokens": 30, "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 8}, "completion_tokens_details": {"reasoning_tokens": 10}}),
        );
        assert_eq!(
            u,
            Some(Usage {
                prompt: 12,
                completion: 30,
                cached_prompt: 8,
                reasoning: 10
            })
        );
        // Embeddings: no completion.
        assert_eq!(
            openai(&json!({"prompt_tokens": 5, "total_tokens": 5})).map(|u| u.completion),
            Some(0)
        );
        assert_eq!(openai(&Value::Null), None);
        let a = anthropic(
            &json!({"input_tokens": 10, "cache_read_input_tokens": 100, "output_tokens": 7}),
        );
        assert_eq!(
            a,
            Some(Usage {
                prompt: 110,
                completion: 7,
                cached_prompt: 100,
                reasoning: 0
            })
        );
    }
}
