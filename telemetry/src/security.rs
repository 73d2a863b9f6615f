//! Security events: one documented schema (docs/security-events.md), written to the
//! log (`vigie::security`) and exported as OpenTelemetry log records — never sampled.
//! Attributes carry names, counts and kinds chosen by the code, never request content.

use std::fmt::Write as _;

use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, Severity};
use opentelemetry::trace::SpanContext;

/// An attribute value (the subset the schema uses).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Bool(bool),
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Self::Str(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Self::Str(s)
    }
}
impl From<&String> for Value {
    fn from(s: &String) -> Self {
        Self::Str(s.clone())
    }
}
impl From<i64> for Value {
    fn from(n: i64) -> Self {
        Self::Int(n)
    }
}
impl From<u64> for Value {
    fn from(n: u64) -> Self {
        Self::Int(i64::try_from(n).unwrap_or(i64::MAX))
    }
}
impl From<u32> for Value {
    fn from(n: u32) -> Self {
        Self::Int(i64::from(n))
    }
}
impl From<u16> for Value {
    fn from(n: u16) -> Self {
        Self::Int(i64::from(n))
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Self::Bool(b)
    }
}

impl From<Value> for AnyValue {
    fn from(v: Value) -> Self {
        match v {
            Value::Str(s) => AnyValue::from(s),
            Value::Int(n) => AnyValue::from(n),
            Value::Bool(b) => AnyValue::from(b),
        }
    }
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Str(s) => write!(f, "{s:?}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// Version of the schema in docs/security-events.md (attributes are only added within one).
pub const SCHEMA_VERSION: i64 = 1;

/// Event names of the schema (the log record's `EventName` and `event.name`).
pub mod names {
    pub const DLP_FINDING: &str = "vigie.dlp.finding";
    pub const REQUEST_BLOCKED: &str = "vigie.request.blocked";
    pub const BUDGET_EXCEEDED: &str = "vigie.budget.exceeded";
    pub const POLICY_APPLIED: &str = "vigie.policy.applied";
    pub const POLICY_REJECTED: &str = "vigie.policy.rejected";
    pub const EGRESS_DENIED: &str = "vigie.egress.denied";
    /// A node or a pod where the egress enforcement is weaker than designed.
    pub const EGRESS_DEGRADED: &str = "vigie.egress.degraded";
    pub const ADMIN_ACTION: &str = "vigie.admin.action";
}

/// One security event, built then emitted.
#[derive(Debug, Clone)]
pub struct SecurityEvent {
    name: &'static str,
    severity: Severity,
    body: &'static str,
    attributes: Vec<(&'static str, Value)>,
    span: Option<SpanContext>,
}

impl SecurityEvent {
    /// `category`: `dlp`, `access`, `budget`, `policy`, `network`, `admin`;
    /// `outcome`: `success` or `failure` (of the action the event is about).
    pub fn new(
        name: &'static str,
        category: &'static str,
        outcome: &'static str,
        body: &'static str,
    ) -> Self {
        Self {
            name,
            severity: Severity::Info,
            body,
            attributes: vec![
                ("event.name", Value::from(name)),
                ("vigie.event.category", Value::from(category)),
                ("vigie.event.outcome", Value::from(outcome)),
                ("vigie.schema.version", Value::Int(SCHEMA_VERSION)),
            ],
            span: None,
        }
    }

    pub fn warn(mut self) -> Self {
        self.severity = Severity::Warn;
        self
    }

    pub fn attr(mut self, key: &'static str, value: impl Into<Value>) -> Self {
        self.attributes.push((key, value.into()));
        self
    }

    /// Ties the event to a request's span (only when that span is exported).
    pub fn in_span(mut self, cx: &SpanContext) -> Self {
        if cx.is_valid() && cx.is_sampled() {
            self.span = Some(cx.clone());
        }
        self
    }

    pub fn attributes(&self) -> &[(&'static str, Value)] {
        &self.attributes
    }

    /// Written to the log and exported.
    pub fn emit(self) {
        let mut attrs = String::new();
        for (k, v) in &self.attributes[1..] {
            let _ = write!(attrs, "{}{k}={v}", if attrs.is_empty() { "" } else { " " });
        }
        match self.severity {
            Severity::Warn => {
                tracing::warn!(target: "vigie::security", event = self.name, attributes = %attrs, "{}", self.body)
            }
            _ => {
                tracing::info!(target: "vigie::security", event = self.name, attributes = %attrs, "{}", self.body)
            }
        }
        self.export();
    }

    /// Exported only (where the binary already logs the event its own way).
    pub fn export(self) {
        let Some(t) = crate::global() else { return };
        if !t.logs_on() {
            return;
        }
        let logger = t.logger();
        let mut record = logger.create_log_record();
        let now = std::time::SystemTime::now();
        record.set_timestamp(now);
        record.set_observed_timestamp(now);
        record.set_event_name(self.name);
        record.set_severity_number(self.severity);
        record.set_severity_text(self.severity.name());
        record.set_body(AnyValue::from(self.body));
        if let Some(cx) = &self.span {
            record.set_trace_context(cx.trace_id(), cx.span_id(), Some(cx.trace_flags()));
        }
        for (k, v) in self.attributes {
            record.add_attribute(k, AnyValue::from(v));
        }
        logger.emit(record);
    }
}
