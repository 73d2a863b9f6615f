//! Respond: answers the sidecar writes itself — errors in the client's API format, and
//! the model catalogue.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use super::{Outcome, Refusal};
use crate::api::{ApiError, Operation};
use crate::policy::Snapshot;

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

/// `GET /v1/models`: the client-facing models of the policy in force (none without one).
pub async fn models(session: &mut ServerSession, snapshot: Option<&Snapshot>) -> Outcome {
    let Some(snapshot) = snapshot else {
        return error(session, &ApiError::no_policy()).await.not_reusable();
    };
    let data: Vec<serde_json::Value> = snapshot
        .models
        .iter()
        .map(|m| serde_json::json!({"id": m, "object": "model", "created": 0, "owned_by": "vigie"}))
        .collect();
    let body = serde_json::json!({"object": "list", "data": data});
    json(session, 200, &body, None).await
}

async fn json(
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
