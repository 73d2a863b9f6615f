//! Endpoint selection, as plain Rust (no Pingora types): the endpoints of the policy's
//! pools with their live state, and the order of attempts for a request. The choice
//! itself is `vigie_balance::pick` (queue-aware power of two choices, prefix affinity
//! with bounded load, passive health).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigie_balance::{EndpointState, HasState, HealthConfig, Pick, Request};
use vigie_proto::v1::Balancing;

pub mod original;
mod plan;
pub mod probe;
pub use plan::{PlanError, RouteContext};
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
    /// Load, latency and health, shared by every request.
    pub balance: EndpointState,
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
            balance: EndpointState::new(
                &ep.url,
                ep.weight,
                ep.max_concurrency,
                HealthConfig::default(),
            ),
            requests: AtomicU64::new(0),
            resolved: Mutex::new(None),
        })
    }

    /// Whether `addr` is this endpoint (its literal address, or one it resolved to).
    pub fn is_address(&self, addr: SocketAddr) -> bool {
        if self.port != addr.port() {
            return false;
        }
        if self.host.parse::<std::net::IpAddr>().ok() == Some(addr.ip()) {
            return true;
        }
        self.resolved
            .lock()
            .ok()
            .and_then(|r| r.as_ref().map(|(addrs, _)| addrs.contains(&addr)))
            .unwrap_or(false)
    }

    pub fn inflight(&self) -> u32 {
        self.balance.inflight()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Marks a request as outstanding on this endpoint until the guard drops.
    pub fn start(self: &Arc<Self>) -> InflightGuard {
        self.balance.acquire();
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
        self.endpoint.balance.release();
    }
}

impl HasState for Endpoint {
    fn state(&self) -> &EndpointState {
        &self.balance
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

/// One try: a route target and an endpoint index within its pool.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub target: &'a Target,
    pub endpoint: usize,
    /// Why this endpoint (for telemetry).
    pub pick: Pick,
    /// Chosen in panic mode (health ignored: nothing else was eligible).
    pub panic: bool,
}

/// The endpoints to try for a request, in order: endpoints of the first target's pool
/// (balanced), then those of the next target, up to a maximum number of attempts.
#[derive(Debug)]
pub struct Attempts<'a> {
    snapshot: &'a Snapshot,
    targets: &'a [&'a Target],
    target: usize,
    tried: Vec<usize>,
    remaining: usize,
    request: Request,
    /// At least one attempt was made (panic mode only when none could be).
    yielded: bool,
}

impl<'a> Attempts<'a> {
    pub fn new(
        snapshot: &'a Snapshot,
        targets: &'a [&'a Target],
        max_attempts: usize,
        request: Request,
    ) -> Self {
        Self {
            snapshot,
            targets,
            target: 0,
            tried: Vec::new(),
            remaining: max_attempts.max(1),
            request,
            yielded: false,
        }
    }

    /// Attempts still allowed after the current one.
    pub fn remaining(&self) -> usize {
        self.remaining
    }
}

impl<'a> Iterator for Attempts<'a> {
    type Item = Attempt<'a>;

    fn next(&mut self) -> Option<Attempt<'a>> {
        loop {
            if let Some(a) = self.next_in_order() {
                self.yielded = true;
                return Some(a);
            }
            // Nothing on the whole route is eligible (all ejected, throttled or
            // failing checks): one pass that ignores health, rather than refusing.
            if self.yielded || self.request.ignore_health || self.remaining == 0 {
                return None;
            }
            self.request.ignore_health = true;
            self.target = 0;
            self.tried.clear();
        }
    }
}

impl<'a> Attempts<'a> {
    fn next_in_order(&mut self) -> Option<Attempt<'a>> {
        while self.remaining > 0 && self.target < self.targets.len() {
            let target = &self.targets[self.target];
            let now = Instant::now();
            let pick = self
                .snapshot
                .pools
                .get(target.pool)
                .and_then(|p| match p.balancing {
                    Balancing::RoundRobin if !self.request.ignore_health => {
                        vigie_balance::round_robin(&p.endpoints, &self.tried, &p.round_robin, now)
                    }
                    Balancing::QueueAware | Balancing::Unspecified => {
                        vigie_balance::pick(&p.endpoints, &self.tried, &self.request, now)
                    }
                    // Least request (and round robin in panic mode): no prefix affinity.
                    _ => vigie_balance::pick(
                        &p.endpoints,
                        &self.tried,
                        &Request {
                            prefix: None,
                            ..self.request
                        },
                        now,
                    ),
                });
            if let Some(pick) = pick {
                self.tried.push(pick.index);
                self.remaining -= 1;
                return Some(Attempt {
                    target,
                    endpoint: pick.index,
                    pick,
                    panic: self.request.ignore_health,
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
        assert_eq!(e.balance.weight, 1);
        let e = ep("http://[::1]:8080", 1, 0);
        assert_eq!(
            (e.host.as_str(), e.port, e.authority.as_str()),
            ("::1", 8080, "[::1]:8080")
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
        let targets: Vec<&Target> = s.routes_for("m").unwrap()[0].targets.iter().collect();
        let targets = targets.as_slice();
        let seen: Vec<(usize, usize)> = Attempts::new(&s, targets, 10, Request::default())
            .map(|a| (a.target.pool, a.endpoint))
            .collect();
        assert_eq!(seen.len(), 3);
        assert_eq!(&seen[2], &(1, 0));
        let mut first_pool: Vec<usize> = seen[..2].iter().map(|x| x.1).collect();
        first_pool.sort();
        assert_eq!(first_pool, vec![0, 1]);
        assert_eq!(Attempts::new(&s, targets, 2, Request::default()).count(), 2);
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
