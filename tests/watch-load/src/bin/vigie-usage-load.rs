//! `vigie-usage-load`: ledger ingestion at the control plane. C concurrent clients
//! (each its own HTTP/2 connection, like C sidecars) send `ReportUsage` batches of B
//! realistic records for T seconds; prints records/s and per-batch latency as JSON.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use tonic::transport::Endpoint;
use vigie_proto::v1::usage_service_client::UsageServiceClient;
use vigie_proto::v1::{ReportUsageRequest, UsageRecord};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    control_plane: String,
    /// Workload token of namespace `bench`.
    #[arg(long)]
    token: String,
    #[arg(long, default_value_t = 4)]
    clients: usize,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

fn record(client: usize, n: u64) -> UsageRecord {
    let at = 1_795_942_800_000 + i64::try_from(n).unwrap_or(0);
    UsageRecord {
        id: format!("bench{client:02}-{n}"),
        started_at_ms: at,
        ended_at_ms: at + 850,
        namespace: "bench".into(),
        workload: format!("app-{}", n % 7),
        pod: format!("app-{client}"),
        user: format!("user-{}", n % 101),
        model: "gpt-4o-mini".into(),
        served_model: "mistral-small".into(),
        pool: "onprem-gpu".into(),
        endpoint: "http://10.0.3.7:8000".into(),
        sensitivity: 2,
        operation: "chat_completions".into(),
        stream: n.is_multiple_of(2),
        status: 200,
        outcome: 1,
        prompt_tokens: 400 + n % 300,
        completion_tokens: 120 + n % 90,
        source: 1,
        currency: "EUR".into(),
        cost: 0.0004,
        gpu_seconds: 0.2,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let channel = Endpoint::from_shared(args.control_plane.clone())?
            .connect()
            .await
            .context("connecting")?;
        let token: tonic::metadata::MetadataValue<_> = format!("Bearer {}", args.token).parse()?;
        let batch = args.batch;
        tasks.push(tokio::spawn(async move {
            let mut client = UsageServiceClient::new(channel).max_encoding_message_size(64 << 20);
            let (mut sent, mut latencies) = (0u64, Vec::new());
            while Instant::now() < deadline {
                let records = (0..batch as u64).map(|i| record(c, sent + i)).collect();
                let mut req = tonic::Request::new(ReportUsageRequest { records });
                req.metadata_mut().insert("authorization", token.clone());
                let t = Instant::now();
                let reply = client.report_usage(req).await?.into_inner();
                latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                anyhow::ensure!(
                    reply.accepted as usize == batch,
                    "batch not fully accepted: {reply:?}"
                );
                sent += batch as u64;
            }
            anyhow::Ok((sent, latencies))
        }));
    }
    let start = Instant::now();
    let (mut total, mut latencies) = (0u64, Vec::new());
    for t in tasks {
        let (n, l) = t.await??;
        total += n;
        latencies.extend(l);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| latencies[((latencies.len() as f64 - 1.0) * p) as usize];
    println!(
        "{}",
        serde_json::json!({
            "records": total,
            "seconds": elapsed,
            "records_per_s": total as f64 / elapsed,
            "clients": args.clients,
            "batch": args.batch,
            "batch_ms": {"p50": q(0.5), "p99": q(0.99)},
        })
    );
    Ok(())
}
