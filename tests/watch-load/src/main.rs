//! `vigie-watch-load`: opens N watchers (each its own HTTP/2 connection), then measures
//! the time from `ApplyPolicy` returning to each watcher's ACK, the control plane's
//! memory per watcher, and `ApplyPolicy` throughput. Prints one JSON object.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Parser;
use tokio::sync::{Mutex, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use vigie_proto::v1::discovery_service_client::DiscoveryServiceClient;
use vigie_proto::v1::policy_service_client::PolicyServiceClient;
use vigie_proto::v1::status_service_client::StatusServiceClient;
use vigie_proto::v1::{
    Ack, ApplyPolicyRequest, ClientKind, Hello, Identity, ListClientsRequest, Policy, Scope,
    WatchRequest, watch_request,
};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    control_plane: String,
    #[arg(long)]
    admin_token: String,
    /// Watchers connect as namespace `bench`, pods w-0 … w-N.
    #[arg(long)]
    workload_token: String,
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Policy changes pushed to all watchers.
    #[arg(long, default_value_t = 10)]
    rounds: usize,
    /// Control-plane process, for memory per watcher.
    #[arg(long)]
    cp_pid: u32,
    /// Seconds of ApplyPolicy throughput measurement (sequential, then 4 concurrent).
    #[arg(long, default_value_t = 10)]
    apply_seconds: u64,
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn with_token<T>(msg: T, token: &str) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

/// The bench policy; `round` changes its content (one alias) so every apply is a change.
fn policy(name: &str, namespace: &str, round: usize) -> anyhow::Result<Policy> {
    let mut p: Policy = serde_json::from_str(&format!(
        r#"{{"name":"{name}","pools":[{{"name":"gpu","kind":"POOL_KIND_VLLM",
        "endpoints":[{{"url":"http://10.0.0.1:8000"}},{{"url":"http://10.0.0.2:8000"}}],
        "models":[{{"name":"mistral-7b","aliases":["gpt-4o-mini","round-{round}"]}}]}}],
        "routes":[{{"model":"gpt-4o-mini","pools":["gpu"]}}]}}"#
    ))?;
    p.scope = Some(Scope {
        namespace: namespace.into(),
        ..Default::default()
    });
    Ok(p)
}

/// Per watcher: the last version received and when it was ACKed.
#[derive(Debug, Default, Clone)]
struct Seen {
    version: String,
    acked_at: Option<Instant>,
}

async fn watcher(
    channel: Channel,
    token: String,
    i: usize,
    seen: Arc<Mutex<Vec<Seen>>>,
    updates: Arc<AtomicUsize>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(WatchRequest {
        message: Some(watch_request::Message::Hello(Hello {
            identity: Some(Identity {
                namespace: "bench".into(),
                pod: format!("w-{i}"),
                kind: ClientKind::Sidecar as i32,
                ..Default::default()
            }),
            ..Default::default()
        })),
    })
    .await?;
    let mut inbound = DiscoveryServiceClient::new(channel)
        .watch(with_token(ReceiverStream::new(rx), &token)?)
        .await?
        .into_inner();
    while let Some(s) = inbound.message().await? {
        tx.send(WatchRequest {
            message: Some(watch_request::Message::Ack(Ack {
                version: s.version.clone(),
                nonce: s.nonce,
                accepted: true,
                error_detail: String::new(),
            })),
        })
        .await?;
        let now = Instant::now();
        seen.lock().await[i] = Seen {
            version: s.version,
            acked_at: Some(now),
        };
        updates.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn apply_for(
    mut client: PolicyServiceClient<Channel>,
    token: String,
    name: String,
    until: Instant,
) -> anyhow::Result<usize> {
    let mut n = 0;
    while Instant::now() < until {
        let p = policy(&name, "bench-other", n)?;
        client
            .apply_policy(with_token(
                ApplyPolicyRequest {
                    policy: Some(p),
                    ..Default::default()
                },
                &token,
            )?)
            .await?;
        n += 1;
    }
    Ok(n)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoint = Endpoint::from_shared(args.control_plane.clone())?;
    let admin = endpoint.connect().await.context("connecting")?;
    let mut policies = PolicyServiceClient::new(admin.clone());
    policies
        .apply_policy(with_token(
            ApplyPolicyRequest {
                policy: Some(policy("bench", "bench", 0)?),
                ..Default::default()
            },
            &args.admin_token,
        )?)
        .await?;

    let rss_before = rss_kib(args.cp_pid);
    let seen = Arc::new(Mutex::new(vec![Seen::default(); args.watchers]));
    let updates = Arc::new(AtomicUsize::new(0));
    let connect_start = Instant::now();
    for i in 0..args.watchers {
        // One connection per watcher, as a fleet of sidecars would open.
        let channel = endpoint.connect().await.context("connecting a watcher")?;
        let (token, seen, updates) = (args.workload_token.clone(), seen.clone(), updates.clone());
        tokio::spawn(async move {
            if let Err(e) = watcher(channel, token, i, seen, updates).await {
                eprintln!("watcher {i}: {e}");
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while updates.load(Ordering::Relaxed) < args.watchers {
        if Instant::now() > deadline {
            bail!(
                "only {} of {} watchers got their first snapshot",
                updates.load(Ordering::Relaxed),
                args.watchers
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connect_s = connect_start.elapsed().as_secs_f64();
    // Let the status writer and allocator settle before reading memory.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_connected = rss_kib(args.cp_pid);

    let mut latencies_ms = Vec::new();
    let mut version = String::new();
    for round in 1..=args.rounds {
        let before = updates.load(Ordering::Relaxed);
        policies
            .apply_policy(with_token(
                ApplyPolicyRequest {
                    policy: Some(policy("bench", "bench", round)?),
                    ..Default::default()
                },
                &args.admin_token,
            )?)
            .await?;
        let returned = Instant::now();
        let deadline = returned + Duration::from_secs(30);
        while updates.load(Ordering::Relaxed) < before + args.watchers {
            if Instant::now() > deadline {
                bail!("round {round}: not every watcher got the change");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let s = seen.lock().await;
        version.clone_from(&s[0].version);
        for w in s.iter() {
            if w.version != version {
                bail!("round {round}: watchers disagree on the version");
            }
            let at = w.acked_at.context("no ack time")?;
            latencies_ms.push(at.saturating_duration_since(returned).as_secs_f64() * 1000.0);
        }
        drop(s);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    latencies_ms.sort_by(f64::total_cmp);

    // The control plane's own view: every watcher shows the last version ACKed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let clients = StatusServiceClient::new(admin.clone())
        .list_clients(with_token(
            ListClientsRequest {
                namespace: "bench".into(),
                ..Default::default()
            },
            &args.admin_token,
        )?)
        .await?
        .into_inner()
        .clients;
    let acked_in_status = clients
        .iter()
        .filter(|c| c.acked_version == version)
        .count();

    // Apply throughput, on a policy no watcher gets (store cost, not push cost).
    let until = Instant::now() + Duration::from_secs(args.apply_seconds);
    let sequential = apply_for(
        policies.clone(),
        args.admin_token.clone(),
        "tput-0".into(),
        until,
    )
    .await?;
    let until = Instant::now() + Duration::from_secs(args.apply_seconds);
    let mut tasks = Vec::new();
    for c in 0..4 {
        tasks.push(tokio::spawn(apply_for(
            PolicyServiceClient::new(admin.clone()),
            args.admin_token.clone(),
            format!("tput-{}", c + 1),
            until,
        )));
    }
    let mut concurrent = 0;
    for t in tasks {
        concurrent += t.await??;
    }

    let secs = args.apply_seconds as f64;
    let out = serde_json::json!({
        "watchers": args.watchers,
        "rounds": args.rounds,
        "connect_all_s": connect_s,
        "propagation_ms": {
            "p50": percentile(&latencies_ms, 50.0),
            "p90": percentile(&latencies_ms, 90.0),
            "p99": percentile(&latencies_ms, 99.0),
            "max": percentile(&latencies_ms, 100.0),
            "samples": latencies_ms.len(),
        },
        "acked_in_status": acked_in_status,
        "cp_rss_kib": {"before": rss_before, "connected": rss_connected},
        "cp_kib_per_watcher": (rss_connected.saturating_sub(rss_before)) as f64 / args.watchers as f64,
        "apply_per_s": {"sequential": sequential as f64 / secs, "concurrent_4": concurrent as f64 / secs},
    });
    println!("{out}");
    Ok(())
}
