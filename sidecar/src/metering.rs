//! Metering glue: one [`Meter`] per request, fed by the relay, recorded exactly once when
//! it is dropped — whether the answer completed, the upstream broke or the app left.
//! The figures come from `vigie_metering` (plain Rust).

use bytes::Bytes;
use vigie_metering::{Usage, UsageSource, UsageTap, estimate};
use vigie_wire::api::Operation;

use vigie_proto::v1::{PoolCost, PoolKind};

use crate::policy::PoolRuntime;
use crate::telemetry::Metrics;

/// Who and what a request is billed to.
#[derive(Debug, Clone, Default)]
pub struct Attribution {
    pub namespace: String,
    pub workload: String,
    /// The model name the app asked for.
    pub model: String,
}

#[derive(Debug)]
struct Answer {
    pool: String,
    served_model: String,
    status: u16,
    tap: UsageTap,
    cost: Option<PoolCost>,
    strips: bool,
}

#[derive(Debug)]
pub struct Meter<'a> {
    metrics: &'a Metrics,
    op: Operation,
    who: Attribution,
    /// The request, for a prompt estimate when the upstream reports none.
    body: Bytes,
    /// The request with `stream_options.include_usage` added (streaming OpenAI-style
    /// requests that did not ask for it).
    with_usage: Option<Bytes>,
    answer: Option<Answer>,
}

impl<'a> Meter<'a> {
    pub fn new(metrics: &'a Metrics, op: Operation, who: Attribution) -> Self {
        Self {
            metrics,
            op,
            who,
            body: Bytes::new(),
            with_usage: None,
            answer: None,
        }
    }

    /// Prepares, for a streaming request that does not ask for usage, the variant that
    /// does (so that the upstream reports exact figures).
    pub fn prepare(&mut self, body: &Bytes, stream: bool) {
        // Only streams can lack usage: no second parse of other bodies.
        self.with_usage = stream
            .then(|| vigie_metering::request::ask_for_usage(self.op, body).0)
            .flatten()
            .map(Bytes::from);
        self.body = body.clone();
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
        served_model: &str,
        status: u16,
        sse: bool,
        asked_usage: bool,
    ) {
        self.answer = Some(Answer {
            pool: pool.name.clone(),
            served_model: served_model.to_string(),
            status,
            tap: UsageTap::new(self.op, sse, asked_usage && sse),
            cost: pool.cost.clone(),
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

    fn record(&mut self) {
        let Some(a) = self.answer.take() else {
            // No upstream answer (refused, unreachable): nothing was generated.
            return;
        };
        if a.status >= 400 {
            self.metrics
                .usage_records
                .with_label_values(&["upstream_error"])
                .inc();
            return;
        }
        let estimate_needed = a.tap.needs_estimate();
        let (metrics, op) = (self.metrics.clone(), self.op);
        let who = std::mem::take(&mut self.who);
        let body = std::mem::take(&mut self.body);
        let job = move || {
            let (usage, source) = a.tap.result(|| estimate::prompt_tokens(op, &body));
            account(&metrics, &who, &a, usage, source);
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

/// Adds one answer's figures to the counters.
fn account(metrics: &Metrics, who: &Attribution, a: &Answer, usage: Usage, source: UsageSource) {
    metrics
        .usage_records
        .with_label_values(&[source.as_str()])
        .inc();
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
                    &who.namespace,
                    &who.workload,
                    &who.model,
                    &a.served_model,
                    &a.pool,
                    kind,
                ])
                .inc_by(n);
        }
    }
    if let Some(c) = &a.cost {
        let labels = [
            who.namespace.as_str(),
            who.workload.as_str(),
            who.model.as_str(),
            a.pool.as_str(),
        ];
        let price = (usage.prompt as f64 * c.input_per_1k
            + usage.completion as f64 * c.output_per_1k)
            / 1000.0;
        if price > 0.0 {
            let mut with_currency = labels.to_vec();
            with_currency.push(c.currency.as_str());
            metrics.cost.with_label_values(&with_currency).inc_by(price);
        }
        let gpu = (usage.prompt + usage.completion) as f64 * c.gpu_seconds_per_1k / 1000.0;
        if gpu > 0.0 {
            metrics.gpu_seconds.with_label_values(&labels).inc_by(gpu);
        }
    }
    if source == UsageSource::Estimated {
        tracing::debug!(model = %who.model, pool = %a.pool, "usage estimated");
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        self.record();
    }
}
