//! The control plane's security events (schema: docs/security-events.md): what admins
//! did, calls refused for want of a valid token or role, policies refused by validation.

use vigie_telemetry::SecurityEvent;
use vigie_telemetry::security::names;

use crate::auth::Principal;

/// The gRPC method of a call (`package.Service/Method`), set by a server layer.
#[derive(Debug, Clone)]
pub struct CallPath(pub String);

fn method_of<T>(req: &tonic::Request<T>) -> String {
    req.extensions()
        .get::<CallPath>()
        .map(|m| m.0.clone())
        .unwrap_or_default()
}

/// A policy write that took effect (apply, delete, rollback).
pub fn policy_changed(who: &Principal, action: &str, policy: &str, revision: i64) {
    SecurityEvent::new(names::ADMIN_ACTION, "admin", "success", "policy changed")
        .attr("vigie.admin.principal", &who.name)
        .attr("vigie.admin.role", who.role.as_str())
        .attr("vigie.admin.action", action)
        .attr("vigie.policy.name", policy)
        .attr("vigie.policy.revision", revision)
        .export();
}

/// A call refused: no valid token (`principal` unknown) or a role without the right.
pub fn access_denied<T>(
    req: &tonic::Request<T>,
    principal: Option<&Principal>,
    reason: &'static str,
) {
    let mut e = SecurityEvent::new(names::ADMIN_ACTION, "admin", "failure", "call refused")
        .warn()
        .attr("vigie.admin.method", method_of(req))
        .attr("vigie.admin.denied_reason", reason);
    if let Some(p) = principal {
        e = e
            .attr("vigie.admin.principal", &p.name)
            .attr("vigie.admin.role", p.role.as_str());
    }
    e.emit();
}

/// A policy refused by validation (field paths and reasons only).
pub fn policy_rejected(
    who: &Principal,
    policy: &str,
    violations: &vigie_proto::validate::Violations,
) {
    SecurityEvent::new(
        names::POLICY_REJECTED,
        "policy",
        "failure",
        "policy refused by validation",
    )
    .warn()
    .attr("vigie.admin.principal", &who.name)
    .attr("vigie.admin.role", who.role.as_str())
    .attr("vigie.policy.name", policy)
    .attr("vigie.policy.source", "control_plane")
    // Field paths only: reasons may quote the policy (a DLP pattern).
    .attr(
        "vigie.policy.fields",
        violations
            .0
            .iter()
            .map(|v| v.path.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    )
    .emit();
}
