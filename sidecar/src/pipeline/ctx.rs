//! The request context: everything one request carries from intake to its usage record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry::KeyValue;
use vigie_metering::UsageTap;
use vigie_proto::v1::{PoolKind, SensitivityLevel, UsageRecord};
use vigie_quota::{Quota, Reservation};

use super::SidecarApp;
use super::account::{self, Accounting, Answer, gen_ai_operation, provider_name};
use crate::api::request::LlmRequest;
use crate::api::{ApiError, Operation};
use crate::dlp::{Counts, Level, Pseudonyms};
use crate::endpoint::Endpoint;
use crate::identity::User;
use crate::policy::{PoolRuntime, Snapshot};
use crate::telemetry::events::Events;
use crate::telemetry::trace::{RequestSpan, server_attributes};

/// How a request ended, for metrics and connection reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub status: u16,
    /// The HTTP/1 connection is in a clean state and may serve the next request.
    pub reusable: bool,
}

impl Outcome {
    pub fn done(status: u16) -> Self {
        Self {
            status,
            reusable: true,
        }
    }

    pub fn broken(status: u16) -> Self {
        Self {
            status,
            reusable: false,
        }
    }

    pub fn not_reusable(self) -> Self {
        Self::broken(self.status)
    }
}

/// A request refused before anything reached the app: answered with the error.
#[derive(Debug)]
pub struct Refusal {
    pub error: ApiError,
    /// The request body was read whole (the connection may serve the next request).
    pub body_read: bool,
}

impl Refusal {
    /// Refused once the body is read.
    pub fn after_body(error: ApiError) -> Self {
        Self {
            error,
            body_read: true,
        }
    }

    /// Refused before or while reading the body.
    pub fn before_body(error: ApiError) -> Self {
        Self {
            error,
            body_read: false,
        }
    }
}

impl From<ApiError> for Refusal {
    fn from(error: ApiError) -> Self {
        Self::after_body(error)
    }
}

/// One request. It owns the policy snapshot that decides it (taken once at intake and
/// kept to the end, so a reload never changes the rules, nor the version named in its
/// events, under an in-flight request), the parsed request, who sent it, what DLP
/// found, its span, its budget reservation and its usage record; dropping it records
/// the request exactly once ([`account`]).
#[derive(Debug)]
pub struct RequestCtx {
    pub op: Operation,
    pub snapshot: Arc<Snapshot>,
    /// Set by intake once the body is parsed.
    pub request: Option<LlmRequest>,
    pub user: User,
    /// Declared by the app, raised by DLP findings.
    pub level: Option<Level>,
    /// Placeholders sent to the model, restored in the answer.
    pub pseudonyms: Pseudonyms,
    pub span: RequestSpan,
    /// Soft budgets over their limit (told to the app in a header).
    pub budget_warnings: Vec<String>,
    /// Where the app's connection was going before the kernel redirected it here.
    pub original: Option<std::net::SocketAddr>,
    pub(super) record: UsageRecord,
    pub(super) reservation: Option<(Arc<Quota>, Reservation)>,
    pub(super) answer: Option<Answer>,
    pub(super) upstream_broke: bool,
    /// An answer-side block rule stopped the answer.
    pub(super) answer_stopped: bool,
    pub(super) started: Instant,
    pub(super) first_chunk: Option<Duration>,
    pub(super) accounting: Arc<Accounting>,
    /// The request body's share of the sidecar's body budget, held to the end.
    pub(super) body_bytes: super::bounds::BodyReservation,
    events: Events,
}

impl RequestCtx {
    pub fn new(
        app: &SidecarApp,
        op: Operation,
        snapshot: Arc<Snapshot>,
        headers: &http::HeaderMap,
    ) -> Self {
        let accounting = app.accounting.clone();
        Self {
            op,
            snapshot,
            request: None,
            user: User::default(),
            level: None,
            pseudonyms: Pseudonyms::default(),
            span: RequestSpan::start(headers, gen_ai_operation(op)),
            budget_warnings: Vec::new(),
            original: None,
            record: accounting.new_record(op),
            reservation: None,
            answer: None,
            upstream_broke: false,
            answer_stopped: false,
            started: Instant::now(),
            first_chunk: None,
            accounting,
            body_bytes: super::bounds::BodyReservation::default(),
            events: app.events.clone(),
        }
    }

    /// The requested model (empty before the body is read).
    pub fn model(&self) -> &str {
        &self.record.model
    }

    /// The request is read and parsed: the ledger's `begin` line is written.
    pub fn begin(&mut self, request: LlmRequest) {
        self.record.model = request.model().to_string();
        self.record.stream = request.head().stream;
        if self.span.recording() {
            self.span.set_all([
                KeyValue::new("vigie.tenant", self.record.namespace.clone()),
                KeyValue::new("vigie.workload", self.record.workload.clone()),
                KeyValue::new("vigie.stream", self.record.stream),
            ]);
        }
        self.accounting.begin(&mut self.record, request.len());
        self.request = Some(request);
    }

    pub fn set_user(&mut self, user: User) {
        self.record.user.clone_from(&user.name);
        self.record.user_verified = user.verified;
        self.user = user;
    }

    /// The requested model, known to the policy: it names the span.
    pub fn name_span(&self) {
        if self.span.recording() {
            let model = self.model();
            self.span
                .rename(format!("{} {model}", gen_ai_operation(self.op)));
            self.span
                .set(KeyValue::new("gen_ai.request.model", model.to_string()));
        }
    }

    pub fn set_level(&mut self, level: Option<Level>) {
        self.level = level;
        self.record.sensitivity = match level {
            None => SensitivityLevel::Unspecified,
            Some(Level::Public) => SensitivityLevel::Public,
            Some(Level::Internal) => SensitivityLevel::Internal,
            Some(Level::Personal) => SensitivityLevel::Personal,
            Some(Level::Restricted) => SensitivityLevel::Restricted,
        } as i32;
        self.span.set(KeyValue::new(
            "vigie.sensitivity",
            level.map_or("unspecified", Level::as_str),
        ));
    }

    /// The request was admitted by its budgets.
    pub fn reserved(&mut self, quota: Arc<Quota>, reservation: Reservation, warnings: Vec<String>) {
        self.reservation = Some((quota, reservation));
        self.budget_warnings = warnings;
    }

    /// The body for an upstream of this kind that knows the model as `upstream_model`,
    /// and whether it asks for the usage chunk on the app's behalf. vLLM and OpenAI
    /// accept `stream_options`; Mistral and strict OpenAI-compatible servers reject
    /// unknown fields (and Mistral sends usage anyway).
    pub fn body_for(
        &mut self,
        kind: PoolKind,
        upstream_model: &str,
    ) -> Result<(Bytes, bool), ApiError> {
        let Some(request) = self.request.as_mut() else {
            return Err(ApiError::invalid_request("The request has no body."));
        };
        let ask = request.lacks_stream_usage() && matches!(kind, PoolKind::Vllm | PoolKind::Openai);
        Ok((request.body_for(upstream_model, ask)?, ask))
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
        if self.span.recording() {
            self.span.set_all(server_attributes(&endpoint.authority));
            self.span.set_all([
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

    /// Whether the relay rewrites the answer's framing (the usage chunk is stripped).
    pub fn rewrites_answer(&self) -> bool {
        self.answer.as_ref().is_some_and(|a| a.strips)
    }

    /// A chunk of the answer went by: what to forward instead, if anything changed.
    pub fn observe(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        self.answer.as_mut().and_then(|a| a.tap.observe(data))
    }

    /// End of the answer: the rest to forward, if the framing was rewritten.
    pub fn answer_ended(&mut self) -> Option<Vec<u8>> {
        self.answer.as_mut().and_then(|a| a.tap.finish())
    }

    /// The first bytes of the answer went to the app (time to first chunk).
    pub fn first_chunk(&mut self) {
        if self.first_chunk.is_none() {
            let t = self.started.elapsed();
            self.first_chunk = Some(t);
            self.span.event(
                "vigie.first_chunk",
                vec![KeyValue::new("vigie.time_to_first_chunk", t.as_secs_f64())],
            );
        }
    }

    /// The upstream failed mid-answer: billed for what it generated.
    pub fn upstream_broke(&mut self) {
        self.upstream_broke = true;
    }

    /// An answer-side block rule stopped the answer; `seen` is the status the app got
    /// (the upstream's, when the stream had started). The security event says so, and
    /// the usage record's outcome is BLOCKED.
    pub fn answer_stopped(&mut self, seen: u16) {
        self.answer_stopped = true;
        self.blocked("dlp_response", seen);
    }

    /// The status the app received (499: it went away).
    pub fn status(&mut self, status: u16) {
        self.record.status = u32::from(status);
    }

    /// DLP findings in one direction: counters, security events, the span.
    pub fn findings(&mut self, counts: &Counts, direction: &'static str) {
        if counts.is_empty() {
            return;
        }
        for ((detector, action), n) in counts {
            self.accounting
                .metrics
                .dlp_findings
                .with_label_values(&[detector, direction, action])
                .inc_by(*n);
        }
        self.events.dlp_findings(
            counts,
            direction,
            self.model(),
            &self.snapshot.version,
            &self.span.span_context(),
        );
        self.span.add_findings(direction, counts);
    }

    /// A request refused by policy: the security event.
    pub fn blocked(&self, reason: &'static str, status: u16) {
        self.events.request_blocked(
            reason,
            status,
            self.model(),
            &self.snapshot.version,
            &self.span.span_context(),
        );
    }

    /// A budget refused the request, or could not be checked.
    pub fn budget_refused(&self, budget: &str, decision: &'static str) {
        self.span
            .set(KeyValue::new("vigie.budget.decision", decision));
        self.span
            .set(KeyValue::new("vigie.budget.name", budget.to_string()));
        self.events.budget_exceeded(
            budget,
            decision,
            self.model(),
            &self.snapshot.version,
            &self.span.span_context(),
        );
    }
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        account::record(self);
    }
}
