//! In-process test helpers: the real pipeline ([`SidecarApp`] behind Pingora's HTTP/1
//! server session) on a loopback port, the mock pool as a library, a plain HTTP/1
//! client, and a capture of the `vigie::security` log lines.
#![allow(dead_code, reason = "each test file uses the helpers it needs")]
#![expect(clippy::unwrap_used, clippy::panic, reason = "test helpers")]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use pingora::apps::HttpServerApp as _;
use pingora::protocols::http::ServerSession;
use serde_json::Value;
use vigie_ledger::Ledger;
use vigie_quota::{LocalLeases, Quota};
use vigie_sidecar::endpoint::EndpointRegistry;
use vigie_sidecar::identity::UserSettings;
use vigie_sidecar::pipeline::account::{Accounting, Attribution, RecordIds};
use vigie_sidecar::pipeline::{Settings, SidecarApp};
use vigie_sidecar::policy::{PolicyStore, Snapshot};
use vigie_sidecar::telemetry::Metrics;
use vigie_sidecar::telemetry::events::Events;
use vigie_sidecar::telemetry::trace::UserKey;
use vigie_sidecar::upstream::Upstream;

pub use vigie_mock_pool::{Behaviour, Failure, Mock};

/// A sidecar serving in this process.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub app: Arc<SidecarApp>,
    pub store: Arc<PolicyStore>,
    pub registry: Arc<EndpointRegistry>,
    pub ledger: Arc<Ledger>,
    _dir: tempfile::TempDir,
    _shutdown: tokio::sync::watch::Sender<bool>,
}

impl Sidecar {
    /// Starts a sidecar on `policy` (canonical JSON of `vigie.v1.Policy`).
    pub async fn start(policy: &Value) -> Sidecar {
        Self::start_with(policy, |_| {}).await
    }

    pub async fn start_with(policy: &Value, tune: impl FnOnce(&mut Settings)) -> Sidecar {
        let store = Arc::new(PolicyStore::default());
        let registry = Arc::new(EndpointRegistry::default());
        let metrics = Metrics::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (ledger, dangling) = Ledger::open(dir.path()).unwrap();
        assert!(dangling.is_empty());
        let ledger = Arc::new(ledger);
        let accounting = Arc::new(Accounting {
            metrics: metrics.clone(),
            ledger: Some(ledger.clone()),
            ids: Arc::new(RecordIds::new().unwrap()),
            who: Attribution {
                namespace: "team-a".into(),
                workload: "app".into(),
                pod: "app-0".into(),
            },
        });
        let mut settings = Settings {
            max_body_bytes: 1 << 20,
            max_attempts: 3,
            namespace: "team-a".into(),
            workload: "app".into(),
            labels: Default::default(),
            users: UserSettings {
                header: Some(http::HeaderName::from_static("x-vigie-user")),
                ..Default::default()
            },
            route_debug_header: true,
            limits: Default::default(),
        };
        tune(&mut settings);
        let app = Arc::new(SidecarApp::new(
            store.clone(),
            Upstream::new(16),
            metrics,
            Events::new("team-a", "app"),
            UserKey::new(vec![7; 32]),
            accounting,
            Arc::new(Quota::new(Arc::new(LocalLeases::default()))),
            settings,
            None,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let served = app.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let app = served.clone();
                let shutdown = rx.clone();
                tokio::spawn(async move {
                    let mut stream: pingora::protocols::Stream =
                        Box::new(pingora::protocols::l4::stream::Stream::from(tcp));
                    // Keep-alive: the same connection serves the next request.
                    while let Some(reused) = app
                        .process_new_http(ServerSession::new_http1(stream), &shutdown)
                        .await
                    {
                        stream = reused.consume().0;
                    }
                });
            }
        });
        let sidecar = Sidecar {
            addr,
            app,
            store,
            registry,
            ledger,
            _dir: dir,
            _shutdown: tx,
        };
        sidecar.install(policy);
        sidecar
    }

    /// Compiles and swaps in a policy, as a reload does.
    pub fn install(&self, policy: &Value) -> Arc<Snapshot> {
        let s = Arc::new(
            Snapshot::compile(
                serde_json::from_value(policy.clone()).unwrap(),
                &self.registry,
            )
            .unwrap(),
        );
        self.store.install(s.clone());
        s
    }

    pub async fn post(&self, path: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
        send(
            self.addr,
            "POST",
            path,
            headers,
            Bytes::from(body.to_string()),
        )
        .await
    }

    pub async fn chat(&self, body: Value) -> Answer {
        self.post("/v1/chat/completions", &body, &[]).await
    }

    /// The usage records written so far (ended requests).
    pub fn records(&self) -> Vec<vigie_proto::v1::UsageRecord> {
        self.ledger.pending(10_000).unwrap().records
    }

    /// A Prometheus counter's value, summed over the series whose labels contain all of
    /// `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.app
            .metrics
            .registry()
            .gather()
            .iter()
            .filter(|f| f.get_name() == name)
            .flat_map(|f| f.get_metric().iter())
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.get_name() == *k && l.get_value() == *v)
                })
            })
            .map(|m| m.get_counter().get_value())
            .sum()
    }
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The `data:` payloads of an event stream, parsed (`[DONE]` left out).
    pub fn events(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    /// The text of a streamed OpenAI chat answer.
    pub fn streamed_text(&self) -> String {
        self.events()
            .iter()
            .filter_map(|e| {
                e.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            })
            .collect()
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "sidecar")
        .header("content-type", "application/json");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = sender
        .send_request(req.body(Full::new(body)).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// A mock pool serving `models`.
pub async fn mock(models: &[&str], behaviour: Behaviour) -> (SocketAddr, Arc<Mock>) {
    vigie_mock_pool::spawn("mock", models, behaviour)
        .await
        .unwrap()
}

/// A pool of the policy format.
pub fn pool(name: &str, addrs: &[SocketAddr], models: &[&str]) -> Value {
    serde_json::json!({
        "name": name,
        "kind": "POOL_KIND_VLLM",
        "endpoints": addrs.iter().map(|a| serde_json::json!({"url": format!("http://{a}")})).collect::<Vec<_>>(),
        "models": models.iter().map(|m| serde_json::json!({"name": m})).collect::<Vec<_>>(),
        "timeouts": {"connect": "1s", "firstByte": "5s", "idle": "5s"},
    })
}

pub fn user_message(text: &str) -> Value {
    serde_json::json!([{"role": "user", "content": text}])
}

/// The `vigie::security` log lines emitted while the capture is installed (this
/// thread; tests run the sidecar on a current-thread runtime).
#[derive(Clone, Default)]
pub struct SecurityLog(Arc<Mutex<Vec<u8>>>);

impl SecurityLog {
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        // Tests run in parallel threads, most without a subscriber. tracing caches each
        // call site's interest across all threads, and a call site first reached from a
        // thread with none can be cached as "never", hiding it from this thread's
        // subscriber too (seen in CI). A process-wide subscriber interested in the
        // security target keeps that interest from ever being "never".
        static FALLBACK: std::sync::Once = std::sync::Once::new();
        FALLBACK.call_once(|| {
            let sink = tracing_subscriber::fmt()
                .with_env_filter("vigie::security=info")
                .with_writer(std::io::sink)
                .finish();
            let _ = tracing::subscriber::set_global_default(sink);
        });
        let writer = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("vigie::security=info")
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    pub fn lines(&self) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .map(String::from)
            .collect()
    }
}

impl std::io::Write for SecurityLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
