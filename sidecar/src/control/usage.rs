//! Ships the usage ledger to the control plane (`UsageService.ReportUsage`): batches
//! of ended records from the ledger's cursor; the cursor moves only once the control
//! plane has stored them (idempotently, by id), so a crash anywhere resends at worst,
//! and a resend is counted as duplicates, never twice.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};
use vigie_ledger::Ledger;
use vigie_proto::v1::ReportUsageRequest;
use vigie_proto::v1::usage_service_client::UsageServiceClient;

use super::{ControlPlaneConfig, WatchError, authorize, backoff, channel, read_token};
use crate::telemetry::Metrics;

/// Records per report.
const BATCH: usize = 1000;

#[derive(Debug, Clone)]
pub struct Shipping {
    /// How often the ledger is flushed to disk and new records are looked for.
    pub interval: Duration,
}

async fn ship_once(
    cfg: &ControlPlaneConfig,
    client: &mut Option<UsageServiceClient<tonic::transport::Channel>>,
    ledger: &Ledger,
    metrics: &Metrics,
) -> Result<usize, WatchError> {
    let batch = ledger
        .pending(BATCH)
        .map_err(|e| WatchError::Config(e.to_string()))?;
    if batch.records.is_empty() {
        // Nothing to send, but the cursor may still move past begin lines.
        ledger
            .ack(batch.next)
            .map_err(|e| WatchError::Config(e.to_string()))?;
        return Ok(0);
    }
    let c = match client {
        Some(c) => c,
        None => client.insert(UsageServiceClient::new(channel(cfg).await?)),
    };
    let n = batch.records.len();
    let mut records = batch.records;
    // Within the control plane's bounds whatever the app or upstream sent: one record
    // it refuses would hold back every later one.
    records.iter_mut().for_each(vigie_proto::usage::clamp);
    let mut request = tonic::Request::new(ReportUsageRequest { records });
    authorize(&mut request, &read_token(cfg)?)?;
    let reply = c.report_usage(request).await?.into_inner();
    ledger
        .ack(batch.next)
        .map_err(|e| WatchError::Config(e.to_string()))?;
    metrics
        .ledger
        .with_label_values(&["shipped"])
        .inc_by(u64::from(reply.accepted));
    metrics
        .ledger
        .with_label_values(&["duplicate"])
        .inc_by(u64::from(reply.duplicates));
    debug!(
        records = n,
        accepted = reply.accepted,
        duplicates = reply.duplicates,
        "usage shipped"
    );
    Ok(n)
}

/// How often held `end` lines are written, whatever shipping does (group commit:
/// under load they ride with the next `begin`; this bounds how long an idle sidecar
/// holds them).
const FLUSH_EVERY: Duration = Duration::from_millis(100);

/// Longest wait for one shipping call (a stalled control plane is retried later).
const SHIP_TIMEOUT: Duration = Duration::from_secs(30);

/// Writes held ledger lines every [`FLUSH_EVERY`] until the process ends.
async fn flush_held(ledger: Arc<Ledger>, metrics: Metrics) {
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if let Err(e) = ledger.flush() {
            metrics.ledger.with_label_values(&["error"]).inc();
            warn!(error = %e, "usage ledger write failed");
        }
    }
}

/// Runs until `shutdown`; flushes and ships a last time on the way out.
pub async fn run(
    cfg: ControlPlaneConfig,
    ledger: Arc<Ledger>,
    metrics: Metrics,
    shipping: Shipping,
    mut shutdown: watch::Receiver<bool>,
) {
    // Not tied to the shutdown signal: requests still finishing during a graceful
    // stop have their lines written too.
    tokio::spawn(flush_held(ledger.clone(), metrics.clone()));
    let mut client = None;
    let mut failures: u32 = 0;
    loop {
        if let Err(e) = ledger.sync() {
            metrics.ledger.with_label_values(&["error"]).inc();
            warn!(error = %e, "usage ledger flush failed");
        }
        let shipped = tokio::time::timeout(
            SHIP_TIMEOUT,
            ship_once(&cfg, &mut client, &ledger, &metrics),
        )
        .await
        .unwrap_or_else(|_| {
            Err(WatchError::Status(tonic::Status::deadline_exceeded(
                "shipping timed out",
            )))
        });
        let wait = match shipped {
            // A full batch: more may be waiting.
            Ok(n) if n == BATCH => {
                failures = 0;
                Duration::ZERO
            }
            Ok(_) => {
                failures = 0;
                shipping.interval
            }
            Err(e) => {
                client = None;
                let delay = backoff(failures, cfg.max_backoff).max(shipping.interval);
                failures = failures.saturating_add(1);
                warn!(error = %e, retry_in_ms = delay.as_millis(), "usage not shipped yet; kept in the local ledger");
                delay
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {
                let _ = ledger.sync();
                let _ = tokio::time::timeout(Duration::from_secs(2), ship_once(&cfg, &mut client, &ledger, &metrics)).await;
                return;
            }
        }
    }
}
