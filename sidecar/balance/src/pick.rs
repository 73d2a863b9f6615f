//! The choice of an endpoint within a pool for one request.
//!
//! 1. Eligible: not already tried, under its concurrency cap, not ejected. An endpoint
//!    whose ejection has just ended takes the request as its probe (the request can
//!    still fail over), so recovery does not depend on which prompts happen to come.
//! 2. With a prompt-prefix key: rendezvous hashing over the eligible endpoints, bounded
//!    by load — the highest-ranked endpoint whose score is at most `1.25 × mean + 1`
//!    ("consistent hashing with bounded loads"), so a popular prefix never piles onto
//!    one GPU while the others idle; an endpoint that keeps a prefix keeps its KV cache.
//! 3. Otherwise: power of two random choices (weighted draws), lower score wins
//!    (outstanding requests + server queue + KV-cache pressure, per unit of weight),
//!    EWMA time to first byte breaking ties.

use std::time::Instant;

use crate::state::HasState;

/// How much above the mean load an affinity target may be.
const BOUND_FACTOR: f64 = 1.25;

#[derive(Debug, Clone, Copy, Default)]
pub struct Request {
    /// Hash of the prompt's stable prefix (system prompt, first messages).
    pub prefix: Option<u64>,
    /// Panic mode: every endpoint with room counts, ejected or throttled or not. Used
    /// when nothing on the whole route is eligible — better to ask a possibly sick
    /// endpoint than to refuse for certain.
    pub ignore_health: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// The only eligible endpoint.
    Only,
    /// The prefix's preferred endpoint (within the load bound).
    Affinity,
    /// Less loaded of two random choices.
    LeastLoaded,
    /// The endpoint's ejection had ended: this request checks it.
    Probe,
    RoundRobin,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Only => "only",
            Reason::Affinity => "affinity",
            Reason::LeastLoaded => "least_loaded",
            Reason::Probe => "probe",
            Reason::RoundRobin => "round_robin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pick {
    pub index: usize,
    pub reason: Reason,
    /// The endpoint's ejection had ended: this request is its probe.
    pub probe: bool,
}

/// FNV-1a over the parts: stable across processes and versions (affinity must agree
/// between sidecar replicas).
pub fn prefix_hash<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in part {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        // Separator: ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// SplitMix64 finaliser: the rendezvous rank of an endpoint for a prefix.
fn rank(prefix: u64, id: u64) -> u64 {
    let mut z = (prefix ^ id).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

pub fn pick<E: HasState>(
    endpoints: &[E],
    exclude: &[usize],
    request: &Request,
    now: Instant,
) -> Option<Pick> {
    let mut eligible: Vec<(usize, f64)> = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().enumerate() {
        let s = e.state();
        let ok = if request.ignore_health {
            s.has_room()
        } else {
            s.eligible(now)
        };
        if !exclude.contains(&i) && ok {
            eligible.push((i, s.score(now)));
        }
    }
    let probe_due = eligible
        .iter()
        .find(|(i, _)| !request.ignore_health && endpoints[*i].state().health.wants_probe(now))
        .map(|(i, _)| *i);
    let (index, reason) = if let Some(i) = probe_due {
        (i, Reason::Probe)
    } else {
        match eligible.as_slice() {
            [] => return None,
            [(only, _)] => (*only, Reason::Only),
            _ => match request.prefix {
                Some(prefix) => (
                    affinity(endpoints, &eligible, prefix)
                        .unwrap_or_else(|| two_choices(endpoints, &eligible)),
                    Reason::Affinity,
                ),
                None => (two_choices(endpoints, &eligible), Reason::LeastLoaded),
            },
        }
    };
    let probe = endpoints
        .get(index)
        .is_some_and(|e| e.state().health.begin(now));
    Some(Pick {
        index,
        reason,
        probe,
    })
}

/// The highest-ranked endpoint for `prefix` among those within the load bound.
fn affinity<E: HasState>(endpoints: &[E], eligible: &[(usize, f64)], prefix: u64) -> Option<usize> {
    let mean = eligible.iter().map(|(_, s)| s).sum::<f64>() / eligible.len() as f64;
    let bound = BOUND_FACTOR * mean + 1.0;
    // The mean is never below the minimum: some endpoint is within bound.
    eligible
        .iter()
        .filter(|(_, score)| *score <= bound)
        .max_by_key(|(i, _)| rank(prefix, endpoints[*i].state().id))
        .map(|(i, _)| *i)
}

/// Round robin over the eligible endpoints (for pools configured that way, and as the
/// baseline of the routing benchmark).
pub fn round_robin<E: HasState>(
    endpoints: &[E],
    exclude: &[usize],
    counter: &std::sync::atomic::AtomicUsize,
    now: Instant,
) -> Option<Pick> {
    let n = endpoints.len();
    let start = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (0..n).map(|k| (start + k) % n).find_map(|i| {
        let s = endpoints[i].state();
        (!exclude.contains(&i) && s.eligible(now)).then(|| Pick {
            index: i,
            reason: Reason::RoundRobin,
            probe: s.health.begin(now),
        })
    })
}

fn two_choices<E: HasState>(endpoints: &[E], eligible: &[(usize, f64)]) -> usize {
    let weight = |i: usize| u64::from(endpoints[i].state().weight);
    let total: u64 = eligible.iter().map(|(i, _)| weight(*i)).sum();
    let draw = |r: u64| -> usize {
        let mut acc = 0u64;
        for (pos, (i, _)) in eligible.iter().enumerate() {
            acc += weight(*i);
            if r < acc {
                return pos;
            }
        }
        eligible.len() - 1
    };
    let a = draw(fastrand::u64(0..total.max(1)));
    let mut b = draw(fastrand::u64(0..total.max(1)));
    if a == b {
        // Two distinct candidates, so a busy endpoint is not compared with itself.
        b = (a + 1) % eligible.len();
    }
    let (ia, sa) = eligible[a];
    let (ib, sb) = eligible[b];
    if (sa - sb).abs() > 1e-9 {
        return if sb < sa { ib } else { ia };
    }
    // Equal load: the clearly faster one (an endpoint never measured is tried first);
    // within 25 % the random draw stands, so idle endpoints keep sharing traffic.
    let ttfb = |i: usize| endpoints[i].state().ewma_ttfb().unwrap_or_default();
    if ttfb(ib).mul_f64(1.25) < ttfb(ia) {
        ib
    } else {
        ia
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::health::{HealthConfig, Outcome};
    use crate::state::{EndpointState, ServerLoad};

    fn eps(n: usize) -> Vec<EndpointState> {
        (0..n)
            .map(|i| {
                EndpointState::new(&format!("http://e{i}:8000"), 1, 0, HealthConfig::default())
            })
            .collect()
    }

    #[test]
    fn least_outstanding_of_two_wins() {
        let e = eps(2);
        for _ in 0..5 {
            e[0].acquire();
        }
        let now = Instant::now();
        for _ in 0..100 {
            let p = pick(&e, &[], &Request::default(), now).unwrap();
            assert_eq!((p.index, p.reason), (1, Reason::LeastLoaded));
        }
    }

    #[test]
    fn queue_aware_uses_the_servers_own_queue() {
        let e = eps(2);
        let now = Instant::now();
        // Nothing outstanding from this sidecar, but endpoint 0's GPU has a queue.
        e[0].set_server_load(
            ServerLoad {
                waiting: 8,
                running: 16,
                kv_cache_usage: 0.9,
            },
            now,
        );
        e[1].set_server_load(ServerLoad::default(), now);
        for _ in 0..100 {
            assert_eq!(pick(&e, &[], &Request::default(), now).unwrap().index, 1);
        }
        // Stale metrics are ignored: the two are equal again.
        let later = now + Duration::from_secs(6);
        assert!(e[0].server_load(later).is_none());
        let mut seen = [0; 2];
        for _ in 0..200 {
            seen[pick(&e, &[], &Request::default(), later).unwrap().index] += 1;
        }
        assert!(seen[0] > 0 && seen[1] > 0, "{seen:?}");
    }

    #[test]
    fn prefix_affinity_is_stable_and_spreads_prefixes() {
        let e = eps(4);
        let now = Instant::now();
        let mut targets = std::collections::HashSet::new();
        for p in 0..64u64 {
            let req = Request {
                prefix: Some(prefix_hash([format!("system prompt {p}").as_bytes()])),
                ..Request::default()
            };
            let first = pick(&e, &[], &req, now).unwrap();
            assert_eq!(first.reason, Reason::Affinity);
            for _ in 0..10 {
                assert_eq!(pick(&e, &[], &req, now).unwrap().index, first.index);
            }
            targets.insert(first.index);
        }
        assert_eq!(targets.len(), 4, "64 prefixes use every endpoint");
    }

    #[test]
    fn affinity_is_bounded_by_load() {
        let e = eps(4);
        let now = Instant::now();
        let req = Request {
            prefix: Some(prefix_hash([b"one hot system prompt".as_slice()])),
            ..Request::default()
        };
        let home = pick(&e, &[], &req, now).unwrap().index;
        // The home endpoint fills up; past 1.25 × mean + 1 the prefix goes elsewhere.
        let mut sent = [0u32; 4];
        for _ in 0..40 {
            let p = pick(&e, &[], &req, now).unwrap();
            e[p.index].acquire();
            sent[p.index] += 1;
        }
        let max_other = (0..4)
            .filter(|&i| i != home)
            .map(|i| sent[i])
            .max()
            .unwrap();
        assert!(sent[home] >= max_other, "{sent:?}");
        let mean = 40.0 / 4.0;
        assert!(f64::from(sent[home]) <= 1.25 * mean + 2.0, "{sent:?}");
        assert!(sent.iter().filter(|&&n| n > 0).count() >= 2, "{sent:?}");
    }

    #[test]
    fn ejected_excluded_and_full_endpoints_are_skipped() {
        let mut e = eps(3);
        e[2] = EndpointState::new("http://capped:1", 1, 1, HealthConfig::default());
        e[2].acquire();
        let now = Instant::now();
        for _ in 0..3 {
            e[0].record(Outcome::Failure, None, now);
        }
        for _ in 0..50 {
            let p = pick(&e, &[], &Request::default(), now).unwrap();
            assert_eq!((p.index, p.reason), (1, Reason::Only));
        }
        assert_eq!(pick(&e, &[1], &Request::default(), now), None);
        // When the ejection ends, the next pick of endpoint 0 is its probe.
        let later = now + Duration::from_secs(5);
        let p = pick(&e, &[1], &Request::default(), later).unwrap();
        assert_eq!((p.index, p.probe, p.reason), (0, true, Reason::Probe));
        assert_eq!(
            pick(&e, &[1], &Request::default(), later),
            None,
            "one probe at a time"
        );
    }

    #[test]
    fn failing_active_checks_take_an_endpoint_out_until_one_passes() {
        let e = eps(2);
        let now = Instant::now();
        e[0].record_active(false);
        assert!(e[0].eligible(now), "one failed check is not enough");
        e[0].record_active(false);
        for _ in 0..20 {
            assert_eq!(pick(&e, &[], &Request::default(), now).unwrap().index, 1);
        }
        e[0].record_active(true);
        assert!(e[0].eligible(now));
    }

    #[test]
    fn retry_after_keeps_an_endpoint_aside_for_that_long() {
        let e = eps(2);
        let now = Instant::now();
        e[0].throttle(Duration::from_secs(3), now);
        for _ in 0..20 {
            assert_eq!(pick(&e, &[], &Request::default(), now).unwrap().index, 1);
        }
        assert!(!e[0].eligible(now + Duration::from_millis(2900)));
        assert!(e[0].eligible(now + Duration::from_secs(3)));
    }

    #[test]
    fn ewma_breaks_ties() {
        let e = eps(2);
        let now = Instant::now();
        e[0].record(Outcome::Success, Some(Duration::from_millis(200)), now);
        e[1].record(Outcome::Success, Some(Duration::from_millis(20)), now);
        for _ in 0..50 {
            assert_eq!(pick(&e, &[], &Request::default(), now).unwrap().index, 1);
        }
        assert_eq!(e[1].ewma_ttfb(), Some(Duration::from_millis(20)));
        e[1].record(Outcome::Success, Some(Duration::from_millis(120)), now);
        assert_eq!(e[1].ewma_ttfb(), Some(Duration::from_millis(40)));
    }

    #[test]
    fn weights_shape_the_distribution_when_idle() {
        let e = vec![
            EndpointState::new("a", 1, 0, HealthConfig::default()),
            EndpointState::new("b", 9, 0, HealthConfig::default()),
            EndpointState::new("c", 1, 0, HealthConfig::default()),
        ];
        let mut counts = [0u32; 3];
        let now = Instant::now();
        for _ in 0..3000 {
            counts[pick(&e, &[], &Request::default(), now).unwrap().index] += 1;
        }
        assert!(
            counts[1] > counts[0] * 3 && counts[1] > counts[2] * 3,
            "{counts:?}"
        );
    }

    #[test]
    fn a_recovered_endpoint_is_probed_even_if_affinity_points_elsewhere() {
        let e = eps(2);
        let now = Instant::now();
        // A prefix whose home is endpoint 1; endpoint 0 gets ejected.
        let req = (0..)
            .map(|p: u32| Request {
                prefix: Some(prefix_hash([p.to_le_bytes().as_slice()])),
                ..Request::default()
            })
            .find(|r| pick(&e, &[], r, now).unwrap().index == 1)
            .unwrap();
        for _ in 0..3 {
            e[0].record(Outcome::Failure, None, now);
        }
        assert_eq!(pick(&e, &[], &req, now).unwrap().index, 1);
        let later = now + Duration::from_secs(5);
        let p = pick(&e, &[], &req, later).unwrap();
        assert_eq!((p.index, p.reason, p.probe), (0, Reason::Probe, true));
        // While the probe is out, affinity applies again.
        assert_eq!(pick(&e, &[], &req, later).unwrap().index, 1);
        e[0].record(Outcome::Success, None, later);
        assert!(!e[0].health.ejected());
    }
}
