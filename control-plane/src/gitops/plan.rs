//! What a sync would do: the declared files against the store's heads. Pure, so the
//! reconciler and `vigie-control-plane policy diff` say the same thing.

use std::collections::{BTreeMap, BTreeSet};

use vigie_proto::v1::Policy;

use super::GITOPS_ACTOR;
use super::source::PolicyFile;
use crate::policy::summary::summarize;

/// A policy as the store has it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Current {
    /// Content of the head revision (`None`: deleted, or never created).
    pub live: Option<Policy>,
    pub revision: i64,
    /// Author of the head revision.
    pub author: String,
    /// Content of the newest revision Git wrote, when there is one (`Some(None)`: Git
    /// deleted it). Only needed when the head is not Git's.
    pub last_from_git: Option<Option<Policy>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create,
    /// With the change summary.
    Update(String),
    InSync,
    /// Changed by break-glass since Git last set it, and the file has not changed
    /// since: kept, reported.
    Drift,
    /// Git created it and its file is gone: deleted with prune…
    Prune,
    /// …else kept and reported.
    Orphan,
    /// Live, not declared in Git and not made by it: made through the API (before
    /// GitOps, or with breakGlass). Reported, never touched.
    OutsideGit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub name: String,
    /// The declaring file (none for prune and orphans).
    pub file: Option<String>,
    pub step: Step,
}

/// One step per declared policy, then one per policy Git created whose file is gone.
pub fn plan(
    files: &[PolicyFile],
    current: &BTreeMap<String, Current>,
    prune: bool,
) -> Vec<Planned> {
    let none = Current::default();
    let mut steps: Vec<Planned> = files
        .iter()
        .map(|f| {
            let c = current.get(&f.policy.name).unwrap_or(&none);
            let step = if c.live.as_ref() == Some(&f.policy) {
                Step::InSync
            } else if c.revision != 0
                && c.author != GITOPS_ACTOR
                && c.last_from_git.as_ref() == Some(&Some(f.policy.clone()))
            {
                Step::Drift
            } else if c.live.is_none() {
                Step::Create
            } else {
                Step::Update(summarize(c.live.as_ref(), Some(&f.policy)))
            };
            Planned {
                name: f.policy.name.clone(),
                file: Some(f.file.clone()),
                step,
            }
        })
        .collect();
    let declared: BTreeSet<&str> = files.iter().map(|f| f.policy.name.as_str()).collect();
    for (name, c) in current {
        if declared.contains(name.as_str()) || c.live.is_none() {
            continue;
        }
        let step = match (c.author == GITOPS_ACTOR, prune) {
            (true, true) => Step::Prune,
            (true, false) => Step::Orphan,
            (false, _) => Step::OutsideGit,
        };
        steps.push(Planned {
            name: name.clone(),
            file: None,
            step,
        });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, namespace: &str) -> Policy {
        serde_json::from_str(&format!(
            r#"{{"name":"{name}","scope":{{"namespace":"{namespace}"}}}}"#
        ))
        .unwrap()
    }

    fn file(name: &str, namespace: &str) -> PolicyFile {
        PolicyFile {
            file: format!("{name}.yaml"),
            policy: policy(name, namespace),
            blob: String::new(),
        }
    }

    fn head(p: Option<Policy>, author: &str, from_git: Option<Option<Policy>>) -> Current {
        Current {
            live: p,
            revision: 7,
            author: author.into(),
            last_from_git: from_git,
        }
    }

    #[test]
    fn each_case_of_a_sync() {
        let files = [
            file("new", "a"),
            file("same", "a"),
            file("changed", "b"),
            file("glass", "a"),
            file("glass-then-git", "b"),
            file("adopted", "b"),
        ];
        let current = BTreeMap::from([
            (
                "same".to_string(),
                head(Some(policy("same", "a")), GITOPS_ACTOR, None),
            ),
            (
                "changed".to_string(),
                head(Some(policy("changed", "a")), GITOPS_ACTOR, None),
            ),
            (
                "glass".to_string(),
                head(
                    Some(policy("glass", "z")),
                    "alice",
                    Some(Some(policy("glass", "a"))),
                ),
            ),
            (
                "glass-then-git".to_string(),
                head(
                    Some(policy("glass-then-git", "z")),
                    "alice",
                    Some(Some(policy("glass-then-git", "a"))),
                ),
            ),
            (
                "adopted".to_string(),
                head(Some(policy("adopted", "a")), "alice", None),
            ),
            (
                "gone".to_string(),
                head(Some(policy("gone", "a")), GITOPS_ACTOR, None),
            ),
            (
                "by-hand".to_string(),
                head(Some(policy("by-hand", "a")), "alice", None),
            ),
        ]);
        let steps: Vec<_> = plan(&files, &current, false)
            .into_iter()
            .map(|p| (p.name, p.step))
            .collect();
        assert_eq!(steps[0], ("new".into(), Step::Create));
        assert_eq!(steps[1], ("same".into(), Step::InSync));
        assert!(
            matches!(&steps[2].1, Step::Update(s) if s.contains("scope")),
            "{steps:?}"
        );
        assert_eq!(steps[3], ("glass".into(), Step::Drift));
        // Git changed the file after the break-glass: Git wins again.
        assert!(matches!(steps[4].1, Step::Update(_)));
        assert!(matches!(steps[5].1, Step::Update(_)));
        // BTreeMap order: by-hand, then gone.
        assert_eq!(steps[6], ("by-hand".into(), Step::OutsideGit));
        assert_eq!(steps[7], ("gone".into(), Step::Orphan));
        assert_eq!(steps.len(), 8);
        let pruned = plan(&files, &current, true);
        assert_eq!(
            pruned[6].step,
            Step::OutsideGit,
            "a policy made by hand is not Git's to prune"
        );
        assert_eq!(pruned[7].step, Step::Prune);
    }
}
