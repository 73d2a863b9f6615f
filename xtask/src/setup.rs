//! `cargo xtask setup`: everything a fresh machine of this kind needs, idempotently.
//! Each step checks first and does nothing when already done.

use std::process::Command;

use anyhow::Context as _;

use crate::util::{output, root, run, step, venv_python};

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

pub fn setup() -> anyhow::Result<()> {
    apt()?;
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_fuzz()?;
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

fn nightly_rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .is_some_and(|s| s.lines().any(|l| l.starts_with("rust-src")));
    if installed {
        println!("setup: nightly rust-src present");
        return Ok(());
    }
    step("adding the nightly rust-src component (eBPF builds use -Z build-std)");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn bpf_linker() -> anyhow::Result<()> {
    let version = output(Command::new("bpf-linker").arg("--version")).unwrap_or_default();
    if version.contains(BPF_LINKER_VERSION) {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    step(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} (uses rustc's own LLVM)"
    ));
    run(Command::new("cargo").current_dir(root()).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--locked",
    ]))
}

fn cargo_fuzz() -> anyhow::Result<()> {
    let version = output(Command::new("cargo").args(["fuzz", "--version"])).unwrap_or_default();
    if version.contains(CARGO_FUZZ_VERSION) {
        println!("setup: cargo-fuzz {CARGO_FUZZ_VERSION} present");
        return Ok(());
    }
    step(&format!("installing cargo-fuzz {CARGO_FUZZ_VERSION}"));
    run(Command::new("cargo").current_dir(root()).args([
        "install",
        "cargo-fuzz",
        "--version",
        CARGO_FUZZ_VERSION,
        "--locked",
    ]))
}

fn python_venv() -> anyhow::Result<()> {
    let root = root();
    let requirements = root.join("tests/requirements.txt");
    let wanted =
        std::fs::read_to_string(&requirements).context("reading tests/requirements.txt")?;
    let stamp = root.join("target/venv/.vigie-requirements");
    let python = venv_python();
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        println!("setup: Python test clients present (target/venv)");
        return Ok(());
    }
    step("creating the Python virtual environment with the test clients (target/venv)");
    if !python.exists() {
        run(Command::new("python3")
            .args(["-m", "venv"])
            .arg(root.join("target/venv")))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted)?;
    Ok(())
}
