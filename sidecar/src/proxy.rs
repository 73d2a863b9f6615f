//! Pingora glue: one HTTP request from the app in, one response out.
//!
//! Vigie implements Pingora's `HttpServerApp` rather than `ProxyHttp` because the request
//! body must be read before the upstream is chosen (the model is in the body) and
//! because the response stream is Vigie's to shape (errors mid-stream, and later DLP and
//! metering). See docs/adr/0001-pingora-runtime-own-request-pipeline.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use opentelemetry::KeyValue;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use tracing::{debug, info, warn};

use crate::api::{self, ApiError, Operation, request::RequestHead};
use crate::dlp::{self, Counts, Pseudonyms, response::ResponseDlp};
use crate::metering::{Meter, MeterShared, user};
use crate::policy::{PolicyStore, Snapshot};
use crate::routing::{Attempts, PlanError, RouteContext};
use crate::telemetry::trace::UserAttribute;
use crate::telemetry::{Metrics, events};
use crate::upstream::{self, AttemptError, Exchange, Upstream};

#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    /// Endpoints tried per request when connecting fails.
    pub max_attempts: usize,
    /// The calling workload, for route conditions and attribution.
    pub namespace: String,
    pub workload: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where the end user of a request is read from.
    pub users: user::UserSettings,
    /// Adds `x-vigie-route` (pool, endpoint, reason, attempts) to answers; for debugging.
    pub route_debug_header: bool,
}

/// Sensitivity header when the policy has no DLP section to name one.
const DEFAULT_SENSITIVITY_HEADER: &str = "x-vigie-sensitivity";

#[derive(Debug)]
pub struct SidecarApp {
    pub store: Arc<PolicyStore>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    pub meter: Arc<MeterShared>,
    /// Budget counters and their allowance (leased from the control plane, or local).
    pub quota: Arc<vigie_quota::Quota>,
    pub settings: Settings,
    /// Retries may add at most 20 % to the request rate (plus 10 per second).
    pub retry_budget: vigie_balance::RetryBudget,
    /// Original destinations of connections the egress programs redirected here.
    pub original: Option<Arc<crate::routing::original::OriginalDestinations>>,
}

/// How a request ended, for metrics and connection reuse.
struct Outcome {
    status: u16,
    /// The HTTP/1 connection is in a clean state and may serve the next request.
    reusable: bool,
}

impl Outcome {
    fn done(status: u16) -> Self {
        Self {
            status,
            reusable: true,
        }
    }
    fn broken(status: u16) -> Self {
        Self {
            status,
            reusable: false,
        }
    }
}

#[async_trait]
impl HttpServerApp for SidecarApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        match session.read_request().await {
            Ok(true) => {}
            Ok(false) => return None,
            Err(e) => {
                debug!(error = %e, "failed to read request header");
                return None;
            }
        }
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
        let started = Instant::now();
        self.metrics.inflight.inc();
        let (operation, outcome) = self.handle(&mut session).await;
        self.metrics.inflight.dec();
        let op = operation.map_or("unknown", Operation::name);
        self.metrics
            .requests
            .with_label_values(&[op, &outcome.status.to_string()])
            .inc();
        self.metrics
            .duration
            .with_label_values(&[op])
            .observe(started.elapsed().as_secs_f64());
        if !outcome.reusable {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        match session.finish().await {
            Ok(stream) => stream.map(|s| ReusedHttpStream::from_reusable_stream(s, settings)),
            Err(_) => None,
        }
    }
}

impl SidecarApp {
    async fn handle(&self, session: &mut ServerSession) -> (Option<Operation>, Outcome) {
        let header = session.req_header();
        let operation = match Operation::route(&header.method, header.uri.path()) {
            Ok(op) => op,
            Err(e) => {
                // The body was not read: the connection cannot be reused.
                let status = e.status;
                respond_error(session, &e).await;
                return (None, Outcome::broken(status));
            }
        };
        // Every request but a model listing gets exactly one usage record.
        let mut meter = (operation != Operation::ListModels)
            .then(|| Meter::new(&self.meter, operation, &session.req_header().headers));
        let Some(snapshot) = self.store.current() else {
            respond_error(
                session,
                &ApiError::no_policy().with_flavour(operation.flavour()),
            )
            .await;
            if let Some(m) = meter.as_mut() {
                m.status(503);
            }
            return (Some(operation), Outcome::broken(503));
        };
        let Some(mut meter) = meter else {
            return (Some(operation), list_models(session, &snapshot).await);
        };
        let outcome = match self
            .forward(session, operation, &snapshot, &mut meter)
            .await
        {
            Ok(outcome) => outcome,
            Err((e, reusable)) => {
                let e = e.with_flavour(operation.flavour());
                respond_error(session, &e).await;
                Outcome {
                    status: e.status,
                    reusable,
                }
            }
        };
        meter.status(outcome.status);
        (Some(operation), outcome)
    }

    /// Reads the body, picks an endpoint, forwards, and streams the answer back.
    /// An `Err` is answered by the caller (nothing has been sent to the client yet);
    /// its flag says whether the request body was fully read (connection reusable).
    async fn forward(
        &self,
        session: &mut ServerSession,
        op: Operation,
        snapshot: &Snapshot,
        meter: &mut Meter,
    ) -> Result<Outcome, (ApiError, bool)> {
        let looped = session
            .req_header()
            .headers
            .get_all(http::header::VIA)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.contains(crate::upstream::VIA)));
        if looped {
            return Err((ApiError::loop_detected(), false));
        }
        let mut body = read_body(session, self.settings.max_body_bytes)
            .await
            .map_err(|e| (e, false))?;
        let RequestHead {
            model,
            stream,
            max_tokens,
            temperature,
            top_p,
        } = api::request::parse_head(&body).map_err(|e| (e, true))?;
        meter.begin(&model, stream, body.len());
        let user = user::identify(&self.settings.users, &session.req_header().headers)
            .map_err(|e| (e, true))?;
        meter.user(&user);
        if meter.trace.recording() {
            let t = snapshot.policy.telemetry.as_ref();
            let mode = UserAttribute::parse(t.map_or("", |t| t.user_attribute.as_str()));
            let mut kv = vec![KeyValue::new(
                "vigie.policy.version",
                snapshot.version.clone(),
            )];
            kv.extend(
                mode.value(&user.name)
                    .map(|u| KeyValue::new("vigie.user", u)),
            );
            kv.extend(max_tokens.map(|n| KeyValue::new("gen_ai.request.max_tokens", n as i64)));
            kv.extend(temperature.map(|t| KeyValue::new("gen_ai.request.temperature", t)));
            kv.extend(top_p.map(|t| KeyValue::new("gen_ai.request.top_p", t)));
            meter.trace.set_all(kv);
        }
        if snapshot.routes_for(&model).is_none() {
            return Err((ApiError::model_not_found(&model), true));
        }
        // Only a model the policy knows names the span (anything else is the app's text).
        meter.trace_model(&model);

        // The level the app declares; DLP may raise it.
        let sensitivity_header = snapshot
            .dlp
            .as_ref()
            .map_or(DEFAULT_SENSITIVITY_HEADER, |d| {
                d.sensitivity_header.as_str()
            });
        // An unreadable declaration is refused, never taken as public (fail closed).
        let declared = match session.req_header().headers.get(sensitivity_header) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(dlp::parse_level) {
                Some(l) => Some(l),
                None => {
                    return Err((ApiError::bad_sensitivity(sensitivity_header), true));
                }
            },
        };
        let mut level = declared;

        // DLP on what the model will read, before anything leaves the pod.
        let mut pseudonyms = Pseudonyms::default();
        if let Some(policy) = &snapshot.dlp {
            let scan = dlp::scan_request(policy, op, &body, declared).map_err(|e| (e, true))?;
            self.record_dlp(meter, &scan.counts, "request");
            level = scan.level;
            if !scan.blocked.is_empty() {
                self.metrics
                    .dlp_blocked
                    .with_label_values(&["request"])
                    .inc();
                let e = ApiError::dlp_blocked_request(&scan.blocked);
                self.blocked(meter, "dlp_request", e.status);
                return Err((e, true));
            }
            if let Some(rewritten) = scan.body {
                body = Bytes::from(rewritten);
            }
            pseudonyms = scan.pseudonyms;
        }
        self.metrics
            .sensitivity
            .with_label_values(&[level.map_or("unspecified", |l| l.as_str())])
            .inc();
        meter.level(level);
        meter.trace.set(KeyValue::new(
            "vigie.sensitivity",
            level.map_or("unspecified", |l| l.as_str()),
        ));
        // Where the app's connection was going, if the kernel redirected it here: only
        // asked while the policy has redirect rules.
        let redirects = snapshot
            .policy
            .egress
            .as_ref()
            .is_some_and(|e| !e.redirect.is_empty());
        let original = match (
            &self.original,
            session.client_addr().and_then(|a| a.as_inet()),
        ) {
            (Some(o), Some(peer)) if redirects => o.lookup(*peer).await,
            _ => None,
        };
        let ctx = RouteContext {
            level,
            headers: &session.req_header().headers,
            namespace: &self.settings.namespace,
            labels: &self.settings.labels,
            original,
        };
        let targets = snapshot.plan(&model, &ctx).map_err(|e| {
            let err = match e {
                PlanError::UnknownModel => ApiError::model_not_found(&model),
                PlanError::NotCleared(level) => {
                    self.metrics
                        .route_refusals
                        .with_label_values(&[level.as_str()])
                        .inc();
                    let e = ApiError::no_cleared_pool(&model, level.as_str());
                    self.blocked(meter, "sensitivity_not_cleared", e.status);
                    e
                }
            };
            (err, true)
        })?;
        if !snapshot.budgets.is_empty() {
            self.admit(
                snapshot,
                &targets,
                &model,
                &user.name,
                body.len(),
                max_tokens,
                meter,
            )
            .await
            .map_err(|e| (e, true))?;
        }
        let answer_dlp = ResponseDlp::new(snapshot.dlp.as_deref(), &pseudonyms);
        meter.prepare(&body, stream);

        // Prefix affinity only matters where a pool has several endpoints to choose from.
        let prefix = targets
            .iter()
            .any(|t| {
                snapshot
                    .pools
                    .get(t.pool)
                    .is_some_and(|p| p.endpoints.len() > 1)
            })
            .then(|| api::request::prefix_key(op, &body))
            .flatten()
            .map(|k| vigie_balance::prefix_hash([k.as_bytes()]));
        let mut attempts = Attempts::new(
            snapshot,
            &targets,
            self.settings.max_attempts,
            vigie_balance::Request {
                prefix,
                ignore_health: false,
            },
        );
        let mut last_error = None;
        // An error answer kept while another endpoint is tried: relayed if none is left.
        let mut last_answer = None;
        self.retry_budget.deposit(Instant::now());
        let mut tries = 0usize;
        while let Some(attempt) = attempts.next() {
            // Every attempt after the first spends from the sidecar's retry budget.
            if tries > 0 && !self.retry_budget.withdraw(Instant::now()) {
                self.metrics
                    .upstream_attempts
                    .with_label_values(&["-", "retry_budget_exhausted"])
                    .inc();
                if attempt.pick.probe {
                    // The probe slot was taken by this pick: give it back.
                    snapshot.pools[attempt.target.pool].endpoints[attempt.endpoint]
                        .balance
                        .record(vigie_balance::Outcome::Neutral, None, Instant::now());
                }
                break;
            }
            tries += 1;
            let pool = &snapshot.pools[attempt.target.pool];
            let endpoint = &pool.endpoints[attempt.endpoint];
            let reason = if attempt.panic {
                "panic"
            } else if attempt.pick.probe {
                "probe"
            } else {
                attempt.pick.reason.as_str()
            };
            if attempt.panic {
                warn!(pool = %pool.name, model = %model, "no eligible endpoint on the route: trying one regardless of health");
            }
            self.metrics
                .route_picks
                .with_label_values(&[&pool.name, reason])
                .inc();
            // Asking for the usage chunk only where the upstream accepts the field.
            let (base, asked_usage) = meter.body_for(pool.kind, &body);
            let payload = if attempt.target.upstream_model == model {
                base
            } else {
                Bytes::from(
                    api::request::rewrite_model(&base, &attempt.target.upstream_model)
                        .map_err(|e| (e, true))?,
                )
            };
            let _inflight = endpoint.start();
            let attempt_span = meter.trace.attempt(&pool.name, endpoint, tries, reason);
            meter
                .trace
                .set(KeyValue::new("vigie.retries", tries as i64 - 1));
            let sent = Instant::now();
            match self
                .upstream
                .send(
                    endpoint,
                    &pool.timeouts,
                    pool.credential.as_ref(),
                    session.req_header(),
                    payload,
                    attempt_span.context(),
                )
                .await
            {
                Ok(mut exchange) => {
                    let ttfb = sent.elapsed();
                    if self.settings.route_debug_header {
                        let mut route = format!(
                            "pool={}; endpoint={}; reason={reason}; attempts={}",
                            pool.name,
                            endpoint.url,
                            self.settings.max_attempts.max(1) - attempts.remaining()
                        );
                        if let Some(dst) = original {
                            route.push_str(&format!("; original={dst}"));
                        }
                        exchange.route = Some(route);
                    }
                    let status = exchange
                        .session
                        .response_header()
                        .map_or(502, |h| h.status.as_u16());
                    attempt_span.status(status);
                    if status == 429
                        && let Some(wait) = exchange
                            .session
                            .response_header()
                            .and_then(|h| h.headers.get(http::header::RETRY_AFTER))
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.trim().parse::<u64>().ok())
                    {
                        endpoint
                            .balance
                            .throttle(Duration::from_secs(wait), Instant::now());
                    }
                    // 5xx says the endpoint is unwell; a 4xx (429 included) is the request's
                    // or the quota's problem: no verdict, and no latency sample (fast
                    // errors must not attract traffic).
                    let (health, sample) = match status {
                        500.. => (vigie_balance::Outcome::Failure, None),
                        400..=499 => (vigie_balance::Outcome::Neutral, None),
                        _ => (vigie_balance::Outcome::Success, Some(ttfb)),
                    };
                    endpoint.balance.record(health, sample, Instant::now());
                    self.metrics
                        .ttfb
                        .with_label_values(&[&pool.name])
                        .observe(ttfb.as_secs_f64());
                    if (status >= 500 || status == 429) && attempts.remaining() > 0 {
                        // Nothing has reached the client: another endpoint or pool may
                        // answer (a 429's Retry-After is honoured by not asking this
                        // endpoint again for this request).
                        self.metrics
                            .upstream_attempts
                            .with_label_values(&[&pool.name, &format!("status_{status}")])
                            .inc();
                        warn!(pool = %pool.name, endpoint = %endpoint.url, status, "upstream error status, trying the next endpoint");
                        last_answer = Some((
                            exchange,
                            pool,
                            endpoint,
                            attempt.target.upstream_model.as_str(),
                        ));
                        continue;
                    }
                    self.metrics
                        .upstream_attempts
                        .with_label_values(&[&pool.name, "response"])
                        .inc();
                    meter.answer(
                        pool,
                        endpoint,
                        &attempt.target.upstream_model,
                        status,
                        exchange
                            .session
                            .response_header()
                            .is_some_and(upstream::is_event_stream),
                        asked_usage,
                    );
                    if tries > 1 {
                        info!(operation = op.name(), model = %model, pool = %pool.name, endpoint = %endpoint.url, reason, attempts = tries, "answered after retries");
                    } else {
                        debug!(operation = op.name(), model = %model, pool = %pool.name, endpoint = %endpoint.url, reason, "forwarded");
                    }
                    // The attempt ends with the answer's head; the request span goes on.
                    drop(attempt_span);
                    return Ok(self.deliver(session, exchange, op, answer_dlp, meter).await);
                }
                Err(e) => {
                    endpoint
                        .balance
                        .record(vigie_balance::Outcome::Failure, None, Instant::now());
                    let outcome = match &e {
                        AttemptError::Connect(_) => "connect_error",
                        AttemptError::FirstByteTimeout => "first_byte_timeout",
                        AttemptError::Broken(_) => "broken",
                    };
                    attempt_span.fail(outcome);
                    self.metrics
                        .upstream_attempts
                        .with_label_values(&[&pool.name, outcome])
                        .inc();
                    warn!(pool = %pool.name, endpoint = %endpoint.url, error = %e, "upstream attempt failed");
                    // The request may have reached the upstream and be generating: a
                    // broken exchange is not sent again (no duplicate generation).
                    let retry = !matches!(e, AttemptError::Broken(_));
                    last_error = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        if let Some((exchange, pool, endpoint, served)) = last_answer {
            let status = exchange
                .session
                .response_header()
                .map_or(502, |h| h.status.as_u16());
            meter.answer(pool, endpoint, served, status, false, false);
            return Ok(self.deliver(session, exchange, op, answer_dlp, meter).await);
        }
        let err = match last_error {
            None => ApiError::no_endpoint(&model),
            Some(AttemptError::FirstByteTimeout) => ApiError::upstream_timeout(&model),
            Some(AttemptError::Connect(_)) | Some(AttemptError::Broken(_)) => {
                ApiError::upstream_unreachable(&model)
            }
        };
        Err((err, true))
    }

    /// Sends the upstream's answer to the app: as is, or through answer-side DLP.
    async fn deliver(
        &self,
        session: &mut ServerSession,
        exchange: Exchange,
        op: Operation,
        answer_dlp: Option<ResponseDlp<'_>>,
        meter: &mut Meter,
    ) -> Outcome {
        match answer_dlp {
            None => self.relay(session, exchange, op, meter).await,
            Some(filter) => {
                self.relay_filtered(session, exchange, op, filter, meter)
                    .await
            }
        }
    }

    /// Streams the upstream response to the client chunk by chunk, without buffering.
    async fn relay(
        &self,
        session: &mut ServerSession,
        mut ex: Exchange,
        op: Operation,
        meter: &mut Meter,
    ) -> Outcome {
        let Some((status, sse, mut header)) = answer_head(&ex) else {
            return Outcome::broken(502);
        };
        meter.warn_header(&mut header);
        if meter.rewrites() {
            // The injected usage chunk is removed: the length changes.
            header.remove_header(&http::header::CONTENT_LENGTH);
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return Outcome::broken(499);
        }
        // A client that goes away must release the upstream at once, even mid-stream.
        session.set_abort_on_close(true);
        loop {
            tokio::select! {
                chunk = ex.session.read_response_body() => match chunk {
                    Ok(Some(data)) => {
                        let data = match meter.observe(&data) {
                            None => data,
                            Some(rewritten) => Bytes::from(rewritten),
                        };
                        if !data.is_empty() {
                            if session.write_response_body(data, false).await.is_err() {
                                debug!("client went away mid-response");
                                return Outcome::broken(499);
                            }
                            meter.first_chunk();
                        }
                    }
                    Ok(None) => {
                        if let Some(rest) = meter.finish()
                            && !rest.is_empty()
                            && session.write_response_body(Bytes::from(rest), false).await.is_err()
                        {
                            return Outcome::broken(499);
                        }
                        break;
                    }
                    Err(e) => {
                        warn!(error = %e, "upstream failed mid-response");
                        meter.upstream_broke();
                        if sse {
                            // Close the stream with an error event the SDK raises as an APIError.
                            let event = api::sse::error_event(&ApiError::upstream_broken().with_flavour(op.flavour()));
                            let clean = session.write_response_body(event, true).await.is_ok()
                                && session.finish_body().await.is_ok();
                            return Outcome { status, reusable: clean };
                        }
                        return Outcome::broken(status);
                    }
                },
                _ = session.read_body_or_idle(true) => {
                    debug!("client closed the connection mid-response");
                    return Outcome::broken(499);
                }
            }
        }
        if session.finish_body().await.is_err() {
            return Outcome::broken(status);
        }
        if ex.session.response_done() {
            self.upstream.release(ex).await;
        }
        Outcome::done(status)
    }
}

impl SidecarApp {
    /// Budgets: reserve the request's estimate (prompt ≈ bytes / 4, plus max_tokens or
    /// the policy's default), or refuse it.
    #[allow(clippy::too_many_arguments)]
    async fn admit(
        &self,
        snapshot: &Snapshot,
        targets: &[&crate::policy::Target],
        model: &str,
        user: &str,
        body_len: usize,
        max_tokens: Option<u64>,
        meter: &mut Meter,
    ) -> Result<(), ApiError> {
        let prompt = body_len as f64 / 4.0;
        let completion = max_tokens.unwrap_or(snapshot.default_max_tokens) as f64;
        // Cost at the dearest price, per currency, of the pools the request may reach.
        let mut cost: Vec<(String, f64)> = Vec::new();
        for c in targets
            .iter()
            .filter_map(|t| snapshot.pools[t.pool].cost.as_ref())
        {
            let v = (prompt * c.input_per_1k + completion * c.output_per_1k) / 1000.0;
            match cost.iter_mut().find(|(k, _)| *k == c.currency) {
                Some(e) => e.1 = e.1.max(v),
                None => cost.push((c.currency.clone(), v)),
            }
        }
        let request = vigie_quota::Request {
            namespace: self.settings.namespace.clone(),
            workload: self.settings.workload.clone(),
            user: user.to_string(),
            model: model.to_string(),
            tokens: prompt + completion,
            cost,
        };
        let decision = self
            .quota
            .admit(
                &snapshot.budgets,
                &request,
                snapshot.budgets_fail_open,
                crate::metering::now_ms(),
            )
            .await;
        // A telemetry event per decision that is not a plain admission (never the user:
        // it may be personal data).
        let count = |budget: &str, what: &str| {
            self.metrics
                .budget_decisions
                .with_label_values(&[budget, what])
                .inc();
            info!(target: "vigie::budget", budget, decision = what, model, "budget decision");
        };
        match decision {
            vigie_quota::Decision::Admit {
                reservation,
                warnings,
            } => {
                for w in &warnings {
                    count(w, "warned");
                }
                meter.trace.set(KeyValue::new(
                    "vigie.budget.decision",
                    if warnings.is_empty() {
                        "admitted"
                    } else {
                        "warned"
                    },
                ));
                meter.reserved(self.quota.clone(), reservation, warnings);
                Ok(())
            }
            vigie_quota::Decision::Reject {
                budget,
                retry_after_s,
            } => {
                count(&budget, "rejected");
                self.budget_refused(meter, snapshot, &budget, "rejected");
                Err(ApiError::budget_exceeded(&budget, retry_after_s))
            }
            vigie_quota::Decision::Unavailable { budget } => {
                count(&budget, "unavailable");
                self.budget_refused(meter, snapshot, &budget, "unavailable");
                Err(ApiError::quota_unavailable(&budget))
            }
        }
    }

    /// DLP findings: counters, security events, and the request's span.
    fn record_dlp(&self, meter: &mut Meter, counts: &Counts, direction: &'static str) {
        if counts.is_empty() {
            return;
        }
        for ((detector, action), n) in counts {
            self.metrics
                .dlp_findings
                .with_label_values(&[detector, direction, action])
                .inc_by(*n);
        }
        let version = self
            .store
            .current()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        events::dlp_findings(
            counts,
            direction,
            meter.model(),
            &version,
            &meter.trace.span_context(),
        );
        meter.trace.add_findings(direction, counts);
    }

    fn budget_refused(
        &self,
        meter: &Meter,
        snapshot: &Snapshot,
        budget: &str,
        decision: &'static str,
    ) {
        meter
            .trace
            .set(KeyValue::new("vigie.budget.decision", decision));
        meter
            .trace
            .set(KeyValue::new("vigie.budget.name", budget.to_string()));
        events::budget_exceeded(
            budget,
            decision,
            meter.model(),
            &snapshot.version,
            &meter.trace.span_context(),
        );
    }

    /// A request refused by policy: the security event.
    fn blocked(&self, meter: &Meter, reason: &'static str, status: u16) {
        let version = self
            .store
            .current()
            .map(|s| s.version.clone())
            .unwrap_or_default();
        events::request_blocked(
            reason,
            status,
            meter.model(),
            &version,
            &meter.trace.span_context(),
        );
    }

    /// Like [`SidecarApp::relay`], with answer-side DLP and placeholder restoration.
    /// Streams are rewritten event by event; complete answers are read whole (their
    /// length changes), rewritten, then sent.
    async fn relay_filtered(
        &self,
        session: &mut ServerSession,
        mut ex: Exchange,
        op: Operation,
        filter: ResponseDlp<'_>,
        meter: &mut Meter,
    ) -> Outcome {
        let Some((status, sse, mut header)) = answer_head(&ex) else {
            return Outcome::broken(502);
        };
        meter.warn_header(&mut header);
        header.remove_header(&http::header::CONTENT_LENGTH);
        if !sse {
            return self
                .relay_json(session, ex, op, filter, header, meter)
                .await;
        }
        if session
            .write_response_header(Box::new(header))
            .await
            .is_err()
        {
            return Outcome::broken(499);
        }
        session.set_abort_on_close(true);
        let mut sse_filter = filter.sse(op);
        loop {
            tokio::select! {
                chunk = ex.session.read_response_body() => {
                    let (out, last) = match chunk {
                        Ok(Some(data)) => match meter.observe(&data) {
                            None => (sse_filter.push(&data), false),
                            Some(rewritten) => (sse_filter.push(&rewritten), false),
                        },
                        Ok(None) => {
                            let rest = meter.finish().unwrap_or_default();
                            let out = sse_filter.push(&rest).and_then(|mut out| {
                                out.extend(sse_filter.finish()?);
                                Ok(out)
                            });
                            (out, true)
                        }
                        Err(e) => {
                            warn!(error = %e, "upstream failed mid-response");
                            meter.upstream_broke();
                            self.record_dlp(meter, sse_filter.counts(), "response");
                            let event = api::sse::error_event(&ApiError::upstream_broken().with_flavour(op.flavour()));
                            let clean = session.write_response_body(event, true).await.is_ok()
                                && session.finish_body().await.is_ok();
                            return Outcome { status, reusable: clean };
                        }
                    };
                    match out {
                        Ok(bytes) => {
                            if !bytes.is_empty() {
                                if session.write_response_body(Bytes::from(bytes), false).await.is_err() {
                                    return Outcome::broken(499);
                                }
                                meter.first_chunk();
                            }
                        }
                        Err(blocked) => {
                            self.record_dlp(meter, sse_filter.counts(), "response");
                            self.metrics.dlp_blocked.with_label_values(&["response"]).inc();
                            let e = ApiError::dlp_blocked_response(&blocked.0).with_flavour(op.flavour());
                            self.blocked(meter, "dlp_response", e.status);
                            let clean = session.write_response_body(api::sse::error_event(&e), true).await.is_ok()
                                && session.finish_body().await.is_ok();
                            // The upstream is dropped mid-answer: its connection is not reused.
                            return Outcome { status, reusable: clean };
                        }
                    }
                    if last {
                        break;
                    }
                }
                _ = session.read_body_or_idle(true) => {
                    debug!("client closed the connection mid-response");
                    return Outcome::broken(499);
                }
            }
        }
        self.record_dlp(meter, sse_filter.counts(), "response");
        if session.finish_body().await.is_err() {
            return Outcome::broken(status);
        }
        if ex.session.response_done() {
            self.upstream.release(ex).await;
        }
        Outcome::done(status)
    }

    async fn relay_json(
        &self,
        session: &mut ServerSession,
        mut ex: Exchange,
        op: Operation,
        mut filter: ResponseDlp<'_>,
        mut header: ResponseHeader,
        meter: &mut Meter,
    ) -> Outcome {
        let status = header.status.as_u16();
        let mut body = BytesMut::new();
        loop {
            match ex.session.read_response_body().await {
                Ok(Some(data)) => {
                    if body.len() + data.len() > MAX_FILTERED_ANSWER {
                        return self.respond_answer_too_large(session, op).await;
                    }
                    body.extend_from_slice(&data);
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "upstream failed mid-response");
                    meter.upstream_broke();
                    respond_error(
                        session,
                        &ApiError::upstream_broken().with_flavour(op.flavour()),
                    )
                    .await;
                    return Outcome::broken(502);
                }
            }
        }
        meter.observe(&body);
        meter.finish();
        let filtered = filter.filter_json(op, &body);
        self.record_dlp(meter, &filter.counts, "response");
        let out = match filtered {
            Ok(out) => out,
            Err(blocked) => {
                self.metrics
                    .dlp_blocked
                    .with_label_values(&["response"])
                    .inc();
                let e = ApiError::dlp_blocked_response(&blocked.0).with_flavour(op.flavour());
                self.blocked(meter, "dlp_response", e.status);
                respond_error(session, &e).await;
                return Outcome::done(e.status);
            }
        };
        if header
            .insert_header(http::header::CONTENT_LENGTH, out.len().to_string())
            .is_err()
        {
            return Outcome::broken(502);
        }
        meter.first_chunk();
        let ok = session
            .write_response_header(Box::new(header))
            .await
            .is_ok()
            && session
                .write_response_body(Bytes::from(out), true)
                .await
                .is_ok()
            && session.finish_body().await.is_ok();
        if ex.session.response_done() {
            self.upstream.release(ex).await;
        }
        if ok {
            Outcome::done(status)
        } else {
            Outcome::broken(status)
        }
    }

    /// An answer too large to check is not passed through unchecked.
    async fn respond_answer_too_large(
        &self,
        session: &mut ServerSession,
        op: Operation,
    ) -> Outcome {
        let e = ApiError::upstream_broken().with_flavour(op.flavour());
        respond_error(session, &e).await;
        Outcome::broken(502)
    }
}

/// Largest complete (non-streamed) answer read whole for DLP.
const MAX_FILTERED_ANSWER: usize = 32 * 1024 * 1024;

/// Reads the whole request body, refusing more than `limit` bytes.
async fn read_body(session: &mut ServerSession, limit: usize) -> Result<Bytes, ApiError> {
    let declared = session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    let expects_continue = session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue {
        session.write_continue_response().await.map_err(|_| {
            ApiError::invalid_request("The connection failed while reading the request.")
        })?;
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(4096).min(limit));
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if buf.len() + chunk.len() > limit {
                    return Err(ApiError::body_too_large(limit));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(buf.freeze()),
            Err(_) => {
                return Err(ApiError::invalid_request(
                    "The request body could not be read.",
                ));
            }
        }
    }
}

async fn list_models(session: &mut ServerSession, snapshot: &Snapshot) -> Outcome {
    let data: Vec<serde_json::Value> = snapshot
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "vigie"}))
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    respond_json(session, 200, &body, None).await
}

async fn respond_error(session: &mut ServerSession, e: &ApiError) {
    respond_json(session, e.status, &e.body(), e.retry_after).await;
}

async fn respond_json(
    session: &mut ServerSession,
    status: u16,
    body: &serde_json::Value,
    retry_after: Option<u64>,
) -> Outcome {
    let bytes = Bytes::from(body.to_string());
    let header = ResponseHeader::build(status, Some(3)).and_then(|mut h| {
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, bytes.len().to_string())?;
        if let Some(s) = retry_after {
            h.insert_header(http::header::RETRY_AFTER, s.to_string())?;
        }
        Ok(h)
    });
    let Ok(header) = header else {
        return Outcome::broken(500);
    };
    let ok = session
        .write_response_header(Box::new(header))
        .await
        .is_ok()
        && session.write_response_body(bytes, true).await.is_ok()
        && session.finish_body().await.is_ok();
    if ok {
        Outcome::done(status)
    } else {
        Outcome::broken(status)
    }
}

/// The upstream answer's status, whether it is an event stream, and the header for the
/// app (hop-by-hop headers removed, the optional `x-vigie-route` debugging header added).
fn answer_head(ex: &Exchange) -> Option<(u16, bool, ResponseHeader)> {
    let up = ex.session.response_header()?;
    let mut header = upstream::downstream_response(up).ok()?;
    if let Some(route) = &ex.route {
        let _ = header.insert_header("x-vigie-route", route.as_str());
    }
    Some((up.status.as_u16(), upstream::is_event_stream(up), header))
}
