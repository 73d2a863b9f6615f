//! The agent's side of `DiscoveryService.Watch` (kind `CLIENT_KIND_EGRESS_AGENT`):
//! every live policy arrives as a bundle; the main loop applies it and the outcome is
//! sent back as an ACK or NACK. Reconnects with capped exponential backoff.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{info, warn};
use vigie_proto::v1::discovery_service_client::DiscoveryServiceClient;
use vigie_proto::v1::egress_service_client::EgressServiceClient;
use vigie_proto::v1::{
    Ack, EgressBundle, Hello, Identity, ReportDenialsRequest, WatchRequest, watch_request,
};

use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct Config {
    pub url: String,
    /// Re-read at every connection (projected tokens rotate).
    pub token_file: Option<PathBuf>,
    pub ca: Option<PathBuf>,
    pub identity: Identity,
}

/// A bundle to apply, with where to send the outcome.
pub type Update = (
    String,
    EgressBundle,
    oneshot::Sender<Result<(), ApplyError>>,
);

/// Why a bundle was not (fully) applied: the NACK's detail.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Pods(#[from] crate::pods::PodsError),
    #[error(transparent)]
    Maps(#[from] crate::bpf::BpfError),
    #[error("agent shutting down")]
    ShuttingDown,
}

use vigie_proto::client::{ClientError as WatchError, authorize};

/// A channel to the control plane and the current token.
async fn connect(cfg: &Config) -> Result<(Channel, String), WatchError> {
    let token = vigie_proto::client::read_token(cfg.token_file.as_deref())?;
    let channel = vigie_proto::client::channel(&cfg.url, cfg.ca.as_deref(), None).await?;
    Ok((channel, token))
}

/// One connection; `got_snapshot` tells the caller it was healthy (backoff resets).
async fn session(
    cfg: &Config,
    updates: &mpsc::Sender<Update>,
    metrics: &Metrics,
    got_snapshot: &mut bool,
) -> Result<(), WatchError> {
    let (channel, token) = connect(cfg).await?;
    let mut client = DiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let (tx, rx) = mpsc::channel(4);
    tx.send(WatchRequest {
        message: Some(watch_request::Message::Hello(Hello {
            identity: Some(cfg.identity.clone()),
            current_version: String::new(),
            client_version: env!("CARGO_PKG_VERSION").to_string(),
        })),
    })
    .await
    .map_err(|_| WatchError::Closed)?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    authorize(&mut request, &token)?;
    let mut inbound = client.watch(request).await?.into_inner();
    metrics.control_plane_connected.set(1);
    info!(url = %cfg.url, "connected to the control plane");
    while let Some(snapshot) = inbound.message().await? {
        *got_snapshot = true;
        let bundle = snapshot.egress.unwrap_or_default();
        let (done, outcome) = oneshot::channel();
        updates
            .send((snapshot.version.clone(), bundle, done))
            .await
            .map_err(|_| WatchError::Closed)?;
        let result = outcome.await.unwrap_or(Err(ApplyError::ShuttingDown));
        let ack = Ack {
            version: snapshot.version,
            nonce: snapshot.nonce,
            accepted: result.is_ok(),
            error_detail: result.err().map(|e| e.to_string()).unwrap_or_default(),
        };
        tx.send(WatchRequest {
            message: Some(watch_request::Message::Ack(ack)),
        })
        .await
        .map_err(|_| WatchError::Closed)?;
    }
    Err(WatchError::Closed)
}

pub async fn run(cfg: Config, updates: mpsc::Sender<Update>, metrics: Metrics) {
    let mut failures: u32 = 0;
    loop {
        let mut got_snapshot = false;
        let result = session(&cfg, &updates, &metrics, &mut got_snapshot).await;
        metrics.control_plane_connected.set(0);
        if updates.is_closed() {
            return;
        }
        if got_snapshot {
            failures = 0;
        }
        let delay = vigie_proto::client::backoff(failures, MAX_BACKOFF);
        failures = failures.saturating_add(1);
        if let Err(e) = result {
            warn!(error = %e, retry_in_ms = delay.as_millis(), "control plane watch interrupted; enforcement continues on the current maps");
        }
        tokio::time::sleep(delay).await;
    }
}

/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(15);

/// Sends the aggregated denials every `every`; what cannot be sent stays pending
/// (bounded: see `events::Pending`).
pub async fn report(
    cfg: Config,
    pending: crate::events::Pending,
    every: Duration,
    metrics: Metrics,
) {
    let mut client: Option<EgressServiceClient<Channel>> = None;
    let mut token = String::new();
    loop {
        tokio::time::sleep(every).await;
        let batch = pending.take(1000);
        if batch.is_empty() {
            continue;
        }
        if client.is_none() {
            match connect(&cfg).await {
                Ok((channel, t)) => {
                    client = Some(EgressServiceClient::new(channel));
                    token = t;
                }
                Err(e) => {
                    warn!(error = %e, pending = batch.len(), "cannot report denials to the control plane; kept for later");
                    pending.put_back(batch, &metrics);
                    continue;
                }
            }
        }
        let Some(c) = client.as_mut() else { continue };
        let mut request = tonic::Request::new(ReportDenialsRequest {
            denials: batch.clone(),
        });
        if authorize(&mut request, &token).is_err() {
            pending.put_back(batch, &metrics);
            continue;
        }
        match c.report_denials(request).await {
            Ok(_) => metrics.reported.inc_by(batch.len() as u64),
            Err(e) => {
                warn!(code = ?e.code(), message = %e.message(), "denial report refused; kept for later");
                client = None;
                pending.put_back(batch, &metrics);
            }
        }
    }
}
