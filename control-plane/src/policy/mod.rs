//! Policy semantics on the control-plane side: which policies apply to a workload
//! ([`effective`]) and what a change does ([`summary`]), and [`validate`], which runs
//! the structural rules shared with the sidecar plus each section's own compilation.

pub mod effective;
pub mod summary;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use vigie_proto::v1::Policy;
use vigie_proto::validate::{Violation, Violations, limits, validate as validate_structure};

/// Every section's validation: the shared structural rules, then sections that need
/// their engine to validate (DLP patterns are compiled here, at apply time). CPU-bound:
/// callers on the async runtime go through [`Validator`].
pub fn validate(policy: &Policy) -> Result<(), Violations> {
    let mut problems =
        match validate_structure(policy, &vigie_egress_common::validate::EGRESS_RULES) {
            Ok(()) => Vec::new(),
            Err(v) => v.0,
        };
    // Past a size limit the policy is not compiled: its cost is what is being refused.
    let oversized = vigie_proto::validate::validate_limits(policy).is_err();
    if !oversized
        && let Some(dlp) = &policy.dlp
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
    #[error("this caller already has {0} policy validations in progress; wait for them to finish")]
    CallerBusy(usize),
    #[error("policy took longer than {0:?} to compile; simplify its DLP patterns or keyword lists")]
    TooSlow(Duration),
}

/// Runs [`validate`] off the async workers, on a bounded number of threads, with a
/// time budget and a cap per caller: one caller's heavy policies cannot starve the
/// other calls (watch streams, leases, a normal apply).
#[derive(Debug, Clone)]
pub struct Validator {
    workers: Arc<Semaphore>,
    busy: Arc<Mutex<HashMap<String, usize>>>,
    per_caller: usize,
    budget: Duration,
}

impl Default for Validator {
    /// Two compile threads, one per caller: a caller holds at most one of them.
    fn default() -> Self {
        Self::new(2, 1, Duration::from_secs(10))
    }
}

/// Releases a caller's slot when its validation ends (or is abandoned).
struct Slot {
    busy: Arc<Mutex<HashMap<String, usize>>>,
    caller: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = busy.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.caller);
            }
        }
    }
}

impl Validator {
    pub fn new(workers: usize, per_caller: usize, budget: Duration) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(workers)),
            busy: Arc::default(),
            per_caller,
            budget,
        }
    }

    pub async fn validate(&self, caller: &str, policy: &Policy) -> Result<(), Refused> {
        // Sizes are cheap to check and refuse before anything is queued.
        vigie_proto::validate::validate_limits(policy).map_err(Refused::Invalid)?;
        let slot = {
            let mut busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
            let n = busy.entry(caller.to_string()).or_default();
            if *n >= self.per_caller {
                return Err(Refused::CallerBusy(*n));
            }
            *n += 1;
            Slot {
                busy: self.busy.clone(),
                caller: caller.to_string(),
            }
        };
        let work = async {
            // Only DLP compiles are expensive: a policy without them never queues
            // behind another caller's patterns.
            let permit = match policy.dlp {
                Some(_) => Some(
                    self.workers
                        .clone()
                        .acquire_owned()
                        .await
                        .map_err(|_| Refused::TooSlow(self.budget))?,
                ),
                None => None,
            };
            let policy = policy.clone();
            // The thread keeps its permit (and the caller its slot) until the compile
            // really ends, even when the caller has been answered: the pool stays bounded.
            let job = tokio::task::spawn_blocking(move || {
                let verdict = validate(&policy);
                drop((permit, slot));
                verdict
            });
            match job.await {
                Ok(v) => v.map_err(Refused::Invalid),
                Err(_) => Err(Refused::Invalid(Violations(vec![Violation {
                    path: String::new(),
                    reason: "validation failed unexpectedly".into(),
                }]))),
            }
        };
        tokio::time::timeout(self.budget, work)
            .await
            .unwrap_or(Err(Refused::TooSlow(self.budget)))
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
    async fn one_caller_has_at_most_its_share_of_validations_in_flight() {
        let v = Validator::new(1, 1, Duration::from_secs(30));
        let p = policy(
            r#"{"name":"p","dlp":{"rules":[{"detector":"*","action":"DLP_ACTION_ALERT"}]}}"#,
        );
        let (a, b, other) = tokio::join!(
            v.validate("mallory", &p),
            v.validate("mallory", &p),
            v.validate("alice", &p)
        );
        assert!(a.is_ok(), "{a:?}");
        assert_eq!(b, Err(Refused::CallerBusy(1)));
        assert!(other.is_ok(), "{other:?}");
        // Finished: the slot is free again.
        assert!(v.validate("mallory", &p).await.is_ok());
    }

    #[tokio::test]
    async fn a_compile_past_the_budget_is_refused() {
        let v = Validator::new(1, 2, Duration::from_millis(1));
        let p = policy(
            r#"{"name":"p","dlp":{"rules":[{"detector":"*","action":"DLP_ACTION_ALERT"}]}}"#,
        );
        assert_eq!(
            v.validate("a", &p).await,
            Err(Refused::TooSlow(Duration::from_millis(1)))
        );
    }
}
