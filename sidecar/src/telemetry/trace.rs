//! The request's span (OpenTelemetry GenAI conventions plus `vigie.*` attributes) and a
//! child span per upstream attempt. Held by the request's [`crate::pipeline::RequestCtx`],
//! which sees the request from start to its one usage record, so the span ends with
//! the same figures. Nothing is built when the span is not recorded (sampled out, or no
//! collector configured).

use std::time::SystemTime;

use hmac::{Hmac, Mac as _};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanKind, Status, TraceContextExt as _, Tracer as _,
};
use opentelemetry::{Array, Context, KeyValue, StringValue, Value};
use sha2::Sha256;

/// Key of the user pseudonyms (`vigie.user`): the key from `--telemetry-user-key-file`
/// (shared by the sidecars that should give a user the same pseudonym), or a random one
/// (pseudonyms then hold for this process only). Either way a user cannot be found
/// again by hashing a staff directory.
#[derive(Clone)]
pub struct UserKey(std::sync::Arc<[u8]>);

impl UserKey {
    pub fn new(key: Vec<u8>) -> Self {
        Self(key.into())
    }
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UserKey(<redacted>)")
    }
}

/// How the end user appears on spans (policy `telemetry.userAttribute`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserAttribute {
    #[default]
    Hashed,
    Plain,
    Omitted,
}

impl UserAttribute {
    pub fn parse(s: &str) -> Self {
        match s {
            "plain" => Self::Plain,
            "omitted" => Self::Omitted,
            _ => Self::Hashed,
        }
    }

    /// The value of `vigie.user`: by default a pseudonym, HMAC-SHA-256 of the name under
    /// a secret key (first 16 bytes, hex), so that a user's requests correlate without
    /// naming them.
    pub fn value(self, key: &UserKey, user: &str) -> Option<String> {
        if user.is_empty() {
            return None;
        }
        match self {
            Self::Omitted => None,
            Self::Plain => Some(user.to_string()),
            Self::Hashed => pseudonym(&key.0, user),
        }
    }
}

/// The request's span; inert when not recording.
#[derive(Debug, Default)]
pub struct RequestSpan {
    /// Context holding the span (also when sampled out: its ids still propagate).
    cx: Option<Context>,
    recording: bool,
    /// DLP findings as `direction:detector:action=count`, set once at the end.
    findings: Vec<String>,
}

impl RequestSpan {
    /// Starts the span, continuing the caller's trace if `headers` carry one.
    pub fn start(headers: &http::HeaderMap, operation: &'static str) -> Self {
        let Some(t) = vigie_telemetry::global().filter(|t| t.traces_on()) else {
            return Self::default();
        };
        let parent = vigie_telemetry::extract(headers);
        let span = t
            .tracer()
            .span_builder(operation)
            .with_kind(SpanKind::Client)
            .with_attributes([KeyValue::new("gen_ai.operation.name", operation)])
            .start_with_context(t.tracer(), &parent);
        let recording = span.is_recording();
        Self {
            cx: Some(parent.with_span(span)),
            recording,
            findings: Vec::new(),
        }
    }

    /// Whether attributes set now are kept (build them only then).
    pub fn recording(&self) -> bool {
        self.recording
    }

    pub fn set(&self, kv: KeyValue) {
        if let Some(cx) = self.cx.as_ref().filter(|_| self.recording) {
            cx.span().set_attribute(kv);
        }
    }

    pub fn set_all(&self, kvs: impl IntoIterator<Item = KeyValue>) {
        if let Some(cx) = self.cx.as_ref().filter(|_| self.recording) {
            cx.span().set_attributes(kvs);
        }
    }

    pub fn rename(&self, name: String) {
        if let Some(cx) = self.cx.as_ref().filter(|_| self.recording) {
            cx.span().update_name(name);
        }
    }

    pub fn event(&self, name: &'static str, attrs: Vec<KeyValue>) {
        if let Some(cx) = self.cx.as_ref().filter(|_| self.recording) {
            cx.span().add_event(name, attrs);
        }
    }

    /// The span's ids, for security events and upstream propagation.
    pub fn span_context(&self) -> SpanContext {
        self.cx
            .as_ref()
            .map_or(SpanContext::NONE, |cx| cx.span().span_context().clone())
    }

    pub fn add_findings(&mut self, direction: &str, counts: &vigie_wire::dlp::Counts) {
        if self.recording {
            for ((detector, action), n) in counts {
                self.findings
                    .push(format!("{direction}:{detector}:{action}={n}"));
            }
        }
    }

    /// A child span for one upstream attempt; its context goes upstream as `traceparent`.
    pub fn attempt(
        &self,
        pool: &str,
        endpoint: &crate::endpoint::Endpoint,
        number: usize,
        reason: &str,
    ) -> AttemptSpan {
        let Some((cx, t)) = self.cx.as_ref().zip(vigie_telemetry::global()) else {
            return AttemptSpan::default();
        };
        let mut attrs = Vec::new();
        if self.recording {
            attrs = vec![
                KeyValue::new("vigie.pool", pool.to_string()),
                KeyValue::new("vigie.endpoint", endpoint.url.clone()),
                KeyValue::new("vigie.attempt", number as i64),
                KeyValue::new("vigie.route.reason", reason.to_string()),
            ];
            attrs.extend(server_attributes(&endpoint.authority));
        }
        // A name is only built for a span that is kept.
        let name: std::borrow::Cow<'static, str> = if self.recording {
            format!("attempt {pool}").into()
        } else {
            "attempt".into()
        };
        let span = t
            .tracer()
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(t.tracer(), cx);
        let recording = span.is_recording();
        AttemptSpan {
            cx: Some(cx.with_span(span)),
            recording,
        }
    }

    /// Ends the span: `error_type` empty on success.
    pub fn end(&mut self, error_type: &str, at: SystemTime) {
        let Some(cx) = self.cx.take() else { return };
        if self.recording {
            let span = cx.span();
            if !self.findings.is_empty() {
                let list: Vec<StringValue> = std::mem::take(&mut self.findings)
                    .into_iter()
                    .map(StringValue::from)
                    .collect();
                span.set_attribute(KeyValue::new(
                    "vigie.dlp.findings",
                    Value::Array(Array::String(list)),
                ));
            }
            if !error_type.is_empty() {
                span.set_attribute(KeyValue::new("error.type", error_type.to_string()));
                span.set_status(Status::error(error_type.to_string()));
            }
        }
        cx.span().end_with_timestamp(at);
    }
}

impl Drop for RequestSpan {
    fn drop(&mut self) {
        // Normally ended by the meter; a span is never left open.
        if let Some(cx) = self.cx.take() {
            cx.span().end();
        }
    }
}

/// One upstream attempt: connect, send, until the answer's head (or the failure).
#[derive(Debug, Default)]
pub struct AttemptSpan {
    cx: Option<Context>,
    recording: bool,
}

impl AttemptSpan {
    /// Context to propagate upstream; `None` when tracing is off (the app's own
    /// `traceparent`, if any, then goes upstream untouched).
    pub fn context(&self) -> Option<&Context> {
        self.cx.as_ref()
    }

    pub fn status(&self, status: u16) {
        if let Some(cx) = self.cx.as_ref().filter(|_| self.recording) {
            cx.span().set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if status >= 400 {
                cx.span()
                    .set_attribute(KeyValue::new("error.type", status.to_string()));
                cx.span().set_status(Status::error(status.to_string()));
            }
        }
    }

    pub fn fail(&self, error_type: &'static str) {
        if let Some(cx) = self.cx.as_ref().filter(|_| self.recording) {
            cx.span()
                .set_attribute(KeyValue::new("error.type", error_type));
            cx.span().set_status(Status::error(error_type));
        }
    }
}

impl Drop for AttemptSpan {
    fn drop(&mut self) {
        if let Some(cx) = self.cx.take() {
            cx.span().end();
        }
    }
}

fn pseudonym(key: &[u8], user: &str) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    mac.update(user.as_bytes());
    Some(hex::encode(&mac.finalize().into_bytes()[..16]))
}

/// `server.address` and `server.port` of an endpoint's authority (`host:port`).
pub fn server_attributes(authority: &str) -> Vec<KeyValue> {
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
            Ok(port) => (h, Some(port)),
            Err(_) => (authority, None),
        },
        _ => (authority, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut kv = vec![KeyValue::new("server.address", host.to_string())];
    if let Some(p) = port {
        kv.push(KeyValue::new("server.port", i64::from(p)));
    }
    kv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_attribute_modes() {
        let h = pseudonym(b"key-a", "alice@example.com").unwrap();
        assert_eq!(h.len(), 32);
        assert!(!h.contains("alice"));
        assert_ne!(Some(h.clone()), pseudonym(b"key-b", "alice@example.com"));
        assert_eq!(Some(h), pseudonym(b"key-a", "alice@example.com"));
        // HMAC, not a salted hash of the name.
        assert_ne!(
            pseudonym(b"key-a", "alice@example.com"),
            pseudonym(b"", "key-aalice@example.com")
        );
        let key = UserKey::new(b"key-a".to_vec());
        assert_eq!(
            UserAttribute::Hashed.value(&key, "alice@example.com"),
            pseudonym(b"key-a", "alice@example.com")
        );
        assert!(!format!("{key:?}").contains("key-a"));
        assert_eq!(
            UserAttribute::Plain.value(&key, "bob").as_deref(),
            Some("bob")
        );
        assert_eq!(UserAttribute::Omitted.value(&key, "bob"), None);
        assert_eq!(UserAttribute::Hashed.value(&key, ""), None);
        assert_eq!(UserAttribute::parse(""), UserAttribute::Hashed);
    }

    #[test]
    fn server_address_and_port() {
        let get = |a: &str| {
            server_attributes(a)
                .into_iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("pool.example:8000"),
            [
                ("server.address".into(), "pool.example".into()),
                ("server.port".into(), "8000".into())
            ]
        );
        assert_eq!(
            get("[::1]:443"),
            [
                ("server.address".into(), "::1".into()),
                ("server.port".into(), "443".into())
            ]
        );
        assert_eq!(
            get("api.openai.com"),
            [("server.address".to_string(), "api.openai.com".to_string())]
        );
    }

    #[test]
    fn inert_without_telemetry() {
        let mut s = RequestSpan::start(&http::HeaderMap::new(), "chat");
        assert!(!s.recording());
        assert!(!s.span_context().is_valid());
        s.end("", SystemTime::now());
    }
}
