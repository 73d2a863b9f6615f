//! What the apps of the pod can make the sidecar hold, bounded: connections, the time a
//! request head or body may take to arrive, and request-body bytes in memory at once.
//! The injected memory limit holds under the worst of these (docs/kubernetes.md).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Accounting unit of body bytes (a permit per KiB: a semaphore counts in u32).
const UNIT: usize = 1024;

/// Slowest body accepted, past a grace of one header timeout: 8 MiB in ~2 minutes.
pub const MIN_BODY_BYTES_PER_S: usize = 64 * 1024;

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections waiting for or serving a request; past it, new ones are closed.
    pub max_connections: usize,
    /// Longest wait for a whole request head (also the keep-alive idle time).
    pub header_timeout: Duration,
    /// Request-body bytes held at once, all requests together.
    pub max_body_bytes_in_flight: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            max_body_bytes_in_flight: 64 * 1024 * 1024,
        }
    }
}

#[derive(Debug)]
pub struct Bounds {
    pub limits: Limits,
    connections: Arc<AtomicUsize>,
    bodies: Arc<Semaphore>,
}

/// One connection's place; given back when dropped.
#[derive(Debug)]
pub struct ConnectionSlot(Arc<AtomicUsize>);

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Body bytes a request holds (grown as chunks arrive); given back when dropped.
#[derive(Debug, Default)]
pub struct BodyReservation {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
}

impl BodyReservation {
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl Bounds {
    pub fn new(limits: Limits) -> Self {
        let units = (limits.max_body_bytes_in_flight / UNIT).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            limits,
            connections: Arc::default(),
            bodies: Arc::new(Semaphore::new(units)),
        }
    }

    /// A place for one more connection, unless there are already as many as allowed.
    pub fn connection(&self) -> Option<ConnectionSlot> {
        let n = self.connections.fetch_add(1, Ordering::Relaxed);
        let slot = ConnectionSlot(self.connections.clone());
        (n < self.limits.max_connections).then_some(slot)
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Grows `r` to hold at least `bytes`; false when the budget has no room left
    /// (nothing is waited for: the app gets a 503 to retry).
    pub fn reserve(&self, r: &mut BodyReservation, bytes: usize) -> bool {
        if bytes <= r.bytes {
            return true;
        }
        let units = (bytes - r.bytes).div_ceil(UNIT);
        let Ok(more) = u32::try_from(units) else {
            return false;
        };
        let Ok(permit) = self.bodies.clone().try_acquire_many_owned(more) else {
            return false;
        };
        match &mut r.permit {
            Some(held) => held.merge(permit),
            None => r.permit = Some(permit),
        }
        r.bytes += units * UNIT;
        true
    }

    /// How long a body of `bytes` may take to arrive.
    pub fn body_deadline(&self, bytes: usize) -> Duration {
        let at_min_rate = (bytes / MIN_BODY_BYTES_PER_S) as u64;
        self.limits.header_timeout + Duration::from_secs(at_min_rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_past_the_limit_are_refused_and_places_come_back() {
        let b = Bounds::new(Limits {
            max_connections: 2,
            ..Limits::default()
        });
        let one = b.connection().unwrap();
        let two = b.connection().unwrap();
        assert!(b.connection().is_none());
        drop(one);
        assert!(b.connection().is_some());
        drop(two);
        assert_eq!(b.connections(), 0);
    }

    #[test]
    fn body_bytes_are_shared_by_every_request_and_given_back() {
        let b = Bounds::new(Limits {
            max_body_bytes_in_flight: 100 * 1024,
            ..Limits::default()
        });
        let mut first = BodyReservation::default();
        assert!(b.reserve(&mut first, 60 * 1024));
        assert!(b.reserve(&mut first, 80 * 1024), "grown in place");
        let mut second = BodyReservation::default();
        assert!(!b.reserve(&mut second, 30 * 1024), "only 20 KiB left");
        assert!(b.reserve(&mut second, 20 * 1024));
        drop(first);
        assert!(b.reserve(&mut second, 100 * 1024));
    }

    #[test]
    fn a_slow_body_has_a_deadline_proportional_to_its_size() {
        let b = Bounds::new(Limits::default());
        assert_eq!(b.body_deadline(0), Duration::from_secs(30));
        assert_eq!(
            b.body_deadline(8 * 1024 * 1024),
            Duration::from_secs(30 + 128)
        );
    }
}
