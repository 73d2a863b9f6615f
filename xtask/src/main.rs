//! `cargo xtask`: project automation (setup, demo, ci, bench).

mod ci;
mod demo;
mod setup;
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
    /// Install system packages, the nightly rust-src component, bpf-linker and the Python test clients.
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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Demo => demo::demo(),
        Cmd::Ci => ci::ci(),
        Cmd::E2e { pytest_args } => ci::e2e(&pytest_args),
    }
}
