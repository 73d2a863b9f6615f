//! OpenTelemetry for Vigie's binaries: request spans (the sidecar), security events as
//! log records (every binary), exported over OTLP (gRPC or HTTP/protobuf) through
//! bounded queues whose drops are counted ([`pipeline`]). Configured by the `OTEL_*`
//! environment ([`config`]), with a policy's overrides on top.
//!
//! With no endpoint configured nothing is recorded: spans are not sampled (the app's
//! `traceparent` then passes through untouched) and security events go to the log only.

pub mod config;
pub mod logs;
pub mod pipeline;
pub mod security;

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::logs::LoggerProvider as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt as _, TraceId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::{SdkLogger, SdkLoggerProvider};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    SamplingDecision, SamplingResult, SdkTracer, SdkTracerProvider, ShouldSample,
};
use tokio::sync::watch;

pub use config::{EnvConfig, PolicyOverrides, Protocol};
pub use opentelemetry;
pub use pipeline::Stats;
pub use security::SecurityEvent;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("OTLP TLS files: {0}")]
    Tls(std::io::Error),
    #[error("telemetry metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("telemetry export thread: {0}")]
    Thread(std::io::Error),
    #[error("telemetry already initialised")]
    Twice,
}

/// The process's telemetry: tracer, logger, switches and the export thread.
#[derive(Debug)]
pub struct Telemetry {
    tracer_provider: SdkTracerProvider,
    tracer: SdkTracer,
    logger_provider: SdkLoggerProvider,
    logger: SdkLogger,
    switches: Arc<pipeline::Switches>,
    env: EnvConfig,
    config: watch::Sender<config::Effective>,
    stats: Stats,
}

static GLOBAL: OnceLock<Arc<Telemetry>> = OnceLock::new();

/// The process's telemetry, once [`Telemetry::init`] has run.
pub fn global() -> Option<&'static Arc<Telemetry>> {
    GLOBAL.get()
}

/// Parent-based ratio sampling, with the ratio (and whether traces are exported at all)
/// read from switches a policy can change.
#[derive(Debug, Clone)]
struct PolicySampler(Arc<pipeline::Switches>);

impl ShouldSample for PolicySampler {
    fn should_sample(
        &self,
        parent: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if !self.0.traces_on.load(Ordering::Relaxed) {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: parent
                    .map(|cx| cx.span().span_context().trace_state().clone())
                    .unwrap_or_default(),
            };
        }
        self.0
            .sampler
            .load()
            .should_sample(parent, trace_id, name, kind, attributes, links)
    }
}

impl Telemetry {
    /// Reads the environment, starts the export thread and installs the result as the
    /// process's telemetry. `service`: `service.name` unless `OTEL_SERVICE_NAME` says
    /// otherwise; `resource`: more resource attributes (namespace, pod).
    pub fn init(
        service: &'static str,
        resource: Vec<KeyValue>,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, InitError> {
        let env = EnvConfig::from_env()?;
        let tls = pipeline::Tls::from_env().map_err(InitError::Tls)?;
        let stats = Stats::new(registry)?;
        let effective = env.with(&PolicyOverrides::default());
        let switches = Arc::new(pipeline::Switches::new(&effective));
        let (config, config_rx) = watch::channel(effective);
        let (spans_q, logs_q, spans_rx, logs_rx) =
            pipeline::queues(&stats, env.span_batching, env.log_batching);
        let mut builder = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            builder = builder.with_service_name(service);
        }
        let resource = builder
            .with_attributes(resource)
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        let tracer_provider = SdkTracerProvider::builder()
            .with_span_processor(pipeline::QueueSpanProcessor(spans_q))
            .with_sampler(PolicySampler(switches.clone()))
            .with_resource(resource.clone())
            .build();
        let logger_provider = SdkLoggerProvider::builder()
            .with_log_processor(pipeline::QueueLogProcessor(logs_q, switches.clone()))
            .with_resource(resource.clone())
            .build();
        let workers = pipeline::Workers {
            spans: spans_rx,
            logs: logs_rx,
            span_batching: env.span_batching,
            log_batching: env.log_batching,
            config: config_rx,
            resource,
            stats: stats.clone(),
            tls,
        };
        std::thread::Builder::new()
            .name("vigie-otlp".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt.block_on(workers.run()),
                    Err(e) => tracing::error!(error = %e, "telemetry export runtime not started"),
                }
            })
            .map_err(InitError::Thread)?;
        let tracer = tracer_provider.tracer("vigie");
        let logger = logger_provider.logger("vigie");
        let t = Arc::new(Self {
            tracer_provider,
            tracer,
            logger_provider,
            logger,
            switches,
            env,
            config,
            stats,
        });
        GLOBAL.set(t.clone()).map_err(|_| InitError::Twice)?;
        Ok(t)
    }

    pub fn tracer(&self) -> &SdkTracer {
        &self.tracer
    }

    pub fn logger(&self) -> &SdkLogger {
        &self.logger
    }

    /// Whether request spans are recorded and `traceparent` is rewritten.
    pub fn traces_on(&self) -> bool {
        self.switches.traces_on.load(Ordering::Relaxed)
    }

    pub fn logs_on(&self) -> bool {
        self.switches.logs_on.load(Ordering::Relaxed)
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// A policy's telemetry section (or its absence: back to the environment).
    pub fn apply_policy(&self, overrides: &PolicyOverrides) {
        if self.env.ignores_endpoint_of(overrides) {
            tracing::warn!(
                "the policy's telemetry.otlpEndpoint is not used: collector credentials are set in this pod's OTEL_* environment and never follow a policy elsewhere"
            );
        }
        let effective = self.env.with(overrides);
        self.switches.apply(&effective);
        self.config.send_if_modified(|c| {
            let changed = *c != effective;
            *c = effective;
            changed
        });
    }

    /// Waits (at most `timeout`) for queued telemetry to be exported, before exit.
    pub fn flush(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let waiting: i64 = ["traces", "logs"]
                .iter()
                .map(|s| self.stats.queued.with_label_values(&[s]).get())
                .sum();
            if waiting <= 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        let _ = self.tracer_provider.shutdown();
        let _ = self.logger_provider.shutdown();
    }
}

/// The caller's trace context, from W3C `traceparent`/`tracestate` headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&opentelemetry_http::HeaderExtractor(headers))
}

/// Writes `cx`'s span as `traceparent` (and `tracestate`) into `headers`.
pub fn inject(cx: &Context, headers: &mut http::HeaderMap) {
    TraceContextPropagator::new()
        .inject_context(cx, &mut opentelemetry_http::HeaderInjector(headers));
}
