//! The endpoints of the policy's pools with their live state (load, latency, health),
//! kept across policy reloads. A leaf: plain Rust, no policy or proxy types. Which
//! endpoint a request tries is `policy::plan` with `vigie_balance::pick`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigie_balance::{EndpointState, HasState, HealthConfig};
use vigie_proto::v1;
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

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error(transparent)]
    Url(#[from] vigie_proto::validate::EndpointUrlError),
    #[error("internal: endpoint registry poisoned")]
    Poisoned,
}

impl Endpoint {
    pub fn new(pool: &str, ep: &v1::Endpoint) -> Result<Self, EndpointError> {
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
    pub fn get_or_create(
        &self,
        pool: &str,
        ep: &v1::Endpoint,
    ) -> Result<Arc<Endpoint>, EndpointError> {
        let key = (
            pool.to_string(),
            ep.url.clone(),
            ep.weight,
            ep.max_concurrency,
        );
        let mut map = self.endpoints.lock().map_err(|_| EndpointError::Poisoned)?;
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
