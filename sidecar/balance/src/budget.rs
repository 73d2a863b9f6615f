//! Retry budget: retries may add at most `ratio` of the request rate, plus a small
//! floor per second, so a failing pool does not turn into a retry storm (the scheme of
//! Finagle and Linkerd). Shared by all requests of a sidecar.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    floor_per_sec: f64,
    /// Most tokens kept (a burst of retries after a quiet period).
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl RetryBudget {
    pub fn new(ratio: f64, floor_per_sec: f64) -> Self {
        let cap = (floor_per_sec * 10.0).max(1.0);
        Self {
            ratio,
            floor_per_sec,
            cap,
            state: Mutex::new((cap, Instant::now())),
        }
    }

    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.floor_per_sec).min(self.cap);
        state.1 = now;
    }

    /// A request arrived: it earns `ratio` of a retry.
    pub fn deposit(&self, now: Instant) {
        if let Ok(mut s) = self.state.lock() {
            self.refill(&mut s, now);
            s.0 = (s.0 + self.ratio).min(self.cap);
        }
    }

    /// Whether a retry may be made now (and spends it).
    pub fn withdraw(&self, now: Instant) -> bool {
        let Ok(mut s) = self.state.lock() else {
            return true;
        };
        self.refill(&mut s, now);
        if s.0 >= 1.0 {
            s.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

impl Default for RetryBudget {
    /// 20 % of requests, at least 10 retries per second.
    fn default() -> Self {
        Self::new(0.2, 10.0)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn retries_are_bounded_by_ratio_and_floor() {
        let b = RetryBudget::new(0.2, 1.0);
        let t = Instant::now();
        // The initial burst (10 × floor).
        assert_eq!((0..20).filter(|_| b.withdraw(t)).count(), 10);
        // 100 requests earn 20 retries.
        for _ in 0..100 {
            b.deposit(t);
        }
        assert_eq!(
            (0..50).filter(|_| b.withdraw(t)).count(),
            10,
            "capped at 10"
        );
        // The floor refills one per second.
        assert!(!b.withdraw(t));
        assert!(b.withdraw(t + Duration::from_millis(1000)));
        assert!(!b.withdraw(t + Duration::from_millis(1000)));
    }
}
