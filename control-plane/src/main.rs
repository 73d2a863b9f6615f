//! `vigie-control-plane`: serve the API, or manage API tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tracing::info;

use vigie_control_plane::auth::{Role, new_token};
use vigie_control_plane::server::{ServerSettings, TlsFiles, serve};
use vigie_control_plane::store::{self, AuditRecord, now_ms};

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
    Serve(ServeArgs),
    /// Create, list or revoke API tokens (works directly on the database).
    #[command(subcommand)]
    Token(TokenCommand),
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
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,sqlx=warn,h2=warn,tower=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init()
    } else {
        builder.init()
    }
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
            if role == Role::Workload && namespace.is_empty() {
                anyhow::bail!("a workload token needs --namespace");
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
        Command::Serve(s) => {
            let store = store::open(&url).await.context("opening the database")?;
            info!(database = %store::sql::redact_url(&url), "database ready");
            let tls = s.tls_cert.zip(s.tls_key).map(|(cert, key)| TlsFiles {
                cert,
                key,
                client_ca: s.tls_client_ca,
            });
            serve(
                store,
                ServerSettings {
                    listen: s.listen,
                    tls,
                    max_message_bytes: s.max_message_bytes,
                    resync: Duration::from_millis(s.resync_ms.max(100)),
                    replica: s.replica.unwrap_or_else(replica_name),
                },
                shutdown_signal(),
            )
            .await
        }
    }
}
