//! The control plane's security events (schema: docs/security-events.md): what admins
//! did, calls refused for want of a valid token or role, policies refused by validation.

use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// A change to a policy managed from Git, made anyway (break-glass).
pub fn policy_break_glass(who: &Principal, policy: &str, revision: i64) {
    SecurityEvent::new(
        names::ADMIN_ACTION,
        "admin",
        "success",
        "policy managed from Git changed by break-glass",
    )
    .warn()
    .attr("vigie.admin.principal", &who.name)
    .attr("vigie.admin.role", who.role.as_str())
    .attr("vigie.admin.action", "break_glass")
    .attr("vigie.policy.name", policy)
    .attr("vigie.policy.revision", revision)
    .emit();
}

/// Refused calls reported per second at most; the rest are counted and reported in one
/// summary event, so that a flood of bad tokens cannot push other security events out
/// of the export queue.
const REFUSALS_PER_SECOND: u32 = 20;

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    sent: u32,
    suppressed: u64,
}

impl Window {
    /// (report this one?, refusals suppressed in the window that just ended).
    fn admit(&mut self, now: Instant) -> (bool, u64) {
        let mut ended = 0;
        if self
            .start
            .is_none_or(|s| now.duration_since(s) >= Duration::from_secs(1))
        {
            ended = self.suppressed;
            *self = Window {
                start: Some(now),
                sent: 0,
                suppressed: 0,
            };
        }
        if self.sent < REFUSALS_PER_SECOND {
            self.sent += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

static REFUSALS: Mutex<Window> = Mutex::new(Window {
    start: None,
    sent: 0,
    suppressed: 0,
});

/// A call refused: no valid token (`principal` unknown) or a role without the right.
pub fn access_denied<T>(
    req: &tonic::Request<T>,
    principal: Option<&Principal>,
    reason: &'static str,
) {
    access_denied_at(&method_of(req), principal, reason);
}

/// [`access_denied`], for a call known by its method path only.
pub fn access_denied_at(method: &str, principal: Option<&Principal>, reason: &'static str) {
    let (report, suppressed) = REFUSALS
        .lock()
        .map_or((true, 0), |mut w| w.admit(Instant::now()));
    if suppressed > 0 {
        SecurityEvent::new(
            names::ADMIN_ACTION,
            "admin",
            "failure",
            "further refused calls not reported (rate limit)",
        )
        .warn()
        .attr("vigie.admin.suppressed", suppressed)
        .emit();
    }
    if !report {
        return;
    }
    let mut e = SecurityEvent::new(names::ADMIN_ACTION, "admin", "failure", "call refused")
        .warn()
        .attr("vigie.admin.method", method)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_rate_limited_and_the_rest_counted() {
        let mut w = Window {
            start: None,
            sent: 0,
            suppressed: 0,
        };
        let t0 = Instant::now();
        let reported = (0..25).filter(|_| w.admit(t0).0).count();
        assert_eq!(reported, REFUSALS_PER_SECOND as usize);
        // The next window reports what the last one held back.
        assert_eq!(w.admit(t0 + Duration::from_millis(1000)), (true, 5));
        assert_eq!(w.admit(t0 + Duration::from_millis(1001)), (true, 0));
    }
}
