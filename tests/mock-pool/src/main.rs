//! `vigie-mock-pool`: a fake GPU endpoint speaking the real wire protocols.
//!
//! Prints one JSON line `{"listening": "127.0.0.1:PORT", ...}` on stdout once bound,
//! so tests and the demo can start it on port 0.

use std::io::Write as _;

use anyhow::Context as _;
use clap::Parser;

use vigie_mock_pool::{Behaviour, Failure, Mock};

#[derive(Debug, Parser)]
#[command(
    name = "vigie-mock-pool",
    about = "Mock OpenAI/Anthropic/vLLM endpoint for tests, demo and benchmarks"
)]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Instance name, shown in ids and stats.
    #[arg(long, default_value = "mock")]
    name: String,
    /// Models served (comma separated); empty accepts any model.
    #[arg(long, value_delimiter = ',')]
    models: Vec<String>,
    #[arg(long, default_value_t = 0)]
    ttft_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    tokens_per_sec: f64,
    #[arg(long, default_value_t = 12)]
    default_tokens: u32,
    #[arg(long, default_value_t = 256)]
    capacity: u32,
    #[arg(long)]
    echo: bool,
    #[arg(long)]
    omit_usage: bool,
    /// Always answer with this HTTP status (e.g. 500, 429).
    #[arg(long)]
    fail_status: Option<u16>,
    /// Distinct system prompts kept in the prefix cache (0: no prefix-cache model).
    #[arg(long, default_value_t = 0)]
    prefix_cache: u32,
    /// Time to first token on a prefix-cache hit.
    #[arg(long, default_value_t = 0)]
    ttft_hit_ms: u64,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let behaviour = Behaviour {
        ttft_ms: args.ttft_ms,
        tokens_per_sec: args.tokens_per_sec,
        default_tokens: args.default_tokens,
        capacity: args.capacity,
        echo: args.echo,
        omit_usage: args.omit_usage,
        fail: args.fail_status.map(|code| Failure::Status {
            code,
            retry_after_s: None,
        }),
        prefix_cache: args.prefix_cache,
        ttft_hit_ms: args.ttft_hit_ms,
        canned: None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        let addr = listener.local_addr()?;
        let mock = Mock::new(args.name.clone(), args.models.clone(), behaviour);
        {
            let mut out = std::io::stdout().lock();
            writeln!(
                out,
                "{}",
                serde_json::json!({"listening": addr.to_string(), "name": args.name})
            )?;
            out.flush()?;
        }
        tokio::select! {
            served = vigie_mock_pool::serve(listener, mock) => served?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}
