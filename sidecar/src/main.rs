//! `vigie-sidecar`: runs next to an app container and proxies its LLM traffic.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use pingora::server::Server;
use pingora::server::configuration::{Opt, ServerConf};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use tracing::info;
use vigie_telemetry::opentelemetry::KeyValue;

use vigie_ledger::Ledger;
use vigie_proto::v1::{ClientKind, Identity};
use vigie_quota::{LeaseSource, LocalLeases, Quota};
use vigie_sidecar::admin::AdminApp;
use vigie_sidecar::control::lkg::LastKnownGood;
use vigie_sidecar::control::quota::ControlPlaneLeases;
use vigie_sidecar::control::usage::Shipping;
use vigie_sidecar::control::{Applier, ControlPlaneConfig};
use vigie_sidecar::endpoint::EndpointRegistry;
use vigie_sidecar::identity::UserSettings;
use vigie_sidecar::pipeline::account::{Accounting, Attribution, RecordIds, record_interrupted};
use vigie_sidecar::pipeline::{Settings, SidecarApp};
use vigie_sidecar::policy::PolicyStore;
use vigie_sidecar::policy::file::{FileWatcher, Reload};
use vigie_sidecar::services::{
    ControlPlaneTask, EgressGate, PolicyFileTask, PolicySource, UsageShipper,
};
use vigie_sidecar::telemetry::Metrics;
use vigie_sidecar::telemetry::events::Events;
use vigie_sidecar::telemetry::trace::UserKey;
use vigie_sidecar::upstream::original::OriginalDestinations;
use vigie_sidecar::upstream::probe::Prober;
use vigie_sidecar::upstream::{HeaderRules, Upstream};

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
    /// Standalone mode: policy file (canonical protobuf JSON), reloaded when it changes.
    #[arg(
        long,
        env = "VIGIE_POLICY_FILE",
        required_unless_present = "control_plane",
        conflicts_with = "control_plane"
    )]
    policy_file: Option<PathBuf>,
    /// Managed mode: control plane URL (http://host:50051 or https://…).
    #[arg(long, env = "VIGIE_CONTROL_PLANE")]
    control_plane: Option<String>,
    /// File holding the workload token for the control plane.
    #[arg(long, env = "VIGIE_CONTROL_PLANE_TOKEN_FILE")]
    control_plane_token_file: Option<PathBuf>,
    /// CA certificate (PEM) of the control plane, for https.
    #[arg(long, env = "VIGIE_CONTROL_PLANE_CA")]
    control_plane_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) when the control plane requires mTLS.
    #[arg(long, env = "VIGIE_CONTROL_PLANE_CERT", requires = "control_plane_key")]
    control_plane_cert: Option<PathBuf>,
    #[arg(long, env = "VIGIE_CONTROL_PLANE_KEY", requires = "control_plane_cert")]
    control_plane_key: Option<PathBuf>,
    /// Longest wait between two reconnection attempts, in ms.
    #[arg(
        long,
        env = "VIGIE_CONTROL_PLANE_MAX_BACKOFF_MS",
        default_value_t = 30_000
    )]
    control_plane_max_backoff_ms: u64,
    /// Where the last-known-good snapshot is kept (managed mode).
    #[arg(long, env = "VIGIE_STATE_DIR", default_value = "vigie-state")]
    state_dir: PathBuf,
    /// Identity sent to the control plane (from the downward API in a pod).
    #[arg(long, env = "POD_NAMESPACE", default_value = "")]
    namespace: String,
    #[arg(long, env = "POD_NAME", default_value = "")]
    pod: String,
    #[arg(long, env = "POD_SERVICE_ACCOUNT", default_value = "")]
    service_account: String,
    #[arg(long, env = "VIGIE_WORKLOAD", default_value = "")]
    workload: String,
    #[arg(long, env = "NODE_NAME", default_value = "")]
    node: String,
    #[arg(long, env = "POD_UID", default_value = "")]
    pod_uid: String,
    /// Pod label `key=value`; repeat for several. Added to (and overriding) the
    /// labels of --labels-file.
    #[arg(long = "label", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Downward-API file of the pod's labels (`fieldRef: metadata.labels`).
    #[arg(long, env = "VIGIE_LABELS_FILE")]
    labels_file: Option<PathBuf>,
    /// How often the policy file is checked for changes, in milliseconds.
    #[arg(long, env = "VIGIE_POLICY_POLL_MS", default_value_t = 500)]
    policy_poll_ms: u64,
    /// An app request header to forward upstream besides the built-in allow-list
    /// (content type, accept, the providers' versioning and beta headers). Repeatable.
    /// Headers are a channel DLP does not read: list only ones that carry no user data.
    #[arg(
        long = "forward-header",
        env = "VIGIE_FORWARD_HEADERS",
        value_delimiter = ','
    )]
    forward_headers: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "VIGIE_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Request-body bytes held at once, all requests together (past it: 503, retry).
    #[arg(long, env = "VIGIE_MAX_BODY_BYTES_IN_FLIGHT", default_value_t = 64 * 1024 * 1024)]
    max_body_bytes_in_flight: usize,
    /// Connections held at once (waiting for or serving a request); more are closed.
    #[arg(long, env = "VIGIE_MAX_CONNECTIONS", default_value_t = 1024)]
    max_connections: usize,
    /// Longest wait for a request head, keep-alive idle time included, in seconds; a
    /// body may take this plus one second per 64 KiB.
    #[arg(long, env = "VIGIE_HEADER_TIMEOUT_S", default_value_t = 30)]
    header_timeout_s: u64,
    /// Attempts per request (endpoints, then pools) on connect errors, 5xx, 429 and
    /// first-byte timeouts — never once the answer has started.
    #[arg(long, env = "VIGIE_MAX_ATTEMPTS", default_value_t = 3)]
    max_attempts: usize,
    /// Add `x-vigie-route: pool=…; endpoint=…; reason=…; attempts=…` to answers
    /// (debugging; off by default: it tells the app about the infrastructure).
    #[arg(long, env = "VIGIE_ROUTE_DEBUG_HEADER")]
    route_debug_header: bool,
    /// Not ready until the kernel enforces this pod's egress (the node's egress agent
    /// enrolled it): a native sidecar then holds the app containers back until then.
    #[arg(long, env = "VIGIE_EGRESS_REQUIRED")]
    egress_required: bool,
    /// Why the injection webhook flagged this pod as not enforceable (set by it). With
    /// --egress-required, the sidecar is then not ready unless its policy says
    /// `egress.allowNotEnforceable`.
    #[arg(long, env = "VIGIE_EGRESS_NOT_ENFORCEABLE")]
    egress_not_enforceable: Option<String>,
    /// The node's egress agent (`http://host:port`), asked where connections that
    /// the kernel redirected to this sidecar were going (`egress.redirect`).
    #[arg(long, env = "VIGIE_EGRESS_AGENT_URL")]
    egress_agent_url: Option<String>,
    /// Header naming the end user a request is billed to.
    #[arg(long, env = "VIGIE_USER_HEADER", default_value = "x-vigie-user")]
    user_header: String,
    /// Claim of the end user's JWT (sent as a bearer token in --user-jwt-header) that
    /// names the user; takes precedence over --user-header.
    #[arg(long, env = "VIGIE_USER_JWT_CLAIM")]
    user_jwt_claim: Option<String>,
    #[arg(long, env = "VIGIE_USER_JWT_HEADER", default_value = "authorization")]
    user_jwt_header: String,
    /// JWKS the end user's JWT must be signed with (401 otherwise). Without it, the
    /// claim is recorded as declared (flagged unverified).
    #[arg(long, env = "VIGIE_USER_JWKS_FILE")]
    user_jwks_file: Option<PathBuf>,
    /// Secret key of the end-user pseudonyms on spans (`vigie.user`, HMAC-SHA-256): the
    /// same file in every sidecar gives a user the same pseudonym everywhere. Unset: a
    /// random key per process.
    #[arg(long, env = "VIGIE_TELEMETRY_USER_KEY_FILE")]
    telemetry_user_key_file: Option<PathBuf>,
    /// Required `aud` of the end user's JWT (with --user-jwks-file).
    #[arg(long, env = "VIGIE_USER_JWT_AUDIENCE")]
    user_jwt_audience: Option<String>,
    /// Managed mode: how often the usage ledger is flushed to disk and shipped, in ms.
    #[arg(long, env = "VIGIE_LEDGER_FLUSH_MS", default_value_t = 1000)]
    ledger_flush_ms: u64,
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

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not key=value")]
struct NotKeyValue(String);

fn parse_label(s: &str) -> Result<(String, String), NotKeyValue> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| NotKeyValue(s.to_string()))
}

fn user_settings(args: &Args) -> anyhow::Result<UserSettings> {
    let header = |name: &str, flag: &str| {
        http::HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("{flag}: {name:?} is not a header name"))
    };
    let jwks = match &args.user_jwks_file {
        Some(p) => Some(
            serde_json::from_slice(
                &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("{} is not a JWKS document", p.display()))?,
        ),
        None => None,
    };
    Ok(UserSettings {
        header: (!args.user_header.is_empty())
            .then(|| header(&args.user_header, "--user-header"))
            .transpose()?,
        jwt_claim: args.user_jwt_claim.clone(),
        jwt_header: Some(header(&args.user_jwt_header, "--user-jwt-header")?),
        jwks,
        audience: args.user_jwt_audience.clone(),
    })
}

fn init_logs(format: &str) {
    vigie_telemetry::logs::init("info,pingora=warn", &[], format == "json");
}

fn main() -> anyhow::Result<()> {
    vigie_sidecar::memory::limit_arenas();
    let args = Args::parse();
    init_logs(&args.log_format);
    vigie_sidecar::memory::not_dumpable();
    let mut labels = match &args.labels_file {
        Some(path) => vigie_sidecar::control::podinfo::read_labels(path)?,
        None => Default::default(),
    };
    labels.extend(args.labels.iter().cloned());

    let store = Arc::new(PolicyStore::default());
    let registry = Arc::new(EndpointRegistry::default());
    let metrics = Metrics::new().context("registering metrics")?;
    let workload = if args.workload.is_empty() {
        args.service_account.clone()
    } else {
        args.workload.clone()
    };
    let events = Events::new(&args.namespace, &workload);
    let mut resource = vec![KeyValue::new("k8s.namespace.name", args.namespace.clone())];
    if !args.pod.is_empty() {
        resource.push(KeyValue::new("k8s.pod.name", args.pod.clone()));
    }
    // OTLP export (OTEL_* environment, then the policy's telemetry section).
    vigie_telemetry::Telemetry::init("vigie-sidecar", resource, metrics.registry())
        .context("telemetry (OTEL_* environment)")?;
    let user_key = match &args.telemetry_user_key_file {
        Some(p) => {
            let key = std::fs::read(p).with_context(|| format!("reading {}", p.display()))?;
            anyhow::ensure!(
                key.len() >= 16,
                "{}: the key must be at least 16 bytes",
                p.display()
            );
            key
        }
        None => {
            let mut key = vec![0u8; 32];
            getrandom::fill(&mut key).context("drawing the user pseudonym key")?;
            key
        }
    };
    let user_key = UserKey::new(user_key);
    let users = user_settings(&args)?;
    // The usage ledger lives next to the last-known-good policy, in managed mode (it is
    // shipped to the control plane).
    let ledger = match &args.control_plane {
        Some(_) => {
            let (ledger, dangling) =
                Ledger::open(&args.state_dir.join("ledger")).context("opening the usage ledger")?;
            Some((Arc::new(ledger), dangling))
        }
        None => None,
    };
    let accounting = Arc::new(Accounting {
        metrics: metrics.clone(),
        ledger: ledger.as_ref().map(|(l, _)| l.clone()),
        ids: Arc::new(RecordIds::new().context("seeding usage record ids")?),
        who: Attribution {
            namespace: args.namespace.clone(),
            workload: workload.clone(),
            pod: args.pod.clone(),
        },
    });
    let mut shipper = None;
    // Budget allowance: from the control plane when managed, else kept locally.
    let mut lease_source: Option<Arc<dyn LeaseSource>> = None;
    if let Some((ledger, dangling)) = ledger {
        if !dangling.is_empty() {
            info!(
                requests = dangling.len(),
                "usage ledger: recording requests interrupted by the last stop"
            );
        }
        record_interrupted(&accounting, dangling);
        shipper = Some(ledger);
    }
    let source = match &args.policy_file {
        Some(path) => {
            let mut watcher = FileWatcher::new(path.clone(), store.clone(), registry);
            // The first load is synchronous: a sidecar with a broken policy must say so and stop.
            match watcher.poll() {
                Reload::Installed(s) => {
                    vigie_sidecar::telemetry::policy_installed(&metrics, &events, &s, "file");
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
            PolicySource::File(Box::new(PolicyFileTask {
                watcher: std::sync::Mutex::new(watcher),
                interval: Duration::from_millis(args.policy_poll_ms.max(50)),
                metrics: metrics.clone(),
                events: events.clone(),
            }))
        }
        None => {
            let url = args
                .control_plane
                .clone()
                .context("--policy-file or --control-plane is required")?;
            if args.check {
                anyhow::bail!("--check validates a --policy-file");
            }
            let applier = Applier {
                store: store.clone(),
                registry,
                metrics: metrics.clone(),
                events: events.clone(),
                lkg: LastKnownGood::in_dir(&args.state_dir),
            };
            // Serve at once on what was last accepted; the control plane may be down.
            applier.load_last_known_good();
            let config = ControlPlaneConfig {
                url,
                token_file: args.control_plane_token_file.clone(),
                ca: args.control_plane_ca.clone(),
                client_cert: args
                    .control_plane_cert
                    .clone()
                    .zip(args.control_plane_key.clone()),
                identity: Identity {
                    namespace: args.namespace.clone(),
                    workload: args.workload.clone(),
                    service_account: args.service_account.clone(),
                    pod: args.pod.clone(),
                    node: args.node.clone(),
                    labels: labels.clone().into_iter().collect(),
                    kind: ClientKind::Sidecar as i32,
                    pod_uid: args.pod_uid.clone(),
                },
                client_version: env!("CARGO_PKG_VERSION").to_string(),
                max_backoff: Duration::from_millis(args.control_plane_max_backoff_ms.max(100)),
            };
            lease_source = Some(Arc::new(ControlPlaneLeases::new(
                config.clone(),
                metrics.clone(),
            )));
            PolicySource::ControlPlane(Box::new(ControlPlaneTask {
                config,
                applier,
                shipper: shipper.take().map(|ledger| UsageShipper {
                    ledger,
                    shipping: Shipping {
                        interval: Duration::from_millis(args.ledger_flush_ms.max(50)),
                    },
                }),
            }))
        }
    };

    let conf = ServerConf {
        threads: args.threads.max(1),
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(args.shutdown_timeout_s),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    vigie_sidecar::memory::give_back_periodically();

    let forwarded_headers = args
        .forward_headers
        .iter()
        .filter(|h| !h.trim().is_empty())
        .map(|h| {
            http::HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
                .with_context(|| format!("--forward-header `{h}` is not a header name"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let original = match &args.egress_agent_url {
        Some(url) if !url.is_empty() => match OriginalDestinations::new(url) {
            Ok(o) => Some(Arc::new(o)),
            // e.g. kernels before 5.14 (no SO_NETNS_COOKIE): serve without redirects.
            Err(e) => {
                tracing::warn!(error = %e, "original destinations unavailable; redirected connections are routed as usual");
                None
            }
        },
        _ => None,
    };
    let app = SidecarApp::new(
        store.clone(),
        Upstream::new(128).with_headers(HeaderRules {
            extra: forwarded_headers,
            private: users.header.iter().cloned().collect(),
        }),
        metrics.clone(),
        events,
        user_key,
        accounting,
        Arc::new(Quota::new(
            lease_source.unwrap_or_else(|| Arc::new(LocalLeases::default())),
        )),
        Settings {
            max_body_bytes: args.max_body_bytes,
            max_attempts: args.max_attempts,
            namespace: args.namespace.clone(),
            workload,
            labels: labels.clone(),
            users,
            route_debug_header: args.route_debug_header,
            limits: vigie_sidecar::pipeline::bounds::Limits {
                max_connections: args.max_connections.max(1),
                header_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
                max_body_bytes_in_flight: args.max_body_bytes_in_flight.max(args.max_body_bytes),
            },
        },
        original,
    );
    let mut proxy = Service::new(
        "vigie-proxy".to_string(),
        vigie_sidecar::pipeline::Listener(Arc::new(app)),
    );
    proxy.add_tcp(&args.listen);
    let egress_enforced = args
        .egress_required
        .then(|| Arc::new(std::sync::atomic::AtomicBool::new(false)));
    let mut admin = Service::new(
        "vigie-admin".to_string(),
        AdminApp {
            store: store.clone(),
            metrics: metrics.clone(),
            egress_enforced: egress_enforced.clone(),
            not_enforceable: args
                .egress_not_enforceable
                .clone()
                .filter(|r| args.egress_required && !r.is_empty()),
        },
    );
    admin.add_tcp(&args.admin_listen);
    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("policy-source", source));
    if let Some(flag) = &egress_enforced {
        server.add_service(background_service("egress-gate", EgressGate(flag.clone())));
    }
    server.add_service(background_service(
        "endpoint-prober",
        Prober {
            store: store.clone(),
            upstream: Upstream::new(16),
            metrics: metrics.clone(),
        },
    ));
    info!(listen = %args.listen, admin = %args.admin_listen, "vigie-sidecar starting");
    server.run_forever()
}
