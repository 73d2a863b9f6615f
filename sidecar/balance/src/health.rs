//! Passive health: an endpoint that fails `failures_to_eject` times in a row is ejected
//! for a backoff that doubles with each ejection (capped); when it ends the circuit is
//! half-open: one request goes through as a probe, and its outcome closes the circuit
//! or ejects the endpoint again. Active checks (the sidecar's background probes) report
//! through the same [`Health::record`].

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct HealthConfig {
    pub failures_to_eject: u32,
    pub base_ejection: Duration,
    pub max_ejection: Duration,
    /// A probe whose outcome never comes back frees the half-open slot after this.
    pub probe_timeout: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            failures_to_eject: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
            probe_timeout: Duration::from_secs(30),
        }
    }
}

/// What an attempt on the endpoint says about its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// Connect error, reset, 5xx, first-byte timeout.
    Failure,
    /// Says nothing about the endpoint (4xx from the client's request, client gone).
    Neutral,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Circuit {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probe_since: Option<Instant> },
}

#[derive(Debug)]
struct Inner {
    circuit: Circuit,
    ejections: u32,
}

#[derive(Debug)]
pub struct Health {
    config: HealthConfig,
    inner: Mutex<Inner>,
    /// Mirrors `Circuit::Closed` so that picks read healthy endpoints without a lock.
    closed: AtomicBool,
}

impl Health {
    pub fn new(config: HealthConfig) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                circuit: Circuit::Closed { failures: 0 },
                ejections: 0,
            }),
            closed: AtomicBool::new(true),
        }
    }

    /// Whether the endpoint may be picked now (an expired ejection counts: the pick
    /// then becomes the probe, see [`Health::begin`]).
    pub fn available(&self, now: Instant) -> bool {
        self.closed.load(Ordering::Acquire) || self.wants_probe(now)
    }

    /// The ejection has ended and no probe is in flight: the next request should go
    /// here (it can still fail over), or an endpoint that only some prompts reach
    /// (affinity) could stay ejected for ever.
    pub fn wants_probe(&self, now: Instant) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        self.inner
            .lock()
            .is_ok_and(|inner| self.probe_due(inner.circuit, now))
    }

    /// Open past its deadline, or half-open with no probe out (or a lost one).
    fn probe_due(&self, circuit: Circuit, now: Instant) -> bool {
        match circuit {
            Circuit::Closed { .. } => false,
            Circuit::Open { until } => now >= until,
            Circuit::HalfOpen { probe_since } => {
                probe_since.is_none_or(|t| now.duration_since(t) >= self.config.probe_timeout)
            }
        }
    }

    /// The endpoint was picked: an expired ejection turns into a half-open probe.
    /// Returns whether this request is the probe.
    pub fn begin(&self, now: Instant) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return false;
        };
        if !self.probe_due(inner.circuit, now) {
            return false;
        }
        // One probe at a time: the slot is taken until its outcome (or its timeout).
        inner.circuit = Circuit::HalfOpen {
            probe_since: Some(now),
        };
        true
    }

    pub fn record(&self, outcome: Outcome, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        self.record_locked(&mut inner, outcome, now);
        self.closed.store(
            matches!(inner.circuit, Circuit::Closed { .. }),
            Ordering::Release,
        );
    }

    fn record_locked(&self, inner: &mut Inner, outcome: Outcome, now: Instant) {
        match (outcome, inner.circuit) {
            (Outcome::Neutral, Circuit::HalfOpen { .. }) => {
                // The probe proved nothing: let another one through.
                inner.circuit = Circuit::HalfOpen { probe_since: None };
            }
            (Outcome::Neutral, _) => {}
            (Outcome::Success, _) => {
                inner.circuit = Circuit::Closed { failures: 0 };
                inner.ejections = 0;
            }
            (Outcome::Failure, Circuit::Closed { failures })
                if failures + 1 < self.config.failures_to_eject =>
            {
                inner.circuit = Circuit::Closed {
                    failures: failures + 1,
                };
            }
            // Already ejected (a request that started before): nothing more to learn.
            (Outcome::Failure, Circuit::Open { .. }) => {}
            (Outcome::Failure, _) => {
                let factor = 1u32 << inner.ejections.min(16);
                let backoff = self
                    .config
                    .base_ejection
                    .saturating_mul(factor)
                    .min(self.config.max_ejection);
                inner.circuit = Circuit::Open {
                    until: now + backoff,
                };
                inner.ejections = inner.ejections.saturating_add(1);
            }
        }
    }

    /// Whether the endpoint is ejected or on probation (for telemetry).
    pub fn ejected(&self) -> bool {
        !self.closed.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> Health {
        Health::new(HealthConfig {
            failures_to_eject: 3,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(12),
            probe_timeout: Duration::from_secs(30),
        })
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let h = health();
        let t = Instant::now();
        h.record(Outcome::Failure, t);
        h.record(Outcome::Failure, t);
        h.record(Outcome::Success, t);
        h.record(Outcome::Failure, t);
        h.record(Outcome::Failure, t);
        assert!(h.available(t), "a success in between resets the count");
        h.record(Outcome::Failure, t);
        assert!(!h.available(t));
        assert!(h.ejected());
        assert!(!h.available(t + Duration::from_secs(4)));
        assert!(h.available(t + Duration::from_secs(5)));
    }

    #[test]
    fn one_probe_when_the_ejection_ends_then_close_or_reopen_longer() {
        let h = health();
        let t = Instant::now();
        for _ in 0..3 {
            h.record(Outcome::Failure, t);
        }
        let t1 = t + Duration::from_secs(5);
        assert!(h.begin(t1), "first pick after the ejection is the probe");
        assert!(!h.available(t1), "only one probe at a time");
        h.record(Outcome::Failure, t1);
        // Second ejection: twice as long.
        assert!(!h.available(t1 + Duration::from_secs(9)));
        assert!(h.available(t1 + Duration::from_secs(10)));
        let t2 = t1 + Duration::from_secs(10);
        assert!(h.begin(t2));
        h.record(Outcome::Success, t2);
        assert!(h.available(t2) && !h.ejected());
        // The backoff was reset by the success; capped at max_ejection anyway.
        for _ in 0..3 {
            h.record(Outcome::Failure, t2);
        }
        assert!(h.available(t2 + Duration::from_secs(5)));
    }

    #[test]
    fn lost_or_neutral_probe_frees_the_slot() {
        let h = health();
        let t = Instant::now();
        for _ in 0..3 {
            h.record(Outcome::Failure, t);
        }
        let t1 = t + Duration::from_secs(5);
        assert!(h.begin(t1));
        h.record(Outcome::Neutral, t1);
        assert!(h.available(t1));
        assert!(h.begin(t1));
        assert!(!h.available(t1 + Duration::from_secs(29)));
        assert!(h.available(t1 + Duration::from_secs(30)));
    }
}
