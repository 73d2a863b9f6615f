//! What every call meets before its message is decoded: its token is checked (a caller
//! without one never makes the control plane decode anything), the large calls' roles
//! too, and the message of every unary call is read — within its size limit, a
//! deadline and a byte budget shared by all calls — as exactly one gRPC frame whose
//! fields are counted from the wire format. Decoding expands a message: 2 bytes of an
//! empty repeated entry become a ~300-byte struct, so 4 MiB of them took 750 MB
//! before this gate.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt as _, Full};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataMap;

use crate::auth::{Authenticator, Principal, Role};

/// Fields of one message, all levels together. A usage report of 5,000 records has
/// ~130,000; a policy at every limit fewer. Past it the call is refused undecoded.
pub const MAX_FIELDS: usize = 150_000;

/// Nesting followed when counting (deeper length-delimited fields count as one).
const MAX_DEPTH: u32 = 8;

/// A message must arrive within this (a stalled upload holds nothing longer).
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// Request bytes buffered by the gate at once, all calls together.
const BUFFERED_BYTES: usize = 64 * 1024 * 1024;
const UNIT: usize = 1024;

/// What a unary method may send.
#[derive(Debug, Clone, Copy)]
struct Rule {
    limit: usize,
    max_fields: usize,
    /// Most occurrences of field 1 at the top level (the records of a report).
    max_entries: Option<usize>,
    /// Checked here, before reading, for the calls whose messages may be large (the
    /// handlers check every call's role again).
    roles: Option<&'static [Role]>,
}

#[derive(Debug, Clone)]
pub struct GateLayer {
    pub auth: Authenticator,
    pub policy_limit: usize,
    pub usage_limit: usize,
    buffered: Arc<Semaphore>,
}

impl GateLayer {
    pub fn new(auth: Authenticator, policy_limit: usize, usage_limit: usize) -> Self {
        Self {
            auth,
            policy_limit,
            usage_limit,
            buffered: Arc::new(Semaphore::new(BUFFERED_BYTES / UNIT)),
        }
    }

    /// The rule of a method; `None` for the client-streaming watch (its messages are
    /// small and bounded by the service's decode limit).
    fn rule(&self, path: &str) -> Option<Rule> {
        const ADMIN: &[Role] = &[Role::Admin];
        const READERS: &[Role] = &[Role::Admin, Role::Auditor];
        const REPORTERS: &[Role] = &[Role::Admin, Role::Workload];
        const AGENTS: &[Role] = &[Role::Agent, Role::Admin];
        let large = |limit, roles, max_entries| Rule {
            limit,
            max_fields: MAX_FIELDS,
            max_entries,
            roles: Some(roles),
        };
        Some(match path {
            "/vigie.v1.DiscoveryService/Watch" => return None,
            "/vigie.v1.PolicyService/ApplyPolicy" => large(self.policy_limit, ADMIN, None),
            "/vigie.v1.PolicyService/ValidatePolicy" => large(self.policy_limit, READERS, None),
            "/vigie.v1.UsageService/ReportUsage" => large(
                self.usage_limit,
                REPORTERS,
                Some(crate::service::usage::MAX_REPORT),
            ),
            "/vigie.v1.EgressService/ReportDenials" => Rule {
                limit: 1024 * 1024,
                max_fields: 50_000,
                max_entries: Some(crate::service::egress::MAX_REPORT),
                roles: Some(AGENTS),
            },
            // Every other call names a few things.
            _ => Rule {
                limit: 64 * 1024,
                max_fields: 10_000,
                max_entries: None,
                roles: None,
            },
        })
    }
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
            let method = path.trim_start_matches('/');
            let metadata = MetadataMap::from_headers(req.headers().clone());
            let principal = match layer.auth.authenticate(&metadata).await {
                Ok(p) => p,
                Err(status) => {
                    crate::events::access_denied_at(method, None, "unauthenticated");
                    return Ok(status.into_http());
                }
            };
            let rule = layer.rule(&path);
            if let Some(roles) = rule.and_then(|r| r.roles)
                && !roles.contains(&principal.role)
            {
                crate::events::access_denied_at(method, Some(&principal), "role");
                return Ok(crate::auth::role_refused(&principal, roles).into_http());
            }
            let (mut parts, body) = req.into_parts();
            // The handlers' role checks use it (one token lookup per call).
            parts.extensions.insert::<Principal>(principal);
            let Some(rule) = rule else {
                return inner.call(http::Request::from_parts(parts, body)).await;
            };
            // Held until the call ends: the buffered message counts against the budget.
            let (bytes, _held) = match read(body, rule, &layer.buffered).await {
                Ok(read) => read,
                Err(status) => return Ok(status.into_http()),
            };
            inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Full::new(bytes)),
                ))
                .await
        })
    }
}

/// The body of a unary call: exactly one uncompressed gRPC frame of at most the rule's
/// size, within the deadline and the shared byte budget, its fields counted.
async fn read(
    mut body: Body,
    rule: Rule,
    budget: &Arc<Semaphore>,
) -> Result<(Bytes, Option<OwnedSemaphorePermit>), Status> {
    let deadline = tokio::time::Instant::now() + READ_DEADLINE;
    let too_large = || {
        // tonic's code and wording for an over-limit message.
        Status::out_of_range(format!(
            "message length too large: the limit is: {} bytes",
            rule.limit
        ))
    };
    let busy = || {
        Status::resource_exhausted("the control plane is reading as many requests as it may; retry")
    };
    let mut buf = BytesMut::new();
    let mut held: Option<OwnedSemaphorePermit> = None;
    let mut reserved = 0usize;
    loop {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| {
                Status::deadline_exceeded("the request message was not received in time")
            })?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|_| Status::cancelled("the request body could not be read"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > rule.limit + 5 {
            return Err(too_large());
        }
        let wanted = buf.len() + data.len();
        if wanted > reserved {
            let units = (wanted - reserved).div_ceil(UNIT).max(64);
            let more = budget
                .clone()
                .try_acquire_many_owned(u32::try_from(units).map_err(|_| too_large())?)
                .map_err(|_| busy())?;
            match &mut held {
                Some(h) => h.merge(more),
                None => held = Some(more),
            }
            reserved += units * UNIT;
        }
        buf.extend_from_slice(&data);
    }
    let bytes = buf.freeze();
    let malformed = |why: &str| Status::invalid_argument(format!("malformed gRPC request: {why}"));
    if bytes.len() < 5 {
        return Err(malformed("no message"));
    }
    if bytes[0] != 0 {
        return Err(Status::unimplemented(
            "compressed messages are not accepted",
        ));
    }
    let declared = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
    // One message per unary call: a second frame would be decoded (and thrown away)
    // unread by the count.
    if declared != bytes.len() - 5 {
        return Err(malformed("a unary call carries exactly one message"));
    }
    let scan =
        scan(&bytes[5..], rule.max_fields).ok_or_else(|| malformed("not a protobuf message"))?;
    if scan.fields > rule.max_fields {
        return Err(Status::resource_exhausted(format!(
            "message has more than {} fields",
            rule.max_fields
        )));
    }
    if let Some(max) = rule.max_entries
        && scan.top_level_ones > max
    {
        return Err(Status::resource_exhausted(format!(
            "message has more than {max} entries"
        )));
    }
    Ok((bytes, held))
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

/// What the wire format of a message says before it is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scan {
    /// Fields at every level (an upper bound: a string that reads as a message is
    /// counted as one), stopping just past the budget.
    pub fields: usize,
    /// Occurrences of field 1 at the top level.
    pub top_level_ones: usize,
}

/// Fields of `buf` from `at`, read as a protobuf message, counting inside every
/// length-delimited field that itself reads as a message, and inside groups (the
/// decoder skips groups of unknown fields, whatever they hold); `group` is the field
/// whose end marker closes this level. `None` when it is not well formed (a start
/// group must meet its own end).
fn count(
    buf: &[u8],
    at: &mut usize,
    depth: u32,
    budget: usize,
    ones: &mut usize,
    group: Option<u64>,
) -> Option<usize> {
    let mut n = 0usize;
    while *at < buf.len() {
        let key = varint(buf, at)?;
        let field = key >> 3;
        if field == 0 {
            return None;
        }
        if key & 7 == 4 {
            // An end marker: the one this level waits for, or malformed.
            return (group == Some(field)).then_some(n);
        }
        n += 1;
        if depth == 0 && group.is_none() && field == 1 {
            *ones += 1;
        }
        if n > budget {
            return Some(n);
        }
        match key & 7 {
            0 => {
                varint(buf, at)?;
            }
            1 => *at = at.checked_add(8).filter(|&e| e <= buf.len())?,
            5 => *at = at.checked_add(4).filter(|&e| e <= buf.len())?,
            3 => {
                n += count(buf, at, depth, budget - n, ones, Some(field))?;
                if n > budget {
                    return Some(n);
                }
            }
            2 => {
                let len = usize::try_from(varint(buf, at)?).ok()?;
                let end = at.checked_add(len).filter(|&e| e <= buf.len())?;
                if depth < MAX_DEPTH
                    && let Some(inner) =
                        count(&buf[*at..end], &mut 0, depth + 1, budget - n, &mut 0, None)
                {
                    n += inner;
                    if n > budget {
                        return Some(n);
                    }
                }
                *at = end;
            }
            _ => return None,
        }
    }
    // The end of the message inside a group: its end marker is missing.
    group.is_none().then_some(n)
}

/// The scan of a message, counting up to `budget + 1` fields; `None` when it is not a
/// well-formed protobuf message (refused: the decoder would refuse it too, or skip
/// what it cannot count).
pub fn scan(message: &[u8], budget: usize) -> Option<Scan> {
    let mut ones = 0;
    let fields = count(message, &mut 0, 0, budget, &mut ones, None)?;
    Some(Scan {
        fields,
        top_level_ones: ones,
    })
}

/// Fields of a message, at most `MAX_FIELDS + 1` (0 for a malformed one).
pub fn fields(message: &[u8]) -> usize {
    scan(message, MAX_FIELDS).map_or(0, |s| s.fields)
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
    fn groups_are_counted_not_skipped() {
        // The second review's prefix: a group under an unknown field number.
        let mut flood = vec![0x7b, 0x7c];
        flood.extend([0x0a, 0x00].repeat(200_000));
        assert!(fields(&flood) > MAX_FIELDS);
        // The same inside a nested message.
        let mut inner = vec![0x7b, 0x7c];
        inner.extend([0x12, 0x00].repeat(200_000));
        let mut outer = vec![0x0a];
        let mut len = inner.len();
        while len >= 0x80 {
            outer.push(0x80 | (len & 0x7f) as u8);
            len >>= 7;
        }
        outer.push(len as u8);
        outer.extend(inner);
        assert!(fields(&outer) > MAX_FIELDS);
        // Inside a group.
        let mut grouped = vec![0x7b];
        grouped.extend([0x0a, 0x00].repeat(200_000));
        grouped.push(0x7c);
        assert!(fields(&grouped) > MAX_FIELDS);
    }

    #[test]
    fn top_level_entries_are_counted() {
        let report = ReportUsageRequest {
            records: vec![UsageRecord::default(); 7],
        };
        assert_eq!(
            scan(&report.encode_to_vec(), MAX_FIELDS)
                .unwrap()
                .top_level_ones,
            7
        );
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
