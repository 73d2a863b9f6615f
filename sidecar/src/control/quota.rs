//! Budget allowance leased from the control plane (`QuotaService.AcquireLease`): the
//! [`LeaseSource`] of managed sidecars. Called only when a counter's local allowance
//! runs short, never once per request.

use std::time::Duration;

use async_trait::async_trait;
use tonic::transport::Channel;
use vigie_proto::v1::AcquireLeaseRequest;
use vigie_proto::v1::quota_service_client::QuotaServiceClient;
use vigie_quota::{Budget, Grant, LeaseError, LeaseSource};

use super::{ControlPlaneConfig, authorize, channel, read_token};
use crate::telemetry::Metrics;

/// A lease that takes longer than this is given up (fail-open or -closed applies).
const LEASE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug)]
pub struct ControlPlaneLeases {
    cfg: ControlPlaneConfig,
    client: tokio::sync::Mutex<Option<QuotaServiceClient<Channel>>>,
    metrics: Metrics,
}

/// Why a lease call failed.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error(transparent)]
    Client(#[from] super::WatchError),
    #[error("{0}: {1}")]
    Status(tonic::Code, String),
    #[error("timed out")]
    TimedOut,
}

impl ControlPlaneLeases {
    pub fn new(cfg: ControlPlaneConfig, metrics: Metrics) -> Self {
        Self {
            cfg,
            client: tokio::sync::Mutex::new(None),
            metrics,
        }
    }

    async fn call(&self, request: AcquireLeaseRequest) -> Result<Grant, CallError> {
        let mut client = {
            let mut slot = self.client.lock().await;
            match &*slot {
                Some(c) => c.clone(),
                None => {
                    let c = QuotaServiceClient::new(channel(&self.cfg).await?);
                    *slot = Some(c.clone());
                    c
                }
            }
        };
        let mut req = tonic::Request::new(request);
        authorize(&mut req, &read_token(&self.cfg)?)?;
        let reply = client
            .acquire_lease(req)
            .await
            .map_err(|s| CallError::Status(s.code(), s.message().to_string()))?
            .into_inner();
        Ok(Grant {
            granted: reply.granted,
            remaining: reply.remaining,
            window_end_ms: reply.window_end_ms,
        })
    }
}

#[async_trait]
impl LeaseSource for ControlPlaneLeases {
    async fn acquire(
        &self,
        budget: &Budget,
        key: &[String],
        window_start_ms: i64,
        want: f64,
        overdraft: f64,
    ) -> Result<Grant, LeaseError> {
        let request = AcquireLeaseRequest {
            identity: Some(self.cfg.identity.clone()),
            budget: budget.name.clone(),
            key: key.to_vec(),
            window_start_ms,
            want,
            overdraft,
        };
        let outcome = tokio::time::timeout(LEASE_TIMEOUT, self.call(request))
            .await
            .unwrap_or(Err(CallError::TimedOut));
        let result = match &outcome {
            Ok(g) if g.granted >= want => "granted",
            Ok(g) if g.granted > 0.0 => "partial",
            Ok(_) => "exhausted",
            Err(_) => "error",
        };
        self.metrics
            .budget_leases
            .with_label_values(&[&budget.name, result])
            .inc();
        outcome.map_err(|e| {
            // Reconnect next time: the channel may be what failed.
            if let Ok(mut slot) = self.client.try_lock() {
                *slot = None;
            }
            tracing::warn!(budget = %budget.name, error = %e, "budget allowance lease failed");
            LeaseError(e.to_string())
        })
    }
}
