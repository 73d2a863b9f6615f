//! Background checks of self-hosted endpoints: vLLM load scraping (`GET /metrics`:
//! queue, running, KV-cache use → queue-aware balancing) and active health checks
//! (`GET /health` for other self-hosted servers). Public providers are not probed —
//! it would cost money and credentials; passive health covers them.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{debug, info, warn};
use vigie_balance::ServerLoad;
use vigie_proto::v1::{Balancing, Hosting, PoolKind};
use vigie_wire::api::vllm;

use crate::endpoint::Endpoint;
use crate::policy::{PolicyStore, PoolRuntime, Timeouts};
use crate::telemetry::Metrics;
use crate::upstream::Upstream;

/// Largest `/metrics` page read.
const MAX_METRICS_BYTES: usize = 1 << 20;
const TICK: Duration = Duration::from_millis(200);
/// Time allowed for one check (connect, then the answer).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Metrics,
    Health,
}

fn check_for(pool: &PoolRuntime) -> Option<Check> {
    // Only the organisation's own servers: a provider's API is neither ours to probe
    // nor guaranteed to have these paths.
    if pool.hosting != Hosting::OnPrem {
        return None;
    }
    match (pool.kind, pool.balancing) {
        (PoolKind::Vllm, Balancing::QueueAware) => Some(Check::Metrics),
        (PoolKind::Vllm | PoolKind::OpenaiCompatible, _) => Some(Check::Health),
        _ => None,
    }
}

pub struct Prober {
    pub store: Arc<PolicyStore>,
    pub upstream: Upstream,
    pub metrics: Metrics,
}

impl std::fmt::Debug for Prober {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Prober")
    }
}

#[async_trait]
impl BackgroundService for Prober {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Next check per endpoint (by pool and URL, stable across reloads).
        let mut due: HashMap<(String, String), Instant> = HashMap::new();
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
            self.round(&mut due).await;
        }
    }
}

impl Prober {
    async fn round(&self, due: &mut HashMap<(String, String), Instant>) {
        let Some(snapshot) = self.store.current() else {
            return;
        };
        let now = Instant::now();
        let mut checks = Vec::new();
        for pool in &snapshot.pools {
            let (Some(interval), Some(check)) = (pool.probe_interval, check_for(pool)) else {
                continue;
            };
            for ep in &pool.endpoints {
                let key = (pool.name.clone(), ep.url.clone());
                if due.get(&key).is_some_and(|t| *t > now) {
                    continue;
                }
                due.insert(key, now + interval);
                checks.push(self.check(pool, ep, check));
            }
        }
        futures::future::join_all(checks).await;
        // Forget endpoints no longer in the policy.
        due.retain(|(pool, url), _| {
            snapshot
                .pools
                .iter()
                .any(|p| &p.name == pool && p.endpoints.iter().any(|e| &e.url == url))
        });
        for pool in &snapshot.pools {
            for ep in &pool.endpoints {
                let up = ep.balance.active_up() && !ep.balance.health.ejected();
                self.metrics
                    .endpoint_available
                    .with_label_values(&[&pool.name, &ep.url])
                    .set(i64::from(up));
            }
        }
    }

    async fn check(&self, pool: &PoolRuntime, ep: &Arc<Endpoint>, check: Check) {
        // Not tied to a short interval: a loaded but healthy server must not fail its
        // checks for answering in 300 ms.
        let limit = CHECK_TIMEOUT;
        let timeouts = Timeouts {
            connect: pool.timeouts.connect.min(limit),
            first_byte: limit,
            idle: limit,
        };
        let path: &[u8] = match check {
            Check::Metrics => b"/metrics",
            Check::Health => b"/health",
        };
        let result = tokio::time::timeout(limit * 2, async {
            let req = RequestHeader::build("GET", path, None).map_err(|e| e.to_string())?;
            let mut ex = self
                .upstream
                .send(
                    ep,
                    &timeouts,
                    pool.credential.as_ref(),
                    &req,
                    bytes::Bytes::new(),
                    None,
                )
                .await
                .map_err(|e| e.to_string())?;
            let status = ex
                .session
                .response_header()
                .map_or(0, |h| h.status.as_u16());
            let mut body = BytesMut::new();
            while let Some(chunk) = ex
                .session
                .read_response_body()
                .await
                .map_err(|e| e.to_string())?
            {
                if body.len() + chunk.len() > MAX_METRICS_BYTES {
                    return Err("metrics page too large".to_string());
                }
                body.extend_from_slice(&chunk);
            }
            self.upstream.release(ex).await;
            Ok::<_, String>((status, body))
        })
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| r);
        let ok = match (&result, check) {
            (Ok((200, body)), Check::Metrics) => {
                match std::str::from_utf8(body).ok().and_then(vllm::parse_load) {
                    Some(load) => {
                        self.metrics
                            .endpoint_waiting
                            .with_label_values(&[&pool.name, &ep.url])
                            .set(i64::from(load.waiting));
                        ep.balance.set_server_load(
                            ServerLoad {
                                waiting: load.waiting,
                                running: load.running,
                                kv_cache_usage: load.kv_cache_usage,
                            },
                            Instant::now(),
                        );
                        true
                    }
                    // Reachable but not a vLLM metrics page: healthy, no load figures.
                    None => true,
                }
            }
            // A server without a health path answers 404: reachable is all we learn.
            (Ok((status, _)), Check::Health) => (200..300).contains(status) || *status == 404,
            (Ok((status, _)), Check::Metrics) => (200..300).contains(status),
            (Err(_), _) => false,
        };
        let detail = match &result {
            Ok((status, _)) => format!("status {status}"),
            Err(e) => e.clone(),
        };
        match ep.balance.record_active(ok) {
            Some(false) => {
                warn!(pool = %pool.name, endpoint = %ep.url, check = ?check, %detail, "endpoint failed its active checks: taken out")
            }
            Some(true) => {
                info!(pool = %pool.name, endpoint = %ep.url, "endpoint passes its active checks again")
            }
            None if !ok => {
                debug!(pool = %pool.name, endpoint = %ep.url, %detail, "active check failed")
            }
            None => {}
        }
    }
}
