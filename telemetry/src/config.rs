//! Where telemetry goes: the `OTEL_*` environment (the OpenTelemetry conventions), which
//! a policy's `telemetry` section may override (endpoint, protocol, sampling ratio).
//! Headers and TLS files stay in the environment: they are secrets and files of the pod,
//! not policy.

use std::time::Duration;

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "grpc" => Some(Self::Grpc),
            "http/protobuf" => Some(Self::HttpProtobuf),
            _ => None,
        }
    }
}

/// The signals, for per-signal settings and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Logs,
}

impl Signal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Traces => "traces",
            Self::Logs => "logs",
        }
    }
    fn env(self) -> &'static str {
        match self {
            Self::Traces => "TRACES",
            Self::Logs => "LOGS",
        }
    }
    /// Path appended to a base endpoint for OTLP/HTTP.
    fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Logs => "/v1/logs",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{var}: {why}")]
    Invalid { var: String, why: String },
}

fn invalid(var: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        var: var.to_string(),
        why: why.into(),
    }
}

/// Where one signal is exported.
#[derive(Debug, Clone, PartialEq)]
pub struct Destination {
    /// Full URL (for OTLP/HTTP, with its `/v1/...` path).
    pub endpoint: String,
    pub protocol: Protocol,
}

/// Queue and batch sizes of one signal (`OTEL_BSP_*` for spans, `OTEL_BLRP_*` for logs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Batching {
    pub max_queue: usize,
    pub max_batch: usize,
    pub delay: Duration,
    /// Longest an export may take before its batch is counted as dropped.
    pub timeout: Duration,
}

/// What the environment says.
#[derive(Debug, Clone, PartialEq)]
pub struct EnvConfig {
    pub disabled: bool,
    /// Collector credentials are set (headers or a client certificate): they must not
    /// follow a policy to another endpoint, so a policy's endpoint is then ignored.
    pub credentials: bool,
    /// A signal turned off (`OTEL_TRACES_EXPORTER` / `OTEL_LOGS_EXPORTER` = `none`):
    /// a policy does not turn it back on.
    pub traces_off: bool,
    pub logs_off: bool,
    pub traces: Option<Destination>,
    pub logs: Option<Destination>,
    pub span_batching: Batching,
    pub log_batching: Batching,
    /// Sampling ratio of traces that start here (parent-based: a caller's decision wins).
    pub sample_ratio: f64,
}

/// The policy's overrides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicyOverrides {
    /// Base endpoint for both signals (signal paths added for OTLP/HTTP).
    pub endpoint: Option<String>,
    pub protocol: Option<Protocol>,
    pub sample_ratio: Option<f64>,
}

/// The settings in force: environment, then policy on top.
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub traces: Option<Destination>,
    pub logs: Option<Destination>,
    pub sample_ratio: f64,
}

type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl EnvConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn from_lookup(get: Lookup<'_>) -> Result<Self, ConfigError> {
        let disabled = get("OTEL_SDK_DISABLED").is_some_and(|v| v.trim() == "true");
        for var in [
            "OTEL_EXPORTER_OTLP_COMPRESSION",
            "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
            "OTEL_EXPORTER_OTLP_LOGS_COMPRESSION",
        ] {
            if get(var).is_some_and(|v| v.trim() != "none") {
                return Err(invalid(var, "compression is not supported (none)"));
            }
        }
        let timeout = millis(get, "OTEL_EXPORTER_OTLP_TIMEOUT", 10_000)?;
        let batching = |prefix: &str| -> Result<Batching, ConfigError> {
            let max_queue = number(get, &format!("{prefix}_MAX_QUEUE_SIZE"), 2048)?;
            let max_batch = number(get, &format!("{prefix}_MAX_EXPORT_BATCH_SIZE"), 512)?;
            if max_queue == 0 || max_batch == 0 {
                return Err(invalid(prefix, "queue and batch sizes must be positive"));
            }
            Ok(Batching {
                max_queue,
                max_batch: max_batch.min(max_queue),
                // 1 s rather than the SDK's 5 s: security events should reach the SIEM soon.
                delay: millis(get, &format!("{prefix}_SCHEDULE_DELAY"), 1000)?,
                timeout: millis(
                    get,
                    &format!("{prefix}_EXPORT_TIMEOUT"),
                    timeout.as_millis() as u64,
                )?,
            })
        };
        let sample_ratio = match get("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
            None | Some("parentbased_traceidratio") | Some("traceidratio") => {
                match get("OTEL_TRACES_SAMPLER_ARG") {
                    None => 1.0,
                    Some(v) => ratio(&v).ok_or_else(|| {
                        invalid("OTEL_TRACES_SAMPLER_ARG", "a number between 0 and 1")
                    })?,
                }
            }
            Some("parentbased_always_on") | Some("always_on") => 1.0,
            Some("parentbased_always_off") | Some("always_off") => 0.0,
            Some(other) => {
                return Err(invalid(
                    "OTEL_TRACES_SAMPLER",
                    format!(
                        "unsupported sampler {other:?} (parentbased_traceidratio, parentbased_always_on, parentbased_always_off)"
                    ),
                ));
            }
        };
        let credentials = [
            "OTEL_EXPORTER_OTLP_HEADERS",
            "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
            "OTEL_EXPORTER_OTLP_LOGS_HEADERS",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
        ]
        .iter()
        .any(|v| get(v).is_some());
        let off = |var: &str| get(var).is_some_and(|v| v.trim() == "none");
        Ok(Self {
            disabled,
            credentials,
            traces_off: off("OTEL_TRACES_EXPORTER"),
            logs_off: off("OTEL_LOGS_EXPORTER"),
            traces: destination(get, Signal::Traces, "OTEL_TRACES_EXPORTER")?,
            logs: destination(get, Signal::Logs, "OTEL_LOGS_EXPORTER")?,
            span_batching: batching("OTEL_BSP")?,
            log_batching: batching("OTEL_BLRP")?,
            sample_ratio,
        })
    }

    /// Whether a policy's endpoint is not used (see [`EnvConfig::credentials`]).
    pub fn ignores_endpoint_of(&self, policy: &PolicyOverrides) -> bool {
        self.credentials && policy.endpoint.is_some()
    }

    /// The environment with the policy's overrides applied.
    pub fn with(&self, policy: &PolicyOverrides) -> Effective {
        if self.disabled {
            return Effective {
                traces: None,
                logs: None,
                sample_ratio: 0.0,
            };
        }
        let policy_endpoint = policy
            .endpoint
            .as_ref()
            .filter(|_| !self.ignores_endpoint_of(policy));
        // A policy's protocol goes with its endpoint (validation requires both).
        let over = |signal: Signal, env: &Option<Destination>, off: bool| -> Option<Destination> {
            if off {
                return None;
            }
            match policy_endpoint {
                Some(base) => {
                    let protocol = policy.protocol.unwrap_or(Protocol::Grpc);
                    Some(Destination {
                        endpoint: signal_url(base, protocol, signal),
                        protocol,
                    })
                }
                None => env.clone(),
            }
        };
        Effective {
            traces: over(Signal::Traces, &self.traces, self.traces_off),
            logs: over(Signal::Logs, &self.logs, self.logs_off),
            sample_ratio: policy.sample_ratio.unwrap_or(self.sample_ratio),
        }
    }
}

/// A base endpoint as the conventions use it: OTLP/HTTP gets the signal's path.
fn signal_url(base: &str, protocol: Protocol, signal: Signal) -> String {
    match protocol {
        Protocol::Grpc => base.to_string(),
        Protocol::HttpProtobuf => format!("{}{}", base.trim_end_matches('/'), signal.http_path()),
    }
}

/// A signal's destination: its own endpoint variable, else the base one; none when
/// neither is set or its exporter is `none`.
fn destination(
    get: Lookup<'_>,
    signal: Signal,
    exporter_var: &str,
) -> Result<Option<Destination>, ConfigError> {
    match get(exporter_var).as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(invalid(
                exporter_var,
                format!("unsupported exporter {other:?} (otlp, none)"),
            ));
        }
    }
    let s = signal.env();
    let protocol_var = format!("OTEL_EXPORTER_OTLP_{s}_PROTOCOL");
    let protocol = match get(&protocol_var).or_else(|| get("OTEL_EXPORTER_OTLP_PROTOCOL")) {
        None => Protocol::Grpc,
        Some(p) => Protocol::parse(&p).ok_or_else(|| {
            invalid(
                &protocol_var,
                format!("unsupported protocol {p:?} (grpc, http/protobuf)"),
            )
        })?,
    };
    let signal_var = format!("OTEL_EXPORTER_OTLP_{s}_ENDPOINT");
    let endpoint = match (get(&signal_var), get("OTEL_EXPORTER_OTLP_ENDPOINT")) {
        // A signal endpoint is used as given (the conventions' rule).
        (Some(e), _) => e,
        (None, Some(base)) => signal_url(&base, protocol, signal),
        (None, None) => return Ok(None),
    };
    check_url(&endpoint).map_err(|why| invalid(&signal_var, why.to_string()))?;
    if protocol == Protocol::HttpProtobuf && endpoint.starts_with("https://") {
        return Err(invalid(
            &protocol_var,
            "https is supported with grpc only (OTLP/HTTP has no TLS here)",
        ));
    }
    Ok(Some(Destination { endpoint, protocol }))
}

/// Why a collector endpoint is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("not a URL")]
    NotAUrl,
    #[error("must be an http:// or https:// URL with a host")]
    NotHttp,
}

/// An endpoint must be an absolute http(s) URL.
pub fn check_url(endpoint: &str) -> Result<(), UrlError> {
    let uri: http::Uri = endpoint.parse().map_err(|_| UrlError::NotAUrl)?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(_)) => Ok(()),
        _ => Err(UrlError::NotHttp),
    }
}

fn ratio(v: &str) -> Option<f64> {
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|r| (0.0..=1.0).contains(r))
}

fn number(get: Lookup<'_>, var: &str, default: usize) -> Result<usize, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|_| invalid(var, "a whole number")),
    }
}

fn millis(get: Lookup<'_>, var: &str, default: u64) -> Result<Duration, ConfigError> {
    match get(var) {
        None => Ok(Duration::from_millis(default)),
        Some(v) => v
            .trim()
            .parse()
            .map(Duration::from_millis)
            .map_err(|_| invalid(var, "milliseconds, a whole number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<EnvConfig, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        EnvConfig::from_lookup(&|k| map.get(k).cloned())
    }

    #[test]
    fn nothing_set_exports_nothing() {
        let c = env(&[]).unwrap();
        assert_eq!(c.traces, None);
        assert_eq!(c.logs, None);
        assert_eq!(c.sample_ratio, 1.0);
        assert_eq!(c.span_batching.max_queue, 2048);
    }

    #[test]
    fn base_endpoint_gets_signal_paths_over_http_only() {
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap();
        assert_eq!(
            c.traces.unwrap().endpoint,
            "http://collector:4318/v1/traces"
        );
        assert_eq!(c.logs.unwrap().endpoint, "http://collector:4318/v1/logs");
        let g = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        assert_eq!(
            g.traces.unwrap(),
            Destination {
                endpoint: "http://collector:4317".into(),
                protocol: Protocol::Grpc
            }
        );
    }

    #[test]
    fn signal_settings_win_and_exporter_none_turns_a_signal_off() {
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "https://b:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])
        .unwrap();
        assert_eq!(c.traces, None);
        assert_eq!(c.logs.unwrap().endpoint, "https://b:4317");
    }

    #[test]
    fn bad_values_are_named() {
        for (pairs, var) in [
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            ),
            (
                vec![
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a"),
                ],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER_ARG", "1.5")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (
                vec![("OTEL_TRACES_SAMPLER", "jaeger_remote")],
                "OTEL_TRACES_SAMPLER",
            ),
            (
                vec![("OTEL_BSP_MAX_QUEUE_SIZE", "lots")],
                "OTEL_BSP_MAX_QUEUE_SIZE",
            ),
            (
                vec![("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")],
                "OTEL_EXPORTER_OTLP_COMPRESSION",
            ),
        ] {
            let e = env(&pairs).unwrap_err().to_string();
            assert!(e.starts_with(var), "{e}");
        }
    }

    #[test]
    fn policy_overrides_endpoint_protocol_and_ratio() {
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4317"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.5"),
        ])
        .unwrap();
        let none = c.with(&PolicyOverrides::default());
        assert_eq!(none.sample_ratio, 0.5);
        assert_eq!(none.traces.unwrap().endpoint, "http://env:4317");
        let e = c.with(&PolicyOverrides {
            endpoint: Some("http://policy:4318".into()),
            protocol: Some(Protocol::HttpProtobuf),
            sample_ratio: Some(0.1),
        });
        assert_eq!(e.traces.unwrap().endpoint, "http://policy:4318/v1/traces");
        assert_eq!(e.logs.unwrap().endpoint, "http://policy:4318/v1/logs");
        assert_eq!(e.sample_ratio, 0.1);
        let off = env(&[
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:1"),
        ])
        .unwrap()
        .with(&PolicyOverrides {
            endpoint: Some("http://policy:4317".into()),
            ..Default::default()
        });
        assert_eq!(off.traces, None);
    }

    #[test]
    fn collector_credentials_never_follow_a_policy_endpoint() {
        let c = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://soc:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cret"),
        ])
        .unwrap();
        let p = PolicyOverrides {
            endpoint: Some("http://elsewhere:4317".into()),
            sample_ratio: Some(0.5),
            ..Default::default()
        };
        assert!(c.ignores_endpoint_of(&p));
        let e = c.with(&p);
        assert_eq!(e.traces.unwrap().endpoint, "https://soc:4317");
        assert_eq!(e.sample_ratio, 0.5);
    }

    #[test]
    fn a_signal_turned_off_stays_off_and_https_needs_grpc() {
        let c = env(&[("OTEL_LOGS_EXPORTER", "none")]).unwrap();
        let e = c.with(&PolicyOverrides {
            endpoint: Some("http://policy:4317".into()),
            ..Default::default()
        });
        assert_eq!(e.logs, None);
        assert!(e.traces.is_some());
        let err = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://a:4318"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
            "{err}"
        );
    }
}
