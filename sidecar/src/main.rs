//! `vigie-sidecar`: runs next to an app container and proxies its LLM traffic.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use clap::Parser;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::server::{Server, ShutdownWatch};
use pingora::services::background::{BackgroundService, background_service};
use pingora::services::listening::Service;
use tracing::{error, info};

use vigie_sidecar::admin::AdminApp;
use vigie_sidecar::policy::PolicyStore;
use vigie_sidecar::policy::file::{FileWatcher, Reload};
use vigie_sidecar::proxy::{Settings, SidecarApp};
use vigie_sidecar::routing::EndpointRegistry;
use vigie_sidecar::telemetry::Metrics;
use vigie_sidecar::upstream::Upstream;

#[derive(Debug, Parser)]
#[command(
    name = "vigie-sidecar",
    version,
    about = "Vigie sidecar: LLM traffic proxy next to an app container"
)]
struct Args {
    /// Where the app's SDKs connect (loopback only in a pod).
    #[arg(long, env = "VIGIE_LISTEN", default_value = "127.0.0.1:15080")]
    listen: String,
    /// Health, readiness and Prometheus metrics.
    #[arg(long, env = "VIGIE_ADMIN_LISTEN", default_value = "127.0.0.1:15090")]
    admin_listen: String,
    /// Policy file (canonical protobuf JSON), reloaded when it changes.
    #[arg(long, env = "VIGIE_POLICY_FILE")]
    policy_file: PathBuf,
    /// How often the policy file is checked for changes, in milliseconds.
    #[arg(long, env = "VIGIE_POLICY_POLL_MS", default_value_t = 500)]
    policy_poll_ms: u64,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "VIGIE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Endpoints tried per request when connecting fails.
    #[arg(long, env = "VIGIE_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: usize,
    /// Worker threads. One is plenty for one pod's traffic.
    #[arg(long, env = "VIGIE_THREADS", default_value_t = 1)]
    threads: usize,
    /// Seconds in-flight requests get to finish on SIGTERM.
    #[arg(long, env = "VIGIE_SHUTDOWN_TIMEOUT_S", default_value_t = 30)]
    shutdown_timeout_s: u64,
    /// Log format: text or json.
    #[arg(long, env = "VIGIE_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// Validate the policy file, print the result and exit.
    #[arg(long)]
    check: bool,
}

fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,pingora=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
}

/// Polls the policy file and installs valid changes.
struct PolicyFileTask {
    watcher: std::sync::Mutex<FileWatcher>,
    interval: Duration,
    metrics: Metrics,
}

impl PolicyFileTask {
    fn poll(&self) {
        let Ok(mut watcher) = self.watcher.lock() else {
            return;
        };
        match watcher.poll() {
            Reload::Unchanged => {}
            Reload::Installed(s) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["installed"])
                    .inc();
                self.metrics.set_policy(&s.policy.name, &s.version);
                info!(policy = %s.policy.name, version = %s.version, "policy installed");
            }
            Reload::Rejected(e) => {
                self.metrics
                    .policy_reloads
                    .with_label_values(&["rejected"])
                    .inc();
                error!(error = %e, "policy rejected; keeping the previous one");
            }
        }
    }
}

#[async_trait]
impl BackgroundService for PolicyFileTask {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(self.interval);
        loop {
            tokio::select! {
                _ = tick.tick() => self.poll(),
                _ = shutdown.changed() => return,
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);

    let store = Arc::new(PolicyStore::default());
    let registry = Arc::new(EndpointRegistry::default());
    let metrics = Metrics::new().context("registering metrics")?;
    let mut watcher = FileWatcher::new(args.policy_file.clone(), store.clone(), registry);
    // The first load is synchronous: a sidecar with a broken policy must say so and stop.
    match watcher.poll() {
        Reload::Installed(s) => {
            metrics.set_policy(&s.policy.name, &s.version);
            metrics
                .policy_reloads
                .with_label_values(&["installed"])
                .inc();
            info!(policy = %s.policy.name, version = %s.version, models = s.models.len(), "policy loaded");
            if args.check {
                println!(
                    "policy {:?} is valid (version {})",
                    s.policy.name, s.version
                );
                return Ok(());
            }
        }
        Reload::Rejected(e) => return Err(e).context("loading the policy"),
        Reload::Unchanged => anyhow::bail!("policy file was not read"),
    }

    let conf = ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(args.shutdown_timeout_s),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();

    let app = SidecarApp {
        store: store.clone(),
        upstream: Upstream::new(128),
        metrics: metrics.clone(),
        settings: Settings {
            max_body_bytes: args.max_body_bytes,
            max_attempts: args.max_attempts,
        },
    };
    let mut proxy = Service::new("vigie-proxy".to_string(), app);
    proxy.add_tcp(&args.listen);
    let mut admin = Service::new(
        "vigie-admin".to_string(),
        AdminApp {
            store,
            metrics: metrics.clone(),
        },
    );
    admin.add_tcp(&args.admin_listen);
    let policy_task = PolicyFileTask {
        watcher: std::sync::Mutex::new(watcher),
        interval: Duration::from_millis(args.policy_poll_ms.max(50)),
        metrics,
    };
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("policy-file", policy_task));
    info!(listen = %args.listen, admin = %args.admin_listen, "vigie-sidecar starting");
    server.run_forever()
}
