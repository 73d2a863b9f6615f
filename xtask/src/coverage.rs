//! `cargo xtask coverage`: line coverage of the workspace's unit and in-process tests
//! (cargo-llvm-cov, rustup's llvm-tools), per crate, with floors on the engines.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::util::{cargo, root, run, step};

/// Engine crates and the line coverage they must keep (percent). Set at what was
/// measured when the gate was added (docs/QUALITY.md); raise them as tests grow, the
/// target being 85.
pub const FLOORS: &[(&str, f64)] = &[
    ("sidecar/dlp", 94.0),
    ("sidecar/balance", 94.0),
    ("sidecar/quota", 91.0),
    ("sidecar/ledger", 91.0),
    ("sidecar/metering", 95.0),
    ("proto", 80.0),
    ("control-plane/inject", 94.0),
    ("ebpf/common", 88.0),
];

/// Crate directories relative to the root, longest first so that `sidecar/dlp` wins
/// over `sidecar`.
fn crate_dirs() -> anyhow::Result<Vec<String>> {
    let out = cargo()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("cargo metadata")?;
    let meta: Value = serde_json::from_slice(&out.stdout).context("cargo metadata output")?;
    let root = root();
    let mut dirs: Vec<String> = meta["packages"]
        .as_array()
        .context("packages")?
        .iter()
        .filter_map(|p| p["manifest_path"].as_str())
        .filter_map(|m| {
            let dir = Path::new(m).parent()?.strip_prefix(&root).ok()?;
            Some(dir.to_string_lossy().into_owned())
        })
        // Product crates only: the automation is not measured.
        .filter(|d| !d.is_empty() && d != "xtask")
        .collect();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    Ok(dirs)
}

/// (covered, total) lines per crate directory, from llvm-cov's JSON export.
pub fn per_crate(export: &Value, dirs: &[String]) -> BTreeMap<String, (u64, u64)> {
    let root = root();
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let files = export["data"][0]["files"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for f in files {
        let name = f["filename"].as_str().unwrap_or_default();
        let rel = Path::new(name)
            .strip_prefix(&root)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| name.to_string());
        let Some(dir) = dirs.iter().find(|d| rel.starts_with(&format!("{d}/"))) else {
            continue;
        };
        let lines = &f["summary"]["lines"];
        let entry = sums.entry(dir.clone()).or_default();
        entry.0 += lines["covered"].as_u64().unwrap_or(0);
        entry.1 += lines["count"].as_u64().unwrap_or(0);
    }
    sums
}

fn percent((covered, total): (u64, u64)) -> f64 {
    if total == 0 {
        100.0
    } else {
        covered as f64 * 100.0 / total as f64
    }
}

/// The environment `cargo llvm-cov` builds with, pointed at its own target directory
/// (so that the regular build is not invalidated) and its profiles.
fn instrumented_env() -> anyhow::Result<Vec<(String, String)>> {
    let out = cargo()
        .args(["llvm-cov", "show-env"])
        .output()
        .context("cargo llvm-cov show-env")?;
    let dir = root().join("target/llvm-cov-target");
    let mut env: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "LLVM_PROFILE_FILE" | "CARGO_LLVM_COV_TARGET_DIR" | "CARGO_LLVM_COV_BUILD_DIR"
            )
        })
        .collect();
    let profiles = dir.join("vigie-e2e-%p-%2m.profraw");
    env.push(("LLVM_PROFILE_FILE".into(), profiles.display().to_string()));
    env.push(("CARGO_TARGET_DIR".into(), dir.display().to_string()));
    if !env.iter().any(|(k, _)| k == "RUSTC_WRAPPER") {
        bail!("cargo llvm-cov show-env gave no instrumenting wrapper");
    }
    Ok(env)
}

/// Runs the workspace's tests instrumented (and, with `e2e`, the end-to-end suite
/// against instrumented binaries), prints per-crate line coverage (and writes it to
/// target/coverage/), and fails when an engine is below its floor.
pub fn coverage(e2e: bool) -> anyhow::Result<()> {
    step("unit and in-process tests, instrumented (cargo llvm-cov)");
    run(cargo().args(["llvm-cov", "--workspace", "--no-report"]))?;
    if e2e {
        let env = instrumented_env()?;
        step("binaries instrumented for the end-to-end suite");
        run(cargo().envs(env.iter().cloned()).args(["build", "--bins"]))?;
        step("end-to-end tests against the instrumented binaries");
        let bins = root().join("target/llvm-cov-target/debug");
        run(std::process::Command::new(crate::util::venv_python())
            .current_dir(root())
            .envs(env.iter().cloned())
            .env("VIGIE_BIN_DIR", &bins)
            // Processes are stopped with SIGTERM and exit within a second.
            .env("VIGIE_COVERAGE", "1")
            .env("VIGIE_SHUTDOWN_TIMEOUT_S", "1")
            .args(["-m", "pytest", "tests/e2e", "-q", "-p", "no:cacheprovider"]))?;
    }
    let out = root().join("target/coverage");
    std::fs::create_dir_all(&out)?;
    let json = out.join("summary.json");
    run(cargo()
        .args([
            "llvm-cov",
            "report",
            "--json",
            "--summary-only",
            "--output-path",
        ])
        .arg(&json))?;
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&json)?)?;
    let sums = per_crate(&export, &crate_dirs()?);
    let mut table =
        String::from("| crate | lines covered | line coverage | floor |\n|---|---|---|---|\n");
    let mut below = Vec::new();
    for (dir, lines) in &sums {
        let floor = FLOORS.iter().find(|(d, _)| d == dir).map(|(_, f)| *f);
        let pct = percent(*lines);
        table.push_str(&format!(
            "| `{dir}` | {} / {} | {pct:.1} % | {} |\n",
            lines.0,
            lines.1,
            floor.map_or("—".into(), |f| format!("{f:.0} %"))
        ));
        if floor.is_some_and(|f| pct < f) {
            below.push(format!(
                "{dir}: {pct:.1} % < {:.0} %",
                floor.unwrap_or_default()
            ));
        }
    }
    for (dir, _) in FLOORS {
        if !sums.contains_key(*dir) {
            below.push(format!("{dir}: no coverage data"));
        }
    }
    std::fs::write(out.join("summary.md"), &table)?;
    println!("{table}");
    if !below.is_empty() {
        bail!("engine coverage below its floor: {}", below.join("; "));
    }
    Ok(())
}
