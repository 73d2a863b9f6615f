//! Endpoint selection, as plain Rust (no Pingora types).
//!
//! Baseline balancer: power-of-two random choices on outstanding requests divided by
//! weight, skipping endpoints at their concurrency cap. The routing issue adds queue
//! depth, prefix affinity, health and circuit breaking on top of the same state.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigie_proto::v1;

use crate::policy::{Snapshot, Target};
use vigie_proto::validate::check_endpoint_url;

/// One upstream endpoint and its live state.
#[derive(Debug)]
pub struct Endpoint {
    pub pool: String,
    pub url: String,
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Path prefix of the endpoint URL without a trailing '/', prepended to the request path.
    pub path_prefix: String,
    /// Value for the `Host` header.
    pub authority: String,
    pub weight: u32,
    pub max_concurrency: u32,
    inflight: AtomicU32,
    requests: AtomicU64,
    resolved: Mutex<Option<(Vec<SocketAddr>, Instant)>>,
}

const DNS_TTL: Duration = Duration::from_secs(30);

impl Endpoint {
    pub fn new(pool: &str, ep: &v1::Endpoint) -> Result<Self, String> {
        let u = check_endpoint_url(&ep.url)?;
        let tls = u.scheme() == "https";
        let host = u
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = u
            .port_or_known_default()
            .unwrap_or(if tls { 443 } else { 80 });
        let authority = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_string(),
        };
        Ok(Self {
            pool: pool.to_string(),
            url: ep.url.clone(),
            path_prefix: u.path().trim_end_matches('/').to_string(),
            host,
            port,
            tls,
            authority,
            weight: ep.weight.max(1),
            max_concurrency: ep.max_concurrency,
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            resolved: Mutex::new(None),
        })
    }

    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn has_room(&self) -> bool {
        self.max_concurrency == 0 || self.inflight() < self.max_concurrency
    }

    /// Load normalised by weight, compared without division.
    fn load_cmp(&self, other: &Endpoint) -> std::cmp::Ordering {
        (u64::from(self.inflight()) * u64::from(other.weight))
            .cmp(&(u64::from(other.inflight()) * u64::from(self.weight)))
    }

    /// Marks a request as outstanding on this endpoint until the guard drops.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InflightGuard {
            endpoint: self.clone(),
        }
    }

    /// Addresses of the endpoint, cached for [`DNS_TTL`].
    pub async fn addresses(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        if let Ok(cache) = self.resolved.lock()
            && let Some((addrs, at)) = cache.as_ref()
            && at.elapsed() < DNS_TTL
        {
            return Ok(addrs.clone());
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect();
        if addrs.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no address",
            ));
        }
        if let Ok(mut cache) = self.resolved.lock() {
            *cache = Some((addrs.clone(), Instant::now()));
        }
        Ok(addrs)
    }
}

#[derive(Debug)]
pub struct InflightGuard {
    endpoint: Arc<Endpoint>,
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.endpoint.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Pool name, URL, weight, concurrency cap.
type EndpointKey = (String, String, u32, u32);

/// Keeps endpoint state across policy reloads, keyed by pool name and URL.
#[derive(Debug, Default)]
pub struct EndpointRegistry {
    endpoints: Mutex<HashMap<EndpointKey, Arc<Endpoint>>>,
}

impl EndpointRegistry {
    pub fn get_or_create(&self, pool: &str, ep: &v1::Endpoint) -> Result<Arc<Endpoint>, String> {
        let key = (
            pool.to_string(),
            ep.url.clone(),
            ep.weight,
            ep.max_concurrency,
        );
        let mut map = self
            .endpoints
            .lock()
            .map_err(|_| "internal: endpoint registry poisoned".to_string())?;
        if let Some(e) = map.get(&key) {
            return Ok(e.clone());
        }
        let e = Arc::new(Endpoint::new(pool, ep)?);
        map.insert(key, e.clone());
        Ok(e)
    }

    /// Forgets endpoints no snapshot uses any more.
    pub fn retain_used(&self) {
        if let Ok(mut map) = self.endpoints.lock() {
            map.retain(|_, e| Arc::strong_count(e) > 1);
        }
    }
}

/// Picks an endpoint index: two random candidates (weighted), the less loaded wins.
/// Endpoints in `exclude` (already tried) or at their concurrency cap are skipped.
pub fn pick(endpoints: &[Arc<Endpoint>], exclude: &[usize]) -> Option<usize> {
    let eligible: Vec<usize> = (0..endpoints.len())
        .filter(|i| !exclude.contains(i) && endpoints[*i].has_room())
        .collect();
    match eligible.len() {
        0 => None,
        1 => Some(eligible[0]),
        _ => {
            let total: u64 = eligible
                .iter()
                .map(|&i| u64::from(endpoints[i].weight))
                .sum();
            let draw = |r: u64| -> usize {
                let mut acc = 0u64;
                for &i in &eligible {
                    acc += u64::from(endpoints[i].weight);
                    if r < acc {
                        return i;
                    }
                }
                eligible[eligible.len() - 1]
            };
            let a = draw(fastrand::u64(0..total));
            let mut b = draw(fastrand::u64(0..total));
            if a == b {
                // Guarantee two distinct candidates so a busy endpoint is not picked twice.
                b = eligible
                    [(eligible.iter().position(|&i| i == a).unwrap_or(0) + 1) % eligible.len()];
            }
            Some(if endpoints[b].load_cmp(&endpoints[a]).is_lt() {
                b
            } else {
                a
            })
        }
    }
}

/// One try: a route target and an endpoint index within its pool.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub target: &'a Target,
    pub endpoint: usize,
}

/// The endpoints to try for a request, in order: endpoints of the first target's pool
/// (balanced), then those of the next target, up to a maximum number of attempts.
#[derive(Debug)]
pub struct Attempts<'a> {
    snapshot: &'a Snapshot,
    targets: &'a [Target],
    target: usize,
    tried: Vec<usize>,
    remaining: usize,
}

impl<'a> Attempts<'a> {
    pub fn new(snapshot: &'a Snapshot, targets: &'a [Target], max_attempts: usize) -> Self {
        Self {
            snapshot,
            targets,
            target: 0,
            tried: Vec::new(),
            remaining: max_attempts.max(1),
        }
    }
}

impl<'a> Iterator for Attempts<'a> {
    type Item = Attempt<'a>;

    fn next(&mut self) -> Option<Attempt<'a>> {
        while self.remaining > 0 && self.target < self.targets.len() {
            let target = &self.targets[self.target];
            if let Some(i) = self
                .snapshot
                .pools
                .get(target.pool)
                .and_then(|p| pick(&p.endpoints, &self.tried))
            {
                self.tried.push(i);
                self.remaining -= 1;
                return Some(Attempt {
                    target,
                    endpoint: i,
                });
            }
            self.target += 1;
            self.tried.clear();
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(url: &str, weight: u32, max: u32) -> Arc<Endpoint> {
        Arc::new(
            Endpoint::new(
                "p",
                &v1::Endpoint {
                    url: url.into(),
                    weight,
                    max_concurrency: max,
                },
            )
            .unwrap(),
        )
    }

    #[test]
    fn parses_url_parts() {
        let e = ep("https://api.example.com/openai/", 0, 0);
        assert!(e.tls);
        assert_eq!(
            (
                e.host.as_str(),
                e.port,
                e.path_prefix.as_str(),
                e.authority.as_str()
            ),
            ("api.example.com", 443, "/openai", "api.example.com")
        );
        assert_eq!(e.weight, 1);
        let e = ep("http://[::1]:8080", 1, 0);
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 8080, "[::1]:8080")
        );
    }

    #[test]
    fn least_loaded_of_two_wins() {
        let eps = vec![ep("http://a:1", 1, 0), ep("http://b:1", 1, 0)];
        let _busy: Vec<_> = (0..5).map(|_| eps[0].start()).collect();
        for _ in 0..100 {
            assert_eq!(pick(&eps, &[]), Some(1));
        }
    }

    #[test]
    fn concurrency_cap_and_exclusions() {
        let eps = vec![ep("http://a:1", 1, 1), ep("http://b:1", 1, 0)];
        let g = eps[0].start();
        assert_eq!(pick(&eps, &[]), Some(1));
        assert_eq!(pick(&eps, &[1]), None);
        drop(g);
        assert_eq!(pick(&eps, &[1]), Some(0));
        assert_eq!(eps[0].inflight(), 0);
    }

    #[test]
    fn weights_shape_the_distribution_when_idle() {
        let eps = vec![
            ep("http://a:1", 1, 0),
            ep("http://b:1", 9, 0),
            ep("http://c:1", 1, 0),
        ];
        let mut counts = [0u32; 3];
        for _ in 0..3000 {
            counts[pick(&eps, &[]).unwrap()] += 1;
        }
        // With equal load the first draw wins ties, so the heavy endpoint dominates.
        assert!(
            counts[1] > counts[0] * 3 && counts[1] > counts[2] * 3,
            "{counts:?}"
        );
    }

    #[test]
    fn attempts_walk_endpoints_then_pools() {
        let policy = serde_json::from_str(
            r#"{"name":"p","pools":[
              {"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://a1:1"},{"url":"http://a2:1"}],"models":[{"name":"m"}]},
              {"name":"b","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://b1:1"}],"models":[{"name":"m"}]}]}"#,
        )
        .unwrap();
        let s = Snapshot::compile(policy, &EndpointRegistry::default()).unwrap();
        let targets = s.targets("m").unwrap();
        let seen: Vec<(usize, usize)> = Attempts::new(&s, targets, 10)
            .map(|a| (a.target.pool, a.endpoint))
            .collect();
        assert_eq!(seen.len(), 3);
        assert_eq!(&seen[2], &(1, 0));
        let mut first_pool: Vec<usize> = seen[..2].iter().map(|x| x.1).collect();
        first_pool.sort();
        assert_eq!(first_pool, vec![0, 1]);
        assert_eq!(Attempts::new(&s, targets, 2).count(), 2);
    }

    #[test]
    fn registry_keeps_state_across_reloads() {
        let reg = EndpointRegistry::default();
        let spec = v1::Endpoint {
            url: "http://a:1".into(),
            weight: 1,
            max_concurrency: 0,
        };
        let a = reg.get_or_create("p", &spec).unwrap();
        let _g = a.start();
        let b = reg.get_or_create("p", &spec).unwrap();
        assert_eq!(b.inflight(), 1);
        drop(b);
        reg.retain_used();
        assert!(reg.get_or_create("p", &spec).unwrap().inflight() == 1);
    }
}
