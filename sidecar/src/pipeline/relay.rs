//! Relay: the upstream's answer to the app. Streamed chunk by chunk as it arrives
//! (SSE frame by frame), through the usage tap and, with answer-side DLP or placeholders
//! to restore, through the SSE filter (exact streaming: only what may still become a
//! match is held back); a complete JSON answer under DLP is read whole, rewritten and
//! sent with its new length. If the app goes away the upstream is dropped at once; if
//! the upstream breaks mid-stream an SSE error event ends the stream cleanly.

use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;
use tracing::{debug, warn};

use super::account::BUDGET_WARNING_HEADER;
use super::{Outcome, RequestCtx, SidecarApp, respond};
use crate::api::{self, ApiError};
use crate::dlp::Counts;
use crate::dlp::response::{Blocked, ResponseDlp, SseFilter};
use crate::encoding;
use crate::upstream::{self, Exchange};
use std::sync::Arc;

use vigie_dlp::policy::CompiledDlp;

/// Largest complete (non-streamed) answer read whole for DLP.
const MAX_FILTERED_ANSWER: usize = 32 * 1024 * 1024;

pub async fn deliver(
    app: &SidecarApp,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    ex: Exchange,
) -> Outcome {
    let Some((status, sse, mut header)) = answer_head(&ex) else {
        return Outcome::broken(502);
    };
    // A redirect would send the app's own request — as it was before DLP, with the
    // app's credentials — wherever the upstream says: never relayed.
    if (300..400).contains(&status) {
        warn!(status, "upstream answered with a redirect; not relayed");
        let e = ApiError::upstream_redirect().with_flavour(ctx.op.flavour());
        return respond::error(session, &e).await.not_reusable();
    }
    if !ctx.budget_warnings.is_empty() {
        let _ = header.insert_header(BUDGET_WARNING_HEADER, ctx.budget_warnings.join(", "));
    }
    // The filter borrows the request's snapshot and placeholders while the context
    // goes on being fed.
    let snapshot = ctx.snapshot.clone();
    let pseudonyms = std::mem::take(&mut ctx.pseudonyms);
    let filter = ResponseDlp::new(snapshot.dlp.as_deref(), &pseudonyms);
    if let Some(f) = &filter {
        let carrying: Vec<http::HeaderName> = header
            .headers
            .iter()
            .filter(|(_, v)| v.to_str().map_or(true, |v| f.header_carries_data(v)))
            .map(|(n, _)| n.clone())
            .collect();
        for name in carrying {
            header.remove_header(&name);
        }
    }
    // A streamed request's successful answer is read as the SDKs read it — as an event
    // stream — whatever its content type says.
    let sse = sse || (filter.is_some() && ctx.record.stream && status < 400);
    // Upstreams are asked for identity; one that compresses anyway is decoded before
    // DLP reads the answer (whole answers), or stopped (streams are not decoded).
    let coding = header
        .headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string())
        .filter(|c| !encoding::is_identity(c));
    if filter.is_some() && sse && coding.is_some() {
        let e = ApiError::upstream_encoding().with_flavour(ctx.op.flavour());
        return respond::error(session, &e).await.not_reusable();
    }
    match filter {
        Some(filter) if !sse => {
            header.remove_header(&http::header::CONTENT_LENGTH);
            header.remove_header(&http::header::CONTENT_ENCODING);
            whole(app, session, ctx, ex, filter, header, coding).await
        }
        filter => {
            let filter = filter.map(|f| f.sse(ctx.op));
            if filter.is_some() || ctx.rewrites_answer() {
                // Events are rewritten, or the injected usage chunk removed.
                header.remove_header(&http::header::CONTENT_LENGTH);
            }
            stream(app, session, ctx, ex, status, sse, header, filter).await
        }
    }
}

#[expect(
    clippy::too_many_arguments,
    reason = "the stage's inputs: transport, context, the answer and its head, the filter"
)]
async fn stream(
    app: &SidecarApp,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
    status: u16,
    sse: bool,
    header: ResponseHeader,
    mut filter: Option<SseFilter<'_>>,
) -> Outcome {
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
            chunk = ex.session.read_response_body() => {
                let (out, last) = match chunk {
                    Ok(Some(data)) => {
                        let data = ctx.observe(&data).map_or(data, Bytes::from);
                        (through(filter.as_mut(), data), false)
                    }
                    Ok(None) => {
                        let rest = ctx.answer_ended().map_or_else(Bytes::new, Bytes::from);
                        (through_end(filter.as_mut(), rest), true)
                    }
                    Err(e) => {
                        warn!(error = %e, "upstream failed mid-response");
                        ctx.upstream_broke();
                        if let Some(f) = &filter {
                            ctx.findings(f.counts(), "response");
                        }
                        if !sse {
                            return Outcome::broken(status);
                        }
                        // Close the stream with an error event the SDK raises as an APIError.
                        let e = ApiError::upstream_broken().with_flavour(ctx.op.flavour());
                        return end_with_event(session, &e, status).await;
                    }
                };
                match out {
                    Ok(bytes) => {
                        if !bytes.is_empty() {
                            if session.write_response_body(bytes, false).await.is_err() {
                                debug!("client went away mid-response");
                                return Outcome::broken(499);
                            }
                            ctx.first_chunk();
                        }
                    }
                    Err(blocked) => {
                        if let Some(f) = &filter {
                            ctx.findings(f.counts(), "response");
                        }
                        // The app already has the upstream's status: the event names it.
                        let e = answer_blocked(app, ctx, &blocked, status);
                        // The upstream is dropped mid-answer: its connection is not reused.
                        return end_with_event(session, &e, status).await;
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
    if let Some(f) = &filter {
        ctx.findings(f.counts(), "response");
    }
    if session.finish_body().await.is_err() {
        return Outcome::broken(status);
    }
    release(app, ex).await;
    Outcome::done(status)
}

/// A chunk through the SSE filter, if there is one.
fn through(filter: Option<&mut SseFilter<'_>>, data: Bytes) -> Result<Bytes, Blocked> {
    match filter {
        None => Ok(data),
        Some(f) => f.push(&data).map(Bytes::from),
    }
}

/// The last bytes, then whatever the filter still held.
fn through_end(filter: Option<&mut SseFilter<'_>>, rest: Bytes) -> Result<Bytes, Blocked> {
    match filter {
        None => Ok(rest),
        Some(f) => {
            let mut out = f.push(&rest)?;
            out.extend(f.finish()?);
            Ok(Bytes::from(out))
        }
    }
}

/// A complete answer under DLP: read whole (bounded), rewritten, sent with its length.
async fn whole(
    app: &SidecarApp,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    mut ex: Exchange,
    mut filter: ResponseDlp<'_>,
    mut header: ResponseHeader,
    coding: Option<String>,
) -> Outcome {
    let status = header.status.as_u16();
    let mut body = BytesMut::new();
    loop {
        match ex.session.read_response_body().await {
            Ok(Some(data)) => {
                if body.len() + data.len() > MAX_FILTERED_ANSWER {
                    // Too large to check: not passed through unchecked.
                    let e = ApiError::upstream_broken().with_flavour(ctx.op.flavour());
                    return respond::error(session, &e).await.not_reusable();
                }
                body.extend_from_slice(&data);
            }
            Ok(None) => break,
            Err(e) => {
                warn!(error = %e, "upstream failed mid-response");
                ctx.upstream_broke();
                let e = ApiError::upstream_broken().with_flavour(ctx.op.flavour());
                return respond::error(session, &e).await.not_reusable();
            }
        }
    }
    let body = match coding {
        None => body.freeze(),
        Some(c) => match encoding::decode(&c, body.freeze(), MAX_FILTERED_ANSWER) {
            Ok(plain) => plain,
            Err(e) => {
                warn!(error = %e, "compressed answer could not be decoded for DLP");
                let e = ApiError::upstream_encoding().with_flavour(ctx.op.flavour());
                return respond::error(session, &e).await.not_reusable();
            }
        },
    };
    ctx.observe(&body);
    ctx.answer_ended();
    // Like a request's, a large answer is read on the blocking pool, with its own copy
    // of the placeholders: the worker thread goes on serving the other requests.
    let external = ctx.snapshot.dlp.clone().filter(|d| d.external_answers());
    let (filtered, counts) = if let Some(dlp) = external {
        let filtered = external_answer(app, &mut filter, &body, &dlp).await;
        (filtered, std::mem::take(&mut filter.counts))
    } else if body.len() <= super::guard::OFF_WORKER_BYTES {
        let filtered = filter.filter_body(&body);
        (filtered, std::mem::take(&mut filter.counts))
    } else {
        let dlp = ctx.snapshot.dlp.clone();
        let names = filter.pseudonyms().clone();
        let answer = body.clone();
        tokio::task::spawn_blocking(move || match ResponseDlp::new(dlp.as_deref(), &names) {
            Some(mut f) => (f.filter_body(&answer), std::mem::take(&mut f.counts)),
            None => (Ok(answer.to_vec()), Counts::new()),
        })
        .await
        .unwrap_or_else(|_| (Err(Blocked::uninspectable()), Counts::new()))
    };
    ctx.findings(&counts, "response");
    let out = match filtered {
        Ok(out) => out,
        Err(blocked) => {
            let e = answer_blocked(app, ctx, &blocked, 0);
            return respond::error(session, &e).await;
        }
    };
    if header
        .insert_header(http::header::CONTENT_LENGTH, out.len().to_string())
        .is_err()
    {
        return Outcome::broken(502);
    }
    ctx.first_chunk();
    let ok = session
        .write_response_header(Box::new(header))
        .await
        .is_ok()
        && session
            .write_response_body(Bytes::from(out), true)
            .await
            .is_ok()
        && session.finish_body().await.is_ok();
    release(app, ex).await;
    if ok {
        Outcome::done(status)
    } else {
        Outcome::broken(status)
    }
}

/// An answer stopped by a DLP block rule: counted, reported with the status the app
/// sees (`sent`: the one already sent mid-stream, or 0 when the error is the whole
/// answer), and the error to send.
/// A complete answer that external detectors read too: answer rules, then each
/// detector (on what the rules and the detectors before left), then placeholders
/// back. Not JSON: the answer rules alone. A detector that fails closed stops the
/// answer as uninspectable.
async fn external_answer(
    app: &SidecarApp,
    filter: &mut ResponseDlp<'_>,
    body: &[u8],
    dlp: &Arc<CompiledDlp>,
) -> Result<Vec<u8>, Blocked> {
    // Like the other paths, a large answer's rules run on the blocking pool (with a
    // copy of the placeholders), so the worker goes on serving other requests.
    let first = if body.len() <= super::guard::OFF_WORKER_BYTES {
        filter.begin_json(body)
    } else {
        let names = filter.pseudonyms().clone();
        let answer = body.to_vec();
        let dlp = Arc::clone(dlp);
        let (first, counts) =
            tokio::task::spawn_blocking(move || match ResponseDlp::new(Some(&dlp), &names) {
                Some(mut f) => (f.begin_json(&answer), std::mem::take(&mut f.counts)),
                None => (None, Counts::new()),
            })
            .await
            .unwrap_or_else(|_| (Some(Err(Blocked::uninspectable())), Counts::new()));
        for (k, v) in counts {
            *filter.counts.entry(k).or_default() += v;
        }
        first
    };
    let Some(first) = first else {
        return filter.filter_body(body);
    };
    let (mut json, mut changed) = first?;
    let mut batch = crate::dlp::external::batch_of(&json);
    for d in dlp.external.iter().filter(|d| d.answers) {
        if batch.is_empty() {
            break;
        }
        let metric = |outcome: &str, effect: &str| {
            app.metrics
                .dlp_external
                .with_label_values(&[d.name.as_str(), outcome, effect])
                .inc();
        };
        match upstream::detector::analyze(d, &batch.text).await {
            Ok(found) => {
                metric("ok", "used");
                let located = batch.locate(&found, &d.entities);
                if filter.apply_external(&mut json, d, located)? {
                    changed = true;
                    batch = crate::dlp::external::batch_of(&json);
                }
            }
            Err(e) if d.fail_open => {
                metric(e.outcome(), "failed_open");
                warn!(detector = %d.name, error = %e, "external detector failed on an answer; it goes on with the built-in findings (fail open)");
            }
            Err(e) => {
                metric(e.outcome(), "failed_closed");
                warn!(detector = %d.name, error = %e, "external detector failed on an answer; the answer is stopped (fail closed)");
                return Err(Blocked::uninspectable());
            }
        }
    }
    filter.finish_json(json, changed, body)
}

fn answer_blocked(
    app: &SidecarApp,
    ctx: &mut RequestCtx,
    blocked: &Blocked,
    sent: u16,
) -> ApiError {
    app.metrics
        .dlp_blocked
        .with_label_values(&["response"])
        .inc();
    let e = ApiError::dlp_blocked_response(&blocked.0).with_flavour(ctx.op.flavour());
    ctx.answer_stopped(if sent == 0 { e.status } else { sent });
    e
}

/// Ends a started stream with an error event (OpenAI or Anthropic shape).
async fn end_with_event(session: &mut ServerSession, e: &ApiError, status: u16) -> Outcome {
    let clean = session
        .write_response_body(api::sse::error_event(e), true)
        .await
        .is_ok()
        && session.finish_body().await.is_ok();
    Outcome {
        status,
        reusable: clean,
    }
}

/// The upstream connection goes back to the pool when its answer was read whole.
async fn release(app: &SidecarApp, mut ex: Exchange) {
    if ex.session.response_done() {
        app.upstream.release(ex).await;
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
