//! Intake: the operation from method and path, the loop guard, the body read within its
//! limit and parsed once ([`LlmRequest`]), the end user, and the request's attributes
//! on its span.

use bytes::{Bytes, BytesMut};
use opentelemetry::KeyValue;
use pingora::protocols::http::ServerSession;

use super::bounds::{BodyReservation, Bounds};
use super::{Refusal, RequestCtx, SidecarApp};
use crate::api::request::LlmRequest;
use crate::api::{ApiError, Operation};
use crate::encoding::{self, DecodeError};
use crate::identity;
use crate::telemetry::trace::UserAttribute;

/// The operation the method and path name (404/405 otherwise).
pub fn operation(session: &ServerSession) -> Result<Operation, ApiError> {
    let header = session.req_header();
    Operation::route(&header.method, header.uri.path())
}

/// Reads and parses the request; refuses a loop, an oversized or malformed body, a
/// forged end-user token and a model the policy does not know.
pub async fn read(
    app: &SidecarApp,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
) -> Result<(), Refusal> {
    let looped = session
        .req_header()
        .headers
        .get_all(http::header::VIA)
        .iter()
        .any(|v| v.to_str().is_ok_and(|v| v.contains(crate::upstream::VIA)));
    if looped {
        return Err(Refusal::before_body(ApiError::loop_detected()));
    }
    let body = read_decoded(app, session, &mut ctx.body_bytes)
        .await
        .map_err(Refusal::before_body)?;
    let request = LlmRequest::parse(ctx.op, body).inspect_err(|e| {
        // A key given twice (or in two cases) is how a value would be hidden from DLP.
        if e.code == Some("ambiguous_key") {
            ctx.blocked("ambiguous_key", e.status);
        }
    })?;
    let (max_tokens, temperature, top_p) = {
        let h = request.head();
        (h.max_tokens, h.temperature, h.top_p)
    };
    ctx.begin(request);
    let user = identity::identify(&app.settings.users, &session.req_header().headers)?;
    if ctx.span.recording() {
        let t = ctx.snapshot.policy.telemetry.as_ref();
        let mode = UserAttribute::parse(t.map_or("", |t| t.user_attribute.as_str()));
        let mut kv = vec![KeyValue::new(
            "vigie.policy.version",
            ctx.snapshot.version.clone(),
        )];
        kv.extend(
            mode.value(&app.user_key, &user.name)
                .map(|u| KeyValue::new("vigie.user", u)),
        );
        kv.extend(max_tokens.map(|n| KeyValue::new("gen_ai.request.max_tokens", n as i64)));
        kv.extend(temperature.map(|t| KeyValue::new("gen_ai.request.temperature", t)));
        kv.extend(top_p.map(|t| KeyValue::new("gen_ai.request.top_p", t)));
        ctx.span.set_all(kv);
    }
    ctx.set_user(user);
    if ctx.snapshot.routes_for(ctx.model()).is_none() {
        return Err(ApiError::model_not_found(ctx.model()).into());
    }
    // Only a model the policy knows names the span (anything else is the app's text).
    ctx.name_span();
    Ok(())
}

/// The body length the request declares (`Content-Length`), if it is a number.
fn declared_length(session: &ServerSession) -> Option<usize> {
    session
        .req_header()
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// Whether the client waits for `100 Continue` before sending its body.
fn expects_continue(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Largest body read and thrown away to keep the connection of a refused request
/// (unknown URL, `OPTIONS`) open; a larger one closes it.
const DISCARDED_BODY: usize = 64 * 1024;

/// Reads and drops the body of a request that is answered without it; whether the
/// connection may serve the next request (no body, or a small one read in time).
pub(super) async fn discard_body(session: &mut ServerSession) -> bool {
    if session.is_body_empty() {
        return true;
    }
    // A client waiting for `100 Continue` sends its body only after it (or never).
    if expects_continue(session) {
        return false;
    }
    if declared_length(session).is_none_or(|n| n > DISCARDED_BODY) {
        return false;
    }
    let drained = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        session.drain_request_body(),
    )
    .await;
    matches!(drained, Ok(Ok(())))
}

/// The request body read within the sidecar's limits ([`read_body`]) and decoded when
/// compressed: what is scanned is what is forwarded, uncompressed. The decoded body is
/// counted whole in `held`.
pub(super) async fn read_decoded(
    app: &SidecarApp,
    session: &mut ServerSession,
    held: &mut BodyReservation,
) -> Result<Bytes, ApiError> {
    let limit = app.settings.max_body_bytes;
    let body = read_body(session, limit, &app.bounds, held).await?;
    let codings = session
        .req_header()
        .headers
        .get(http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("(not text)").to_string());
    let body = match codings {
        Some(c) if !encoding::is_identity(&c) => {
            encoding::decode(&c, body, limit).map_err(|e| match e {
                DecodeError::Unsupported(c) => ApiError::unsupported_encoding(&c),
                DecodeError::TooLarge(limit) => ApiError::body_too_large(limit),
                DecodeError::Corrupt => ApiError::invalid_request(
                    "The request body does not decode with its Content-Encoding.",
                ),
            })?
        }
        _ => body,
    };
    // A decoded body is held next to nothing else, but counted whole.
    if !app.bounds.reserve(held, body.len()) {
        return Err(ApiError::bodies_in_flight());
    }
    Ok(body)
}

/// Reads the whole request body, refusing more than `limit` bytes, more than the
/// sidecar's body budget has room for, and a body slower than its deadline.
async fn read_body(
    session: &mut ServerSession,
    limit: usize,
    bounds: &Bounds,
    held: &mut BodyReservation,
) -> Result<Bytes, ApiError> {
    let declared = declared_length(session);
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::body_too_large(limit));
    }
    if expects_continue(session) {
        // A 100 is not the answer: Pingora would close a connection answered before its
        // body is read, and the client's next request would need a new one.
        session.set_close_on_response_before_downstream_finish(false);
        let sent = session.write_continue_response().await;
        session.set_close_on_response_before_downstream_finish(true);
        sent.map_err(|_| {
            ApiError::invalid_request("The connection failed while reading the request.")
        })?;
    }
    let expected = declared.unwrap_or(4096).min(limit);
    if !bounds.reserve(held, expected) {
        return Err(ApiError::bodies_in_flight());
    }
    let deadline = tokio::time::Instant::now() + bounds.body_deadline(declared.unwrap_or(limit));
    let mut buf = BytesMut::with_capacity(expected);
    loop {
        let chunk = tokio::time::timeout_at(deadline, session.read_request_body())
            .await
            .map_err(|_| ApiError::body_too_slow())?;
        match chunk {
            Ok(Some(chunk)) => {
                let len = buf.len() + chunk.len();
                if len > limit {
                    return Err(ApiError::body_too_large(limit));
                }
                // A chunked body grows its reservation in steps, as it arrives.
                if len > held.bytes() && !bounds.reserve(held, len.max(2 * held.bytes()).min(limit))
                {
                    return Err(ApiError::bodies_in_flight());
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
