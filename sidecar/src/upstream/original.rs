//! Where a connection was going before the egress programs redirected it here.
//!
//! With `egress.redirect`, an app's plain-HTTP connection to, say, an in-cluster vLLM
//! Service is sent to the sidecar by the kernel (`connect4/6` rewrite). The original
//! destination is kept by the egress agent, keyed by this pod's network namespace and
//! the client end of the connection (our peer). The sidecar asks once per connection
//! (cached while the client's port cannot be reused: TCP's TIME_WAIT) and prefers
//! the pool that has that destination as an endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http_body_util::BodyExt as _;
use tracing::{debug, warn};

/// Well within TIME_WAIT (60 s on Linux), during which the client port of a closed
/// connection is not reused.
const CACHE_TTL: Duration = Duration::from_secs(30);
/// After a failed lookup, peers are not asked about again for this long (the agent
/// away must not slow every request).
const FAILURE_BACKOFF: Duration = Duration::from_secs(5);
const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
const MAX_CACHE: usize = 4096;

#[derive(Debug)]
pub struct OriginalDestinations {
    /// `host:port` of the egress agent's lookup endpoint.
    agent: String,
    /// This pod's network namespace cookie.
    netns: u64,
    cache: Mutex<HashMap<SocketAddr, (Instant, Option<SocketAddr>)>>,
    /// Until when lookups are skipped after a failure.
    failed_until: Mutex<Option<Instant>>,
}

/// The network namespace cookie of the calling thread's namespace (Linux ≥ 5.14).
pub fn netns_cookie() -> std::io::Result<u64> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`, a live u64, on a
    // socket we own for the duration of the call.
    #[expect(
        unsafe_code,
        reason = "getsockopt(SO_NETNS_COOKIE) has no safe wrapper"
    )]
    let rc = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            std::ptr::addr_of_mut!(cookie).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Why the agent client cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("--egress-agent-url: {0}")]
    Url(#[from] url::ParseError),
    #[error("--egress-agent-url must be http:// (a node-local agent)")]
    Scheme,
    #[error("--egress-agent-url has no host")]
    NoHost,
    #[error("network namespace cookie: {0}")]
    NetnsCookie(std::io::Error),
}

/// Why one lookup failed (the connection is then routed as usual).
#[derive(Debug, thiserror::Error)]
enum LookupError {
    #[error("connecting to the agent: {0}")]
    Connect(std::io::Error),
    #[error("talking to the agent: {0}")]
    Http(#[from] hyper::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("agent answered {0}")]
    Status(http::StatusCode),
    #[error("unreadable answer: {0}")]
    Body(#[from] serde_json::Error),
}

impl OriginalDestinations {
    pub fn new(agent_url: &str) -> Result<Self, SetupError> {
        let url = url::Url::parse(agent_url)?;
        if url.scheme() != "http" {
            return Err(SetupError::Scheme);
        }
        let host = url.host_str().ok_or(SetupError::NoHost)?;
        let port = url.port_or_known_default().unwrap_or(80);
        let netns = netns_cookie().map_err(SetupError::NetnsCookie)?;
        Ok(Self {
            agent: format!("{host}:{port}"),
            netns,
            cache: Mutex::new(HashMap::new()),
            failed_until: Mutex::new(None),
        })
    }

    /// The original destination of the connection whose client end is `peer`, if
    /// the kernel redirected it. Only loopback peers can have been redirected.
    pub async fn lookup(&self, peer: SocketAddr) -> Option<SocketAddr> {
        if !peer.ip().is_loopback() && peer.ip().to_canonical() != std::net::Ipv4Addr::LOCALHOST {
            return None;
        }
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, found)) = cache.get(&peer)
            && now.duration_since(*at) < CACHE_TTL
        {
            return *found;
        }
        if self
            .failed_until
            .lock()
            .ok()
            .and_then(|f| *f)
            .is_some_and(|until| now < until)
        {
            return None;
        }
        let found = match tokio::time::timeout(LOOKUP_TIMEOUT, self.ask(peer)).await {
            Ok(Ok(found)) => found,
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_string(),
                };
                // One warning per backoff period, not one per request.
                warn!(error = %reason, backoff_s = FAILURE_BACKOFF.as_secs(), "original-destination lookup failed; routing as usual meanwhile");
                if let Ok(mut f) = self.failed_until.lock() {
                    *f = Some(now + FAILURE_BACKOFF);
                }
                return None;
            }
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHE {
                cache.retain(|_, (at, _)| now.duration_since(*at) < CACHE_TTL);
                if cache.len() >= MAX_CACHE {
                    cache.clear();
                }
            }
            cache.insert(peer, (now, found));
        }
        debug!(%peer, original = ?found, "original destination");
        found
    }

    async fn ask(&self, peer: SocketAddr) -> Result<Option<SocketAddr>, LookupError> {
        let stream = tokio::net::TcpStream::connect(&self.agent)
            .await
            .map_err(LookupError::Connect)?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let uri = format!("/v1/original-destination?netns={}&peer={peer}", self.netns);
        let req = http::Request::get(uri)
            .header(http::header::HOST, &self.agent)
            .body(http_body_util::Empty::<bytes::Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        if status == http::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(LookupError::Status(status));
        }
        #[derive(serde::Deserialize)]
        struct Found {
            destination: std::net::IpAddr,
            port: u16,
        }
        let f: Found = serde_json::from_slice(&body)?;
        Ok(Some(SocketAddr::new(f.destination, f.port)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_netns_cookie_is_readable_unprivileged() {
        let a = netns_cookie().unwrap();
        assert_ne!(a, 0);
        assert_eq!(a, netns_cookie().unwrap(), "one namespace, one cookie");
    }

    #[test]
    fn only_http_agent_urls() {
        assert!(OriginalDestinations::new("https://agent:15095").is_err());
        assert!(OriginalDestinations::new("http://127.0.0.1:15095").is_ok());
    }
}
