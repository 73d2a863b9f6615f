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
    step("unit and integration tests (cargo test)");
    run(cargo().args(["test", "--workspace"]))?;
    e2e(&[])
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
