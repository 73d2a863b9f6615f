//! Bounds of a usage record, shared by the sidecar (which keeps its records within
//! them) and the control plane (which refuses records past them). They are far above
//! any real request and keep every sum of the stores (64-bit integers) out of
//! overflow: it would take 9×10^10 maximal records.

use crate::v1::UsageRecord;

/// Per request and per count (prompt, completion, cached, reasoning).
pub const MAX_TOKENS: u64 = 100_000_000;
pub const MAX_COST: f64 = 1e9;
pub const MAX_GPU_SECONDS: f64 = 1e7;
/// Any text field (namespace, user, model…).
pub const MAX_FIELD_BYTES: usize = 512;

/// The record's text fields, with their JSON names.
pub fn text_fields(r: &UsageRecord) -> [(&'static str, &str); 10] {
    [
        ("namespace", &r.namespace),
        ("workload", &r.workload),
        ("pod", &r.pod),
        ("user", &r.user),
        ("model", &r.model),
        ("servedModel", &r.served_model),
        ("pool", &r.pool),
        ("endpoint", &r.endpoint),
        ("operation", &r.operation),
        ("currency", &r.currency),
    ]
}

/// Brings a record within the bounds: what an upstream or an app sent (an absurd usage
/// figure, a 10 kB model name) must not make the record unshippable.
pub fn clamp(r: &mut UsageRecord) {
    for s in [
        &mut r.namespace,
        &mut r.workload,
        &mut r.pod,
        &mut r.user,
        &mut r.model,
        &mut r.served_model,
        &mut r.pool,
        &mut r.endpoint,
        &mut r.operation,
        &mut r.currency,
    ] {
        s.truncate(s.floor_char_boundary(MAX_FIELD_BYTES));
    }
    for n in [
        &mut r.prompt_tokens,
        &mut r.completion_tokens,
        &mut r.cached_prompt_tokens,
        &mut r.reasoning_tokens,
    ] {
        *n = (*n).min(MAX_TOKENS);
    }
    for x in [&mut r.cost, &mut r.gpu_seconds] {
        if !x.is_finite() || *x < 0.0 {
            *x = 0.0;
        }
    }
    r.cost = r.cost.min(MAX_COST);
    r.gpu_seconds = r.gpu_seconds.min(MAX_GPU_SECONDS);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clamped_record_is_within_every_bound() {
        let mut r = UsageRecord {
            model: "é".repeat(1000),
            prompt_tokens: u64::MAX,
            cost: f64::INFINITY,
            gpu_seconds: 1e300,
            ..Default::default()
        };
        clamp(&mut r);
        assert!(
            text_fields(&r)
                .iter()
                .all(|(_, v)| v.len() <= MAX_FIELD_BYTES)
        );
        assert_eq!(r.model.len(), MAX_FIELD_BYTES);
        assert_eq!(r.prompt_tokens, MAX_TOKENS);
        assert_eq!((r.cost, r.gpu_seconds), (0.0, MAX_GPU_SECONDS));
    }
}
