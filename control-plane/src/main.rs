//! `vigie-control-plane`: serve the API, or manage API tokens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::info;

use vigie_control_plane::auth::{Role, new_token};
use vigie_control_plane::k8s_tokens::{JwksSource, K8sTokenSettings};
use vigie_control_plane::metrics::Metrics;
use vigie_control_plane::server::{
    GitOpsSettings, LedgerSettings, ServerSettings, TlsFiles, serve,
};
use vigie_control_plane::store::{self, AuditRecord, now_ms};
use vigie_control_plane::users::{LedgerUsers, UserKey};
use vigie_control_plane::webhook;

#[derive(Debug, Parser)]
#[command(name = "vigie-control-plane", version, about = "Vigie control plane")]
struct Args {
    /// Database: `sqlite://<file>?mode=rwc` (embedded, one replica) or
    /// `postgres://user:password@host/db` (several replicas). Default: an SQLite file
    /// in --data-dir.
    #[arg(long, env = "VIGIE_DATABASE_URL", global = true)]
    database_url: Option<String>,
    /// Directory of the embedded database.
    #[arg(
        long,
        env = "VIGIE_DATA_DIR",
        default_value = "vigie-data",
        global = true
    )]
    data_dir: PathBuf,
    /// Log format: text or json.
    #[arg(long, env = "VIGIE_LOG_FORMAT", default_value = "text", global = true)]
    log_format: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the gRPC API.
    Serve(Box<ServeArgs>),
    /// Create, list or revoke API tokens (works directly on the database).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Policies from Git: what a sync of a policy directory would change.
    #[command(subcommand)]
    Policy(PolicyCommand),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validates every file of a policy directory and prints what a sync would change,
    /// against the database or (`--against`) another version of the directory. Exit
    /// status: 1 when a file is invalid; with --exit-code, 2 when something would change.
    Diff {
        #[arg(long)]
        dir: PathBuf,
        /// Compare with this directory (the policy repository's main branch, say)
        /// instead of the database.
        #[arg(long)]
        against: Option<PathBuf>,
        /// Count policies whose file is gone as deleted (the reconciler's --policy-prune).
        #[arg(long)]
        prune: bool,
        #[arg(long)]
        exit_code: bool,
    },
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    #[arg(long, env = "VIGIE_LISTEN", default_value = "0.0.0.0:50051")]
    listen: SocketAddr,
    /// Server certificate (PEM). With --tls-key, enables TLS.
    #[arg(long, env = "VIGIE_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    #[arg(long, env = "VIGIE_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to: enables mTLS.
    #[arg(long, env = "VIGIE_TLS_CLIENT_CA", requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
    /// Largest accepted gRPC message, in bytes.
    #[arg(long, env = "VIGIE_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_message_bytes: usize,
    /// How often the store is checked for changes missed by notifications, in ms.
    #[arg(long, env = "VIGIE_RESYNC_MS", default_value_t = 5000)]
    resync_ms: u64,
    /// Name of this replica in the status view (default: host name and process id).
    #[arg(long, env = "VIGIE_REPLICA")]
    replica: Option<String>,
    /// Serve Prometheus metrics (`/metrics`) on this address.
    #[arg(long, env = "VIGIE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve the sidecar-injection webhook (HTTPS) on this address.
    #[arg(long, env = "VIGIE_WEBHOOK_LISTEN", requires_all = ["webhook_tls_cert", "webhook_tls_key"])]
    webhook_listen: Option<SocketAddr>,
    /// Webhook certificate and key (PEM); re-read when the files change.
    #[arg(long, env = "VIGIE_WEBHOOK_TLS_CERT")]
    webhook_tls_cert: Option<PathBuf>,
    #[arg(long, env = "VIGIE_WEBHOOK_TLS_KEY")]
    webhook_tls_key: Option<PathBuf>,
    /// Accept Kubernetes projected service-account tokens with this audience from
    /// workloads, verified against --k8s-jwks-file or --k8s-jwks-url.
    #[arg(
        long,
        env = "VIGIE_K8S_TOKEN_AUDIENCE",
        default_value = "vigie-control-plane"
    )]
    k8s_token_audience: String,
    /// The egress agents' service account (`namespace/name`): its tokens may watch
    /// every policy, as an egress agent.
    #[arg(
        long,
        env = "VIGIE_K8S_AGENT_SERVICE_ACCOUNT",
        default_value = "vigie-system/vigie-egress-agent"
    )]
    k8s_agent_service_account: String,
    /// Required `iss` of those tokens (default: not checked).
    #[arg(long, env = "VIGIE_K8S_TOKEN_ISSUER")]
    k8s_token_issuer: Option<String>,
    /// The service-account issuer's keys (JWKS), as a file…
    #[arg(long, env = "VIGIE_K8S_JWKS_FILE", conflicts_with = "k8s_jwks_url")]
    k8s_jwks_file: Option<PathBuf>,
    /// …or fetched from the API server (in a pod: https://kubernetes.default.svc/openid/v1/jwks).
    #[arg(long, env = "VIGIE_K8S_JWKS_URL")]
    k8s_jwks_url: Option<String>,
    /// What the webhook injects (JSON; default: built-in settings).
    #[arg(long, env = "VIGIE_WEBHOOK_CONFIG")]
    webhook_config: Option<PathBuf>,
    /// Policies from Git: reconcile this directory of policy files (JSON or YAML) into
    /// the store; the policies it declares can then only change through Git (or with
    /// breakGlass).
    #[arg(long, env = "VIGIE_POLICY_DIR")]
    policy_dir: Option<PathBuf>,
    /// Delete the policies Git created whose file is gone from the directory.
    #[arg(long, env = "VIGIE_POLICY_PRUNE", requires = "policy_dir")]
    policy_prune: bool,
    /// Let the API write the policies the directory does not declare (default: while
    /// policies come from Git, every API write needs breakGlass).
    #[arg(long, env = "VIGIE_POLICY_DIR_SHARED", requires = "policy_dir")]
    policy_dir_shared: bool,
    /// The key (at least 32 bytes) that pseudonymises end users in the usage ledger
    /// (HMAC-SHA-256): a Secret every replica mounts. Default with the embedded
    /// database: `usage-user.key` in --data-dir, created at first start; required with
    /// PostgreSQL unless --usage-users-in-clear.
    #[arg(long, env = "VIGIE_USAGE_USER_KEY_FILE")]
    usage_user_key_file: Option<PathBuf>,
    /// Store end users in the usage ledger as the sidecars report them, not as
    /// pseudonyms (docs/metering.md).
    #[arg(long, env = "VIGIE_USAGE_USERS_IN_CLEAR")]
    usage_users_in_clear: bool,
    /// Keep usage records for the current month and this many before it; older ones
    /// are folded into monthly aggregates (no user) and deleted. 0: kept forever.
    #[arg(
        long,
        env = "VIGIE_USAGE_RETENTION_MONTHS",
        default_value_t = 0,
        value_parser = clap::value_parser!(u32).range(0..=1200)
    )]
    usage_retention_months: u32,
    /// Seconds between two reads of the policy directory.
    #[arg(long, env = "VIGIE_POLICY_SYNC_INTERVAL_S", default_value_t = 10)]
    policy_sync_interval_s: u64,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (the only time it is shown).
    Create {
        /// Unique name, recorded as the author of changes made with the token.
        #[arg(long)]
        name: String,
        /// admin (write), auditor (read) or workload (watch as its own identity).
        #[arg(long)]
        role: Role,
        /// Workload tokens: the namespace they may watch as (required).
        #[arg(long, default_value = "")]
        namespace: String,
        /// Workload tokens: restrict to this service account.
        #[arg(long, default_value = "")]
        service_account: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by name; takes effect on the next call.
    Revoke {
        #[arg(long)]
        name: String,
    },
}

fn init_logs(format: &str) {
    vigie_telemetry::logs::init("info,sqlx=warn,h2=warn,tower=warn", &[], format == "json");
}

fn database_url(args: &Args) -> anyhow::Result<String> {
    if let Some(url) = &args.database_url {
        return Ok(url.clone());
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        args.data_dir.join("vigie.db").display()
    ))
}

/// How the ledger stores end users: pseudonyms with the given key; with the embedded
/// database (`data_dir`), a key created there; in clear only when asked.
fn ledger_users(
    key_file: Option<&Path>,
    in_clear: bool,
    data_dir: Option<&Path>,
) -> anyhow::Result<LedgerUsers> {
    let key = match (key_file, data_dir) {
        (Some(file), _) => Some(UserKey::read(file)?),
        (None, Some(dir)) => {
            let file = dir.join("usage-user.key");
            if !in_clear {
                Some(UserKey::read_or_create(&file)?)
            } else if file.exists() {
                // Kept in clear from now on; records pseudonymised before can still be
                // erased.
                Some(UserKey::read(&file)?)
            } else {
                None
            }
        }
        (None, None) => None,
    };
    Ok(match (key, in_clear) {
        (key, true) => LedgerUsers::in_clear(key),
        (Some(key), false) => LedgerUsers::pseudonymised(key),
        (None, false) => anyhow::bail!(
            "with --database-url, end users are pseudonymised with a key every replica \
             shares: --usage-user-key-file (a Secret), or --usage-users-in-clear"
        ),
    })
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Token management is a write too: it goes to the audit trail.
async fn audit_cli(
    store: &dyn store::Store,
    actor: String,
    action: &str,
    summary: String,
) -> anyhow::Result<()> {
    store
        .append_audit(AuditRecord {
            id: 0,
            at_ms: now_ms(),
            actor,
            role: "cli".into(),
            action: action.into(),
            policy: String::new(),
            revision: 0,
            summary,
            comment: String::new(),
        })
        .await?;
    Ok(())
}

async fn token_command(url: &str, cmd: TokenCommand) -> anyhow::Result<()> {
    let store = store::open(url).await.context("opening the database")?;
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    match cmd {
        TokenCommand::Create {
            name,
            role,
            namespace,
            service_account,
        } => {
            if name.is_empty() {
                anyhow::bail!("--name must not be empty");
            }
            // Lower-case letters, digits, '.', '_', '-' (a DNS label's alphabet): no
            // look-alike of a reserved name, no service-account subject (`system:…`).
            let name_ok = (1..=63).contains(&name.len())
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && name
                    .bytes()
                    .next()
                    .is_some_and(|b| b.is_ascii_alphanumeric());
            if !name_ok {
                anyhow::bail!(
                    "--name: 1 to 63 lower-case letters, digits, '.', '_' or '-', starting with a letter or digit"
                );
            }
            if name == vigie_control_plane::gitops::GITOPS_ACTOR {
                anyhow::bail!("the name {name:?} is the policy reconciler's; choose another");
            }
            let (record, token) = new_token(&name, role, &namespace, &service_account)
                .context("generating a random token")?;
            store
                .insert_token(&record)
                .await
                .with_context(|| format!("storing token {name:?} (is the name already used?)"))?;
            audit_cli(
                store.as_ref(),
                actor,
                "token.create",
                format!("token {name:?} created with role {role}"),
            )
            .await?;
            println!("{token}");
        }
        TokenCommand::List => {
            for t in store.tokens().await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}",
                    t.name,
                    t.role,
                    if t.namespace.is_empty() {
                        "-"
                    } else {
                        &t.namespace
                    },
                    if t.service_account.is_empty() {
                        "-"
                    } else {
                        &t.service_account
                    },
                    if t.revoked { "revoked" } else { "active" }
                );
            }
        }
        TokenCommand::Revoke { name } => {
            if !store.revoke_token(&name, now_ms()).await? {
                anyhow::bail!("no active token named {name:?}");
            }
            audit_cli(
                store.as_ref(),
                actor,
                "token.revoke",
                format!("token {name:?} revoked"),
            )
            .await?;
            eprintln!("token {name:?} revoked");
        }
    }
    Ok(())
}

enum DiffOutcome {
    Invalid,
    Changes,
    None,
}

/// `policy diff`: the reconciler's reading, validation and plan, printed.
async fn policy_diff(
    url: &str,
    dir: &std::path::Path,
    against: Option<&std::path::Path>,
    prune: bool,
) -> anyhow::Result<DiffOutcome> {
    use vigie_control_plane::gitops::{GITOPS_ACTOR, plan, source};

    let (declared, mut problems) = source::read(dir);
    for f in &declared.files {
        if let Err(v) = vigie_control_plane::policy::validate(&f.policy) {
            problems.extend(v.0.into_iter().map(|x| vigie_proto::validate::Violation {
                path: format!("{}: {}", f.file, x.path),
                reason: x.reason,
            }));
        }
    }
    if !problems.is_empty() {
        for p in &problems {
            eprintln!("invalid: {p}");
        }
        eprintln!("{} problem(s): a sync would apply nothing", problems.len());
        return Ok(DiffOutcome::Invalid);
    }
    let current = match against {
        Some(other) => {
            let (base, base_problems) = source::read(other);
            if !base_problems.is_empty() {
                anyhow::bail!(
                    "{} cannot be read as a policy directory: {}",
                    other.display(),
                    base_problems[0]
                );
            }
            base.files
                .into_iter()
                .map(|f| {
                    let c = plan::Current {
                        live: Some(f.policy.clone()),
                        revision: 1,
                        author: GITOPS_ACTOR.into(),
                        last_from_git: None,
                    };
                    (f.policy.name, c)
                })
                .collect()
        }
        None => {
            let store = store::open(url).await.context("opening the database")?;
            vigie_control_plane::gitops::current(store.as_ref(), &declared.files).await?
        }
    };
    let mut changes = 0;
    for p in plan::plan(&declared.files, &current, prune) {
        let file = p.file.as_deref().unwrap_or_default();
        let line = match &p.step {
            plan::Step::InSync => continue,
            plan::Step::Create => format!("+ create  {} ({file})", p.name),
            plan::Step::Update(summary) => format!("~ update  {} ({file}): {summary}", p.name),
            plan::Step::Drift => format!(
                "! drift   {} ({file}): changed by break-glass; kept until the file changes",
                p.name
            ),
            plan::Step::Prune => format!("- delete  {}: its file is gone", p.name),
            plan::Step::OutsideGit => format!("? outside {}: not in Git, not made by it", p.name),
            plan::Step::Orphan => {
                format!("? orphan  {}: its file is gone; kept (no --prune)", p.name)
            }
        };
        if matches!(
            p.step,
            plan::Step::Create | plan::Step::Update(_) | plan::Step::Prune
        ) {
            changes += 1;
        }
        println!("{line}");
    }
    let commit = declared.commit.as_deref().unwrap_or("unknown");
    println!(
        "{changes} change(s) from {} policy file(s) at commit {commit}",
        declared.files.len()
    );
    Ok(if changes > 0 {
        DiffOutcome::Changes
    } else {
        DiffOutcome::None
    })
}

fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "control-plane".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logs(&args.log_format);
    let url = database_url(&args)?;
    match args.command {
        Command::Token(cmd) => token_command(&url, cmd).await,
        Command::Policy(PolicyCommand::Diff {
            dir,
            against,
            prune,
            exit_code,
        }) => {
            let code = policy_diff(&url, &dir, against.as_deref(), prune).await?;
            match code {
                DiffOutcome::Invalid => std::process::exit(1),
                DiffOutcome::Changes if exit_code => std::process::exit(2),
                _ => Ok(()),
            }
        }
        Command::Serve(s) => {
            let s = *s;
            let metrics = Metrics::new().context("registering metrics")?;
            // Security events (admin actions, refused calls and policies) over OTLP.
            vigie_telemetry::Telemetry::init("vigie-control-plane", Vec::new(), metrics.registry())
                .context("telemetry (OTEL_* environment)")?;
            let webhook = match (s.webhook_listen, s.webhook_tls_cert, s.webhook_tls_key) {
                (Some(listen), Some(cert), Some(key)) => Some(webhook::WebhookSettings {
                    listen,
                    cert,
                    key,
                    config: webhook::load_config(s.webhook_config.as_ref())?,
                    metrics: metrics.clone(),
                }),
                _ => None,
            };
            let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                shutdown_signal().await;
                let _ = stop_tx.send(true);
            });
            let stopped = move || {
                let mut rx = stop_rx.clone();
                async move {
                    let _ = rx.wait_for(|stop| *stop).await;
                }
            };
            let webhook_task = webhook.map(|w| tokio::spawn(webhook::serve(w, stopped())));
            if let Some(listen) = s.metrics_listen {
                let (m, stop) = (metrics.clone(), stopped());
                tokio::spawn(async move {
                    if let Err(e) = vigie_control_plane::metrics::serve(m, listen, stop).await {
                        tracing::error!(error = %e, "metrics server stopped");
                    }
                });
            }
            const SA_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
            let jwks = match (s.k8s_jwks_file, s.k8s_jwks_url) {
                (Some(file), _) => Some(JwksSource::File(file)),
                (None, Some(url)) => Some(JwksSource::Url {
                    url,
                    ca: PathBuf::from(SA_DIR).join("ca.crt"),
                    token: PathBuf::from(SA_DIR).join("token"),
                }),
                (None, None) => None,
            };
            let k8s_tokens = jwks.map(|jwks| K8sTokenSettings {
                audience: s.k8s_token_audience,
                issuer: s.k8s_token_issuer,
                jwks,
                agent_service_account: Some(s.k8s_agent_service_account),
            });
            let ledger = LedgerSettings {
                users: ledger_users(
                    s.usage_user_key_file.as_deref(),
                    s.usage_users_in_clear,
                    args.database_url
                        .is_none()
                        .then_some(args.data_dir.as_path()),
                )?,
                retention_months: s.usage_retention_months,
            };
            let store = store::open(&url).await.context("opening the database")?;
            info!(database = %store::sql::redact_url(&url), "database ready");
            if let Some(key) = ledger.users.pseudonymises() {
                // Users stored in clear before (an older version, or in clear mode).
                let changed = store
                    .pseudonymise_usage_users(key)
                    .await
                    .context("pseudonymising the users stored in clear")?;
                if changed > 0 {
                    info!(
                        records = changed,
                        "usage users stored in clear replaced by their pseudonyms"
                    );
                }
            }
            let tls = s.tls_cert.zip(s.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: s.tls_client_ca,
            });
            let grpc = serve(
                store,
                ServerSettings {
                    listen: s.listen,
                    tls,
                    max_message_bytes: s.max_message_bytes,
                    resync: Duration::from_millis(s.resync_ms.max(100)),
                    replica: s.replica.unwrap_or_else(replica_name),
                    k8s_tokens,
                    metrics,
                    gitops: s.policy_dir.map(|dir| GitOpsSettings {
                        dir,
                        prune: s.policy_prune,
                        interval: Duration::from_secs(s.policy_sync_interval_s.max(1)),
                        exclusive: if s.policy_dir_shared {
                            vigie_control_plane::gitops::Exclusive::Declared
                        } else {
                            vigie_control_plane::gitops::Exclusive::All
                        },
                    }),
                    ledger,
                },
                stopped(),
            );
            let Some(mut webhook_task) = webhook_task else {
                return grpc.await;
            };
            tokio::pin!(grpc);
            // Either server failing (a port taken, say) stops the process.
            let result = tokio::select! {
                r = &mut grpc => match r {
                    Ok(()) => webhook_task.await.map_err(anyhow::Error::from).and_then(|r| r),
                    Err(e) => Err(e),
                },
                r = &mut webhook_task => match r {
                    Ok(Ok(())) => grpc.await,
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(e.into()),
                },
            };
            // Security events still queued go out before exit (bounded wait).
            if let Some(t) = vigie_telemetry::global() {
                t.flush(std::time::Duration::from_secs(2));
            }
            result
        }
    }
}
