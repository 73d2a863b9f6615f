// A build script fails by panicking: that is how cargo reports it.
#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "build script: failing loudly is its error handling"
)]

//! Builds the eBPF programs (`ebpf/programs`) for bpfel-unknown-none with the nightly
//! toolchain and bpf-linker, and leaves the object in OUT_DIR for `include_bytes!`.
//!
//! What aya-build does, but for a crate outside the workspace: the workspace's
//! release profile (thin LTO, stripped symbols) would strip the BTF and program
//! sections the loader needs (docs/adr/0009-egress-enforcement.md).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest =
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let ebpf = manifest.join("../programs");
    let common = manifest.join("../common");
    for p in [
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        ebpf.join("Cargo.lock"),
        common.join("src"),
        common.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = out.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release", "--locked"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        // BTF for the maps and the LSM program.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "-Cdebuginfo=2\u{1f}-Clink-arg=--btf",
        );
    // The outer build's settings must not leak into the nested one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(key);
    }
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the eBPF programs ({e}); run `cargo xtask setup`")
    });
    assert!(
        status.success(),
        "building the eBPF programs failed ({status}); they need the nightly toolchain with rust-src and bpf-linker: run `cargo xtask setup`"
    );
    let object = target_dir.join("bpfel-unknown-none/release/vigie-egress-ebpf");
    std::fs::copy(&object, out.join("vigie-egress-ebpf"))
        .unwrap_or_else(|e| panic!("copying {}: {e}", object.display()));
}
