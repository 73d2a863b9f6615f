//! The request path: one HTTP request from the app in, one answer out, as named stages
//! over one [`RequestCtx`]. Read [`SidecarApp::serve`] to follow a request:
//!
//! intake (operation, body parsed once, end user) → guard (sensitivity, request DLP) →
//! route (cleared pools, in order) → budget (reserve or refuse) → attempts (endpoints,
//! retries, health) → relay (answer streamed back through answer DLP and the usage tap).
//!
//! Each stage is a plain function in its own file; the context owns the policy snapshot
//! that decides the request to its end, and records the request once when dropped
//! ([`account`]). Pingora is only the transport here: Vigie implements its
//! `HttpServerApp` because the body must be read before an upstream is chosen and the
//! answer is Vigie's to shape (ADR 0001, ADR 0011).

pub mod account;
mod attempts;
pub mod bounds;
mod budget;
mod catalogue;
mod ctx;
mod guard;
mod intake;
mod relay;
mod respond;
mod route;

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ReusedHttpStream, ServerApp};
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;

pub use ctx::{Outcome, Refusal, RequestCtx};

use crate::api::{ApiError, Operation};
use crate::identity::UserSettings;
use crate::policy::{PolicyStore, Snapshot};
use crate::telemetry::Metrics;
use crate::telemetry::events::Events;
use crate::telemetry::trace::UserKey;
use crate::upstream::Upstream;
use crate::upstream::original::OriginalDestinations;

/// What the sidecar's configuration fixes for every request.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_body_bytes: usize,
    /// Endpoints tried per request (connect errors, 5xx, 429, first-byte timeouts).
    pub max_attempts: usize,
    /// The calling workload, for route conditions and attribution.
    pub namespace: String,
    pub workload: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// Where the end user of a request is read from.
    pub users: UserSettings,
    /// Adds `x-vigie-route` (pool, endpoint, reason, attempts) to answers; for debugging.
    pub route_debug_header: bool,
    /// Connections, request-head time, body bytes in flight.
    pub limits: bounds::Limits,
}

/// Everything requests share: the policy in force, connections, counters, budgets.
#[derive(Debug)]
pub struct SidecarApp {
    pub store: Arc<PolicyStore>,
    pub upstream: Upstream,
    pub metrics: Metrics,
    pub events: Events,
    /// Key of the end-user pseudonyms on spans.
    pub user_key: UserKey,
    /// Usage records: ids, attribution, the ledger.
    pub accounting: Arc<account::Accounting>,
    /// Budget counters and their allowance (leased from the control plane, or local).
    pub quota: Arc<vigie_quota::Quota>,
    pub settings: Settings,
    /// Retries may add at most 20 % to the request rate (plus 10 per second).
    pub retry_budget: vigie_balance::RetryBudget,
    /// Original destinations of connections the egress programs redirected here.
    pub original: Option<Arc<OriginalDestinations>>,
    /// Decides requests that arrive while no policy applies (they get 503).
    no_policy: Arc<Snapshot>,
    /// What the apps can make the sidecar hold.
    pub bounds: bounds::Bounds,
}

impl SidecarApp {
    #[expect(
        clippy::too_many_arguments,
        reason = "one constructor for the shared state; each part is built at start-up"
    )]
    pub fn new(
        store: Arc<PolicyStore>,
        upstream: Upstream,
        metrics: Metrics,
        events: Events,
        user_key: UserKey,
        accounting: Arc<account::Accounting>,
        quota: Arc<vigie_quota::Quota>,
        settings: Settings,
        original: Option<Arc<OriginalDestinations>>,
    ) -> Self {
        Self {
            store,
            upstream,
            metrics,
            events,
            user_key,
            accounting,
            quota,
            bounds: bounds::Bounds::new(settings.limits),
            settings,
            retry_budget: vigie_balance::RetryBudget::default(),
            original,
            no_policy: Arc::new(Snapshot::none()),
        }
    }

    /// One request, start to end.
    pub async fn handle(&self, session: &mut ServerSession) -> (Option<Operation>, Outcome) {
        if session.req_header().method == http::Method::OPTIONS {
            return (None, respond::options(session).await);
        }
        let op = match intake::operation(session) {
            Ok(op) => op,
            Err(e) => {
                // The connection stays open when the body was small enough to discard.
                let reusable = intake::discard_body(session).await;
                let outcome = respond::error(session, &e).await;
                return (
                    None,
                    if reusable {
                        outcome
                    } else {
                        outcome.not_reusable()
                    },
                );
            }
        };
        let snapshot = self.store.current();
        // Answered from the policy, without an upstream (no usage record).
        match op {
            Operation::ListModels | Operation::RetrieveModel => {
                let outcome = catalogue::models(self, session, snapshot.as_deref(), op).await;
                return (Some(op), outcome);
            }
            Operation::CountTokens => {
                let outcome = catalogue::count_tokens(self, session, snapshot.as_deref()).await;
                return (Some(op), outcome);
            }
            _ => {}
        }
        let Some(snapshot) = snapshot else {
            // Still one usage record (refused), like every other request.
            let mut ctx = RequestCtx::new(
                self,
                op,
                self.no_policy.clone(),
                &session.req_header().headers,
            );
            let e = ApiError::no_policy().with_flavour(op.flavour());
            let outcome = respond::error(session, &e).await.not_reusable();
            ctx.status(outcome.status);
            return (Some(op), outcome);
        };
        let mut ctx = RequestCtx::new(self, op, snapshot, &session.req_header().headers);
        let outcome = match self.serve(session, &mut ctx).await {
            Ok(outcome) => outcome,
            Err(refusal) => respond::refusal(session, op, refusal).await,
        };
        ctx.status(outcome.status);
        (Some(op), outcome)
    }

    /// The stages. An `Err` is answered by the caller: nothing has reached the app yet.
    async fn serve(
        &self,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> Result<Outcome, Refusal> {
        intake::read(self, session, ctx).await?;
        guard::check(self, &session.req_header().headers, ctx).await?;
        // The plan borrows the request's own snapshot, never the store's current one.
        let snapshot = ctx.snapshot.clone();
        let targets = route::plan(self, session, ctx, &snapshot).await?;
        budget::admit(self, ctx, &snapshot, &targets).await?;
        let answer = attempts::forward(self, session, ctx, &snapshot, &targets).await?;
        if let Some(request) = ctx.request.as_mut() {
            request.forwarded();
        }
        Ok(relay::deliver(self, session, ctx, answer).await)
    }
}

/// What the listener runs: the connection bound, HTTP/2 with prior knowledge (h2c)
/// refused in so many words, then Pingora's HTTP/1 session and the stages
/// ([`SidecarApp`]). h2c is not served: Pingora's HTTP/2 server has no deadline on an
/// idle connection and runs each stream as a task of its own, outside the connection
/// bound — one client could hold every connection slot or keep hundreds of upstream
/// calls running (ADR 0021).
pub struct Listener(pub Arc<SidecarApp>);

/// The server's SETTINGS, then GOAWAY with HTTP_1_1_REQUIRED (RFC 9113 §6.8, §7): what
/// an HTTP/2 client is told before the connection closes.
const H2_REFUSAL: [u8; 26] = [
    0, 0, 0, 0x4, 0, 0, 0, 0, 0, // SETTINGS, empty
    0, 0, 8, 0x7, 0, 0, 0, 0, 0, // GOAWAY, 8 bytes, stream 0
    0, 0, 0, 0, // last stream id: none
    0, 0, 0, 0xd, // HTTP_1_1_REQUIRED
];

#[async_trait]
impl ServerApp for Listener {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        use tokio::io::AsyncWriteExt as _;
        let app = &self.0;
        // Past the connection limit a new connection is closed before anything is read.
        let Some(_slot) = app.bounds.connection() else {
            app.metrics.connections_refused.inc();
            tracing::debug!("connection closed: the sidecar has as many as it may hold");
            return None;
        };
        // HTTP/2's preface starts `PRI` (RFC 9113 §3.4), no HTTP/1 method does; every
        // request has three bytes. Read within the head deadline.
        let mut head = [0u8; 3];
        let peeked =
            tokio::time::timeout(app.bounds.limits.header_timeout, stream.try_peek(&mut head))
                .await;
        if !matches!(peeked, Ok(Ok(true))) {
            tracing::debug!("connection closed: no request head within the deadline");
            return None;
        }
        if &head == b"PRI" {
            app.metrics.connections_refused.inc();
            tracing::info!(
                "connection refused: HTTP/2 with prior knowledge (h2c) is not served; use HTTP/1.1"
            );
            let _ = stream.write_all(&H2_REFUSAL).await;
            let _ = stream.flush().await;
            // What the client already sent is read (a little, briefly) before closing:
            // closing on unread bytes resets the connection, and the client would see a
            // reset instead of the GOAWAY.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                let mut left: usize = 64 * 1024;
                while left > 0 {
                    match tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => left = left.saturating_sub(n),
                    }
                }
            })
            .await;
            return None;
        }
        app.process_new(stream, shutdown).await
    }
}

#[async_trait]
impl HttpServerApp for SidecarApp {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        // Requests pipelined on one connection are answered one after the other, in
        // order (RFC 9112 §9.3.2): the bytes of the next one, read with this one, are
        // kept for it (off, Pingora answers the first and drops the rest).
        session.set_pipelining_enabled(true);
        // One deadline for the whole head (and the keep-alive wait before it): a client
        // trickling one byte at a time is cut off like an idle one.
        let timeout = self.bounds.limits.header_timeout;
        match tokio::time::timeout(timeout, session.read_request()).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => return None,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "failed to read request header");
                return None;
            }
            Err(_) => {
                tracing::debug!("connection closed: no request head within the deadline");
                return None;
            }
        }
        let idle = timeout.as_secs().max(1);
        session.set_keepalive(if *shutdown.borrow() { None } else { Some(idle) });
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
