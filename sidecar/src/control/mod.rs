//! Policy from the control plane: the client side of `DiscoveryService.Watch`.
//!
//! The sidecar says who it is, then for every snapshot it receives: compiles it,
//! installs it atomically (in-flight requests finish on the snapshot they started
//! with), writes it to disk as last-known-good, and ACKs; or NACKs with the reason and
//! keeps the previous one. When the stream breaks it reconnects with exponential
//! backoff and full jitter, serving on what it has meanwhile.

pub mod egress_gate;
pub mod lkg;
pub mod podinfo;
pub mod quota;
pub mod usage;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{error, info, warn};
use vigie_proto::v1::discovery_service_client::DiscoveryServiceClient;
use vigie_proto::v1::{Ack, EffectivePolicy, Hello, Identity, WatchRequest, watch_request};

use crate::endpoint::EndpointRegistry;
use crate::policy::{PolicyStore, Snapshot};
use crate::telemetry::Metrics;
use lkg::LastKnownGood;

/// Version reported when no policy applies (same string as the control plane's).
pub const NO_POLICY: &str = "none";

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// `http://host:50051` or `https://host:50051`.
    pub url: String,
    /// File holding the workload token; re-read at every connection (rotation).
    pub token_file: Option<PathBuf>,
    /// CA that signs the control plane's certificate (required for https).
    pub ca: Option<PathBuf>,
    /// Client certificate and key, when the control plane requires mTLS.
    pub client_cert: Option<(PathBuf, PathBuf)>,
    pub identity: Identity,
    pub client_version: String,
    pub max_backoff: Duration,
}

/// Errors of the control-plane clients (shared with the egress agent).
pub use vigie_proto::client::ClientError as WatchError;

/// Installs snapshots; plain Rust so it is testable without a control plane.
#[derive(Debug, Clone)]
pub struct Applier {
    pub store: Arc<PolicyStore>,
    pub registry: Arc<EndpointRegistry>,
    pub metrics: Metrics,
    pub events: crate::telemetry::events::Events,
    pub lkg: LastKnownGood,
}

impl Applier {
    /// Version of what is in force.
    pub fn current_version(&self) -> String {
        self.store
            .current()
            .map_or_else(|| NO_POLICY.to_string(), |s| s.version.clone())
    }

    /// Installs a snapshot; `Err` carries the reason for the NACK (field paths and
    /// reasons, never secret values).
    pub fn apply(
        &self,
        effective: &EffectivePolicy,
        persist: bool,
    ) -> Result<(), crate::policy::Violations> {
        match &effective.policy {
            None => {
                self.store.clear();
                self.metrics.clear_policy();
                // Telemetry goes back to the pod's environment.
                if let Some(t) = vigie_telemetry::global() {
                    t.apply_policy(&vigie_telemetry::PolicyOverrides::default());
                }
                self.metrics
                    .policy_reloads
                    .with_label_values(&["installed"])
                    .inc();
                info!("no policy applies to this workload any more; requests get 503");
            }
            Some(policy) => {
                let snapshot = Snapshot::compile(policy.clone(), &self.registry)?;
                if snapshot.version != effective.version {
                    // Both sides hash the same canonical JSON; a mismatch means a
                    // different schema version. Still usable: log it.
                    warn!(sent = %effective.version, computed = %snapshot.version, "snapshot version mismatch");
                }
                let snapshot = Arc::new(snapshot);
                self.store.install(snapshot.clone());
                self.registry.retain_used();
                crate::telemetry::policy_installed(
                    &self.metrics,
                    &self.events,
                    &snapshot,
                    "control_plane",
                );
                info!(policy = %snapshot.policy.name, version = %snapshot.version, "policy installed from the control plane");
            }
        }
        if persist && let Err(e) = self.lkg.save(effective) {
            // The policy is in force; only a restart without control plane would miss it.
            error!(error = %e, "could not persist the last-known-good snapshot");
        }
        Ok(())
    }

    /// Boot: install the snapshot saved on disk, if any.
    pub fn load_last_known_good(&self) -> Option<String> {
        match self.lkg.load() {
            Ok(None) => None,
            Ok(Some(eff)) => match self.apply(&eff, false) {
                Ok(()) => {
                    info!(version = %eff.version, path = %self.lkg.path().display(), "started from the last-known-good snapshot");
                    Some(eff.version)
                }
                Err(e) => {
                    error!(error = %e, "last-known-good snapshot cannot be applied; starting without");
                    None
                }
            },
            Err(e) => {
                error!(error = %e, "last-known-good snapshot unreadable; starting without");
                None
            }
        }
    }
}

/// The workload token, re-read at every connection (projected tokens rotate).
pub(crate) fn read_token(cfg: &ControlPlaneConfig) -> Result<String, WatchError> {
    vigie_proto::client::read_token(cfg.token_file.as_deref())
}

pub(crate) use vigie_proto::client::authorize;

pub(crate) async fn channel(cfg: &ControlPlaneConfig) -> Result<Channel, WatchError> {
    vigie_proto::client::channel(
        &cfg.url,
        cfg.ca.as_deref(),
        cfg.client_cert
            .as_ref()
            .map(|(c, k)| (c.as_path(), k.as_path())),
    )
    .await
}

/// One connection: hello, then snapshots and ACKs until the stream ends.
/// Returns whether at least one snapshot arrived (the connection was healthy).
async fn session(
    cfg: &ControlPlaneConfig,
    applier: &Applier,
    got_snapshot: &mut bool,
) -> Result<(), WatchError> {
    let token = read_token(cfg)?;
    let mut client =
        DiscoveryServiceClient::new(channel(cfg).await?).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(8);
    let hello = WatchRequest {
        message: Some(watch_request::Message::Hello(Hello {
            identity: Some(cfg.identity.clone()),
            current_version: applier.current_version(),
            client_version: cfg.client_version.clone(),
        })),
    };
    tx.send(hello).await.map_err(|_| WatchError::Closed)?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    authorize(&mut request, &token)?;
    let mut inbound = client.watch(request).await?.into_inner();
    applier.metrics.control_plane_connected.set(1);
    info!(url = %cfg.url, "connected to the control plane");
    while let Some(snapshot) = inbound.message().await? {
        *got_snapshot = true;
        let effective = snapshot.effective.unwrap_or_else(|| EffectivePolicy {
            version: NO_POLICY.into(),
            ..Default::default()
        });
        let result = if snapshot.version == applier.current_version() {
            Ok(())
        } else {
            applier.apply(&effective, true)
        };
        let ack = match result {
            Ok(()) => Ack {
                version: snapshot.version,
                nonce: snapshot.nonce,
                accepted: true,
                error_detail: String::new(),
            },
            Err(violations) => {
                let reason = violations.to_string();
                crate::telemetry::policy_rejected(
                    &applier.metrics,
                    &applier.events,
                    &snapshot.version,
                    "control_plane",
                    &reason,
                );
                error!(version = %snapshot.version, error = %reason, "snapshot rejected; keeping the previous policy");
                Ack {
                    version: snapshot.version,
                    nonce: snapshot.nonce,
                    accepted: false,
                    error_detail: reason,
                }
            }
        };
        tx.send(WatchRequest {
            message: Some(watch_request::Message::Ack(ack)),
        })
        .await
        .map_err(|_| WatchError::Closed)?;
    }
    Err(WatchError::Closed)
}

pub(crate) use vigie_proto::client::backoff;

/// Runs until `shutdown` turns true.
pub async fn run(cfg: ControlPlaneConfig, applier: Applier, mut shutdown: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        let mut got_snapshot = false;
        let result = tokio::select! {
            r = session(&cfg, &applier, &mut got_snapshot) => r,
            _ = shutdown.changed() => return,
        };
        applier.metrics.control_plane_connected.set(0);
        if got_snapshot {
            failures = 0;
        }
        let delay = backoff(failures, cfg.max_backoff);
        failures = failures.saturating_add(1);
        if let Err(e) = result {
            warn!(error = %e, retry_in_ms = delay.as_millis(), running = %applier.current_version(), "control plane watch interrupted; serving on the current policy");
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applier(dir: &std::path::Path) -> Applier {
        Applier {
            store: Arc::new(PolicyStore::default()),
            registry: Arc::new(EndpointRegistry::default()),
            metrics: Metrics::new().unwrap(),
            events: crate::telemetry::events::Events::default(),
            lkg: LastKnownGood::in_dir(dir),
        }
    }

    fn effective(json: &str) -> EffectivePolicy {
        let policy: vigie_proto::v1::Policy = serde_json::from_str(json).unwrap();
        EffectivePolicy {
            version: vigie_proto::validate::version_of(&policy),
            policy: Some(policy),
            sources: vec![],
        }
    }

    #[test]
    fn apply_persists_and_nack_keeps_previous() {
        let dir = tempfile::tempdir().unwrap();
        let a = applier(dir.path());
        let good = effective(
            r#"{"name":"p","pools":[{"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://127.0.0.1:1"}],"models":[{"name":"m"}]}]}"#,
        );
        a.apply(&good, true).unwrap();
        assert_eq!(a.current_version(), good.version);
        let bad = effective(
            r#"{"name":"p","pools":[{"name":"a","kind":"POOL_KIND_VLLM","endpoints":[{"url":"http://127.0.0.1:1"}],"models":[{"name":"m"}],
            "credentials":{"env":"VIGIE_TEST_SURELY_UNSET_VAR"}}]}"#,
        );
        let err = a.apply(&bad, true).unwrap_err().to_string();
        assert!(err.contains("pools[0].credentials.env"), "{err}");
        assert_eq!(a.current_version(), good.version);
        // A fresh sidecar starts from what was last accepted, not the rejected one.
        let b = applier(dir.path());
        assert_eq!(b.load_last_known_good(), Some(good.version.clone()));
        assert_eq!(b.current_version(), good.version);
        // No policy any more: cleared, and persisted as such.
        a.apply(
            &EffectivePolicy {
                version: NO_POLICY.into(),
                ..Default::default()
            },
            true,
        )
        .unwrap();
        assert_eq!(a.current_version(), NO_POLICY);
    }
}
