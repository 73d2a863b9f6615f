//! Supply chain: `cargo deny` (licences, bans, sources, advisories when the RustSec
//! database is reachable) and CycloneDX SBOMs of the binaries.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::util::{cargo, output, root, run, step, venv_python};

const ADVISORY_DB: &str = "https://github.com/rustsec/advisory-db";

/// `cargo deny check` with deny.toml, its self-test, and advisories when reachable.
pub fn deny() -> anyhow::Result<()> {
    step("cargo deny: licences, bans and sources of every dependency (deny.toml)");
    run(cargo().args(["deny", "check", "licenses", "bans", "sources"]))?;

    step("cargo deny self-test: a GPL-3.0-only crate must be refused");
    let fixture = root().join("tests/supply-chain/copyleft-fixture/Cargo.toml");
    let out = Command::new("cargo")
        .arg("deny")
        .arg("--manifest-path")
        .arg(&fixture)
        .arg("--config")
        .arg(root().join("deny.toml"))
        .args(["check", "licenses"])
        .output()
        .context("running cargo deny on the fixture")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !text.contains("GPL-3.0-only") {
        bail!("the licence gate did not refuse the GPL-3.0-only fixture:\n{text}");
    }
    println!("refused as expected: GPL-3.0-only (tests/supply-chain/copyleft-fixture)");

    step("cargo deny: RustSec advisories");
    let reachable = output(
        Command::new("timeout")
            .args(["20", "git", "ls-remote", ADVISORY_DB, "HEAD"])
            .env("GIT_TERMINAL_PROMPT", "0"),
    )
    .is_some_and(|s| !s.trim().is_empty());
    if reachable {
        run(cargo().args(["deny", "check", "advisories"]))
    } else {
        // Loud, never silent: this gate did not run.
        println!(
            "\n!!! ADVISORIES NOT CHECKED: the RustSec database ({ADVISORY_DB}) cannot be \
             reached from this machine.\n!!! Run `cargo deny check advisories` where it can \
             (a release must not ship without it).\n"
        );
        Ok(())
    }
}

/// The binaries whose SBOMs ship with the images.
const BINARIES: &[&str] = &["vigie-sidecar", "vigie-control-plane", "vigie-egress"];

/// One CycloneDX JSON SBOM per binary in target/sbom/, validated against the
/// CycloneDX 1.5 schema by the official Python library.
pub fn sbom() -> anyhow::Result<PathBuf> {
    step("CycloneDX SBOMs of the binaries (cargo cyclonedx)");
    let dir = root().join("target/sbom");
    std::fs::create_dir_all(&dir)?;
    run(cargo().args([
        "cyclonedx",
        "--format",
        "json",
        "--spec-version",
        "1.5",
        "--describe",
        "binaries",
        "--target",
        "x86_64-unknown-linux-gnu",
    ]))?;
    // cargo-cyclonedx writes next to each crate's manifest: move the binaries' files.
    let mut written = Vec::new();
    for entry in walk(&root())? {
        let name = entry
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !name.ends_with(".cdx.json") {
            continue;
        }
        if let Some(bin) = BINARIES
            .iter()
            .find(|b| name.starts_with(&format!("{b}_bin")))
        {
            let to = dir.join(format!("{bin}.cdx.json"));
            std::fs::rename(&entry, &to)?;
            written.push(to);
        } else {
            std::fs::remove_file(&entry)?;
        }
    }
    for bin in BINARIES {
        if !written
            .iter()
            .any(|p| p.ends_with(format!("{bin}.cdx.json")))
        {
            bail!("no SBOM was produced for {bin}");
        }
    }
    step("validating the SBOMs against the CycloneDX 1.5 schema (cyclonedx-python-lib)");
    run(Command::new(venv_python())
        .arg(root().join("tests/supply-chain/validate_sbom.py"))
        .args(&written))?;
    Ok(dir)
}

/// Files under `dir`, skipping target/ and hidden directories.
fn walk(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if entry.file_type()?.is_dir() {
            if name != "target" && !name.starts_with('.') && name != "node_modules" {
                files.extend(walk(&path)?);
            }
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
