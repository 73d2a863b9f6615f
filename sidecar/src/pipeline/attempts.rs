//! Attempts: the plan's endpoints tried in order until one answers. Connect errors,
//! first-byte timeouts, 5xx and 429 move to the next endpoint, then the next pool,
//! within `max_attempts` and the sidecar's retry budget; what each outcome says about
//! the endpoint is `vigie_balance::classify`. Nothing is retried once a byte of the
//! answer has reached the app, and a broken exchange (the request may be generating
//! upstream) is never sent again; a first-byte timeout is (the endpoint is counted as
//! failed), as is a 5xx or 429 answer.

use std::time::Instant;

use opentelemetry::KeyValue;
use pingora::protocols::http::ServerSession;
use tracing::{debug, info, warn};
use vigie_balance::{AttemptFailure, Outcome as Health};

use super::{Refusal, RequestCtx, SidecarApp};
use crate::api::ApiError;
use crate::policy::{Attempts, Snapshot, Target};
use crate::upstream::{self, AttemptError, Exchange};

/// The answer the app gets: the first acceptable one, or the last error answer when no
/// endpoint is left to try.
pub async fn forward(
    app: &SidecarApp,
    session: &ServerSession,
    ctx: &mut RequestCtx,
    snapshot: &Snapshot,
    targets: &[&Target],
) -> Result<Exchange, Refusal> {
    let model = ctx.model().to_string();
    // Prefix affinity only matters where a pool has several endpoints to choose from.
    let prefix = targets
        .iter()
        .any(|t| {
            snapshot
                .pools
                .get(t.pool)
                .is_some_and(|p| p.endpoints.len() > 1)
        })
        .then(|| ctx.request.as_mut().and_then(|r| r.prefix_key()))
        .flatten()
        .map(|k| vigie_balance::prefix_hash([k.as_bytes()]));
    let mut attempts = Attempts::new(
        snapshot,
        targets,
        app.settings.max_attempts,
        vigie_balance::Request {
            prefix,
            ignore_health: false,
        },
    );
    let mut last_error = None;
    // An error answer kept while another endpoint is tried: relayed if none is left.
    let mut last_answer = None;
    app.retry_budget.deposit(Instant::now());
    let mut tries = 0usize;
    while let Some(attempt) = attempts.next() {
        let pool = &snapshot.pools[attempt.target.pool];
        let endpoint = &pool.endpoints[attempt.endpoint];
        // Every attempt after the first spends from the sidecar's retry budget.
        if tries > 0 && !app.retry_budget.withdraw(Instant::now()) {
            app.metrics
                .upstream_attempts
                .with_label_values(&["-", "retry_budget_exhausted"])
                .inc();
            if attempt.pick.probe {
                // The probe slot was taken by this pick: give it back.
                endpoint
                    .balance
                    .record(Health::Neutral, None, Instant::now());
            }
            break;
        }
        tries += 1;
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
        app.metrics
            .route_picks
            .with_label_values(&[&pool.name, reason])
            .inc();
        let upstream_model = attempt.target.upstream_model.as_str();
        // Asking for the usage chunk only where the upstream accepts the field.
        let (payload, asked_usage) = match ctx.body_for(pool.kind, upstream_model) {
            Ok(body) => body,
            Err(e) => {
                if attempt.pick.probe {
                    endpoint
                        .balance
                        .record(Health::Neutral, None, Instant::now());
                }
                return Err(e.into());
            }
        };
        let _inflight = endpoint.start();
        let span = ctx.span.attempt(&pool.name, endpoint, tries, reason);
        ctx.span
            .set(KeyValue::new("vigie.retries", tries as i64 - 1));
        let sent = Instant::now();
        let result = app
            .upstream
            .send(
                endpoint,
                &pool.timeouts,
                pool.credential.as_ref(),
                session.req_header(),
                payload,
                span.context(),
            )
            .await;
        let mut exchange = match result {
            Ok(exchange) => exchange,
            Err(e) => {
                let failure = match &e {
                    AttemptError::Connect(_) => AttemptFailure::Connect,
                    AttemptError::FirstByteTimeout => AttemptFailure::FirstByteTimeout,
                    AttemptError::Broken(_) => AttemptFailure::Broken,
                };
                endpoint
                    .balance
                    .record(Health::Failure, None, Instant::now());
                span.fail(failure.as_str());
                app.metrics
                    .upstream_attempts
                    .with_label_values(&[&pool.name, failure.as_str()])
                    .inc();
                warn!(pool = %pool.name, endpoint = %endpoint.url, error = %e, "upstream attempt failed");
                last_error = Some(e);
                if failure.retry_elsewhere() {
                    continue;
                }
                break;
            }
        };
        let ttfb = sent.elapsed();
        if app.settings.route_debug_header {
            let mut route = format!(
                "pool={}; endpoint={}; reason={reason}; attempts={}",
                pool.name,
                endpoint.url,
                app.settings.max_attempts.max(1) - attempts.remaining()
            );
            if let Some(dst) = ctx.original {
                route.push_str(&format!("; original={dst}"));
            }
            exchange.route = Some(route);
        }
        let (status, verdict, sse) = match exchange.session.response_header() {
            Some(h) => (
                h.status.as_u16(),
                vigie_balance::classify(h.status.as_u16(), &h.headers),
                upstream::is_event_stream(h),
            ),
            None => (
                502,
                vigie_balance::classify(502, &http::HeaderMap::new()),
                false,
            ),
        };
        span.status(status);
        if let Some(wait) = verdict.throttle {
            endpoint.balance.throttle(wait, Instant::now());
        }
        endpoint.balance.record(
            verdict.health,
            verdict.sample_latency.then_some(ttfb),
            Instant::now(),
        );
        app.metrics
            .ttfb
            .with_label_values(&[&pool.name])
            .observe(ttfb.as_secs_f64());
        if verdict.retry_elsewhere && attempts.remaining() > 0 {
            // Nothing has reached the app: another endpoint or pool may answer (a
            // 429's Retry-After is honoured by not asking this endpoint again).
            app.metrics
                .upstream_attempts
                .with_label_values(&[&pool.name, &format!("status_{status}")])
                .inc();
            warn!(pool = %pool.name, endpoint = %endpoint.url, status, "upstream error status, trying the next endpoint");
            last_answer = Some((exchange, pool, endpoint, upstream_model));
            continue;
        }
        app.metrics
            .upstream_attempts
            .with_label_values(&[&pool.name, "response"])
            .inc();
        ctx.answer(pool, endpoint, upstream_model, status, sse, asked_usage);
        if tries > 1 {
            info!(operation = ctx.op.name(), model = %model, pool = %pool.name, endpoint = %endpoint.url, reason, attempts = tries, "answered after retries");
        } else {
            debug!(operation = ctx.op.name(), model = %model, pool = %pool.name, endpoint = %endpoint.url, reason, "forwarded");
        }
        // The attempt span ends with the answer's head; the request span goes on.
        return Ok(exchange);
    }
    if let Some((exchange, pool, endpoint, served)) = last_answer {
        let status = exchange
            .session
            .response_header()
            .map_or(502, |h| h.status.as_u16());
        ctx.answer(pool, endpoint, served, status, false, false);
        return Ok(exchange);
    }
    Err(match last_error {
        None => ApiError::no_endpoint(&model),
        Some(AttemptError::FirstByteTimeout) => ApiError::upstream_timeout(&model),
        Some(AttemptError::Connect(_) | AttemptError::Broken(_)) => {
            ApiError::upstream_unreachable(&model)
        }
    }
    .into())
}
