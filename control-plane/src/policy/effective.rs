//! The effective policy of a workload: the shared rules of `vigie_proto::effective`
//! (egress agents compute it with the same code), applied to the store's revisions.

use vigie_proto::effective::Head;
pub use vigie_proto::effective::effective;
use vigie_proto::v1::Policy;

use crate::store::Revision;

impl Head for Revision {
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

#[cfg(test)]
mod tests {
    use super::*;
    use vigie_proto::effective::NO_POLICY;
    use vigie_proto::v1::{Identity, RevisionAction};

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
