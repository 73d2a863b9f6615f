//! The effective policy of a workload.
//!
//! Precedence (documented in docs/policy-guide.md): a policy whose scope selects
//! workloads (labels or service account) beats one that selects a namespace, which
//! beats a cluster-wide one (empty scope). Among equals, more selector terms win, then
//! the alphabetically first name. The choice is made section by section: each section
//! comes from the most specific matching policy that sets it.

use crate::v1::{EffectivePolicy, Identity, Policy, PolicyHead, PolicySource, Scope};
use crate::validate::version_of;

/// A live policy revision: what the control plane's store and an egress agent's
/// bundle both hold.
pub trait Head {
    fn name(&self) -> &str;
    fn revision(&self) -> i64;
    fn policy(&self) -> Option<&Policy>;
}

impl Head for PolicyHead {
    fn name(&self) -> &str {
        &self.name
    }
    fn revision(&self) -> i64 {
        self.revision
    }
    fn policy(&self) -> Option<&Policy> {
        self.policy.as_ref()
    }
}

/// A part of the policy that is taken whole from one policy.
struct Section {
    name: &'static str,
    present: fn(&Policy) -> bool,
    take: fn(&mut Policy, &Policy),
}

/// Each section of the policy, taken whole from the most specific policy setting it.
const SECTIONS: &[Section] = &[
    Section {
        // Routes name pools, so both come from the same policy.
        name: "routing",
        present: |p| !p.pools.is_empty(),
        take: |dst, src| {
            dst.pools.clone_from(&src.pools);
            dst.routes.clone_from(&src.routes);
        },
    },
    Section {
        name: "dlp",
        present: |p| p.dlp.is_some(),
        take: |dst, src| dst.dlp.clone_from(&src.dlp),
    },
    Section {
        name: "budgets",
        present: |p| p.budgets.is_some(),
        take: |dst, src| dst.budgets.clone_from(&src.budgets),
    },
    Section {
        name: "egress",
        present: |p| p.egress.is_some(),
        take: |dst, src| dst.egress.clone_from(&src.egress),
    },
    Section {
        name: "telemetry",
        present: |p| p.telemetry.is_some(),
        take: |dst, src| dst.telemetry.clone_from(&src.telemetry),
    },
];

/// Version reported when no policy matches.
pub const NO_POLICY: &str = "none";

pub fn scope_matches(scope: Option<&Scope>, id: &Identity) -> bool {
    let Some(s) = scope else { return true };
    (s.namespace.is_empty() || s.namespace == id.namespace)
        && (s.service_account.is_empty() || s.service_account == id.service_account)
        && s.workload_labels
            .iter()
            .all(|(k, v)| id.labels.get(k) == Some(v))
}

/// Higher is more specific: (tier, number of selector terms).
fn specificity(scope: Option<&Scope>) -> (u8, usize) {
    let Some(s) = scope else { return (0, 0) };
    let workload_terms = s.workload_labels.len() + usize::from(!s.service_account.is_empty());
    let tier = if workload_terms > 0 {
        2
    } else {
        u8::from(!s.namespace.is_empty())
    };
    (tier, workload_terms + usize::from(!s.namespace.is_empty()))
}

/// Live policies that match, most specific first.
pub fn matching<'a, H: Head>(heads: &'a [H], id: &Identity) -> Vec<(&'a H, &'a Policy)> {
    let mut m: Vec<_> = heads
        .iter()
        .filter_map(|r| r.policy().map(|p| (r, p)))
        .filter(|(_, p)| scope_matches(p.scope.as_ref(), id))
        .collect();
    m.sort_by(|(_, a), (_, b)| {
        specificity(b.scope.as_ref())
            .cmp(&specificity(a.scope.as_ref()))
            .then_with(|| a.name.cmp(&b.name))
    });
    m
}

pub fn effective<H: Head>(heads: &[H], id: &Identity) -> EffectivePolicy {
    let candidates = matching(heads, id);
    let mut policy = Policy::default();
    let mut sources = Vec::new();
    for section in SECTIONS {
        if let Some((rev, src)) = candidates.iter().find(|(_, p)| (section.present)(p)) {
            (section.take)(&mut policy, src);
            if policy.name.is_empty() {
                policy.name.clone_from(&src.name);
            }
            sources.push(PolicySource {
                section: section.name.to_string(),
                policy: rev.name().to_string(),
                revision: rev.revision(),
            });
        }
    }
    if sources.is_empty() {
        return EffectivePolicy {
            version: NO_POLICY.to_string(),
            policy: None,
            sources,
        };
    }
    EffectivePolicy {
        version: version_of(&policy),
        policy: Some(policy),
        sources,
    }
}
