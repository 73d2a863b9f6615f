//! What every call meets before its message is decoded: its token is checked (a caller
//! without one never makes the control plane decode anything), and the message of a
//! large unary call is read within its size limit and its field count is bounded from
//! the wire format. Decoding expands a message: 2 bytes of an empty repeated entry
//! become a ~300-byte struct, so 4 MiB of them took 750 MB before this gate.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use crate::auth::Authenticator;

/// Fields of one message, all levels together. A usage report of 5,000 records has
/// ~130,000; a policy at every limit fewer. Past it the call is refused undecoded.
pub const MAX_FIELDS: usize = 150_000;

/// Nesting followed when counting (deeper length-delimited fields count as one).
const MAX_DEPTH: u32 = 8;

/// Unary methods whose messages may be large, with their size limit.
fn scanned(path: &str, policy_limit: usize, usage_limit: usize) -> Option<usize> {
    match path {
        "/vigie.v1.PolicyService/ApplyPolicy" | "/vigie.v1.PolicyService/ValidatePolicy" => {
            Some(policy_limit)
        }
        "/vigie.v1.UsageService/ReportUsage" => Some(usage_limit),
        _ => None,
    }
}

#[derive(Debug, Clone)]
pub struct GateLayer {
    pub auth: Authenticator,
    pub policy_limit: usize,
    pub usage_limit: usize,
}

impl<S> tower::Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Gate<S> {
        Gate {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Gate<S> {
    inner: S,
    layer: GateLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> tower::Service<http::Request<Body>> for Gate<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    S::Error: Send,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The clone waits for readiness next time; this one was made ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let path = req.uri().path().to_string();
            // Health and reflection are open, as before.
            if !path.starts_with("/vigie.v1.") {
                return inner.call(req).await;
            }
            let metadata = MetadataMap::from_headers(req.headers().clone());
            let principal = match layer.auth.authenticate(&metadata).await {
                Ok(p) => p,
                Err(status) => {
                    crate::events::access_denied_at(
                        path.trim_start_matches('/'),
                        None,
                        "unauthenticated",
                    );
                    return Ok(status.into_http());
                }
            };
            let (mut parts, body) = req.into_parts();
            // The handlers' role checks use it (one token lookup per call).
            parts.extensions.insert(principal);
            let body = match scanned(&path, layer.policy_limit, layer.usage_limit) {
                None => body,
                Some(limit) => match read_bounded(body, limit).await {
                    Ok(bytes) => Body::new(Full::new(bytes)),
                    Err(status) => return Ok(status.into_http()),
                },
            };
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// The whole body of a unary call (one gRPC frame), at most `limit` bytes of message,
/// its fields counted before anything decodes it.
async fn read_bounded(body: Body, limit: usize) -> Result<Bytes, Status> {
    // The 5-byte gRPC frame header comes on top of the message.
    let bytes = Limited::new(body, limit + 5)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                // tonic's code and wording for an over-limit message.
                Status::out_of_range(format!(
                    "message length too large: the limit is: {limit} bytes"
                ))
            } else {
                Status::cancelled("the request body could not be read")
            }
        })?
        .to_bytes();
    // Compressed frames are refused by the services (no compression is enabled): the
    // count applies to plain ones.
    if bytes.len() >= 5 && bytes[0] == 0 {
        let n = fields(&bytes[5..]);
        if n > MAX_FIELDS {
            return Err(Status::resource_exhausted(format!(
                "message has more than {MAX_FIELDS} fields"
            )));
        }
    }
    Ok(bytes)
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

/// Fields of `buf` read as a protobuf message, counting inside every length-delimited
/// field that itself reads as a message (an upper bound without the schema), up to
/// `MAX_FIELDS + 1`; `None` when `buf` is not a well-formed message.
fn count(buf: &[u8], depth: u32, budget: usize) -> Option<usize> {
    let mut at = 0;
    let mut n = 0usize;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        if key >> 3 == 0 {
            return None;
        }
        n += 1;
        if n > budget {
            return Some(n);
        }
        match key & 7 {
            0 => {
                varint(buf, &mut at)?;
            }
            1 => at = at.checked_add(8).filter(|&e| e <= buf.len())?,
            5 => at = at.checked_add(4).filter(|&e| e <= buf.len())?,
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).ok()?;
                let end = at.checked_add(len).filter(|&e| e <= buf.len())?;
                if depth < MAX_DEPTH
                    && let Some(inner) = count(&buf[at..end], depth + 1, budget - n)
                {
                    n += inner;
                    if n > budget {
                        return Some(n);
                    }
                }
                at = end;
            }
            _ => return None,
        }
    }
    Some(n)
}

/// Fields of a message, at most `MAX_FIELDS + 1` (a malformed message counts 0: the
/// decoder refuses it on its own).
pub fn fields(message: &[u8]) -> usize {
    count(message, 0, MAX_FIELDS).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use vigie_proto::v1::{Policy, Pool, ReportUsageRequest, UsageRecord};

    #[test]
    fn empty_entries_are_counted_without_decoding() {
        // The red team's message: 2 bytes per empty record.
        let flood = [0x0a, 0x00].repeat(200_000);
        assert!(fields(&flood) > MAX_FIELDS);
        let policy = Policy {
            name: "p".into(),
            pools: vec![Pool::default(); 100_000],
            ..Default::default()
        };
        assert_eq!(fields(&policy.encode_to_vec()), 100_001);
    }

    #[test]
    fn a_full_usage_report_passes() {
        let record = UsageRecord {
            id: "pod-1:1234567".into(),
            namespace: "team-a".into(),
            workload: "chat".into(),
            pod: "chat-7d9f8b6c5-x2x4q".into(),
            user: "agent.dupont@interieur.gouv.fr".into(),
            model: "mistral-small".into(),
            served_model: "mistral-small-2506".into(),
            pool: "gpu-a".into(),
            endpoint: "10.0.3.7:8000".into(),
            operation: "chat".into(),
            currency: "EUR".into(),
            started_at_ms: 1_765_000_000_000,
            ended_at_ms: 1_765_000_001_000,
            prompt_tokens: 1200,
            completion_tokens: 300,
            status: 200,
            outcome: 1,
            source: 1,
            cost: 0.0123,
            gpu_seconds: 0.8,
            ..Default::default()
        };
        let report = ReportUsageRequest {
            records: vec![record; crate::service::usage::MAX_REPORT],
        };
        let n = fields(&report.encode_to_vec());
        assert!(n < MAX_FIELDS, "{n}");
    }

    #[test]
    fn malformed_input_counts_nothing_and_does_not_panic() {
        for bad in [
            &[0xff_u8; 20][..],
            &[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f],
            &[0x00],
            &[0x0b],
        ] {
            assert_eq!(fields(bad), 0);
        }
    }
}
