//! Account: what a request leaves behind. A `begin` line in the usage ledger once the
//! request is read; when its [`RequestCtx`] drops — whether the answer completed, was
//! refused, the upstream broke or the app left — exactly one record (`end` line), the
//! token and cost counters, the budget settlement, and the end of the span. Figures come
//! from `vigie_metering` (plain Rust); the ledger is `vigie_ledger`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use vigie_ledger::Ledger;
use vigie_metering::{Usage, UsageSource, UsageTap, estimate};
use vigie_proto::v1::{PoolCost, PoolKind, UsageOutcome, UsageRecord, UsageSource as RecordSource};
use vigie_quota::{Quota, Reservation};
use vigie_wire::api::Operation;

use opentelemetry::KeyValue;

use super::RequestCtx;
use crate::endpoint::Endpoint;
use crate::telemetry::Metrics;

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

/// What every request's accounting shares.
#[derive(Debug, Clone)]
pub struct Accounting {
    pub metrics: Metrics,
    pub ledger: Option<Arc<Ledger>>,
    pub ids: Arc<RecordIds>,
    pub who: Attribution,
}

impl Accounting {
    /// A request's record, before anything is known of it but who sent it.
    pub(super) fn new_record(&self, op: Operation) -> UsageRecord {
        UsageRecord {
            id: self.ids.next(),
            started_at_ms: now_ms(),
            namespace: self.who.namespace.clone(),
            workload: self.who.workload.clone(),
            pod: self.who.pod.clone(),
            operation: op.name().to_string(),
            ..Default::default()
        }
    }

    /// The ledger's `begin` line. Should the process die before the end, the restart
    /// records the request as interrupted with this rough prompt figure (4 bytes per
    /// token); the real figure replaces it once the answer is counted.
    pub(super) fn begin(&self, record: &mut UsageRecord, body_len: usize) {
        let Some(ledger) = &self.ledger else { return };
        record.prompt_tokens = body_len as u64 / 4;
        let written = ledger.begin(record);
        record.prompt_tokens = 0;
        if let Err(e) = written {
            self.metrics.ledger.with_label_values(&["error"]).inc();
            tracing::error!(error = %e, "usage ledger: begin not written");
        }
    }
}

/// The answer being relayed (pool, endpoint and served model go straight into the
/// record).
#[derive(Debug)]
pub(super) struct Answer {
    /// `gen_ai.provider.name`.
    pub provider: &'static str,
    /// Its `authority` is `server.address`.
    pub endpoint: Arc<Endpoint>,
    pub status: u16,
    pub tap: UsageTap,
    pub cost: Option<PoolCost>,
    /// The injected usage chunk is removed from the answer.
    pub strips: bool,
}

/// Header naming the soft budgets a request went over.
pub const BUDGET_WARNING_HEADER: &str = "x-vigie-budget-warning";

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Records a request once, when its context drops.
pub(super) fn record(ctx: &mut RequestCtx) {
    let mut record = std::mem::take(&mut ctx.record);
    record.ended_at_ms = now_ms().max(record.started_at_ms);
    let ended = std::time::SystemTime::now();
    let mut trace = std::mem::take(&mut ctx.span);
    let shared = ctx.accounting.clone();
    let quota = ctx.reservation.take();
    let Some(a) = ctx.answer.take() else {
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
        _ if ctx.upstream_broke => "upstream_broken",
        // Refused by the sidecar after the upstream answered (answer-side DLP).
        (_, s @ 400..) => {
            status_text = s.to_string();
            status_text.as_str()
        }
        _ => "",
    };
    let (op, model) = (gen_ai_operation(ctx.op), record.model.as_str());
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
        .observe(ctx.started.elapsed().as_secs_f64());
    if let Some(t) = ctx.first_chunk {
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
    record.outcome = if ctx.answer_stopped {
        UsageOutcome::Blocked
    } else if record.status == 499 {
        UsageOutcome::ClientAborted
    } else if ctx.upstream_broke {
        UsageOutcome::UpstreamError
    } else {
        UsageOutcome::Completed
    } as i32;
    let estimate_needed = a.tap.needs_estimate();
    let op = ctx.op;
    let request = ctx.request.take();
    let job = move || {
        let mut record = record;
        let (usage, source) = a
            .tap
            .result(|| request.map_or(0, |r| estimate::prompt_tokens(&r.into_tree())));
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

/// Budgets get back what their reservation overestimated (or are charged the excess).
fn settle(quota: Option<&(Arc<Quota>, Reservation)>, record: &UsageRecord) {
    if let Some((quota, reservation)) = quota {
        let tokens = (record.prompt_tokens + record.completion_tokens) as f64;
        quota.settle(reservation, tokens, record.cost, &record.currency);
    }
}

/// The request's one record, to the ledger.
fn write(shared: &Accounting, record: &UsageRecord) {
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
pub(super) fn gen_ai_operation(op: Operation) -> &'static str {
    match op {
        Operation::Messages => "chat",
        other => other.name(),
    }
}

/// `gen_ai.provider.name` of a pool kind (the semantic conventions' well-known values
/// where one exists).
pub(super) fn provider_name(kind: PoolKind) -> &'static str {
    match kind {
        PoolKind::Openai => "openai",
        PoolKind::Anthropic => "anthropic",
        PoolKind::Mistral => "mistral_ai",
        PoolKind::Vllm => "vllm",
        PoolKind::OpenaiCompatible | PoolKind::Unspecified => "openai_compatible",
    }
}

/// Requests the previous process died during, recorded as interrupted.
pub fn record_interrupted(shared: &Accounting, dangling: Vec<UsageRecord>) {
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
