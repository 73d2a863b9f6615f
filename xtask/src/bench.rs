//! `cargo xtask bench proxy`: the sidecar against direct, nginx and LiteLLM, in one run.
//!
//! Layout on the 2-core machine: the proxy under test is pinned to CPU 1; the mock pool and
//! the load generator share CPU 0, so "one core" means one core for the proxy. Open-loop
//! load at fixed rates with `oha --latency-correction` (coordinated omission corrected).

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::util::{cargo, output, root, run, step};

const OHA_VERSION: &str = "1.16.0";
// The newest release whose `proxy` extra resolves from PyPI here (1.110.x needs an unpublished
// `litellm-proxy`); 1.107.0 was a compromised release and is avoided.
const LITELLM_VERSION: &str = "1.108.7";
const MODEL: &str = "bench-model";
/// LiteLLM refuses to start without a master key; every target gets the same header
/// (the mock ignores it, the sidecar replaces it, nginx forwards it).
const BENCH_KEY: &str = "sk-vigie-bench-master-key";
const BENCH_AUTH: &str = "authorization: Bearer sk-vigie-bench-master-key";
const CHAT: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Bonjour, peux-tu resumer ce document en trois points ?"}],"max_tokens":8}"#;
const CHAT_STREAM: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Bonjour"}],"max_tokens":16,"stream":true}"#;

#[derive(Debug, Clone)]
pub struct ProxyOpts {
    pub duration_s: u64,
    pub rates: Vec<u32>,
    pub soak_s: u64,
    pub soak_rate: u32,
    pub litellm: bool,
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn pinned(cpu: u32, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.arg("-c").arg(cpu.to_string()).arg(program);
    c
}

fn wait_http(url: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let (host, path) = split_url(url);
    while start.elapsed() < timeout {
        if let Ok(mut s) = TcpStream::connect(&host) {
            let _ = write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let mut line = String::new();
            if BufReader::new(s).read_line(&mut line).is_ok() && line.contains(" 200") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("{url} did not answer 200 within {timeout:?}")
}

fn split_url(url: &str) -> (String, String) {
    let rest = url.trim_start_matches("http://");
    match rest.find('/') {
        Some(i) => (rest[..i].to_string(), rest[i..].to_string()),
        None => (rest.to_string(), "/".to_string()),
    }
}

fn rss_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn ensure_tools(litellm: bool) -> anyhow::Result<()> {
    let oha = root().join("target/tools/bin/oha");
    let have = output(Command::new(&oha).arg("--version")).unwrap_or_default();
    if !have.contains(OHA_VERSION) {
        step(&format!(
            "installing oha {OHA_VERSION} (load generator) into target/tools"
        ));
        run(cargo()
            .args([
                "install",
                "oha",
                "--version",
                OHA_VERSION,
                "--locked",
                "--root",
            ])
            .arg(root().join("target/tools")))?;
    }
    if output(Command::new("nginx").arg("-v")).is_none() && !Path::new("/usr/sbin/nginx").exists() {
        bail!("nginx is missing: run cargo xtask setup");
    }
    if litellm {
        let venv = root().join("target/bench-venv");
        let stamp = venv.join(".vigie-litellm");
        if std::fs::read_to_string(&stamp).ok().as_deref() != Some(LITELLM_VERSION) {
            step(&format!(
                "installing LiteLLM proxy {LITELLM_VERSION} into target/bench-venv"
            ));
            if !venv.join("bin/python").exists() {
                run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
            }
            run(Command::new(venv.join("bin/pip")).args([
                "install",
                "-q",
                &format!("litellm[proxy]=={LITELLM_VERSION}"),
            ]))?;
            std::fs::write(&stamp, LITELLM_VERSION)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    success: f64,
}

fn oha(
    url: &str,
    body: &str,
    duration_s: u64,
    rate: Option<u32>,
    connections: u32,
) -> anyhow::Result<Load> {
    let mut c = pinned(0, &root().join("target/tools/bin/oha"));
    c.args([
        "--no-tui",
        "--output-format",
        "json",
        "-z",
        &format!("{duration_s}s"),
        "-c",
        &connections.to_string(),
    ])
    .args([
        "-m",
        "POST",
        "-H",
        "content-type: application/json",
        "-H",
        BENCH_AUTH,
        "-d",
        body,
    ]);
    if let Some(q) = rate {
        c.args(["-q", &q.to_string(), "--latency-correction"]);
    }
    c.arg(url);
    let out = c.stderr(Stdio::inherit()).output().context("running oha")?;
    if !out.status.success() {
        bail!("oha failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("parsing oha JSON")?;
    let pct = |k: &str| v["latencyPercentiles"][k].as_f64().unwrap_or(f64::NAN) * 1000.0;
    Ok(Load {
        rps: v["summary"]["requestsPerSec"].as_f64().unwrap_or(0.0),
        p50_ms: pct("p50"),
        p99_ms: pct("p99"),
        // Share of 2xx answers (oha's own successRate only counts transport errors).
        success: {
            let codes = v["statusCodeDistribution"].as_object();
            let total: f64 = codes.map_or(0.0, |c| c.values().filter_map(Value::as_f64).sum());
            let ok: f64 = codes.map_or(0.0, |c| {
                c.iter()
                    .filter(|(k, _)| k.starts_with('2'))
                    .filter_map(|(_, v)| v.as_f64())
                    .sum()
            });
            if total > 0.0 { ok / total } else { 0.0 }
        },
    })
}

/// The mock's first generated word, as it appears in the first content chunk.
const FIRST_TOKEN: &[u8] = br#""content":"Les"#;

/// Time to the first content token of a streamed chat, over fresh connections.
fn ttft_ms(host: &str, n: usize) -> anyhow::Result<(f64, f64)> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(host)?;
        s.set_nodelay(true)?;
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{CHAT_STREAM}",
            CHAT_STREAM.len()
        );
        let start = Instant::now();
        s.write_all(req.as_bytes())?;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("stream ended before the first token");
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(FIRST_TOKEN.len()).any(|w| w == FIRST_TOKEN) {
                samples.push(start.elapsed().as_secs_f64() * 1000.0);
                break;
            }
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    Ok((at(0.5), at(0.99)))
}

pub fn proxy(opts: &ProxyOpts) -> anyhow::Result<()> {
    step("building release binaries");
    run(cargo().args(["build", "--release", "--bins"]))?;
    ensure_tools(opts.litellm)?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;

    // Mock pool: no artificial latency, generous capacity.
    let mut mock = pinned(0, &bin("vigie-mock-pool"));
    mock.args(["--models", MODEL, "--threads", "1", "--capacity", "100000"])
        .stdout(Stdio::piped());
    let mut mock = Proc(mock.spawn().context("starting mock")?);
    let mut line = String::new();
    BufReader::new(mock.0.stdout.take().context("mock stdout")?).read_line(&mut line)?;
    let mock_addr = serde_json::from_str::<Value>(&line)?["listening"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // Sidecar.
    let (sc_port, sc_admin) = (free_port()?, free_port()?);
    let policy = serde_json::json!({"name": "bench", "pools": [{"name": "gpu", "kind": "POOL_KIND_VLLM",
        "endpoints": [{"url": format!("http://{mock_addr}")}], "models": [{"name": MODEL}]}]});
    std::fs::write(dir.join("policy.json"), policy.to_string())?;
    let sidecar = Proc(
        pinned(1, &bin("vigie-sidecar"))
            .args([
                "--listen",
                &format!("127.0.0.1:{sc_port}"),
                "--admin-listen",
                &format!("127.0.0.1:{sc_admin}"),
            ])
            .arg("--policy-file")
            .arg(dir.join("policy.json"))
            .env("RUST_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_http(
        &format!("http://127.0.0.1:{sc_admin}/readyz"),
        Duration::from_secs(20),
    )?;

    // nginx as a plain reverse proxy with upstream keep-alive and no buffering.
    let ng_port = free_port()?;
    let ng_dir = dir.join("nginx");
    std::fs::create_dir_all(ng_dir.join("logs"))?;
    std::fs::write(
        ng_dir.join("nginx.conf"),
        format!(
            "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/logs/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {d}; proxy_temp_path {d};\n\
               upstream mock {{ server {mock_addr}; keepalive 128; }}\n\
               server {{ listen 127.0.0.1:{ng_port}; location / {{ proxy_pass http://mock; proxy_http_version 1.1;\n\
                 proxy_set_header Connection \"\"; proxy_buffering off; }} }} }}\n",
            d = ng_dir.display()
        ),
    )?;
    let nginx_bin = if Path::new("/usr/sbin/nginx").exists() {
        PathBuf::from("/usr/sbin/nginx")
    } else {
        PathBuf::from("nginx")
    };
    let nginx = Proc(
        pinned(1, &nginx_bin)
            .arg("-c")
            .arg(ng_dir.join("nginx.conf"))
            .arg("-p")
            .arg(&ng_dir)
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_http(
        &format!("http://127.0.0.1:{ng_port}/health"),
        Duration::from_secs(10),
    )?;

    // LiteLLM proxy, one worker, pointing at the same mock.
    let lt_port = free_port()?;
    let litellm = if opts.litellm {
        let cfg = dir.join("litellm.yaml");
        std::fs::write(
            &cfg,
            format!(
                "model_list:\n  - model_name: {MODEL}\n    litellm_params:\n      model: openai/{MODEL}\n      api_base: http://{mock_addr}/v1\n      api_key: unused\n"
            ),
        )?;
        let p = Proc(
            pinned(1, &root().join("target/bench-venv/bin/litellm"))
                .arg("--config")
                .arg(&cfg)
                .args(["--port", &lt_port.to_string(), "--num_workers", "1"])
                .env("LITELLM_LOG", "ERROR")
                .env("LITELLM_MASTER_KEY", BENCH_KEY)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?,
        );
        wait_http(
            &format!("http://127.0.0.1:{lt_port}/health/liveliness"),
            Duration::from_secs(120),
        )?;
        Some(p)
    } else {
        None
    };

    let sc_pid = sidecar.0.id();
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(sc_pid, "VmRSS:");
    let mut targets: Vec<(&str, String)> = vec![
        ("direct", format!("http://{mock_addr}/v1/chat/completions")),
        (
            "vigie-sidecar",
            format!("http://127.0.0.1:{sc_port}/v1/chat/completions"),
        ),
        (
            "nginx",
            format!("http://127.0.0.1:{ng_port}/v1/chat/completions"),
        ),
    ];
    if litellm.is_some() {
        targets.push((
            "litellm",
            format!("http://127.0.0.1:{lt_port}/v1/chat/completions"),
        ));
    }
    // Warm connection pools and caches.
    for (_, url) in &targets {
        oha(url, CHAT, 2, Some(200), 16)?;
    }

    let mut report = String::new();
    writeln!(
        report,
        "Fixed-rate latency (open loop, latency-corrected), small chat request, {}s per cell:\n",
        opts.duration_s
    )?;
    writeln!(
        report,
        "| target | rate (rps) | achieved rps | 2xx share | p50 ms | p99 ms | added p50 ms | added p99 ms |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|")?;
    let mut peak_rss = 0;
    for &rate in &opts.rates {
        let mut direct = Load::default();
        for (name, url) in &targets {
            step(&format!("{name} at {rate} rps"));
            let sampler = RssSampler::start(if *name == "vigie-sidecar" {
                Some(sc_pid)
            } else {
                None
            });
            let l = oha(url, CHAT, opts.duration_s, Some(rate), 64)?;
            peak_rss = peak_rss.max(sampler.stop());
            if *name == "direct" {
                direct = l.clone();
            }
            writeln!(
                report,
                "| {name} | {rate} | {:.0} | {:.3} | {:.3} | {:.3} | {:+.3} | {:+.3} |",
                l.rps,
                l.success,
                l.p50_ms,
                l.p99_ms,
                l.p50_ms - direct.p50_ms,
                l.p99_ms - direct.p99_ms
            )?;
        }
    }

    writeln!(
        report,
        "\nMaximum throughput (closed loop, 32 connections, proxy pinned to one core), {}s:\n",
        opts.duration_s
    )?;
    writeln!(report, "| target | rps | p50 ms | p99 ms |")?;
    writeln!(report, "|---|---|---|---|")?;
    for (name, url) in &targets {
        step(&format!("{name} max throughput"));
        let sampler = RssSampler::start(if *name == "vigie-sidecar" {
            Some(sc_pid)
        } else {
            None
        });
        let l = oha(url, CHAT, opts.duration_s, None, 32)?;
        peak_rss = peak_rss.max(sampler.stop());
        writeln!(
            report,
            "| {name} | {:.0} | {:.3} | {:.3} |",
            l.rps, l.p50_ms, l.p99_ms
        )?;
    }

    step("time to first token, streamed (200 sequential requests, fresh connections)");
    let (d50, d99) = ttft_ms(&mock_addr, 200)?;
    let (s50, s99) = ttft_ms(&format!("127.0.0.1:{sc_port}"), 200)?;
    writeln!(
        report,
        "\nTime to first token, streamed chat (200 sequential requests):\n"
    )?;
    writeln!(report, "| target | p50 ms | p99 ms |\n|---|---|---|")?;
    writeln!(
        report,
        "| direct | {d50:.3} | {d99:.3} |\n| vigie-sidecar | {s50:.3} | {s99:.3} |"
    )?;
    writeln!(report, "| added | {:+.3} | {:+.3} |", s50 - d50, s99 - d99)?;

    writeln!(
        report,
        "\nSidecar memory: RSS idle {:.1} MiB, peak RSS under load {:.1} MiB (VmHWM {:.1} MiB).",
        rss_idle as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        rss_kib(sc_pid, "VmHWM:") as f64 / 1024.0
    )?;

    if opts.soak_s > 0 {
        step(&format!(
            "soak: {} s of streamed chats at {} rps through the sidecar",
            opts.soak_s, opts.soak_rate
        ));
        let url = format!("http://127.0.0.1:{sc_port}/v1/chat/completions");
        let sampler = RssSampler::start_series(sc_pid, Duration::from_secs(10));
        let l = oha(&url, CHAT_STREAM, opts.soak_s, Some(opts.soak_rate), 64)?;
        let series = sampler.stop_series();
        // Growth after warm-up: from the first minute's end to the last sample.
        let base = series.get(6).or(series.first()).copied().unwrap_or(0);
        let last = series.last().copied().unwrap_or(0);
        writeln!(
            report,
            "\nSoak: {} s of streamed chats at {} rps: achieved {:.0} rps, success {:.4}, p99 {:.3} ms; RSS after 1 min {:.1} MiB, at end {:.1} MiB, growth {:+.2}% (samples every 10 s, MiB: {}).",
            opts.soak_s,
            opts.soak_rate,
            l.rps,
            l.success,
            l.p99_ms,
            base as f64 / 1024.0,
            last as f64 / 1024.0,
            if base > 0 {
                (last as f64 - base as f64) * 100.0 / base as f64
            } else {
                0.0
            },
            series
                .iter()
                .map(|k| format!("{:.1}", *k as f64 / 1024.0))
                .collect::<Vec<_>>()
                .join(" ")
        )?;
    }

    drop((litellm, nginx, sidecar, mock));
    let path = dir.join("proxy.md");
    std::fs::write(&path, &report)?;
    println!("\n{report}\n(written to {})", path.display());
    Ok(())
}

/// Samples a process's RSS in a thread.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        Self::spawn(pid, Duration::from_millis(200))
    }

    fn start_series(pid: u32, every: Duration) -> Self {
        Self::spawn(Some(pid), every)
    }

    fn spawn(pid: Option<u32>, every: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = pid.map(|pid| {
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let mut last = Instant::now() - every;
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    if last.elapsed() >= every {
                        samples.push(rss_kib(pid, "VmRSS:"));
                        last = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                samples
            })
        });
        Self { stop, handle }
    }

    fn stop(self) -> u64 {
        self.stop_series().into_iter().max().unwrap_or(0)
    }

    fn stop_series(mut self) -> Vec<u64> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }
}

/// Release build, then a Python orchestrator of `tests/bench/` (it reuses the
/// end-to-end harness to start PostgreSQL and the control plane).
fn python_bench(what: &str, script: &str) -> anyhow::Result<()> {
    crate::setup::setup()?;
    step("building release binaries");
    run(cargo().args(["build", "--release", "--bins"]))?;
    step(what);
    run(Command::new(crate::util::venv_python())
        .arg(root().join("tests/bench").join(script))
        .env("VIGIE_BIN_DIR", root().join("target/release")))
}

/// `cargo xtask bench realistic --base REV`: the sidecar in its realistic configuration
/// (DLP both directions, managed ledger, budget, telemetry) against nginx and direct,
/// the build of `base` ("before") and the working tree ("after") in one run, with
/// forced usage estimates and heap allocations per request (`tests/bench/proxy_realistic.py`).
pub fn realistic(base: &str, duration_s: u64, rates: &str) -> anyhow::Result<()> {
    crate::setup::setup()?;
    ensure_tools(false)?;
    if !Path::new("/usr/bin/valgrind").exists() {
        bail!("valgrind is missing (allocation counts): apt-get install valgrind");
    }
    step("building release binaries (after)");
    run(cargo().args(["build", "--release", "--bins"]))?;
    let src = root().join("target/bench/base-src");
    let target = root().join("target/bench/base-target");
    step(&format!("building the sidecar at {base} (before)"));
    if src.exists() {
        run(Command::new("git")
            .arg("-C")
            .arg(&src)
            .args(["checkout", "-q", "--detach", base]))?;
    } else {
        run(Command::new("git")
            .arg("-C")
            .arg(root())
            .args(["worktree", "add", "-f", "--detach"])
            .arg(&src)
            .arg(base))?;
    }
    run(cargo()
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", &target)
        .args([
            "build",
            "--release",
            "-p",
            "vigie-sidecar",
            "--bin",
            "vigie-sidecar",
        ]))?;
    step("realistic configuration, before and after");
    run(Command::new(crate::util::venv_python())
        .arg(root().join("tests/bench/proxy_realistic.py"))
        .arg("--before")
        .arg(target.join("release"))
        .arg("--after")
        .arg(root().join("target/release"))
        .args(["--seconds", &duration_s.to_string(), "--rates", rates]))
}

/// `cargo xtask bench control-plane`: propagation, memory per watcher, apply rate.
pub fn control_plane() -> anyhow::Result<()> {
    python_bench("control-plane benchmark", "control_plane.py")
}

/// `cargo xtask bench usage`: ledger ingestion at the control plane
/// (`tests/bench/usage.py` drives `vigie-usage-load` against both stores).
/// `cargo xtask bench estimate`: resident memory and time of the estimate tokenizer,
/// Vigie's compact o200k against tiktoken-rs (`vigie-metering` example
/// `estimate_memory`); the two must count the same.
pub fn estimate() -> anyhow::Result<()> {
    step("building the estimate benchmark");
    run(cargo().args([
        "build",
        "--release",
        "-q",
        "-p",
        "vigie-metering",
        "--example",
        "estimate_memory",
    ]))?;
    let exe = root().join("target/release/examples/estimate_memory");
    let mut tokens = Vec::new();
    for which in ["vigie", "tiktoken"] {
        let out = Command::new(&exe).arg(which).output()?;
        anyhow::ensure!(out.status.success(), "estimate_memory {which} failed");
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        println!("{line}");
        tokens.push(serde_json::from_str::<Value>(&line)?["tokens"].clone());
    }
    anyhow::ensure!(
        tokens[0] == tokens[1],
        "the two tokenizers disagree: {tokens:?}"
    );
    Ok(())
}

pub fn usage() -> anyhow::Result<()> {
    python_bench("usage ingestion benchmark", "usage.py")
}

/// `cargo xtask bench abuse`: the issue-20 attacks, measured (`tests/bench/abuse.py`).
pub fn abuse() -> anyhow::Result<()> {
    python_bench("abuse benchmark", "abuse.py")
}

/// `cargo xtask bench routing`: the picker's overhead (plain Rust), then routing
/// quality through a release sidecar (`tests/bench/routing.py`).
pub fn routing(duration_s: u64) -> anyhow::Result<()> {
    crate::setup::setup()?;
    step("building release binaries");
    run(cargo().args(["build", "--release", "--bins"]))?;
    step("picker overhead");
    run(cargo().args([
        "run",
        "--release",
        "-q",
        "-p",
        "vigie-balance",
        "--example",
        "pick_overhead",
    ]))?;
    step("routing quality: round robin, least request, queue-aware + prefix affinity");
    run(Command::new(crate::util::venv_python())
        .arg(root().join("tests/bench/routing.py"))
        .env("VIGIE_BIN_DIR", root().join("target/release"))
        .env("VIGIE_BENCH_SECONDS", duration_s.to_string()))
}

/// `cargo xtask bench egress`: connect() with the egress programs attached (and a
/// 10,000-entry policy) vs without, and the denial events drained per second.
/// Root only: it loads eBPF programs into the kernel.
pub fn egress(per_round: usize, rounds: usize) -> anyhow::Result<()> {
    crate::setup::setup()?;
    step("connect() latency with and without the egress programs; denial flood");
    run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "vigie-egress",
        "--example",
        "egress_bench",
        "--",
        &per_round.to_string(),
        &rounds.to_string(),
    ]))
}

/// `cargo xtask bench dlp`: engine throughput on French prose, then Vigie and Presidio
/// side by side on the labelled corpus (Presidio in its own virtual environment,
/// target/presidio-venv, made by `cargo xtask setup` from tests/requirements-presidio.txt).
pub fn dlp(samples: usize) -> anyhow::Result<()> {
    crate::setup::setup()?;
    step("DLP engine throughput (block and 16-byte streaming)");
    run(cargo().args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "vigie-dlp",
        "--example",
        "scan_throughput",
        "16",
    ]))?;
    step("DLP engine worst cases: 8 MiB texts of the shapes that cost most (time, peak RSS)");
    run(cargo().args([
        "build",
        "--quiet",
        "--release",
        "-p",
        "vigie-dlp",
        "--example",
        "worst_case",
    ]))?;
    let worst = root().join("target/release/examples/worst_case");
    for kind in [
        "text",
        "digits",
        "spaced-digits",
        "zero-width",
        "full-width",
        "phones",
        "private-key",
        "token-dashes",
        "civilities",
        "addresses",
        "capitals",
        "civility-runs",
        "accented-capitals",
        "hyphenated",
    ] {
        run(Command::new("/usr/bin/time")
            .args(["-f", "  peak RSS %M KiB"])
            .arg(&worst)
            .arg(kind))?;
    }
    step("Vigie and Presidio on the labelled corpus");
    run(Command::new(crate::util::presidio_python())
        .arg(root().join("tests/bench/dlp_presidio.py"))
        .arg(samples.to_string()))
}

const CHAT_PII: &str = r#"{"model":"bench-model","messages":[{"role":"system","content":"Tu es l'assistant du service instructeur."},{"role":"user","content":"Bonjour, voici le dossier de Mme Martin (NIR 1 85 05 78 006 084 91, courriel a.martin@exemple.fr, IBAN FR76 3000 6000 0112 3456 7890 189). Peux-tu résumer sa demande en trois points ?"}],"max_tokens":8}"#;
const CHAT_PII_STREAM: &str = r#"{"model":"bench-model","messages":[{"role":"user","content":"Dossier de Mme Martin, NIR 1 85 05 78 006 084 91, à résumer."}],"max_tokens":40,"stream":true}"#;

/// Arrival time (ms from request) of each SSE event of one streamed chat.
fn event_times(host: &str, body: &str) -> anyhow::Result<Vec<f64>> {
    let mut s = TcpStream::connect(host)?;
    s.set_nodelay(true)?;
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let start = Instant::now();
    s.write_all(req.as_bytes())?;
    let mut times = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        let t = start.elapsed().as_secs_f64() * 1000.0;
        let events = buf[..n].windows(5).filter(|w| w == b"data:").count();
        times.extend(std::iter::repeat_n(t, events));
    }
    Ok(times)
}

/// Set-up of the single-sidecar benchmarks: release binaries, `oha`, target/bench.
fn prepare_sidecar_bench() -> anyhow::Result<PathBuf> {
    crate::setup::setup()?;
    step("building release binaries");
    run(cargo().args(["build", "--release", "--bins"]))?;
    ensure_tools(false)?;
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A release mock pool pinned to CPU 0; its address.
fn start_mock(extra: &[&str]) -> anyhow::Result<(Proc, String)> {
    let mut mock = pinned(0, &bin("vigie-mock-pool"));
    mock.args(["--models", MODEL, "--threads", "1", "--capacity", "100000"])
        .args(extra)
        .stdout(Stdio::piped());
    let mut mock = Proc(mock.spawn().context("starting mock")?);
    let mut line = String::new();
    BufReader::new(mock.0.stdout.take().context("mock stdout")?).read_line(&mut line)?;
    let addr = serde_json::from_str::<Value>(&line)?["listening"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok((mock, addr))
}

/// One vLLM pool on the mock at `addr`.
fn bench_policy(addr: &str) -> Value {
    serde_json::json!({"name": "bench", "pools": [{"name": "gpu", "kind": "POOL_KIND_VLLM",
        "endpoints": [{"url": format!("http://{addr}")}], "models": [{"name": MODEL}]}]})
}

/// A release sidecar pinned to CPU 1 (policy file `name`), ready.
struct BenchSidecar {
    proc: Proc,
    host: String,
    admin: String,
}

fn start_sidecar(
    policy: &Value,
    name: &str,
    env: &[(&str, String)],
) -> anyhow::Result<BenchSidecar> {
    let dir = root().join("target/bench");
    let (port, admin) = (free_port()?, free_port()?);
    let file = dir.join(format!("policy-{name}.json"));
    std::fs::write(&file, policy.to_string())?;
    let mut cmd = pinned(1, &bin("vigie-sidecar"));
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin-listen",
        &format!("127.0.0.1:{admin}"),
    ])
    .arg("--policy-file")
    .arg(&file)
    .env("RUST_LOG", "warn")
    .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let p = Proc(cmd.spawn()?);
    let admin = format!("127.0.0.1:{admin}");
    wait_http(&format!("http://{admin}/readyz"), Duration::from_secs(20))?;
    Ok(BenchSidecar {
        proc: p,
        host: format!("127.0.0.1:{port}"),
        admin,
    })
}

/// `cargo xtask bench dlp-latency`: the same sidecar with DLP off and with every
/// built-in detector on in both directions: request latency, time to first token, and
/// the delay DLP adds to each streamed chunk.
pub fn dlp_latency(duration_s: u64, rate: u32) -> anyhow::Result<()> {
    let dir = prepare_sidecar_bench()?;
    let (_fast, fast_addr) = start_mock(&[])?;
    // A paced stream (50 tokens/s) for the per-chunk delay.
    let (_paced, paced_addr) = start_mock(&["--tokens-per-sec", "50"])?;
    let mut rows = Vec::new();
    let mut chunk_times: Vec<Vec<Vec<f64>>> = Vec::new();
    for dlp_on in [false, true] {
        let policy_for = |addr: &str| {
            let mut p = bench_policy(addr);
            if dlp_on {
                p["dlp"] = serde_json::json!({"rules": [
                    {"detector": "*", "action": "DLP_ACTION_REDACT"},
                    {"detector": "FR_NIR", "action": "DLP_ACTION_PSEUDONYMIZE", "direction": "DLP_DIRECTION_REQUEST"}]});
            }
            p
        };
        let run_sidecar = |addr: &str, name: &str| -> anyhow::Result<(Proc, String)> {
            let s = start_sidecar(&policy_for(addr), name, &[])?;
            Ok((s.proc, s.host))
        };
        let label = if dlp_on { "DLP on" } else { "DLP off" };
        let (sc, host) = run_sidecar(&fast_addr, if dlp_on { "on" } else { "off" })?;
        step(&format!(
            "{label}: {rate} rps for {duration_s} s, then time to first token"
        ));
        let load = oha(
            &format!("http://{host}/v1/chat/completions"),
            CHAT_PII,
            duration_s,
            Some(rate),
            64,
        )?;
        let (ttft50, ttft99) = ttft_ms(&host, 300)?;
        drop(sc);
        let (sc, host) = run_sidecar(&paced_addr, if dlp_on { "on-paced" } else { "off-paced" })?;
        step(&format!("{label}: 20 paced streams (50 tokens/s)"));
        let mut runs = Vec::new();
        for _ in 0..20 {
            runs.push(event_times(&host, CHAT_PII_STREAM)?);
        }
        drop(sc);
        chunk_times.push(runs);
        rows.push((label, load, ttft50, ttft99));
    }
    // Inter-chunk delay: the gaps between consecutive events, pooled over the runs.
    let gaps = |runs: &Vec<Vec<f64>>| {
        let mut g: Vec<f64> = runs
            .iter()
            .flat_map(|r| r.windows(2).map(|w| w[1] - w[0]))
            .collect();
        g.sort_by(f64::total_cmp);
        g
    };
    let pct = |v: &[f64], q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let (off_gaps, on_gaps) = (gaps(&chunk_times[0]), gaps(&chunk_times[1]));
    let mut md = String::new();
    let _ = writeln!(
        md,
        "| sidecar | achieved rps | 2xx | request p50 | request p99 | TTFT p50 | TTFT p99 |\n|---|---|---|---|---|---|---|"
    );
    for (label, l, t50, t99) in &rows {
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.3} | {:.3} ms | {:.3} ms | {t50:.3} ms | {t99:.3} ms |",
            l.rps, l.success, l.p50_ms, l.p99_ms
        );
    }
    let _ = writeln!(
        md,
        "\n| inter-chunk delay (50 tokens/s, 20 streams, {} gaps off / {} on) | p50 | p99 |\n|---|---|---|\n| DLP off | {:.3} ms | {:.3} ms |\n| DLP on | {:.3} ms | {:.3} ms |\n| added by DLP | {:+.3} ms | {:+.3} ms |",
        off_gaps.len(),
        on_gaps.len(),
        pct(&off_gaps, 0.5),
        pct(&off_gaps, 0.99),
        pct(&on_gaps, 0.5),
        pct(&on_gaps, 0.99),
        pct(&on_gaps, 0.5) - pct(&off_gaps, 0.5),
        pct(&on_gaps, 0.99) - pct(&off_gaps, 0.99),
    );
    std::fs::write(dir.join("dlp-latency.md"), &md)?;
    println!("{md}");
    Ok(())
}

/// The whole answer body of a GET (HTTP/1.1, connection closed by the server).
fn http_get(url: &str) -> anyhow::Result<String> {
    let (host, path) = split_url(url);
    let mut s = TcpStream::connect(&host)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string()))
}

/// Sum of a Prometheus counter's samples whose line contains every `filter`.
fn counter(metrics: &str, name: &str, filters: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && filters.iter().all(|f| l.contains(f)))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// `cargo xtask bench telemetry`: a release sidecar at a fixed rate with OTLP export off,
/// on (a collector that keeps up), with the collector down, and with a collector so slow
/// that the queue stays full; request latency, memory, what was exported and dropped.
/// The collector is a gRPC sink that accepts exports without decoding them
/// (tests/bench/otlp_sink.py).
pub fn telemetry(duration_s: u64, rate: u32) -> anyhow::Result<()> {
    prepare_sidecar_bench()?;
    let (_mock, addr) = start_mock(&[])?;
    let policy = bench_policy(&addr);
    // The collector, in its own process on CPU 0 (with the load generator and the mock).
    let sink = |delay_s: f64| -> anyhow::Result<(Proc, String)> {
        let port = free_port()?;
        let mut c = pinned(0, &crate::util::venv_python());
        c.arg(root().join("tests/bench/otlp_sink.py"))
            .args(["--port", &port.to_string(), "--delay", &delay_s.to_string()])
            .stdout(Stdio::piped());
        let mut p = Proc(c.spawn().context("starting the OTLP receiver")?);
        let mut line = String::new();
        BufReader::new(p.0.stdout.take().context("receiver stdout")?).read_line(&mut line)?;
        if !line.starts_with("ready") {
            bail!("OTLP receiver did not start: {line:?}");
        }
        Ok((p, format!("http://127.0.0.1:{port}")))
    };
    // (label, collector delay: none = export off, < 0 = collector down, sampling ratio)
    let scenarios: [(&str, Option<f64>, &str); 5] = [
        ("export off", None, "1"),
        ("collector up, every request traced", Some(0.0), "1"),
        ("collector up, 10 % of requests traced", Some(0.0), "0.1"),
        ("collector down", Some(-1.0), "1"),
        ("collector slow (5 s per export)", Some(5.0), "1"),
    ];
    let mut md = format!(
        "| {rate} rps, {duration_s} s, 64 connections | achieved rps | 2xx | request p50 | request p99 | RSS after | peak RSS | spans exported | spans dropped (queue full / export failed) |\n|---|---|---|---|---|---|---|---|---|\n"
    );
    for (i, (label, collector, ratio)) in scenarios.iter().enumerate() {
        let (_sink, endpoint) = match collector {
            None => (None, None),
            // Nothing listens there.
            Some(d) if *d < 0.0 => (None, Some(format!("http://127.0.0.1:{}", free_port()?))),
            Some(d) => {
                let (p, url) = sink(*d)?;
                (Some(p), Some(url))
            }
        };
        let env: Vec<(&str, String)> = endpoint
            .map(|e| {
                vec![
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", e),
                    ("OTEL_TRACES_SAMPLER_ARG", (*ratio).to_string()),
                ]
            })
            .unwrap_or_default();
        let sc = start_sidecar(&policy, &format!("telemetry-{i}"), &env)?;
        step(&format!("{label}: {rate} rps for {duration_s} s"));
        let load = oha(
            &format!("http://{}/v1/chat/completions", sc.host),
            CHAT,
            duration_s,
            Some(rate),
            64,
        )?;
        // Let the last batches go (or fail).
        std::thread::sleep(Duration::from_secs(2));
        let pid = sc.proc.0.id();
        let metrics = http_get(&format!("http://{}/metrics", sc.admin))?;
        let exported = counter(&metrics, "vigie_telemetry_exported_total", &["traces"]);
        let full = counter(
            &metrics,
            "vigie_telemetry_dropped_total",
            &["traces", "queue_full"],
        );
        let failed = counter(
            &metrics,
            "vigie_telemetry_dropped_total",
            &["traces", "export_failed"],
        );
        let _ = writeln!(
            md,
            "| {label} | {:.0} | {:.3} | {:.3} ms | {:.3} ms | {:.1} MiB | {:.1} MiB | {exported:.0} | {full:.0} / {failed:.0} |",
            load.rps,
            load.success,
            load.p50_ms,
            load.p99_ms,
            rss_kib(pid, "VmRSS") as f64 / 1024.0,
            rss_kib(pid, "VmHWM") as f64 / 1024.0,
        );
    }
    std::fs::write(root().join("target/bench/telemetry.md"), &md)?;
    println!("{md}");
    Ok(())
}
