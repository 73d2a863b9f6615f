//! `cargo xtask ci`: what CI runs, in order, stopping at the first failure.

use std::process::Command;

use crate::util::{cargo, root, run, step, venv_python};

pub fn ci() -> anyhow::Result<()> {
    crate::setup::setup()?;
    step("cargo fmt --check");
    run(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("cargo clippy -D warnings");
    run(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    crate::supply::deny()?;
    // The unit and in-process tests run once, instrumented: coverage floors of the
    // engines are checked on the same run.
    crate::coverage::coverage(false)?;
    e2e(&[])?;
    crate::supply::sbom()?;
    fuzz(FUZZ_SECONDS_IN_CI)
}

/// Seconds each fuzz target runs in CI: a smoke run that catches regressions; longer
/// campaigns run with `cargo xtask fuzz --seconds N`.
const FUZZ_SECONDS_IN_CI: u64 = 20;
const FUZZ_TARGETS: &[&str] = &["sse_filter", "text_extract"];

/// cargo-fuzz (nightly, libFuzzer, AddressSanitizer) on the wire-format parsers.
pub fn fuzz(seconds: u64) -> anyhow::Result<()> {
    // cargo-fuzz's layout: the crate (sidecar/wire) with its targets in fuzz/.
    let dir = root().join("sidecar/wire");
    for target in FUZZ_TARGETS {
        step(&format!("fuzzing {target} for {seconds} s"));
        run(Command::new("cargo")
            .current_dir(&dir)
            .args(["+nightly", "fuzz", "run", target])
            .arg("--")
            .arg(format!("-max_total_time={seconds}")))?;
    }
    Ok(())
}

/// Builds the binaries and runs the end-to-end suite (pytest) against them.
pub fn e2e(pytest_args: &[String]) -> anyhow::Result<()> {
    step("building binaries for end-to-end tests");
    run(cargo().args(["build", "--bins"]))?;
    step("end-to-end tests (real binaries, official SDKs)");
    let root = root();
    run(Command::new(venv_python())
        .current_dir(&root)
        .env("VIGIE_BIN_DIR", root.join("target/debug"))
        .args(["-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider"])
        .args(pytest_args))
}
