//! `cargo xtask`: project automation (setup, demo, ci, bench).

mod bench;
mod ci;
mod coverage;
mod demo;
mod setup;
mod supply;
mod util;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install system packages, the nightly rust-src component, bpf-linker, the Python test clients
    /// and Presidio's environment (the external detector of the end-to-end tests).
    Setup,
    /// Set up, build, and run the demo: mock GPU pools, a sidecar, a policy and a few requests.
    Demo,
    /// Set up, then fmt check, clippy, unit tests and end-to-end tests.
    Ci,
    /// Only the end-to-end tests (extra arguments go to pytest, e.g. `-k stream`).
    E2e {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        pytest_args: Vec<String>,
    },
    /// Supply-chain gate: `cargo deny` (licences, bans, sources; advisories when the
    /// RustSec database is reachable) and its self-test.
    Deny,
    /// CycloneDX SBOMs of the binaries in target/sbom/, validated against the schema.
    Sbom,
    /// Line coverage of the unit and in-process tests per crate; fails below the
    /// engines' floors (target/coverage/).
    Coverage {
        /// Also run the end-to-end suite against instrumented binaries (slow: a second
        /// build and the whole suite).
        #[arg(long)]
        e2e: bool,
    },
    /// Fuzz the wire-format parsers (SSE answer filter, request text extraction).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Benchmarks (results go to target/bench/ and are recorded in docs/BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// The sidecar in its realistic configuration (DLP both directions, managed ledger,
    /// budget, telemetry) against nginx and direct, before (`--base`) and after (the
    /// working tree), with forced estimates and allocations per request.
    Realistic {
        /// Git revision of the "before" build.
        #[arg(long)]
        base: String,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Fixed request rates for the latency table.
        #[arg(long, default_value = "500,1000")]
        rates: String,
    },
    /// Memory and speed of the usage-estimate tokenizer: Vigie's compact o200k vs
    /// tiktoken-rs, each in its own process.
    Estimate,
    /// Control-plane latency and RSS while auditors send the largest allowed policies;
    /// sidecar RSS with 10,000 connections and the most bodies in flight.
    Abuse,
    /// Added latency, throughput, TTFT and memory: direct vs sidecar vs nginx vs LiteLLM.
    Proxy {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        /// Fixed request rates for the latency table.
        #[arg(long, value_delimiter = ',', default_value = "500,1000")]
        rates: Vec<u32>,
        /// Soak duration in seconds (0 skips it).
        #[arg(long, default_value_t = 600)]
        soak: u64,
        #[arg(long, default_value_t = 200)]
        soak_rate: u32,
        /// Leave LiteLLM out (it takes a minute to install and start).
        #[arg(long)]
        no_litellm: bool,
    },
    /// Policy propagation to 1,000 real gRPC watchers, memory per watcher, ApplyPolicy
    /// throughput; embedded store and PostgreSQL.
    ControlPlane,
    /// Usage-ledger ingestion at the control plane (records/s, batched, concurrent
    /// clients); embedded store and PostgreSQL.
    Usage,
    /// eBPF egress: connect() latency with the programs and a 10,000-entry policy vs
    /// without; denial events drained per second (root).
    Egress {
        /// Connects per configuration per round.
        #[arg(long, default_value_t = 2000)]
        per_round: usize,
        /// Interleaved rounds.
        #[arg(long, default_value_t = 15)]
        rounds: usize,
    },
    /// DLP: engine throughput, and precision/recall/throughput side by side with
    /// Microsoft Presidio on the same labelled French corpus.
    Dlp {
        /// Corpus samples.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
    },
    /// DLP on vs off through the sidecar: request latency, TTFT, per-chunk delay.
    DlpLatency {
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 500)]
        rate: u32,
    },
    /// Request latency and memory with OTLP export off, on, collector down, collector
    /// slow (queue full).
    Telemetry {
        #[arg(long, default_value_t = 20)]
        duration: u64,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
    },
    /// Routing quality: round robin vs least-request vs queue-aware + prefix affinity
    /// on GPU-like mocks (finite capacity, prefix cache), TTFT and throughput; and the
    /// picker's own overhead.
    Routing {
        /// Seconds of workload per strategy.
        #[arg(long, default_value_t = 30)]
        duration: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Demo => demo::demo(),
        Cmd::Ci => ci::ci(),
        Cmd::E2e { pytest_args } => {
            setup::setup()?;
            ci::e2e(&pytest_args)
        }
        Cmd::Deny => {
            setup::setup()?;
            supply::deny()
        }
        Cmd::Sbom => {
            setup::setup()?;
            supply::sbom().map(|_| ())
        }
        Cmd::Coverage { e2e } => {
            setup::setup()?;
            coverage::coverage(e2e)
        }
        Cmd::Fuzz { seconds } => {
            setup::setup()?;
            ci::fuzz(seconds)
        }
        Cmd::Bench {
            what: Bench::ControlPlane,
        } => bench::control_plane(),
        Cmd::Bench { what: Bench::Usage } => bench::usage(),
        Cmd::Bench { what: Bench::Abuse } => bench::abuse(),
        Cmd::Bench {
            what: Bench::Estimate,
        } => bench::estimate(),
        Cmd::Bench {
            what:
                Bench::Realistic {
                    base,
                    duration,
                    rates,
                },
        } => bench::realistic(&base, duration, &rates),
        Cmd::Bench {
            what: Bench::Egress { per_round, rounds },
        } => bench::egress(per_round, rounds),
        Cmd::Bench {
            what: Bench::Dlp { samples },
        } => bench::dlp(samples),
        Cmd::Bench {
            what: Bench::DlpLatency { duration, rate },
        } => bench::dlp_latency(duration, rate),
        Cmd::Bench {
            what: Bench::Routing { duration },
        } => bench::routing(duration),
        Cmd::Bench {
            what: Bench::Telemetry { duration, rate },
        } => bench::telemetry(duration, rate),
        Cmd::Bench {
            what:
                Bench::Proxy {
                    duration,
                    rates,
                    soak,
                    soak_rate,
                    no_litellm,
                },
        } => bench::proxy(&bench::ProxyOpts {
            duration_s: duration,
            rates,
            soak_s: soak,
            soak_rate,
            litellm: !no_litellm,
        }),
    }
}
