//! Fair shares of the control plane's expensive calls: each caller has its own lane
//! (a few calls at once), and every lane draws on one shared pool, so one caller
//! sending the heaviest call in a loop waits on itself while the others are served.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// Past this many callers known, lanes nobody holds are forgotten.
const KEPT_IDLE_LANES: usize = 1024;

/// Each caller's lane: at most `per_caller` of its calls at once.
#[derive(Debug, Clone)]
pub struct CallerLanes {
    lanes: Arc<Mutex<HashMap<String, Arc<Semaphore>>>>,
    per_caller: usize,
}

impl CallerLanes {
    pub fn new(per_caller: usize) -> Self {
        Self {
            lanes: Arc::default(),
            per_caller,
        }
    }

    fn lane(&self, caller: &str) -> Arc<Semaphore> {
        let mut lanes = self.lanes.lock().unwrap_or_else(|e| e.into_inner());
        if lanes.len() >= KEPT_IDLE_LANES {
            // Only this map holds an idle lane: it has every permit back.
            lanes.retain(|_, lane| Arc::strong_count(lane) > 1);
        }
        lanes
            .entry(caller.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_caller)))
            .clone()
    }

    /// A place in `caller`'s lane, waiting until `deadline` at most.
    pub async fn enter(&self, caller: &str, deadline: Instant) -> Option<OwnedSemaphorePermit> {
        let lane = self.lane(caller);
        tokio::time::timeout_at(deadline, lane.acquire_owned())
            .await
            .ok()?
            .ok()
    }
}

/// Why a call was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error("this caller's earlier {call} calls are still running after {wait:?}; wait for them")]
    Caller { call: &'static str, wait: Duration },
    #[error("the control plane stayed busy with other callers' {call} calls for {wait:?}; retry")]
    Everyone { call: &'static str, wait: Duration },
}

impl From<Busy> for tonic::Status {
    fn from(busy: Busy) -> Self {
        tonic::Status::resource_exhausted(busy.to_string())
    }
}

/// Admission to one kind of expensive call (`QueryUsage`, `ExportUsage`…): a lane per
/// caller, a shared pool, and a bounded wait for both.
#[derive(Debug, Clone)]
pub struct Admission {
    call: &'static str,
    lanes: CallerLanes,
    shared: Arc<Semaphore>,
    wait: Duration,
}

/// Held for as long as the call runs (for a stream, until it ends).
#[derive(Debug)]
pub struct Admitted {
    _lane: OwnedSemaphorePermit,
    _shared: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(call: &'static str, per_caller: usize, shared: usize, wait: Duration) -> Self {
        Self {
            call,
            lanes: CallerLanes::new(per_caller),
            shared: Arc::new(Semaphore::new(shared)),
            wait,
        }
    }

    pub async fn admit(&self, caller: &str) -> Result<Admitted, Busy> {
        let deadline = Instant::now() + self.wait;
        let (call, wait) = (self.call, self.wait);
        let lane = self
            .lanes
            .enter(caller, deadline)
            .await
            .ok_or(Busy::Caller { call, wait })?;
        let shared = tokio::time::timeout_at(deadline, self.shared.clone().acquire_owned())
            .await
            .ok()
            .and_then(Result::ok)
            .ok_or(Busy::Everyone { call, wait })?;
        Ok(Admitted {
            _lane: lane,
            _shared: shared,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_busy_caller_waits_on_itself_while_others_pass() {
        let a = Admission::new("QueryUsage", 1, 2, Duration::from_millis(50));
        let held = a.admit("mallory").await.unwrap();
        assert_eq!(
            a.admit("mallory").await.unwrap_err(),
            Busy::Caller {
                call: "QueryUsage",
                wait: Duration::from_millis(50)
            }
        );
        let alice = a.admit("alice").await.unwrap();
        // Both shared places are taken: a third caller waits, then is refused.
        assert!(matches!(a.admit("bob").await, Err(Busy::Everyone { .. })));
        drop((held, alice));
        assert!(a.admit("mallory").await.is_ok());
    }

    #[tokio::test]
    async fn a_place_freed_within_the_wait_is_taken() {
        let a = Admission::new("ExportUsage", 1, 1, Duration::from_secs(5));
        let held = a.admit("mallory").await.unwrap();
        let waiter = tokio::spawn({
            let a = a.clone();
            async move { a.admit("mallory").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(held);
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }

    #[test]
    fn idle_lanes_are_forgotten_past_the_limit() {
        let lanes = CallerLanes::new(1);
        for i in 0..3 * KEPT_IDLE_LANES {
            drop(lanes.lane(&format!("caller-{i}")));
        }
        let kept = lanes.lanes.lock().unwrap().len();
        assert!(kept <= KEPT_IDLE_LANES, "{kept}");
    }
}
