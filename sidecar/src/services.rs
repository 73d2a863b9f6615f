//! The sidecar's background services (Pingora `BackgroundService`s): where policies
//! come from (a file, or the control plane's watch stream with usage shipping), and the
//! egress-enforcement gate.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tracing::{error, info};
use vigie_ledger::Ledger;

use crate::control::usage::Shipping;
use crate::control::{self, Applier, ControlPlaneConfig};
use crate::policy::file::{FileWatcher, Reload};
use crate::telemetry::Metrics;
use crate::telemetry::events::Events;

/// Watches the control plane and installs what it sends.
pub struct ControlPlaneTask {
    pub config: ControlPlaneConfig,
    pub applier: Applier,
    pub shipper: Option<UsageShipper>,
}

/// Watches whether the kernel enforces this pod's egress (`--egress-required`).
pub struct EgressGate(pub Arc<std::sync::atomic::AtomicBool>);

#[async_trait]
impl BackgroundService for EgressGate {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        tokio::select! {
            () = control::egress_gate::watch(self.0.clone()) => {}
            _ = shutdown.changed() => {}
        }
    }
}

pub struct UsageShipper {
    pub ledger: Arc<Ledger>,
    pub shipping: Shipping,
}

#[async_trait]
impl BackgroundService for ControlPlaneTask {
    async fn start(&self, shutdown: ShutdownWatch) {
        let watch = control::run(self.config.clone(), self.applier.clone(), shutdown.clone());
        match &self.shipper {
            None => watch.await,
            Some(s) => {
                let ship = control::usage::run(
                    self.config.clone(),
                    s.ledger.clone(),
                    self.applier.metrics.clone(),
                    s.shipping.clone(),
                    shutdown,
                );
                tokio::join!(watch, ship);
            }
        }
    }
}

pub enum PolicySource {
    File(Box<PolicyFileTask>),
    ControlPlane(Box<ControlPlaneTask>),
}

#[async_trait]
impl BackgroundService for PolicySource {
    async fn start(&self, shutdown: ShutdownWatch) {
        match self {
            PolicySource::File(t) => t.start(shutdown).await,
            PolicySource::ControlPlane(t) => t.start(shutdown).await,
        }
    }
}

/// Polls the policy file and installs valid changes.
pub struct PolicyFileTask {
    pub watcher: std::sync::Mutex<FileWatcher>,
    pub interval: Duration,
    pub metrics: Metrics,
    pub events: Events,
}

impl PolicyFileTask {
    pub fn poll(&self) {
        let Ok(mut watcher) = self.watcher.lock() else {
            return;
        };
        match watcher.poll() {
            Reload::Unchanged => {}
            Reload::Installed(s) => {
                crate::telemetry::policy_installed(&self.metrics, &self.events, &s, "file");
                info!(policy = %s.policy.name, version = %s.version, "policy installed");
            }
            Reload::Rejected(e) => {
                crate::telemetry::policy_rejected(
                    &self.metrics,
                    &self.events,
                    "",
                    "file",
                    &e.to_string(),
                );
                error!(error = %e, "policy rejected; keeping the previous one");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for PolicyFileTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll(),
                _ = shutdown.changed() => return,
            }
        }
    }
}
