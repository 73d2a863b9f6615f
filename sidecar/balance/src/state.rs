//! Live state of one endpoint, shared by every request (atomics, no lock on the hot
//! path except the health circuit).

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::health::{Health, HealthConfig, Outcome};

/// Server-side load older than this is ignored (the scraper stopped, or the endpoint
/// does not expose metrics).
const METRICS_FRESH: Duration = Duration::from_secs(5);
/// Weight of a new sample in the latency average.
const EWMA_ALPHA: f64 = 0.2;

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis(t: Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(*EPOCH).as_millis()).unwrap_or(u64::MAX)
}

/// What the server itself reports (vLLM `/metrics`): its queue and KV-cache use, which
/// include the traffic of every other client of the GPU.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ServerLoad {
    pub waiting: u32,
    pub running: u32,
    /// 0.0 – 1.0.
    pub kv_cache_usage: f64,
}

#[derive(Debug)]
pub struct EndpointState {
    /// Stable identity (hash of the URL): the same on every sidecar, so prefix affinity
    /// sends a prefix to the same endpoint from every replica.
    pub id: u64,
    pub weight: u32,
    pub max_concurrency: u32,
    inflight: AtomicU32,
    waiting: AtomicU32,
    running: AtomicU32,
    kv_permille: AtomicU32,
    load_at_ms: AtomicU64,
    ewma_ttfb_us: AtomicU64,
    /// Passive health (outcomes of real requests) with its circuit breaker.
    pub health: Health,
    /// Active checks: consecutive failures; the endpoint is down from
    /// `ACTIVE_FAILURES_DOWN` until the next success. Kept apart from the circuit: an
    /// endpoint that answers its health check but fails requests stays ejected.
    active_failures: AtomicU32,
    /// A 429's Retry-After: not picked before this (ms since the process epoch).
    throttled_until_ms: AtomicU64,
}

/// Consecutive failed active checks that take an endpoint out.
const ACTIVE_FAILURES_DOWN: u32 = 2;

/// Gives the picker an endpoint's state (implemented by the proxy's endpoint type).
pub trait HasState {
    fn state(&self) -> &EndpointState;
}

impl HasState for EndpointState {
    fn state(&self) -> &EndpointState {
        self
    }
}

impl<T: HasState> HasState for std::sync::Arc<T> {
    fn state(&self) -> &EndpointState {
        (**self).state()
    }
}

impl EndpointState {
    pub fn new(key: &str, weight: u32, max_concurrency: u32, health: HealthConfig) -> Self {
        Self {
            id: crate::pick::prefix_hash([key.as_bytes()]),
            weight: weight.max(1),
            max_concurrency,
            inflight: AtomicU32::new(0),
            waiting: AtomicU32::new(0),
            running: AtomicU32::new(0),
            kv_permille: AtomicU32::new(0),
            load_at_ms: AtomicU64::new(0),
            ewma_ttfb_us: AtomicU64::new(0),
            health: Health::new(health),
            active_failures: AtomicU32::new(0),
            throttled_until_ms: AtomicU64::new(0),
        }
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// A request to this endpoint starts; pair with [`EndpointState::release`].
    pub fn acquire(&self) {
        self.inflight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn release(&self) {
        // Never below zero, even if release were called twice.
        let _ = self
            .inflight
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    pub fn has_room(&self) -> bool {
        self.max_concurrency == 0 || self.inflight() < self.max_concurrency
    }

    /// Under its cap, passing its active checks, and not ejected.
    pub fn eligible(&self, now: Instant) -> bool {
        self.has_room()
            && self.active_up()
            && millis(now) >= self.throttled_until_ms.load(Ordering::Relaxed)
            && self.health.available(now)
    }

    /// The endpoint said 429 with `Retry-After`: leave it alone that long (capped).
    pub fn throttle(&self, retry_after: Duration, now: Instant) {
        let until = now + retry_after.min(Duration::from_secs(60));
        self.throttled_until_ms
            .fetch_max(millis(until), Ordering::Relaxed);
    }

    pub fn active_up(&self) -> bool {
        self.active_failures.load(Ordering::Relaxed) < ACTIVE_FAILURES_DOWN
    }

    /// Result of an active health check (or a load scrape). Returns the new state when
    /// it changed (`Some(true)`: back up, `Some(false)`: taken out).
    pub fn record_active(&self, ok: bool) -> Option<bool> {
        let before = self.active_up();
        if ok {
            self.active_failures.store(0, Ordering::Relaxed);
        } else {
            let _ = self
                .active_failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_add(1))
                });
        }
        let after = self.active_up();
        (before != after).then_some(after)
    }

    pub fn set_server_load(&self, load: ServerLoad, now: Instant) {
        self.waiting.store(load.waiting, Ordering::Relaxed);
        self.running.store(load.running, Ordering::Relaxed);
        let permille = (load.kv_cache_usage.clamp(0.0, 1.0) * 1000.0).round() as u32;
        self.kv_permille.store(permille, Ordering::Relaxed);
        self.load_at_ms.store(millis(now).max(1), Ordering::Relaxed);
    }

    /// The last server-reported load, if fresh.
    pub fn server_load(&self, now: Instant) -> Option<ServerLoad> {
        let at = self.load_at_ms.load(Ordering::Relaxed);
        if at == 0 || millis(now).saturating_sub(at) > METRICS_FRESH.as_millis() as u64 {
            return None;
        }
        Some(ServerLoad {
            waiting: self.waiting.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            kv_cache_usage: f64::from(self.kv_permille.load(Ordering::Relaxed)) / 1000.0,
        })
    }

    /// Load per unit of weight: outstanding requests from here, plus the server's queue
    /// (a waiting request costs two running ones: it has not even started) and a
    /// penalty as the KV cache fills (new requests would preempt or wait).
    pub fn score(&self, now: Instant) -> f64 {
        let mut load = f64::from(self.inflight());
        if let Some(s) = self.server_load(now) {
            load += 2.0 * f64::from(s.waiting) + 4.0 * s.kv_cache_usage;
        }
        load / f64::from(self.weight)
    }

    /// Time to first byte, exponentially averaged; `None` before the first sample.
    pub fn ewma_ttfb(&self) -> Option<Duration> {
        match self.ewma_ttfb_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// Records how an attempt went (latency only for successes).
    pub fn record(&self, outcome: Outcome, ttfb: Option<Duration>, now: Instant) {
        if let (Outcome::Success, Some(t)) = (outcome, ttfb) {
            let sample = t.as_micros().max(1) as f64;
            let old = self.ewma_ttfb_us.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                old as f64 * (1.0 - EWMA_ALPHA) + sample * EWMA_ALPHA
            };
            self.ewma_ttfb_us.store(new as u64, Ordering::Relaxed);
        }
        self.health.record(outcome, now);
    }
}
