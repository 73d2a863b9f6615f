//! The export path: the SDK's processors are replaced by ours, which put finished spans
//! and log records into a bounded queue (`try_send`: a full queue drops and counts, it
//! never waits), drained by one thread of its own that batches and exports over OTLP.
//! The SDK's batch processors count their drops but do not expose the count (0.33).
//! A collector that is down or slow therefore only fills the queue; requests never wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use opentelemetry::Context;
use opentelemetry::InstrumentationScope;
use opentelemetry_otlp::{WithExportConfig as _, WithTonicConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::logs::{LogBatch, LogExporter as _, LogProcessor, SdkLogRecord};
use opentelemetry_sdk::trace::{Sampler, Span, SpanData, SpanExporter as _, SpanProcessor};
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use tokio::sync::{mpsc, watch};

use crate::config::{Batching, Destination, Effective, Protocol, Signal};

/// Export counters, shared by every binary under the same names.
#[derive(Debug, Clone)]
pub struct Stats {
    pub exported: IntCounterVec,
    pub dropped: IntCounterVec,
    pub queued: IntGaugeVec,
}

impl Stats {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let exported = IntCounterVec::new(
            Opts::new(
                "vigie_telemetry_exported_total",
                "Spans and log records accepted by the OTLP collector, by signal.",
            ),
            &["signal"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "vigie_telemetry_dropped_total",
                "Spans and log records not exported, by signal and reason (queue_full, export_failed, shutdown).",
            ),
            &["signal", "reason"],
        )?;
        let queued = IntGaugeVec::new(
            Opts::new(
                "vigie_telemetry_queue_length",
                "Spans and log records waiting for export, by signal.",
            ),
            &["signal"],
        )?;
        // Every series exists from the start (at 0), so that alerts on rates work.
        for signal in [Signal::Traces, Signal::Logs] {
            let signal = signal.as_str();
            exported.with_label_values(&[signal]);
            queued.with_label_values(&[signal]);
            for reason in ["queue_full", "export_failed", "shutdown"] {
                dropped.with_label_values(&[signal, reason]);
            }
        }
        registry.register(Box::new(exported.clone()))?;
        registry.register(Box::new(dropped.clone()))?;
        registry.register(Box::new(queued.clone()))?;
        Ok(Self {
            exported,
            dropped,
            queued,
        })
    }

    fn drop_n(&self, signal: Signal, reason: &str, n: usize) {
        self.dropped
            .with_label_values(&[signal.as_str(), reason])
            .inc_by(n as u64);
    }
}

/// State the request path reads without locks.
#[derive(Debug)]
pub struct Switches {
    pub traces_on: AtomicBool,
    pub logs_on: AtomicBool,
    /// Parent-based ratio sampling at the ratio in force, built once per change.
    pub sampler: ArcSwap<Sampler>,
}

impl Switches {
    pub fn new(e: &Effective) -> Self {
        let s = Self {
            traces_on: AtomicBool::new(false),
            logs_on: AtomicBool::new(false),
            sampler: ArcSwap::from_pointee(Sampler::AlwaysOff),
        };
        s.apply(e);
        s
    }

    pub fn apply(&self, e: &Effective) {
        self.traces_on.store(e.traces.is_some(), Ordering::Relaxed);
        self.logs_on.store(e.logs.is_some(), Ordering::Relaxed);
        self.sampler.store(Arc::new(Sampler::ParentBased(Box::new(
            Sampler::TraceIdRatioBased(e.sample_ratio),
        ))));
    }
}

/// The producer side of one signal's queue, with its counters resolved once (no label
/// lookup per span on the request path).
#[derive(Debug)]
pub struct Queue<T> {
    tx: mpsc::Sender<T>,
    queued: IntGauge,
    full: IntCounter,
    closed: IntCounter,
}

impl<T> Queue<T> {
    fn new(signal: Signal, tx: mpsc::Sender<T>, stats: &Stats) -> Self {
        let s = signal.as_str();
        Self {
            tx,
            queued: stats.queued.with_label_values(&[s]),
            full: stats.dropped.with_label_values(&[s, "queue_full"]),
            closed: stats.dropped.with_label_values(&[s, "shutdown"]),
        }
    }

    fn push(&self, item: T) {
        match self.tx.try_send(item) {
            Ok(()) => self.queued.inc(),
            Err(mpsc::error::TrySendError::Full(_)) => self.full.inc(),
            Err(mpsc::error::TrySendError::Closed(_)) => self.closed.inc(),
        }
    }
}

/// Replaces the SDK's span processor: sampled, finished spans go to the queue.
#[derive(Debug)]
pub struct QueueSpanProcessor(pub Queue<SpanData>);

impl SpanProcessor for QueueSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}
    fn on_end(&self, span: SpanData) {
        if span.span_context.is_sampled() {
            self.0.push(span);
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

pub type LogItem = Box<(SdkLogRecord, InstrumentationScope)>;

/// Replaces the SDK's log processor: every record goes to the queue (security events
/// are never sampled).
#[derive(Debug)]
pub struct QueueLogProcessor(pub Queue<LogItem>, pub Arc<Switches>);

impl LogProcessor for QueueLogProcessor {
    fn emit(&self, data: &mut SdkLogRecord, scope: &InstrumentationScope) {
        if self.1.logs_on.load(Ordering::Relaxed) {
            self.0.push(Box::new((data.clone(), scope.clone())));
        }
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Consumer side: what the export thread owns.
pub struct Workers {
    pub spans: mpsc::Receiver<SpanData>,
    pub logs: mpsc::Receiver<LogItem>,
    pub span_batching: Batching,
    pub log_batching: Batching,
    pub config: watch::Receiver<Effective>,
    pub resource: Resource,
    pub stats: Stats,
    pub tls: Tls,
}

/// Queues of the given sizes, with their consumer side.
pub fn queues(
    stats: &Stats,
    span_batching: Batching,
    log_batching: Batching,
) -> (
    Queue<SpanData>,
    Queue<LogItem>,
    mpsc::Receiver<SpanData>,
    mpsc::Receiver<LogItem>,
) {
    let (stx, srx) = mpsc::channel(span_batching.max_queue);
    let (ltx, lrx) = mpsc::channel(log_batching.max_queue);
    (
        Queue::new(Signal::Traces, stx, stats),
        Queue::new(Signal::Logs, ltx, stats),
        srx,
        lrx,
    )
}

/// TLS material from the environment (`OTEL_EXPORTER_OTLP_CERTIFICATE`, `..._CLIENT_CERTIFICATE`,
/// `..._CLIENT_KEY`), read once at start.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca: Option<Vec<u8>>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Tls {
    pub fn from_env() -> std::io::Result<Self> {
        let read = |var: &str| -> std::io::Result<Option<Vec<u8>>> {
            match std::env::var(var) {
                Ok(path) if !path.trim().is_empty() => std::fs::read(path.trim()).map(Some),
                _ => Ok(None),
            }
        };
        let ca = read("OTEL_EXPORTER_OTLP_CERTIFICATE")?;
        let identity = match (
            read("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?,
            read("OTEL_EXPORTER_OTLP_CLIENT_KEY")?,
        ) {
            (Some(c), Some(k)) => Some((c, k)),
            _ => None,
        };
        Ok(Self { ca, identity })
    }

    fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        let mut tls = tonic::transport::ClientTlsConfig::new();
        tls = match &self.ca {
            Some(ca) => tls.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => tls.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        tls
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("OTLP/HTTP over https is not supported: use OTEL_EXPORTER_OTLP_PROTOCOL=grpc for TLS")]
    HttpsOverHttp,
    #[error(transparent)]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// One signal's OTLP exporter, as the export loop needs it.
trait SignalExporter: Sized {
    type Item: Send;
    const SIGNAL: Signal;
    fn destination(e: &Effective) -> Option<Destination>;
    fn build(d: &Destination, timeout: Duration, tls: &Tls) -> Result<Self, BuildError>;
    fn with_resource(&mut self, r: &Resource);
    fn send(
        &self,
        batch: Vec<Self::Item>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send;
}

/// The exporter builders of both signals have the same shape but no common trait.
macro_rules! build_exporter {
    ($builder:expr, $d:expr, $timeout:expr, $tls:expr) => {{
        let d: &Destination = $d;
        match d.protocol {
            Protocol::Grpc => {
                let b = $builder
                    .with_tonic()
                    .with_endpoint(&d.endpoint)
                    .with_timeout($timeout);
                if d.endpoint.starts_with("https://") {
                    b.with_tls_config($tls.tonic()).build()?
                } else {
                    b.build()?
                }
            }
            Protocol::HttpProtobuf => {
                if d.endpoint.starts_with("https://") {
                    return Err(BuildError::HttpsOverHttp);
                }
                $builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(&d.endpoint)
                    .with_timeout($timeout)
                    .build()?
            }
        }
    }};
}

impl SignalExporter for opentelemetry_otlp::SpanExporter {
    type Item = SpanData;
    const SIGNAL: Signal = Signal::Traces;
    fn destination(e: &Effective) -> Option<Destination> {
        e.traces.clone()
    }
    fn build(d: &Destination, timeout: Duration, tls: &Tls) -> Result<Self, BuildError> {
        Ok(build_exporter!(
            opentelemetry_otlp::SpanExporter::builder(),
            d,
            timeout,
            tls
        ))
    }
    fn with_resource(&mut self, r: &Resource) {
        self.set_resource(r);
    }
    async fn send(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.export(batch).await
    }
}

impl SignalExporter for opentelemetry_otlp::LogExporter {
    type Item = LogItem;
    const SIGNAL: Signal = Signal::Logs;
    fn destination(e: &Effective) -> Option<Destination> {
        e.logs.clone()
    }
    fn build(d: &Destination, timeout: Duration, tls: &Tls) -> Result<Self, BuildError> {
        Ok(build_exporter!(
            opentelemetry_otlp::LogExporter::builder(),
            d,
            timeout,
            tls
        ))
    }
    fn with_resource(&mut self, r: &Resource) {
        self.set_resource(r);
    }
    async fn send(&self, batch: Vec<LogItem>) -> OTelSdkResult {
        let refs: Vec<(&SdkLogRecord, &InstrumentationScope)> =
            batch.iter().map(|b| (&b.0, &b.1)).collect();
        self.export(LogBatch::new(&refs)).await
    }
}

/// How often a batch being gathered looks at the queue. Gathering by waking up for
/// each item cost the proxy a thread wake-up per span (a futex call and a context
/// switch on a loaded core, more than exporting the span); looking every 20 ms costs at
/// most 50 wake-ups a second, and a queue of the default 2,048 items takes ~400 ms to
/// fill at 5,000 spans a second.
const GATHER_TICK: Duration = Duration::from_millis(20);

/// Waits for the first item, then gathers more until the batch is full or the delay has
/// passed. `None`: the queue is closed and empty.
async fn next_batch<T>(rx: &mut mpsc::Receiver<T>, b: &Batching) -> Option<Vec<T>> {
    let first = rx.recv().await?;
    let mut batch = Vec::with_capacity(b.max_batch);
    batch.push(first);
    let deadline = tokio::time::Instant::now() + b.delay;
    loop {
        while batch.len() < b.max_batch {
            match rx.try_recv() {
                Ok(i) => batch.push(i),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return Some(batch),
            }
        }
        let now = tokio::time::Instant::now();
        if batch.len() >= b.max_batch || now >= deadline {
            return Some(batch);
        }
        tokio::time::sleep_until(deadline.min(now + GATHER_TICK)).await;
    }
}

impl Workers {
    /// Runs both signals' export loops until their queues close (at shutdown).
    pub async fn run(self) {
        let traces = export_loop::<opentelemetry_otlp::SpanExporter>(
            self.spans,
            self.span_batching,
            self.config.clone(),
            self.resource.clone(),
            self.stats.clone(),
            self.tls.clone(),
        );
        let logs = export_loop::<opentelemetry_otlp::LogExporter>(
            self.logs,
            self.log_batching,
            self.config,
            self.resource,
            self.stats,
            self.tls,
        );
        tokio::join!(traces, logs);
    }
}

/// Batches one signal's queue and exports it; the exporter is rebuilt when the
/// destination changes (a policy update), and a batch that cannot be sent is counted.
async fn export_loop<E: SignalExporter>(
    mut rx: mpsc::Receiver<E::Item>,
    batching: Batching,
    config: watch::Receiver<Effective>,
    resource: Resource,
    stats: Stats,
    tls: Tls,
) {
    let signal = E::SIGNAL;
    let mut dest: Option<Destination> = None;
    let mut exporter: Option<E> = None;
    while let Some(batch) = next_batch(&mut rx, &batching).await {
        let n = batch.len();
        let wanted = E::destination(&config.borrow());
        if wanted != dest {
            exporter = wanted.as_ref().and_then(|d| match E::build(d, batching.timeout, &tls) {
                Ok(mut e) => {
                    e.with_resource(&resource);
                    Some(e)
                }
                Err(e) => {
                    tracing::warn!(signal = signal.as_str(), error = %e, "OTLP exporter not built");
                    None
                }
            });
            dest = wanted;
        }
        match &exporter {
            None => stats.drop_n(signal, "export_failed", n),
            Some(e) => match tokio::time::timeout(batching.timeout, e.send(batch)).await {
                Ok(Ok(())) => stats
                    .exported
                    .with_label_values(&[signal.as_str()])
                    .inc_by(n as u64),
                Ok(Err(err)) => {
                    tracing::debug!(signal = signal.as_str(), error = %err, "OTLP export failed");
                    stats.drop_n(signal, "export_failed", n);
                }
                Err(_) => {
                    tracing::debug!(signal = signal.as_str(), "OTLP export timed out");
                    stats.drop_n(signal, "export_failed", n);
                }
            },
        }
        // Counted as waiting until sent, so that a flush at exit waits for it.
        stats
            .queued
            .with_label_values(&[signal.as_str()])
            .sub(n as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batching(max_queue: usize, max_batch: usize, delay_ms: u64) -> Batching {
        Batching {
            max_queue,
            max_batch,
            delay: Duration::from_millis(delay_ms),
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_without_waiting() {
        let stats = Stats::new(&Registry::new()).unwrap();
        let (tx, _rx) = mpsc::channel(2);
        let q = Queue::new(Signal::Traces, tx, &stats);
        for i in 0..5u32 {
            let t = std::time::Instant::now();
            q.push(i);
            assert!(t.elapsed() < Duration::from_millis(50));
        }
        assert_eq!(stats.queued.with_label_values(&["traces"]).get(), 2);
        assert_eq!(
            stats
                .dropped
                .with_label_values(&["traces", "queue_full"])
                .get(),
            3
        );
        assert_eq!(
            stats
                .dropped
                .with_label_values(&["logs", "queue_full"])
                .get(),
            0
        );
    }

    #[tokio::test]
    async fn batches_fill_up_or_leave_after_the_delay() {
        let (tx, mut rx) = mpsc::channel(16);
        for i in 0..5 {
            tx.send(i).await.unwrap();
        }
        assert_eq!(
            next_batch(&mut rx, &batching(16, 3, 1000)).await,
            Some(vec![0, 1, 2])
        );
        let started = tokio::time::Instant::now();
        assert_eq!(
            next_batch(&mut rx, &batching(16, 3, 50)).await,
            Some(vec![3, 4])
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        drop(tx);
        assert_eq!(next_batch(&mut rx, &batching(16, 3, 50)).await, None);
    }
}
