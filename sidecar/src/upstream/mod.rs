//! Talking to upstream endpoints with Pingora's connector (pooling, TLS, timeouts):
//! requests ([`Upstream::send`]), the background [`probe`]s of self-hosted endpoints,
//! the egress agent's [`original`] destinations of redirected connections, and the
//! external DLP [`detector`]s.

pub mod detector;
pub mod original;
pub mod probe;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora::connectors::http::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{ErrorType, Result as PResult};

use crate::endpoint::Endpoint;
use crate::policy::{Credential, Timeouts};

/// What the sidecar adds to `Via` upstream.
pub const VIA: &str = "1.1 vigie-sidecar";

/// The only app request headers forwarded upstream: content negotiation and the
/// providers' versioning and beta headers. Everything else — custom headers, cookies,
/// the SDKs' telemetry, the app's credentials — stays in the pod: a header is a channel
/// DLP does not read. The sidecar sets framing, `Host`, credentials and trace context
/// itself.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "content-type",
    "accept",
    "anthropic-version",
    "anthropic-beta",
    "openai-beta",
    "openai-organization",
    "openai-project",
    "traceparent",
    "tracestate",
];

/// Response headers never passed back: hop-by-hop only; framing headers stay.
const DROPPED_RESPONSE_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "upgrade",
    "trailer",
];

/// How long an idle upstream connection stays in the pool.
const POOL_IDLE: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// Nothing reached the upstream: safe to try another endpoint.
    #[error("connect: {0}")]
    Connect(String),
    #[error("no response header within the first-byte timeout")]
    FirstByteTimeout,
    /// The request may have reached the upstream.
    #[error("request failed: {0}")]
    Broken(String),
}

pub struct Upstream {
    connector: Connector,
    headers: HeaderRules,
}

/// Which app request headers go upstream besides the built-in allow-list.
#[derive(Debug, Clone, Default)]
pub struct HeaderRules {
    /// Operator-listed additions (`--forward-header`): headers the deployment knows
    /// carry no user data.
    pub extra: Vec<http::HeaderName>,
    /// Never forwarded, even if listed (the end-user header: personal data the
    /// provider has no need for).
    pub private: Vec<http::HeaderName>,
}

impl HeaderRules {
    fn forwards(&self, name: &http::HeaderName) -> bool {
        (FORWARDED_REQUEST_HEADERS.contains(&name.as_str()) || self.extra.contains(name))
            && !self.private.contains(name)
    }
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Upstream")
    }
}

/// An open exchange with an upstream whose response header has arrived.
pub struct Exchange {
    pub session: HttpSession,
    pub peer: HttpPeer,
    /// Value of the optional `x-vigie-route` debugging header.
    pub route: Option<String>,
}

impl Upstream {
    pub fn new(keepalive_pool_size: usize) -> Self {
        let options = pingora::connectors::ConnectorOptions::new(keepalive_pool_size);
        Self {
            connector: Connector::new(Some(options)),
            headers: HeaderRules::default(),
        }
    }

    pub fn with_headers(mut self, headers: HeaderRules) -> Self {
        self.headers = headers;
        self
    }

    /// Sends the request and waits for the response header. Retries once on a fresh
    /// connection when a pooled one turns out to be closed by the upstream.
    pub async fn send(
        &self,
        endpoint: &Arc<Endpoint>,
        timeouts: &Timeouts,
        credential: Option<&Credential>,
        downstream: &RequestHeader,
        body: Bytes,
        trace: Option<&opentelemetry::Context>,
    ) -> Result<Exchange, AttemptError> {
        let addrs = endpoint
            .addresses()
            .await
            .map_err(|e| AttemptError::Connect(format!("resolve {}: {e}", endpoint.host)))?;
        let sni = if endpoint.host.parse::<std::net::IpAddr>().is_ok() {
            String::new()
        } else {
            endpoint.host.clone()
        };
        let mut peer = HttpPeer::new(addrs[0], endpoint.tls, sni);
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.total_connection_timeout = Some(timeouts.connect * 2);
        peer.options.idle_timeout = Some(POOL_IDLE);
        peer.options.write_timeout = Some(timeouts.idle);
        let header = upstream_request(
            endpoint,
            credential,
            downstream,
            body.len(),
            &self.headers,
            trace,
        )
        .map_err(|e| AttemptError::Broken(e.to_string()))?;

        for _ in 0..2 {
            let (mut session, reused) = self
                .connector
                .get_http_session(&peer)
                .await
                .map_err(|e| AttemptError::Connect(e.to_string()))?;
            session.set_read_timeout(Some(timeouts.first_byte));
            session.set_write_timeout(Some(timeouts.idle));
            match exchange(&mut session, header.clone(), body.clone()).await {
                Ok(()) => {
                    session.set_read_timeout(Some(timeouts.idle));
                    return Ok(Exchange {
                        session,
                        peer,
                        route: None,
                    });
                }
                Err(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                    return Err(AttemptError::FirstByteTimeout);
                }
                // A pooled connection the upstream already closed: the request never arrived.
                Err(e) if reused && nothing_received(&e) => continue,
                Err(e) => return Err(AttemptError::Broken(e.to_string())),
            }
        }
        Err(AttemptError::Broken(
            "pooled connections kept failing".into(),
        ))
    }

    /// Returns a finished exchange's connection to the pool.
    pub async fn release(&self, ex: Exchange) {
        self.connector
            .release_http_session(ex.session, &ex.peer, Some(POOL_IDLE))
            .await;
    }
}

fn nothing_received(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::ConnectionClosed | ErrorType::WriteError | ErrorType::ReadError
    )
}

async fn exchange(session: &mut HttpSession, header: RequestHeader, body: Bytes) -> PResult<()> {
    session.write_request_header(Box::new(header)).await?;
    if !body.is_empty() {
        session.write_request_body(body, true).await?;
    }
    session.finish_request_body().await?;
    session.read_response_header().await?;
    Ok(())
}

/// The request header sent upstream.
pub fn upstream_request(
    endpoint: &Endpoint,
    credential: Option<&Credential>,
    downstream: &RequestHeader,
    body_len: usize,
    rules: &HeaderRules,
    trace: Option<&opentelemetry::Context>,
) -> PResult<RequestHeader> {
    // The query string is the app's text too, and no pool kind needs one: dropped.
    let path = format!("{}{}", endpoint.path_prefix, downstream.uri.path());
    let mut req = RequestHeader::build(downstream.method.clone(), path.as_bytes(), None)?;
    for (name, value) in &downstream.headers {
        if rules.forwards(name) {
            req.append_header(name.clone(), value.clone())?;
        }
    }
    // RFC 9110 `Via`, and the loop guard: a request that comes back to a sidecar
    // (a redirect rule naming a pool endpoint while the sidecar's own cgroup is not
    // yet enrolled) carries it and is refused (508).
    req.append_header(http::header::VIA, VIA)?;
    req.insert_header(http::header::HOST, endpoint.authority.as_str())?;
    req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string())?;
    req.insert_header(http::header::ACCEPT_ENCODING, "identity")?;
    if let Some(c) = credential {
        req.insert_header(c.header.clone(), c.value.clone())?;
    }
    // The attempt's span becomes the upstream's parent (W3C trace context); without
    // tracing, the app's own `traceparent` went through above.
    if let Some(cx) = trace {
        let mut carrier = http::HeaderMap::new();
        vigie_telemetry::inject(cx, &mut carrier);
        // The app's own trace headers are replaced, not mixed with ours.
        req.remove_header("traceparent");
        req.remove_header("tracestate");
        for (name, value) in carrier {
            if let Some(name) = name
                && !value.is_empty()
            {
                req.insert_header(name, value)?;
            }
        }
    }
    Ok(req)
}

/// The response header sent to the client.
pub fn downstream_response(upstream: &ResponseHeader) -> PResult<ResponseHeader> {
    let mut resp = ResponseHeader::build(upstream.status, Some(upstream.headers.len()))?;
    for (name, value) in &upstream.headers {
        if !DROPPED_RESPONSE_HEADERS.contains(&name.as_str()) {
            resp.append_header(name.clone(), value.clone())?;
        }
    }
    Ok(resp)
}

/// Whether the answer says it is an event stream (media types are case-insensitive).
pub fn is_event_stream(resp: &ResponseHeader) -> bool {
    resp.headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("text/event-stream"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{HeaderName, HeaderValue};
    use vigie_proto::v1;

    #[test]
    fn request_header_swaps_credentials_and_sets_host() {
        let ep = Endpoint::new(
            "p",
            &v1::Endpoint {
                url: "https://api.example.com/openai".into(),
                weight: 1,
                max_concurrency: 0,
            },
        )
        .unwrap();
        let mut down = RequestHeader::build("POST", b"/v1/chat/completions?x=1", None).unwrap();
        down.insert_header("authorization", "Bearer app-placeholder")
            .unwrap();
        down.insert_header("x-api-key", "app-placeholder").unwrap();
        down.insert_header("host", "127.0.0.1:15080").unwrap();
        down.insert_header("connection", "keep-alive").unwrap();
        down.insert_header("content-length", "999").unwrap();
        down.insert_header("traceparent", "00-abc-def-01").unwrap();
        let cred = Credential {
            header: http::header::AUTHORIZATION,
            value: HeaderValue::from_static("Bearer real"),
        };
        down.insert_header("x-user-id", "ana@corp.example").unwrap();
        down.insert_header("cookie", "nir=185057800608491").unwrap();
        down.insert_header("x-ticket", "1 85 05 78 006 084 91")
            .unwrap();
        down.insert_header("content-encoding", "gzip").unwrap();
        down.insert_header("anthropic-version", "2023-06-01")
            .unwrap();
        down.insert_header("x-request-tag", "blue").unwrap();
        let rules = HeaderRules {
            extra: vec![
                HeaderName::from_static("x-request-tag"),
                HeaderName::from_static("x-user-id"),
            ],
            private: vec![HeaderName::from_static("x-user-id")],
        };
        let up = upstream_request(&ep, Some(&cred), &down, 42, &rules, None).unwrap();
        assert_eq!(up.headers["x-request-tag"], "blue");
        assert!(up.headers.get("x-user-id").is_none());
        // The query string and every header off the allow-list stay in the pod.
        assert_eq!(up.uri.to_string(), "/openai/v1/chat/completions");
        assert_eq!(up.headers["host"], "api.example.com");
        assert_eq!(up.headers["authorization"], "Bearer real");
        assert_eq!(up.headers.get_all("authorization").iter().count(), 1);
        assert!(up.headers.get("x-api-key").is_none());
        assert!(up.headers.get("connection").is_none());
        assert_eq!(up.headers["content-length"], "42");
        assert_eq!(up.headers["traceparent"], "00-abc-def-01");
        assert_eq!(up.headers["anthropic-version"], "2023-06-01");
        for dropped in ["cookie", "x-ticket", "content-encoding"] {
            assert!(up.headers.get(dropped).is_none(), "{dropped} forwarded");
        }

        let anthropic = Credential {
            header: HeaderName::from_static("x-api-key"),
            value: HeaderValue::from_static("real"),
        };
        let up = upstream_request(
            &ep,
            Some(&anthropic),
            &down,
            0,
            &HeaderRules::default(),
            None,
        )
        .unwrap();
        assert_eq!(up.headers["x-api-key"], "real");
        assert!(up.headers.get("authorization").is_none());
    }

    #[test]
    fn response_header_keeps_framing_drops_hop_by_hop() {
        let mut up = ResponseHeader::build(200, None).unwrap();
        up.insert_header("content-type", "text/event-stream; charset=utf-8")
            .unwrap();
        up.insert_header("transfer-encoding", "chunked").unwrap();
        up.insert_header("connection", "close").unwrap();
        let down = downstream_response(&up).unwrap();
        assert!(is_event_stream(&down));
        assert_eq!(down.headers["transfer-encoding"], "chunked");
        assert!(down.headers.get("connection").is_none());
    }
}
