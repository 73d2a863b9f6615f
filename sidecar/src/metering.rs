//! Metering glue: one [`Meter`] per request, fed by the relay, recorded exactly once when
//! it is dropped — whether the answer completed, the upstream broke or the app left.
//! The figures come from `vigie_metering` (plain Rust).

use bytes::Bytes;
use vigie_metering::{UsageSource, UsageTap, estimate};
use vigie_wire::api::Operation;

use vigie_proto::v1::PoolCost;

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
}

#[derive(Debug)]
pub struct Meter<'a> {
    metrics: &'a Metrics,
    op: Operation,
    who: Attribution,
    /// The request as sent upstream, for a prompt estimate when the upstream reports none.
    body: Bytes,
    /// The sidecar added `include_usage`: the usage chunk is not the app's to see.
    strip_usage: bool,
    answer: Option<Answer>,
}

impl<'a> Meter<'a> {
    pub fn new(metrics: &'a Metrics, op: Operation, who: Attribution) -> Self {
        Self {
            metrics,
            op,
            who,
            body: Bytes::new(),
            strip_usage: false,
            answer: None,
        }
    }

    /// Rewrites a streaming request so that the upstream reports its usage.
    pub fn prepare(&mut self, body: Bytes) -> Bytes {
        let (rewritten, strip) = vigie_metering::request::ask_for_usage(self.op, &body);
        self.strip_usage = strip;
        self.body = rewritten.map(Bytes::from).unwrap_or(body);
        self.body.clone()
    }

    /// An upstream answer starts (the last one wins: earlier attempts were not relayed).
    pub fn answer(&mut self, pool: &PoolRuntime, served_model: &str, status: u16, sse: bool) {
        self.answer = Some(Answer {
            pool: pool.name.clone(),
            served_model: served_model.to_string(),
            status,
            tap: UsageTap::new(self.op, sse, self.strip_usage && sse),
            cost: pool.cost.clone(),
        });
    }

    /// Whether the relay must rewrite the answer's framing (the usage chunk is stripped).
    pub fn rewrites(&self) -> bool {
        self.answer
            .as_ref()
            .is_some_and(|a| self.strip_usage && a.status < 400)
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
        let (op, body) = (self.op, &self.body);
        let (usage, source) = a.tap.result(|| estimate::prompt_tokens(op, body));
        self.metrics
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
                self.metrics
                    .tokens
                    .with_label_values(&[
                        &self.who.namespace,
                        &self.who.workload,
                        &self.who.model,
                        &a.served_model,
                        &a.pool,
                        kind,
                    ])
                    .inc_by(n);
            }
        }
        if let Some(c) = &a.cost {
            let who = [
                self.who.namespace.as_str(),
                self.who.workload.as_str(),
                self.who.model.as_str(),
                a.pool.as_str(),
            ];
            let price = (usage.prompt as f64 * c.input_per_1k
                + usage.completion as f64 * c.output_per_1k)
                / 1000.0;
            if price > 0.0 {
                let mut labels = who.to_vec();
                labels.push(c.currency.as_str());
                self.metrics.cost.with_label_values(&labels).inc_by(price);
            }
            let gpu = (usage.prompt + usage.completion) as f64 * c.gpu_seconds_per_1k / 1000.0;
            if gpu > 0.0 {
                self.metrics.gpu_seconds.with_label_values(&who).inc_by(gpu);
            }
        }
        if source == UsageSource::Estimated {
            tracing::debug!(model = %self.who.model, pool = %a.pool, "usage estimated");
        }
    }
}

impl Drop for Meter<'_> {
    fn drop(&mut self) {
        self.record();
    }
}
