//! What a mock instance does: latency, token rate, capacity, failures, echo.
//!
//! Set at start from the command line, replaced at run time with `PUT /mock/behaviour`,
//! and overridden per request with an `x-mock-behaviour` JSON header (fields merged).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Behaviour {
    /// Delay before the first token (prefill), in milliseconds.
    pub ttft_ms: u64,
    /// Generation speed; 0 means as fast as possible.
    pub tokens_per_sec: f64,
    /// Tokens generated when the request sets no `max_tokens`.
    pub default_tokens: u32,
    /// Requests processed at once; the rest wait in a queue (vLLM's `num_requests_waiting`).
    pub capacity: u32,
    /// Stream back the text of the last user message instead of generated words.
    pub echo: bool,
    /// Leave `usage` out of responses and stream chunks (like some OpenAI-compatible servers).
    pub omit_usage: bool,
    /// Injected failure, if any.
    pub fail: Option<Failure>,
    /// Prefix-cache model (vLLM automatic prefix caching): the system prompts of the
    /// last N requests are cached; 0 turns the model off.
    pub prefix_cache: u32,
    /// Time to first token when the system prompt is cached (`ttft_ms` otherwise).
    pub ttft_hit_ms: u64,
    /// Answer with exactly these bytes instead of generating (answer-side DLP tests:
    /// logprobs, refusals, error bodies, other content types, compressed answers).
    pub canned: Option<Canned>,
}

/// A fixed answer, written by the test in the provider's wire format.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Canned {
    #[serde(default = "ok")]
    pub status: u16,
    #[serde(default = "json_type")]
    pub content_type: String,
    pub body: String,
    /// Sent gzip-compressed, with `Content-Encoding: gzip`.
    #[serde(default)]
    pub gzip: bool,
    /// Extra response headers (a redirect's `Location`, a header carrying data).
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
}

fn ok() -> u16 {
    200
}

fn json_type() -> String {
    "application/json".to_string()
}

impl Default for Behaviour {
    fn default() -> Self {
        Self {
            ttft_ms: 0,
            tokens_per_sec: 0.0,
            default_tokens: 12,
            capacity: 256,
            echo: false,
            omit_usage: false,
            fail: None,
            prefix_cache: 0,
            ttft_hit_ms: 0,
            canned: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Failure {
    /// Answer with this HTTP status and an OpenAI-style error body.
    Status {
        code: u16,
        #[serde(default)]
        retry_after_s: Option<u64>,
    },
    /// Stream `after_tokens` tokens, then reset the connection.
    Reset { after_tokens: u32 },
    /// Stream `after_tokens` tokens, then go silent (connection kept open).
    Stall { after_tokens: u32 },
    /// `/health` answers 503 (requests are still served).
    Unhealthy,
}

impl Behaviour {
    /// Applies a partial JSON object on top of `self` (the `x-mock-behaviour` header).
    pub fn merged(&self, patch: &serde_json::Value) -> Result<Behaviour, serde_json::Error> {
        let mut base = serde_json::to_value(self)?;
        if let (Some(base), Some(patch)) = (base.as_object_mut(), patch.as_object()) {
            for (k, v) in patch {
                base.insert(k.clone(), v.clone());
            }
        }
        serde_json::from_value(base)
    }

    pub fn token_interval(&self) -> Option<std::time::Duration> {
        (self.tokens_per_sec > 0.0)
            .then(|| std::time::Duration::from_secs_f64(1.0 / self.tokens_per_sec))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_patch_merges_fields() {
        let b = Behaviour::default();
        let m = b
            .merged(
                &serde_json::json!({"echo": true, "fail": {"kind": "reset", "after_tokens": 3}}),
            )
            .unwrap();
        assert!(m.echo);
        assert_eq!(m.fail, Some(Failure::Reset { after_tokens: 3 }));
        assert_eq!(m.default_tokens, b.default_tokens);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        assert!(
            Behaviour::default()
                .merged(&serde_json::json!({"nope": 1}))
                .is_err()
        );
    }
}
