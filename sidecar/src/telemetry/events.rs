//! The sidecar's security events (schema: docs/security-events.md). Each carries the
//! workload it happened in and, when the request is traced, its trace and span ids.

use std::sync::Arc;

use opentelemetry::trace::SpanContext;
use vigie_telemetry::SecurityEvent;
use vigie_telemetry::security::names;

/// The sidecar's security events, stamped with where it runs (namespace, workload).
#[derive(Debug, Clone, Default)]
pub struct Events {
    origin: Arc<(String, String)>,
}

impl Events {
    pub fn new(namespace: &str, workload: &str) -> Self {
        Self {
            origin: Arc::new((namespace.to_string(), workload.to_string())),
        }
    }

    fn emit(&self, e: SecurityEvent) {
        let (namespace, workload) = &*self.origin;
        let e = if namespace.is_empty() && workload.is_empty() {
            e
        } else {
            e.attr("k8s.namespace.name", namespace.as_str())
                .attr("vigie.workload", workload.as_str())
        };
        e.emit();
    }

    /// One event per (detector, action) found in one direction of a request.
    pub fn dlp_findings(
        &self,
        counts: &vigie_wire::dlp::Counts,
        direction: &'static str,
        model: &str,
        policy_version: &str,
        span: &SpanContext,
    ) {
        for ((detector, action), n) in counts {
            let e = SecurityEvent::new(
                names::DLP_FINDING,
                "dlp",
                "success",
                "sensitive data detected",
            )
            .attr("vigie.dlp.detector", detector.as_str())
            .attr("vigie.dlp.action", *action)
            .attr("vigie.dlp.direction", direction)
            .attr("vigie.dlp.count", *n)
            .attr("gen_ai.request.model", model)
            .attr("vigie.policy.version", policy_version)
            .in_span(span);
            let e = if *action == "block" { e.warn() } else { e };
            self.emit(e);
        }
    }

    /// A request refused by policy (DLP block, sensitivity routing, loop).
    pub fn request_blocked(
        &self,
        reason: &'static str,
        status: u16,
        model: &str,
        policy_version: &str,
        span: &SpanContext,
    ) {
        let e = SecurityEvent::new(
            names::REQUEST_BLOCKED,
            "access",
            "failure",
            "request blocked by policy",
        )
        .warn()
        .attr("vigie.block.reason", reason)
        .attr("http.response.status_code", status)
        .attr("gen_ai.request.model", model)
        .attr("vigie.policy.version", policy_version)
        .in_span(span);
        self.emit(e);
    }

    /// A budget refused a request (`rejected`) or could not be checked (`unavailable`).
    pub fn budget_exceeded(
        &self,
        budget: &str,
        decision: &'static str,
        model: &str,
        policy_version: &str,
        span: &SpanContext,
    ) {
        let e = SecurityEvent::new(
            names::BUDGET_EXCEEDED,
            "budget",
            "failure",
            "request refused by a budget",
        )
        .warn()
        .attr("vigie.budget.name", budget)
        .attr("vigie.budget.decision", decision)
        .attr("gen_ai.request.model", model)
        .attr("vigie.policy.version", policy_version)
        .in_span(span);
        self.emit(e);
    }

    /// A policy took effect in this sidecar.
    pub fn policy_applied(&self, name: &str, version: &str, source: &'static str) {
        let e = SecurityEvent::new(names::POLICY_APPLIED, "policy", "success", "policy applied")
            .attr("vigie.policy.name", name)
            .attr("vigie.policy.version", version)
            .attr("vigie.policy.source", source);
        self.emit(e);
    }

    /// A policy was refused; the previous one stays in force.
    pub fn policy_rejected(&self, version: &str, source: &'static str, reason: &str) {
        let e = SecurityEvent::new(
            names::POLICY_REJECTED,
            "policy",
            "failure",
            "policy rejected; the previous one stays in force",
        )
        .warn()
        .attr("vigie.policy.version", version)
        .attr("vigie.policy.source", source)
        .attr("vigie.policy.fields", fields_of(reason));
        self.emit(e);
    }
}

/// The field paths of a rejection (`  path: reason` lines), without the reasons: those
/// may quote the policy (a DLP pattern, a keyword list), which stays in the local log.
fn fields_of(reason: &str) -> String {
    let paths: Vec<&str> = reason
        .lines()
        .filter_map(|l| l.trim().split_once(": ").map(|(p, _)| p))
        .filter(|p| !p.is_empty() && !p.contains(' '))
        .collect();
    if paths.is_empty() {
        "(document)".to_string()
    } else {
        paths.join(", ")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rejections_keep_field_paths_only() {
        let reason = "invalid policy:\n  dlp.customDetectors[0].pattern: regex parse error: \\QProject Falcon\n  pools: at least one pool is required";
        assert_eq!(
            super::fields_of(reason),
            "dlp.customDetectors[0].pattern, pools"
        );
        assert_eq!(
            super::fields_of("reading p.json: expected value at line 1"),
            "(document)"
        );
    }
}
