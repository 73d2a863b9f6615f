//! Policy semantics on the control-plane side: which policies apply to a workload
//! ([`effective`]) and what a change does ([`summary`]), and [`validate`], which runs
//! the structural rules shared with the sidecar plus each section's own compilation.

pub mod effective;
pub mod summary;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use vigie_proto::v1::Policy;
use vigie_proto::validate::{Violation, Violations, limits, validate as validate_structure};

use crate::lanes::CallerLanes;

/// Every section's validation: the shared structural rules, then sections that need
/// their engine to validate (DLP patterns are compiled here, at apply time). CPU-bound:
/// callers on the async runtime go through [`Validator`].
pub fn validate(policy: &Policy) -> Result<(), Violations> {
    // Past a size limit nothing else is looked at: its cost is what is being refused.
    vigie_proto::validate::validate_limits(policy)?;
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
        Err(Violations(capped(problems)))
    }
}

/// At most [`limits::REPORTED_VIOLATIONS`] problems, then one line counting the rest:
/// an error (and its log line) stays small whatever the request.
fn capped(mut problems: Vec<Violation>) -> Vec<Violation> {
    let max = limits::REPORTED_VIOLATIONS;
    if problems.len() > max {
        let more = problems.len() - max;
        problems.truncate(max);
        problems.push(Violation {
            path: String::new(),
            reason: format!("and {more} more problems not listed"),
        });
    }
    problems
}

/// Why a validation did not give a verdict.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("{0}")]
    Invalid(Violations),
    #[error(
        "this caller's earlier policies are still compiling after {0:?}; wait for them to finish"
    )]
    CallerBusy(Duration),
    #[error("the policy compilers stayed busy with other callers' policies for {0:?}; retry")]
    WorkersBusy(Duration),
    #[error("policy took longer than {0:?} to compile; simplify its DLP patterns or keyword lists")]
    TooSlow(Duration),
}

/// Runs [`validate`] off the async workers. A policy with DLP patterns (the expensive
/// part) compiles on a bounded number of threads, one caller's compiles one after the
/// other, within a time budget: one caller's heavy policies cannot starve the other
/// calls (watch streams, leases, a normal apply). Dry runs (ValidatePolicy, which
/// auditors may send) and writes compile on separate threads: read-only callers,
/// however many, never delay an admin's change.
#[derive(Debug, Clone)]
pub struct Validator {
    dry_runs: Arc<Semaphore>,
    writes: Arc<Semaphore>,
    lanes: CallerLanes,
    budget: Duration,
}

impl Default for Validator {
    /// One compile thread for dry runs, one for writes, one compile per caller at once.
    fn default() -> Self {
        Self::new(1, 1, Duration::from_secs(10))
    }
}

impl Validator {
    /// `workers` compile threads for dry runs and as many for writes.
    pub fn new(workers: usize, per_caller: usize, budget: Duration) -> Self {
        Self {
            dry_runs: Arc::new(Semaphore::new(workers)),
            writes: Arc::new(Semaphore::new(workers)),
            lanes: CallerLanes::new(per_caller),
            budget,
        }
    }

    /// Validates `policy` for `caller`; `write` for an apply or a rollback.
    pub async fn validate(
        &self,
        caller: &str,
        policy: &Policy,
        write: bool,
    ) -> Result<(), Refused> {
        // Sizes are cheap to check and refuse before anything is queued.
        vigie_proto::validate::validate_limits(policy).map_err(Refused::Invalid)?;
        let unexpected = || {
            Refused::Invalid(Violations(vec![Violation {
                path: String::new(),
                reason: "validation failed unexpectedly".into(),
            }]))
        };
        let policy = policy.clone();
        if policy.dlp.is_none() {
            // Structural rules only: bounded by the limits, no queue.
            return tokio::task::spawn_blocking(move || validate(&policy))
                .await
                .map_err(|_| unexpected())?
                .map_err(Refused::Invalid);
        }
        let deadline = tokio::time::Instant::now() + self.budget;
        let lane = self
            .lanes
            .enter(caller, deadline)
            .await
            .ok_or(Refused::CallerBusy(self.budget))?;
        let workers = if write { &self.writes } else { &self.dry_runs };
        let permit = tokio::time::timeout_at(deadline, workers.clone().acquire_owned())
            .await
            .map_err(|_| Refused::WorkersBusy(self.budget))?
            .map_err(|_| unexpected())?;
        // The thread keeps its permit (and the caller its lane) until the compile
        // really ends, even when the caller has been answered: the pool stays bounded.
        let job = tokio::task::spawn_blocking(move || {
            let verdict = validate(&policy);
            drop((permit, lane));
            verdict
        });
        match tokio::time::timeout_at(deadline, job).await {
            Err(_) => Err(Refused::TooSlow(self.budget)),
            Ok(Err(_)) => Err(unexpected()),
            Ok(Ok(v)) => v.map_err(Refused::Invalid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(json: &str) -> Policy {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_long_list_of_problems_is_cut_with_a_count() {
        let pools: Vec<String> = (0..150).map(|i| format!(r#"{{"name":"P{i}"}}"#)).collect();
        let p = policy(&format!(r#"{{"name":"p","pools":[{}]}}"#, pools.join(",")));
        let v = validate(&p).unwrap_err();
        assert_eq!(v.0.len(), limits::REPORTED_VIOLATIONS + 1);
        assert!(
            v.0.last()
                .unwrap()
                .reason
                .contains("more problems not listed")
        );
    }

    #[test]
    fn too_many_pools_are_refused_before_anything_else() {
        let pools: Vec<String> = (0..=limits::POOLS).map(|_| "{}".to_string()).collect();
        let p = policy(&format!(r#"{{"name":"p","pools":[{}]}}"#, pools.join(",")));
        let v = validate(&p).unwrap_err();
        assert_eq!(v.0.len(), 1, "{v}");
        assert_eq!(v.0[0].path, "pools");
        assert!(v.0[0].reason.contains("at most 256"), "{v}");
    }

    #[test]
    fn a_keyword_list_past_the_limit_is_refused_not_truncated() {
        let words: Vec<String> = (0..=limits::KEYWORDS_PER_DETECTOR)
            .map(|i| format!("\"mot{i}\""))
            .collect();
        let p = policy(&format!(
            r#"{{"name":"p","dlp":{{"customDetectors":[{{"name":"K","keywords":{{"words":[{}]}}}}]}}}}"#,
            words.join(",")
        ));
        let v = validate(&p).unwrap_err();
        assert_eq!(v.0[0].path, "dlp.customDetectors[0].keywords.words", "{v}");
    }

    #[tokio::test]
    async fn one_caller_compiles_one_policy_at_a_time_and_waits_at_most_the_budget() {
        let p = policy(
            r#"{"name":"p","dlp":{"rules":[{"detector":"*","action":"DLP_ACTION_ALERT"}]}}"#,
        );
        // Generous budget: the caller's second policy waits for its first, then passes;
        // another caller is not held up by either.
        let v = Validator::new(1, 1, Duration::from_secs(120));
        let (a, b, other) = tokio::join!(
            v.validate("mallory", &p, false),
            v.validate("mallory", &p, false),
            v.validate("alice", &p, true)
        );
        assert!(
            a.is_ok() && b.is_ok() && other.is_ok(),
            "{a:?} {b:?} {other:?}"
        );
        // A budget shorter than one compile: the second in the lane gives up waiting.
        let v = Validator::new(2, 1, Duration::from_millis(300));
        let (a, b) = tokio::join!(
            v.validate("mallory", &p, false),
            v.validate("mallory", &p, false)
        );
        assert_eq!(a, Err(Refused::TooSlow(Duration::from_millis(300))));
        assert_eq!(b, Err(Refused::CallerBusy(Duration::from_millis(300))));
    }

    #[tokio::test]
    async fn policies_without_dlp_never_queue() {
        let v = Validator::new(1, 1, Duration::from_millis(1));
        let p = policy(
            r#"{"name":"p","pools":[{"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a:1"}],"models":[{"name":"m"}]}]}"#,
        );
        let all = futures::future::join_all((0..8).map(|_| v.validate("admin", &p, true))).await;
        assert!(all.iter().all(Result::is_ok), "{all:?}");
    }

    #[tokio::test]
    async fn a_compile_past_the_budget_is_refused() {
        let v = Validator::new(1, 2, Duration::from_millis(1));
        let p = policy(
            r#"{"name":"p","dlp":{"rules":[{"detector":"*","action":"DLP_ACTION_ALERT"}]}}"#,
        );
        assert_eq!(
            v.validate("a", &p, true).await,
            Err(Refused::TooSlow(Duration::from_millis(1)))
        );
    }
}
