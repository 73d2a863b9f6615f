//! The sidecar's Prometheus metrics, in their own registry.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub duration: HistogramVec,
    pub ttfb: HistogramVec,
    pub upstream_attempts: IntCounterVec,
    pub route_picks: IntCounterVec,
    pub route_refusals: IntCounterVec,
    pub endpoint_available: IntGaugeVec,
    pub endpoint_waiting: IntGaugeVec,
    pub tokens: IntCounterVec,
    pub usage_records: IntCounterVec,
    pub ledger: IntCounterVec,
    pub gen_ai_token_usage: HistogramVec,
    pub gen_ai_operation_duration: HistogramVec,
    pub time_to_first_chunk: HistogramVec,
    pub budget_decisions: IntCounterVec,
    pub budget_leases: IntCounterVec,
    pub cost: CounterVec,
    pub gpu_seconds: CounterVec,
    pub inflight: IntGauge,
    pub connections_refused: IntCounter,
    pub policy_info: IntGaugeVec,
    pub policy_reloads: IntCounterVec,
    pub control_plane_connected: IntGauge,
    pub dlp_findings: IntCounterVec,
    pub dlp_blocked: IntCounterVec,
    pub dlp_external: IntCounterVec,
    pub sensitivity: IntCounterVec,
}

impl Metrics {
    /// The registry, for metrics of other crates (telemetry export counters).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_requests_total",
                "Requests handled, by operation and HTTP status.",
            ),
            &["operation", "status"],
        )?;
        let buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            30.0, 60.0,
        ];
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "vigie_sidecar_request_duration_seconds",
                "Time from request to end of response.",
            )
            .buckets(buckets.clone()),
            &["operation"],
        )?;
        let ttfb = HistogramVec::new(
            HistogramOpts::new(
                "vigie_sidecar_upstream_first_byte_seconds",
                "Time from forwarding to the upstream's response header.",
            )
            .buckets(buckets),
            &["pool"],
        )?;
        let upstream_attempts = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_upstream_attempts_total",
                "Upstream attempts by pool and outcome.",
            ),
            &["pool", "outcome"],
        )?;
        let route_picks = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_route_picks_total",
                "Endpoint choices by pool and reason (only, affinity, least_loaded, round_robin, probe, panic).",
            ),
            &["pool", "reason"],
        )?;
        let route_refusals = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_route_refusals_total",
                "Requests refused because no pool cleared for their sensitivity level serves the model.",
            ),
            &["level"],
        )?;
        let endpoint_available = IntGaugeVec::new(
            Opts::new(
                "vigie_sidecar_endpoint_available",
                "1 when the endpoint passes its active checks and is not ejected (probed pools).",
            ),
            &["pool", "endpoint"],
        )?;
        let endpoint_waiting = IntGaugeVec::new(
            Opts::new(
                "vigie_sidecar_endpoint_waiting_requests",
                "Requests queued on the endpoint as its own /metrics last reported (vLLM pools).",
            ),
            &["pool", "endpoint"],
        )?;
        let tokens = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_tokens_total",
                "Tokens by tenant (namespace), workload, requested and served model, pool and type (prompt, completion, cached_prompt, reasoning).",
            ),
            &[
                "namespace",
                "workload",
                "model",
                "served_model",
                "pool",
                "type",
            ],
        )?;
        let usage_records = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_usage_records_total",
                "Answers metered, by source of the figures (upstream, estimated, upstream_error).",
            ),
            &["source"],
        )?;
        let ledger = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_usage_ledger_total",
                "Usage ledger events: written (one per request), interrupted (found at restart), shipped (stored by the control plane), duplicate (already stored), error (disk or shipping failure).",
            ),
            &["event"],
        )?;
        // OpenTelemetry GenAI semantic conventions (gen_ai.client.token.usage and
        // gen_ai.client.operation.duration), with their recommended buckets; attribute
        // names with dots as underscores, as Prometheus exporters write them.
        let gen_ai_labels = [
            "gen_ai_operation_name",
            "gen_ai_provider_name",
            "gen_ai_request_model",
            "gen_ai_response_model",
            "server_address",
        ];
        let mut token_labels = gen_ai_labels.to_vec();
        token_labels.push("gen_ai_token_type");
        let gen_ai_token_usage = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_client_token_usage",
                "Tokens per request by type (input, output): gen_ai.client.token.usage.",
            )
            .buckets(vec![
                1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
                4194304.0, 16777216.0, 67108864.0,
            ]),
            &token_labels,
        )?;
        let mut duration_labels = gen_ai_labels.to_vec();
        duration_labels.push("error_type");
        let gen_ai_operation_duration = HistogramVec::new(
            HistogramOpts::new(
                "gen_ai_client_operation_duration_seconds",
                "Time from the request to the end of the answer: gen_ai.client.operation.duration.",
            )
            .buckets(vec![
                0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
                81.92,
            ]),
            &duration_labels,
        )?;
        let time_to_first_chunk = HistogramVec::new(
            HistogramOpts::new(
                "vigie_sidecar_time_to_first_chunk_seconds",
                "Time from the request to the first bytes of the answer sent to the app.",
            )
            .buckets(vec![
                0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48,
            ]),
            &[
                "gen_ai_operation_name",
                "gen_ai_provider_name",
                "gen_ai_request_model",
            ],
        )?;
        let budget_decisions = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_budget_decisions_total",
                "Requests a budget stopped or flagged: rejected (hard, 429), warned (soft, over the limit), unavailable (fail-closed, no allowance).",
            ),
            &["budget", "decision"],
        )?;
        let budget_leases = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_budget_leases_total",
                "Allowance leases asked of the control plane, by budget and result (granted, partial, exhausted, error).",
            ),
            &["budget", "result"],
        )?;
        let cost = CounterVec::new(
            Opts::new(
                "vigie_sidecar_cost_total",
                "Cost of the tokens served, from the pool's prices, by tenant, workload, model, pool and currency.",
            ),
            &["namespace", "workload", "model", "pool", "currency"],
        )?;
        let gpu_seconds = CounterVec::new(
            Opts::new(
                "vigie_sidecar_gpu_seconds_total",
                "Estimated GPU-seconds of the tokens served (pools with gpuSecondsPer1k), by tenant, workload, model and pool.",
            ),
            &["namespace", "workload", "model", "pool"],
        )?;
        let inflight = IntGauge::new("vigie_sidecar_inflight_requests", "Requests in progress.")?;
        let connections_refused = IntCounter::new(
            "vigie_sidecar_connections_refused_total",
            "Connections closed at once because the sidecar held as many as it may.",
        )?;
        let policy_info = IntGaugeVec::new(
            Opts::new(
                "vigie_sidecar_policy_info",
                "The policy in force (value 1), labelled with its name and version.",
            ),
            &["name", "version"],
        )?;
        let policy_reloads = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_policy_reloads_total",
                "Policy loads by result (installed, rejected).",
            ),
            &["result"],
        )?;
        let control_plane_connected = IntGauge::new(
            "vigie_sidecar_control_plane_connected",
            "Whether the watch stream to the control plane is up (1) or not (0).",
        )?;
        registry.register(Box::new(control_plane_connected.clone()))?;
        // Detector types and counts only: a value never becomes a label.
        let dlp_findings = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_dlp_findings_total",
                "DLP findings by detector, direction (request, response) and action.",
            ),
            &["detector", "direction", "action"],
        )?;
        let dlp_blocked = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_dlp_blocked_total",
                "Requests refused or answers cut by a DLP block rule.",
            ),
            &["direction"],
        )?;
        let dlp_external = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_dlp_external_calls_total",
                "Calls to external detectors by outcome (ok, timeout, unreachable, status, unreadable, too_large) and what was done (used, failed_open, failed_closed).",
            ),
            &["detector", "outcome", "effect"],
        )?;
        let sensitivity = IntCounterVec::new(
            Opts::new(
                "vigie_sidecar_request_sensitivity_total",
                "Requests by sensitivity level (declared or found by DLP, whichever is higher).",
            ),
            &["level"],
        )?;
        registry.register(Box::new(dlp_findings.clone()))?;
        registry.register(Box::new(dlp_blocked.clone()))?;
        registry.register(Box::new(dlp_external.clone()))?;
        registry.register(Box::new(sensitivity.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(ttfb.clone()))?;
        registry.register(Box::new(upstream_attempts.clone()))?;
        registry.register(Box::new(route_picks.clone()))?;
        registry.register(Box::new(route_refusals.clone()))?;
        registry.register(Box::new(endpoint_available.clone()))?;
        registry.register(Box::new(endpoint_waiting.clone()))?;
        registry.register(Box::new(tokens.clone()))?;
        registry.register(Box::new(usage_records.clone()))?;
        registry.register(Box::new(ledger.clone()))?;
        registry.register(Box::new(gen_ai_token_usage.clone()))?;
        registry.register(Box::new(gen_ai_operation_duration.clone()))?;
        registry.register(Box::new(time_to_first_chunk.clone()))?;
        registry.register(Box::new(budget_decisions.clone()))?;
        registry.register(Box::new(budget_leases.clone()))?;
        registry.register(Box::new(cost.clone()))?;
        registry.register(Box::new(gpu_seconds.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(connections_refused.clone()))?;
        registry.register(Box::new(policy_info.clone()))?;
        registry.register(Box::new(policy_reloads.clone()))?;
        Ok(Self {
            registry,
            requests,
            duration,
            ttfb,
            upstream_attempts,
            route_picks,
            route_refusals,
            endpoint_available,
            endpoint_waiting,
            tokens,
            usage_records,
            ledger,
            gen_ai_token_usage,
            gen_ai_operation_duration,
            time_to_first_chunk,
            budget_decisions,
            budget_leases,
            cost,
            gpu_seconds,
            inflight,
            connections_refused,
            policy_info,
            policy_reloads,
            control_plane_connected,
            dlp_findings,
            dlp_blocked,
            dlp_external,
            sensitivity,
        })
    }

    pub fn clear_policy(&self) {
        self.policy_info.reset();
    }

    pub fn set_policy(&self, name: &str, version: &str) {
        self.policy_info.reset();
        self.policy_info.with_label_values(&[name, version]).set(1);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics() {
        let m = Metrics::new().unwrap();
        m.requests.with_label_values(&["chat", "200"]).inc();
        m.set_policy("demo", "abc");
        m.set_policy("demo", "def");
        let text = String::from_utf8(m.render()).unwrap();
        assert!(text.contains("vigie_sidecar_requests_total{operation=\"chat\",status=\"200\"} 1"));
        assert!(text.contains("vigie_sidecar_policy_info{name=\"demo\",version=\"def\"} 1"));
        assert!(!text.contains("version=\"abc\""));
    }
}
