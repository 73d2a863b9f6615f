//! Telemetry: Prometheus metrics, the request's OpenTelemetry span, and security
//! events (exported through `vigie_telemetry`). Labels and attributes carry names chosen
//! by the operator (pool, operation), counts and kinds — never request content.

pub mod events;
pub mod metrics;
pub mod trace;
pub use metrics::Metrics;

use crate::policy::Snapshot;

/// A policy took effect: counters, the telemetry section, the security event.
pub fn policy_installed(
    metrics: &Metrics,
    events: &events::Events,
    snapshot: &Snapshot,
    source: &'static str,
) {
    metrics
        .policy_reloads
        .with_label_values(&["installed"])
        .inc();
    metrics.set_policy(&snapshot.policy.name, &snapshot.version);
    if let Some(t) = vigie_telemetry::global() {
        t.apply_policy(&overrides(snapshot.policy.telemetry.as_ref()));
    }
    events.policy_applied(&snapshot.policy.name, &snapshot.version, source);
}

/// A policy was refused (the previous one stays).
pub fn policy_rejected(
    metrics: &Metrics,
    events: &events::Events,
    version: &str,
    source: &'static str,
    reason: &str,
) {
    metrics
        .policy_reloads
        .with_label_values(&["rejected"])
        .inc();
    events.policy_rejected(version, source, reason);
}

/// The policy's telemetry section as exporter overrides (validated already).
pub fn overrides(t: Option<&vigie_proto::v1::Telemetry>) -> vigie_telemetry::PolicyOverrides {
    let Some(t) = t else {
        return vigie_telemetry::PolicyOverrides::default();
    };
    vigie_telemetry::PolicyOverrides {
        endpoint: (!t.otlp_endpoint.is_empty()).then(|| t.otlp_endpoint.clone()),
        protocol: vigie_telemetry::Protocol::parse(&t.otlp_protocol),
        sample_ratio: t.trace_sample_ratio,
    }
}
