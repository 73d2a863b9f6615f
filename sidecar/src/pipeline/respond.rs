//! Respond: errors the sidecar writes itself, in the client's API format (the model
//! catalogue is `catalogue.rs`).

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use super::{Outcome, Refusal};
use crate::api::{ApiError, Operation};

/// A refused request, in the flavour of its API.
pub async fn refusal(session: &mut ServerSession, op: Operation, r: Refusal) -> Outcome {
    let e = r.error.with_flavour(op.flavour());
    let outcome = error(session, &e).await;
    if r.body_read {
        outcome
    } else {
        outcome.not_reusable()
    }
}

pub async fn error(session: &mut ServerSession, e: &ApiError) -> Outcome {
    json(session, e.status, &e.body(), e.retry_after).await
}

/// `OPTIONS`: the methods of the path (`Allow`), 404 for a path not served.
pub async fn options(session: &mut ServerSession) -> Outcome {
    let path = session.req_header().uri.path().to_string();
    let reusable = super::intake::discard_body(session).await;
    let outcome = match Operation::allowed(&path) {
        Some(allow) => {
            let header = ResponseHeader::build(204, Some(2)).and_then(|mut h| {
                h.insert_header(http::header::ALLOW, allow)?;
                h.insert_header(http::header::CONTENT_LENGTH, "0")?;
                Ok(h)
            });
            match header {
                Ok(h) => {
                    let ok = session.write_response_header(Box::new(h)).await.is_ok()
                        && session.finish_body().await.is_ok();
                    if ok {
                        Outcome::done(204)
                    } else {
                        Outcome::broken(204)
                    }
                }
                Err(_) => Outcome::broken(500),
            }
        }
        None => {
            let method = http::Method::OPTIONS;
            error(session, &ApiError::unknown_url(&method, &path)).await
        }
    };
    if reusable {
        outcome
    } else {
        outcome.not_reusable()
    }
}

async fn json(
    session: &mut ServerSession,
    status: u16,
    body: &serde_json::Value,
    retry_after: Option<u64>,
) -> Outcome {
    let retry = retry_after.map(|s| s.to_string());
    let extra: Vec<(&str, &str)> = retry
        .as_deref()
        .map(|r| ("retry-after", r))
        .into_iter()
        .collect();
    json_with(session, status, body, &extra).await
}

/// A JSON answer with extra headers.
pub(super) async fn json_with(
    session: &mut ServerSession,
    status: u16,
    body: &serde_json::Value,
    extra: &[(&'static str, &str)],
) -> Outcome {
    let bytes = Bytes::from(body.to_string());
    let header = ResponseHeader::build(status, Some(3 + extra.len())).and_then(|mut h| {
        h.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        h.insert_header(http::header::CONTENT_LENGTH, bytes.len().to_string())?;
        for (name, value) in extra {
            h.insert_header(*name, *value)?;
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
