//! Prometheus metrics on `--metrics-listen` (`/metrics`), plus `/readyz` (programs
//! attached and a plan applied). Labels carry names, never payloads.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use prometheus::{
    Encoder as _, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tracing::info;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub denials: IntCounterVec,
    pub events_suppressed: IntCounter,
    /// Read from the kernel's per-CPU counters at scrape time.
    pub kernel_denials: IntGauge,
    pub events_lost: IntGauge,
    pub enrolled_cgroups: IntGauge,
    pub enrolled_pods: IntGauge,
    pub policies: IntGauge,
    pub allow_entries: IntGauge,
    pub applies: IntCounterVec,
    pub bundle: IntGaugeVec,
    pub control_plane_connected: IntGauge,
    pub reported: IntCounter,
    pub reports_dropped: IntCounter,
    pub ready: Arc<AtomicBool>,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let denials = IntCounterVec::new(
            Opts::new(
                "vigie_egress_denials_total",
                "Connections and packets refused by the egress programs, as reported through the ring buffer.",
            ),
            &["namespace", "pod", "container", "protocol"],
        )?;
        let events_suppressed = IntCounter::new(
            "vigie_egress_events_suppressed_total",
            "Denials counted but not logged (per-pod log rate limit).",
        )?;
        let kernel_denials = IntGauge::new(
            "vigie_egress_kernel_denials",
            "Denials counted in the kernel since the maps were created (survives agent restarts).",
        )?;
        let events_lost = IntGauge::new(
            "vigie_egress_events_lost",
            "Denials whose event did not fit in the ring buffer (counted in the kernel).",
        )?;
        let enrolled_cgroups = IntGauge::new(
            "vigie_egress_enrolled_cgroups",
            "Cgroups enforced (pods and sidecar containers).",
        )?;
        let enrolled_pods = IntGauge::new(
            "vigie_egress_enrolled_pods",
            "Enrolled pods of this node whose cgroups were found.",
        )?;
        let policies = IntGauge::new(
            "vigie_egress_policies",
            "Distinct compiled policies in the maps.",
        )?;
        let allow_entries =
            IntGauge::new("vigie_egress_allow_entries", "Entries in the allow trie.")?;
        let applies = IntCounterVec::new(
            Opts::new(
                "vigie_egress_applies_total",
                "Plans applied to the maps: ok, or error (the previous state stays).",
            ),
            &["result"],
        )?;
        let bundle = IntGaugeVec::new(
            Opts::new(
                "vigie_egress_policy_version_info",
                "Version of the policy bundle in force (value 1).",
            ),
            &["version"],
        )?;
        let control_plane_connected = IntGauge::new(
            "vigie_egress_control_plane_connected",
            "1 while the watch stream is up.",
        )?;
        let reported = IntCounter::new(
            "vigie_egress_denials_reported_total",
            "Aggregated denial entries accepted by the control plane.",
        )?;
        let reports_dropped = IntCounter::new(
            "vigie_egress_denial_reports_dropped_total",
            "Denial entries not reported: more than 10,000 distinct ones pending while the control plane was away.",
        )?;
        for c in [
            Box::new(reported.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reports_dropped.clone()),
            Box::new(denials.clone()),
            Box::new(events_suppressed.clone()),
            Box::new(kernel_denials.clone()),
            Box::new(events_lost.clone()),
            Box::new(enrolled_cgroups.clone()),
            Box::new(enrolled_pods.clone()),
            Box::new(policies.clone()),
            Box::new(allow_entries.clone()),
            Box::new(applies.clone()),
            Box::new(bundle.clone()),
            Box::new(control_plane_connected.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            denials,
            events_suppressed,
            kernel_denials,
            events_lost,
            enrolled_cgroups,
            enrolled_pods,
            policies,
            allow_entries,
            applies,
            bundle,
            control_plane_connected,
            reported,
            reports_dropped,
            ready: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `/metrics` and `/readyz` until the process ends; `refresh` runs before
/// each scrape (kernel counters).
pub async fn serve(
    metrics: Metrics,
    listen: SocketAddr,
    refresh: Arc<dyn Fn() + Send + Sync>,
) -> anyhow::Result<()> {
    let ready = metrics.ready.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                refresh();
                let body = metrics.render();
                async move {
                    (
                        [(
                            axum::http::header::CONTENT_TYPE,
                            "text/plain; version=0.0.4",
                        )],
                        body,
                    )
                }
            }),
        )
        .route(
            "/readyz",
            axum::routing::get(move || {
                let ok = ready.load(Ordering::Relaxed);
                async move {
                    if ok {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "no plan applied yet\n",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    info!(listen = %listener.local_addr()?, "metrics serving");
    axum::serve(listener, app).await?;
    Ok(())
}
