//! The effective policy of a workload.
//!
//! Precedence (documented in docs/policy-guide.md): a policy whose scope selects
//! workloads (labels or service account) beats one that selects a namespace, which
//! beats a cluster-wide one (empty scope). Among equals, more selector terms win, then
//! the alphabetically first name. The choice is made section by section: each section
//! comes from the most specific matching policy that sets it.

use vigie_proto::v1::{EffectivePolicy, Identity, Policy, PolicySource, Scope};
use vigie_proto::validate::version_of;

use crate::store::Revision;

/// A part of the policy that is taken whole from one policy.
struct Section {
    name: &'static str,
    present: fn(&Policy) -> bool,
    take: fn(&mut Policy, &Policy),
}

/// Later issues (budgets, egress) add their sections here.
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
pub fn matching<'a>(heads: &'a [Revision], id: &Identity) -> Vec<(&'a Revision, &'a Policy)> {
    let mut m: Vec<_> = heads
        .iter()
        .filter_map(|r| r.policy.as_ref().map(|p| (r, p)))
        .filter(|(_, p)| scope_matches(p.scope.as_ref(), id))
        .collect();
    m.sort_by(|(_, a), (_, b)| {
        specificity(b.scope.as_ref())
            .cmp(&specificity(a.scope.as_ref()))
            .then_with(|| a.name.cmp(&b.name))
    });
    m
}

pub fn effective(heads: &[Revision], id: &Identity) -> EffectivePolicy {
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
                policy: rev.name.clone(),
                revision: rev.revision,
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

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_proto::v1::RevisionAction;

    fn rev(n: i64, json: &str) -> Revision {
        let policy: Policy = serde_json::from_str(json).unwrap();
        Revision {
            name: policy.name.clone(),
            revision: n,
            action: RevisionAction::Apply,
            policy: Some(policy),
            created_at_ms: 0,
            author: "t".into(),
            summary: String::new(),
            comment: String::new(),
            restored_revision: 0,
        }
    }

    fn routing(name: &str, scope: &str, pool: &str) -> String {
        format!(
            r#"{{"name":"{name}","scope":{scope},"pools":[{{"name":"{pool}","kind":"POOL_KIND_VLLM",
            "endpoints":[{{"url":"http://h"}}],"models":[{{"name":"m"}}]}}]}}"#
        )
    }

    fn id(ns: &str, sa: &str, labels: &[(&str, &str)]) -> Identity {
        Identity {
            namespace: ns.into(),
            service_account: sa.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn most_specific_scope_wins() {
        let heads = vec![
            rev(1, &routing("global", "{}", "g")),
            rev(2, &routing("team-a", r#"{"namespace":"team-a"}"#, "ns")),
            rev(
                3,
                &routing(
                    "chat",
                    r#"{"namespace":"team-a","workloadLabels":{"app":"chat"}}"#,
                    "wl",
                ),
            ),
        ];
        let pool = |id: &Identity| effective(&heads, id).policy.unwrap().pools[0].name.clone();
        assert_eq!(pool(&id("team-a", "x", &[("app", "chat")])), "wl");
        assert_eq!(pool(&id("team-a", "x", &[("app", "web")])), "ns");
        assert_eq!(pool(&id("team-b", "x", &[("app", "chat")])), "g");
        let e = effective(&heads, &id("team-a", "x", &[("app", "chat")]));
        assert_eq!(e.sources[0].policy, "chat");
        assert_eq!(e.sources[0].revision, 3);
        // Scope is not part of what a sidecar receives.
        assert!(e.policy.unwrap().scope.is_none());
    }

    #[test]
    fn ties_break_on_terms_then_name() {
        let heads = vec![
            rev(1, &routing("b-sa", r#"{"serviceAccount":"chat"}"#, "b")),
            rev(2, &routing("a-sa", r#"{"serviceAccount":"chat"}"#, "a")),
            rev(
                3,
                &routing("z-two", r#"{"serviceAccount":"chat","namespace":"n"}"#, "z"),
            ),
        ];
        let e = effective(&heads, &id("n", "chat", &[]));
        assert_eq!(e.policy.unwrap().pools[0].name, "z");
        let e = effective(&heads, &id("other", "chat", &[]));
        assert_eq!(e.policy.unwrap().pools[0].name, "a");
    }

    #[test]
    fn no_match_and_stable_versions() {
        let heads = vec![rev(1, &routing("only", r#"{"namespace":"x"}"#, "p"))];
        let none = effective(&heads, &id("y", "", &[]));
        assert_eq!(none.version, NO_POLICY);
        assert!(none.policy.is_none());
        // Same content, same version, whoever asks.
        let a = effective(&heads, &id("x", "a", &[]));
        let b = effective(&heads, &id("x", "b", &[("k", "v")]));
        assert_eq!(a.version, b.version);
        assert_ne!(a.version, NO_POLICY);
    }
}
