//! Control-plane Prometheus metrics on `--metrics-listen` (`/metrics`). Labels carry
//! names (namespace, workload, model, pool), never request content.

use std::net::SocketAddr;

use anyhow::Context as _;
use prometheus::{Encoder as _, IntCounterVec, Opts, Registry, TextEncoder};
use tracing::info;
use vigie_proto::v1::UsageRecord;

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    usage_records: IntCounterVec,
    tokens: IntCounterVec,
    leases: IntCounterVec,
    injections: IntCounterVec,
    egress_denials: IntCounterVec,
}

impl Metrics {
    /// The registry, for metrics of other crates (telemetry export counters).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let usage_records = IntCounterVec::new(
            Opts::new(
                "vigie_control_plane_usage_records_total",
                "Usage records reported by sidecars: accepted (new) or duplicate (resent).",
            ),
            &["result"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "vigie_control_plane_tokens_total",
                "Tokens in the accepted usage records.",
            ),
            &["namespace", "workload", "model", "pool", "type"],
        )?;
        let leases = IntCounterVec::new(
            Opts::new(
                "vigie_control_plane_budget_leases_total",
                "Allowance lease requests by budget: granted (in full), partial, or exhausted (nothing left: the sidecars reject until the window ends).",
            ),
            &["budget", "result"],
        )?;
        registry.register(Box::new(leases.clone()))?;
        let injections = IntCounterVec::new(
            Opts::new(
                "vigie_control_plane_injections_total",
                "Admission reviews answered by the injection webhook: injected, skipped (opted out, hostNetwork, system namespace), denied (invalid annotations, refused pod specs), ignored (not a pod creation), malformed.",
            ),
            &["result"],
        )?;
        registry.register(Box::new(injections.clone()))?;
        let egress_denials = IntCounterVec::new(
            Opts::new(
                "vigie_control_plane_egress_denials_total",
                "Egress denials reported by the node agents (connections and packets refused by the eBPF programs).",
            ),
            &["namespace"],
        )?;
        registry.register(Box::new(egress_denials.clone()))?;
        registry.register(Box::new(usage_records.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        Ok(Self {
            registry,
            usage_records,
            tokens,
            leases,
            injections,
            egress_denials,
        })
    }

    /// A report was stored. Token counters are only advanced for batches without
    /// duplicates (a resent batch must not count twice; which records of a mixed batch
    /// were new is not known).
    pub fn usage_ingested(&self, records: &[UsageRecord], accepted: u32, duplicates: u32) {
        self.usage_records
            .with_label_values(&["accepted"])
            .inc_by(u64::from(accepted));
        self.usage_records
            .with_label_values(&["duplicate"])
            .inc_by(u64::from(duplicates));
        if duplicates > 0 {
            return;
        }
        for r in records {
            for (kind, n) in [
                ("prompt", r.prompt_tokens),
                ("completion", r.completion_tokens),
                ("cached_prompt", r.cached_prompt_tokens),
                ("reasoning", r.reasoning_tokens),
            ] {
                if n > 0 {
                    self.tokens
                        .with_label_values(&[&r.namespace, &r.workload, &r.model, &r.pool, kind])
                        .inc_by(n);
                }
            }
        }
    }

    pub fn lease(&self, budget: &str, granted: f64, want: f64) {
        let result = if granted >= want {
            "granted"
        } else if granted > 0.0 {
            "partial"
        } else {
            "exhausted"
        };
        self.leases.with_label_values(&[budget, result]).inc();
    }

    pub fn egress_denials(&self, namespace: &str, count: u64) {
        self.egress_denials
            .with_label_values(&[namespace])
            .inc_by(count);
    }

    pub fn injection(&self, result: &str) {
        self.injections.with_label_values(&[result]).inc();
    }

    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

/// Serves `/metrics` until `shutdown`.
pub async fn serve(
    metrics: Metrics,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
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
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    info!(listen = %listener.local_addr()?, "metrics serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("metrics server")
}
