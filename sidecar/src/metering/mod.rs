//! Metering glue: one [`Meter`] per request. It writes a `begin` line to the usage
//! ledger once the request is read, is fed by the relay, and on drop — whether the
//! answer completed, was refused, the upstream broke or the app left — writes exactly
//! one record (`end` line) and advances the counters. Figures come from
//! `vigie_metering` (plain Rust); the ledger is `vigie_ledger`.

pub mod user;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use vigie_ledger::Ledger;
use vigie_metering::{Usage, UsageSource, UsageTap, estimate};
use vigie_proto::v1::{
    PoolCost, PoolKind, SensitivityLevel, UsageOutcome, UsageRecord, UsageSource as RecordSource,
};
use vigie_quota::{Quota, Reservation};
use vigie_wire::api::Operation;
use vigie_wire::dlp::Level;

use opentelemetry::KeyValue;

use crate::policy::PoolRuntime;
use crate::routing::Endpoint;
use crate::telemetry::Metrics;
use crate::telemetry::trace::{RequestSpan, server_attributes};

/// Who a request is billed to (fixed for the sidecar's pod).
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    pub namespace: String,
    pub workload: String,
    pub pod: String,
}

/// Unique record ids: a random prefix drawn at start, then a counter.
#[derive(Debug)]
pub struct RecordIds {
    boot: String,
    next: AtomicU64,
}

impl RecordIds {
    pub fn new() -> Result<Self, getrandom::Error> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b)?;
        Ok(Self {
            boot: b.iter().map(|x| format!("{x:02x}")).collect(),
            next: AtomicU64::new(1),
        })
    }

    fn next(&self) -> String {
        format!(
            "{}-{}",
            self.boot,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }
}

/// What every meter of the sidecar shares.
#[derive(Debug, Clone)]
pub struct MeterShared {
    pub metrics: Metrics,
    pub ledger: Option<Arc<Ledger>>,
    pub ids: Arc<RecordIds>,
    pub who: Attribution,
}

/// The answer being relayed (pool, endpoint and served model go straight into the
/// record).
#[derive(Debug)]
struct Answer {
    /// `gen_ai.provider.name`.
    provider: &'static str,
    /// Its `authority` is `server.address`.
    endpoint: Arc<Endpoint>,
    status: u16,
    tap: UsageTap,
    cost: Option<PoolCost>,
    strips: bool,
}

#[derive(Debug)]
pub struct Meter {
    shared: Arc<MeterShared>,
    op: Operation,
    record: UsageRecord,
    /// The request, for a prompt estimate when the upstream reports none.
    body: Bytes,
    /// The request with `stream_options.include_usage` added (streaming OpenAI-style
    /// requests that did not ask for it).
    with_usage: Option<Bytes>,
    answer: Option<Answer>,
    upstream_broke: bool,
    started: std::time::Instant,
    first_chunk: Option<std::time::Duration>,
    /// Budget reservations, settled with the actual figures.
    quota: Option<(Arc<Quota>, Reservation)>,
    /// Soft budgets over their limit (told to the app in a header).
    budget_warnings: Vec<String>,
    /// The request's span, ended with the record.
    pub trace: RequestSpan,
}

/// Header naming the soft budgets a request went over.
pub const BUDGET_WARNING_HEADER: &str = "x-vigie-budget-warning";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Meter {
    pub fn new(shared: &Arc<MeterShared>, op: Operation, headers: &http::HeaderMap) -> Self {
        let record = UsageRecord {
            id: shared.ids.next(),
            started_at_ms: now_ms(),
            namespace: shared.who.namespace.clone(),
            workload: shared.who.workload.clone(),
            pod: shared.who.pod.clone(),
            operation: op.name().to_string(),
            ..Default::default()
        };
        Self {
            shared: shared.clone(),
            op,
            record,
            body: Bytes::new(),
            with_usage: None,
            answer: None,
            upstream_broke: false,
            started: std::time::Instant::now(),
            first_chunk: None,
            quota: None,
            budget_warnings: Vec::new(),
            trace: RequestSpan::start(headers, gen_ai_operation(op)),
        }
    }

    /// The request was admitted by its budgets.
    pub fn reserved(&mut self, quota: Arc<Quota>, reservation: Reservation, warnings: Vec<String>) {
        self.quota = Some((quota, reservation));
        self.budget_warnings = warnings;
    }

    /// Adds the soft-budget warning to an answer's header.
    pub fn warn_header(&self, header: &mut pingora::http::ResponseHeader) {
        if !self.budget_warnings.is_empty() {
            let _ = header.insert_header(BUDGET_WARNING_HEADER, self.budget_warnings.join(", "));
        }
    }

    /// The request is read: the ledger's `begin` line is written.
    pub fn begin(&mut self, model: &str, stream: bool, body_len: usize) {
        self.record.model = model.to_string();
        self.record.stream = stream;
        if self.trace.recording() {
            self.trace.set_all([
                KeyValue::new("vigie.tenant", self.record.namespace.clone()),
                KeyValue::new("vigie.workload", self.record.workload.clone()),
                KeyValue::new("vigie.stream", stream),
            ]);
        }
        if let Some(ledger) = &self.shared.ledger {
            // Should the process die before the end, the restart records it as
            // interrupted with this rough prompt figure (4 bytes per token); the real
            // figure replaces it once the answer is counted.
            self.record.prompt_tokens = body_len as u64 / 4;
            let written = ledger.begin(&self.record);
            self.record.prompt_tokens = 0;
            if let Err(e) = written {
                self.shared
                    .metrics
                    .ledger
                    .with_label_values(&["error"])
                    .inc();
                tracing::error!(error = %e, "usage ledger: begin not written");
            }
        }
    }

    /// The body as it will be sent (after DLP), and for a stream that does not ask for
    /// usage, the variant that does (so that the upstream reports exact figures).
    pub fn prepare(&mut self, body: &Bytes, stream: bool) {
        // Only streams can lack usage: no second parse of other bodies.
        self.with_usage = stream
            .then(|| vigie_metering::request::ask_for_usage(self.op, body).0)
            .flatten()
            .map(Bytes::from);
        self.body = body.clone();
    }

    /// The requested model, known to the policy: it names the span.
    pub fn trace_model(&self, model: &str) {
        if self.trace.recording() {
            self.trace
                .rename(format!("{} {model}", gen_ai_operation(self.op)));
            self.trace
                .set(KeyValue::new("gen_ai.request.model", model.to_string()));
        }
    }

    /// The requested model (empty before the body is read).
    pub fn model(&self) -> &str {
        &self.record.model
    }

    pub fn user(&mut self, user: &user::User) {
        self.record.user = user.name.clone();
        self.record.user_verified = user.verified;
    }

    pub fn level(&mut self, level: Option<Level>) {
        self.record.sensitivity = match level {
            None => SensitivityLevel::Unspecified,
            Some(Level::Public) => SensitivityLevel::Public,
            Some(Level::Internal) => SensitivityLevel::Internal,
            Some(Level::Personal) => SensitivityLevel::Personal,
            Some(Level::Restricted) => SensitivityLevel::Restricted,
        } as i32;
    }

    /// The body for an upstream of this kind, and whether it asks for the usage chunk on
    /// the app's behalf. vLLM and OpenAI accept `stream_options`; Mistral and strict
    /// OpenAI-compatible servers reject unknown fields (and Mistral sends usage anyway).
    pub fn body_for(&self, kind: PoolKind, body: &Bytes) -> (Bytes, bool) {
        match (&self.with_usage, kind) {
            (Some(b), PoolKind::Vllm | PoolKind::Openai) => (b.clone(), true),
            _ => (body.clone(), false),
        }
    }

    /// An upstream answer starts (the last one wins: earlier attempts were not relayed).
    /// `asked_usage`: the request sent was the one with `include_usage` added.
    pub fn answer(
        &mut self,
        pool: &PoolRuntime,
        endpoint: &Arc<Endpoint>,
        served_model: &str,
        status: u16,
        sse: bool,
        asked_usage: bool,
    ) {
        self.record.pool.clone_from(&pool.name);
        self.record.endpoint.clone_from(&endpoint.url);
        self.record.served_model = served_model.to_string();
        if self.trace.recording() {
            self.trace.set_all(server_attributes(&endpoint.authority));
            self.trace.set_all([
                KeyValue::new("gen_ai.provider.name", provider_name(pool.kind)),
                KeyValue::new("vigie.pool", pool.name.clone()),
                KeyValue::new("vigie.endpoint", endpoint.url.clone()),
                KeyValue::new("vigie.served_model", served_model.to_string()),
            ]);
        }
        self.answer = Some(Answer {
            provider: provider_name(pool.kind),
            endpoint: endpoint.clone(),
            status,
            tap: UsageTap::new(self.op, sse, asked_usage && sse),
            cost: pool.cost_of(served_model).cloned(),
            strips: asked_usage && sse,
        });
    }

    /// Whether the relay must rewrite the answer's framing (the usage chunk is stripped).
    pub fn rewrites(&self) -> bool {
        self.answer.as_ref().is_some_and(|a| a.strips)
    }

    /// A chunk of the answer: what to forward instead, if anything changed.
    pub fn observe(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.answer.as_mut().and_then(|a| a.tap.observe(data))
    }

    /// End of the answer: the rest to forward, if the framing was rewritten.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        self.answer.as_mut().and_then(|a| a.tap.finish())
    }

    /// The first bytes of the answer went to the app (time to first chunk).
    pub fn first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            let t = self.started.elapsed();
            self.first_chunk = Some(t);
            self.trace.event(
                "vigie.first_chunk",
                vec![KeyValue::new("vigie.time_to_first_chunk", t.as_secs_f64())],
            );
        }
    }

    /// The upstream failed mid-answer: billed for what it generated.
    pub fn upstream_broke(&mut self) {
        self.upstream_broke = true;
    }

    /// The status the app received (499: it went away).
    pub fn status(&mut self, status: u16) {
        self.record.status = u32::from(status);
    }

    fn record(&mut self) {
        let mut record = std::mem::take(&mut self.record);
        record.ended_at_ms = now_ms().max(record.started_at_ms);
        let ended = std::time::SystemTime::now();
        let mut trace = std::mem::take(&mut self.trace);
        let shared = self.shared.clone();
        let quota = self.quota.take();
        let Some(a) = self.answer.take() else {
            // No upstream answer (refused, unreachable): nothing was generated.
            record.outcome = UsageOutcome::Refused as i32;
            record.source = RecordSource::None as i32;
            settle(quota.as_ref(), &record);
            write(&shared, &record);
            trace.set(KeyValue::new(
                "http.response.status_code",
                i64::from(record.status),
            ));
            let error_type = match record.status {
                0..400 => String::new(),
                499 => "client_aborted".to_string(),
                s => s.to_string(),
            };
            trace.end(&error_type, ended);
            return;
        };
        let status_text;
        let error_type = match (a.status, record.status) {
            (s @ 400.., _) => {
                status_text = s.to_string();
                status_text.as_str()
            }
            (_, 499) => "client_aborted",
            _ if self.upstream_broke => "upstream_broken",
            // Refused by the sidecar after the upstream answered (answer-side DLP).
            (_, s @ 400..) => {
                status_text = s.to_string();
                status_text.as_str()
            }
            _ => "",
        };
        let (op, model) = (gen_ai_operation(self.op), record.model.as_str());
        shared
            .metrics
            .gen_ai_operation_duration
            .with_label_values(&[
                op,
                a.provider,
                model,
                &record.served_model,
                &a.endpoint.authority,
                error_type,
            ])
            .observe(self.started.elapsed().as_secs_f64());
        if let Some(t) = self.first_chunk {
            shared
                .metrics
                .time_to_first_chunk
                .with_label_values(&[op, a.provider, model])
                .observe(t.as_secs_f64());
        }
        trace.set(KeyValue::new(
            "http.response.status_code",
            i64::from(record.status),
        ));
        if a.status >= 400 {
            shared
                .metrics
                .usage_records
                .with_label_values(&["upstream_error"])
                .inc();
            record.outcome = UsageOutcome::UpstreamError as i32;
            record.source = RecordSource::None as i32;
            settle(quota.as_ref(), &record);
            write(&shared, &record);
            trace.end(error_type, ended);
            return;
        }
        let error_type = error_type.to_string();
        record.outcome = if record.status == 499 {
            UsageOutcome::ClientAborted
        } else if self.upstream_broke {
            UsageOutcome::UpstreamError
        } else {
            UsageOutcome::Completed
        } as i32;
        let estimate_needed = a.tap.needs_estimate();
        let op = self.op;
        let body = std::mem::take(&mut self.body);
        let job = move || {
            let mut record = record;
            let (usage, source) = a.tap.result(|| estimate::prompt_tokens(op, &body));
            account(op, &shared.metrics, &mut record, &a, usage, source);
            settle(quota.as_ref(), &record);
            write(&shared, &record);
            if trace.recording() {
                trace.set_all(response_attributes(&record, a.tap.response()));
            }
            trace.end(&error_type, ended);
        };
        // Counting tokens is CPU work: off the async workers when an estimate is needed.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if estimate_needed => {
                rt.spawn_blocking(job);
            }
            _ => job(),
        }
    }
}

/// Budgets get back what their reservation overestimated (or are charged the excess).
fn settle(quota: Option<&(Arc<Quota>, Reservation)>, record: &UsageRecord) {
    if let Some((quota, reservation)) = quota {
        let tokens = (record.prompt_tokens + record.completion_tokens) as f64;
        quota.settle(reservation, tokens, record.cost, &record.currency);
    }
}

/// The request's one record, to the ledger.
fn write(shared: &MeterShared, record: &UsageRecord) {
    let Some(ledger) = &shared.ledger else { return };
    match ledger.end(record) {
        Ok(()) => shared.metrics.ledger.with_label_values(&["written"]).inc(),
        Err(e) => {
            shared.metrics.ledger.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "usage ledger: record not written");
        }
    }
}

/// Adds one answer's figures to the record and the counters.
fn account(
    op: Operation,
    metrics: &Metrics,
    record: &mut UsageRecord,
    a: &Answer,
    usage: Usage,
    source: UsageSource,
) {
    metrics
        .usage_records
        .with_label_values(&[source.as_str()])
        .inc();
    record.prompt_tokens = usage.prompt;
    record.completion_tokens = usage.completion;
    record.cached_prompt_tokens = usage.cached_prompt;
    record.reasoning_tokens = usage.reasoning;
    record.source = match source {
        UsageSource::Upstream => RecordSource::Reported,
        UsageSource::Estimated => RecordSource::Estimated,
    } as i32;
    for (kind, n) in [
        ("prompt", usage.prompt),
        ("completion", usage.completion),
        ("cached_prompt", usage.cached_prompt),
        ("reasoning", usage.reasoning),
    ] {
        if n > 0 {
            metrics
                .tokens
                .with_label_values(&[
                    &record.namespace,
                    &record.workload,
                    &record.model,
                    &record.served_model,
                    &record.pool,
                    kind,
                ])
                .inc_by(n);
        }
    }
    for (kind, n) in [("input", usage.prompt), ("output", usage.completion)] {
        metrics
            .gen_ai_token_usage
            .with_label_values(&[
                gen_ai_operation(op),
                a.provider,
                &record.model,
                &record.served_model,
                &a.endpoint.authority,
                kind,
            ])
            .observe(n as f64);
    }
    if let Some(c) = &a.cost {
        let labels = [
            record.namespace.as_str(),
            record.workload.as_str(),
            record.model.as_str(),
            record.pool.as_str(),
        ];
        let price = (usage.prompt as f64 * c.input_per_1k
            + usage.completion as f64 * c.output_per_1k)
            / 1000.0;
        record.currency = c.currency.clone();
        record.cost = price;
        if price > 0.0 {
            let mut with_currency = labels.to_vec();
            with_currency.push(c.currency.as_str());
            metrics.cost.with_label_values(&with_currency).inc_by(price);
        }
        let gpu = (usage.prompt + usage.completion) as f64 * c.gpu_seconds_per_1k / 1000.0;
        record.gpu_seconds = gpu;
        if gpu > 0.0 {
            metrics.gpu_seconds.with_label_values(&labels).inc_by(gpu);
        }
    }
    if source == UsageSource::Estimated {
        tracing::debug!(model = %record.model, pool = %record.pool, "usage estimated");
    }
}

/// The answer's figures on the request's span (GenAI conventions).
fn response_attributes(record: &UsageRecord, r: &vigie_metering::tap::Response) -> Vec<KeyValue> {
    let mut kv = vec![
        KeyValue::new("gen_ai.usage.input_tokens", record.prompt_tokens as i64),
        KeyValue::new(
            "gen_ai.usage.output_tokens",
            record.completion_tokens as i64,
        ),
        KeyValue::new(
            "vigie.usage.source",
            if record.source == RecordSource::Reported as i32 {
                "reported"
            } else {
                "estimated"
            },
        ),
        KeyValue::new(
            "gen_ai.response.model",
            r.model
                .clone()
                .unwrap_or_else(|| record.served_model.clone()),
        ),
    ];
    if let Some(id) = &r.id {
        kv.push(KeyValue::new("gen_ai.response.id", id.clone()));
    }
    if !r.finish_reasons.is_empty() {
        let list: Vec<opentelemetry::StringValue> =
            r.finish_reasons.iter().cloned().map(Into::into).collect();
        kv.push(KeyValue::new(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(opentelemetry::Array::String(list)),
        ));
    }
    if record.cost > 0.0 {
        kv.push(KeyValue::new("vigie.cost", record.cost));
        kv.push(KeyValue::new(
            "vigie.cost.currency",
            record.currency.clone(),
        ));
    }
    kv
}

/// `gen_ai.operation.name` (Anthropic's Messages API is a chat too).
fn gen_ai_operation(op: Operation) -> &'static str {
    match op {
        Operation::Messages => "chat",
        other => other.name(),
    }
}

/// `gen_ai.provider.name` of a pool kind (the semantic conventions' well-known values
/// where one exists).
fn provider_name(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::Openai => "openai",
        PoolKind::Anthropic => "anthropic",
        PoolKind::Mistral => "mistral_ai",
        PoolKind::Vllm => "vllm",
        PoolKind::OpenaiCompatible | PoolKind::Unspecified => "openai_compatible",
    }
}

/// Requests the previous process died during, recorded as interrupted.
pub fn record_interrupted(shared: &MeterShared, dangling: Vec<UsageRecord>) {
    for mut r in dangling {
        r.ended_at_ms = now_ms().max(r.started_at_ms);
        r.status = 0;
        r.outcome = UsageOutcome::Interrupted as i32;
        r.source = if r.prompt_tokens > 0 {
            RecordSource::Estimated
        } else {
            RecordSource::None
        } as i32;
        shared
            .metrics
            .ledger
            .with_label_values(&["interrupted"])
            .inc();
        write(shared, &r);
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        self.record();
    }
}
