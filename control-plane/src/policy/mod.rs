//! Policy semantics on the control-plane side: which policies apply to a workload
//! ([`effective`]) and what a change does ([`summary`]), and [`validate`], which runs
//! the structural rules shared with the sidecar plus each section's own compilation.

pub mod effective;
pub mod summary;

use vigie_proto::v1::Policy;
use vigie_proto::validate::{Violations, validate as validate_structure};

/// Every section's validation: the shared structural rules, then sections that need
/// their engine to validate (DLP patterns are compiled here, at apply time).
pub fn validate(policy: &Policy) -> Result<(), Violations> {
    let mut problems =
        match validate_structure(policy, &vigie_egress_common::validate::EGRESS_RULES) {
            Ok(()) => Vec::new(),
            Err(v) => v.0,
        };
    if let Some(dlp) = &policy.dlp
        && let Err(v) = vigie_dlp::policy::compile(dlp)
    {
        problems.extend(v);
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Violations(problems))
    }
}
