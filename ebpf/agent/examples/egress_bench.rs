//! Cost of the egress programs on `connect()`, and how many denial events the agent
//! drains without loss. Root only (loads eBPF, creates cgroups).
//!
//! `cargo xtask bench egress` (or `cargo run --release -p vigie-egress --example
//! egress_bench -- [connects per round] [rounds]`).
//!
//! Three cgroups, same process moved between them round by round (interleaved, so
//! drift affects all alike): `none` (outside the attach point: no program runs),
//! `attached` (programs run, cgroup not enrolled: every other pod of the node) and
//! `enrolled` (enrolled with a 10,000-entry policy, connect allowed by a trie lookup).
//! The listener is a separate process outside those cgroups, so what is timed is the
//! client side of `connect()`, as for a pod calling out.
//! Then a flood of denied connects from one enrolled cgroup while another ("quiet")
//! makes a few, with the agent's drain loop running: the quiet one's events must all
//! arrive. Last, a bulk TCP transfer over a veth pair to another network namespace,
//! from outside and inside an enrolled cgroup, with and without the tc backstop on the
//! devices (the cgroup_skb program runs for the enrolled one either way).
#![expect(
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ipnet::{IpNet, Ipv4Net};
use vigie_egress::bpf::Enforcer;
use vigie_egress::plan::{CgroupName, Role};
use vigie_egress::plan::{Compiled, Desired};
use vigie_egress::{cgroups, devices, events, metrics};
use vigie_egress_common::PROTO_TCP;
use vigie_egress_common::compile::{Rule, compile};

/// The far end of the bulk transfer: a network namespace behind a veth pair.
const SINK_ADDR: Ipv4Addr = Ipv4Addr::new(10, 233, 0, 2);
const SINK_PORT: u16 = 5201;
const BULK_BYTES: usize = 256 << 20;

fn sh(args: &[&str]) {
    let ok = std::process::Command::new(args[0])
        .args(&args[1..])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "{args:?} failed");
}

/// Sends BULK_BYTES to the sink; Gbit/s.
fn send_bulk() -> f64 {
    let chunk = vec![0x5au8; 1 << 16];
    let mut s = TcpStream::connect((SINK_ADDR, SINK_PORT)).unwrap();
    let t = Instant::now();
    let mut sent = 0;
    while sent < BULK_BYTES {
        s.write_all(&chunk).unwrap();
        sent += chunk.len();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut end = [0u8; 1];
    let _ = s.read(&mut end);
    (sent * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
}

/// Bulk TCP over a veth pair, from outside and inside an enrolled cgroup, with and
/// without the tc backstop on the devices; rounds interleaved, medians printed.
fn bulk(enforcer: &mut Enforcer, none: &Path, enrolled: &Path) {
    let ns = format!("vigie-bench-{}", std::process::id());
    let (host_if, peer_if) = ("vgbench0", "vgbench1");
    let _ = std::process::Command::new("ip")
        .args(["link", "del", host_if])
        .stderr(std::process::Stdio::null())
        .status();
    sh(&["ip", "netns", "add", &ns]);
    sh(&[
        "ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if,
    ]);
    sh(&["ip", "link", "set", peer_if, "netns", &ns]);
    sh(&["ip", "addr", "add", "10.233.0.1/24", "dev", host_if]);
    sh(&["ip", "link", "set", host_if, "up"]);
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns,
        "ip",
        "addr",
        "add",
        "10.233.0.2/24",
        "dev",
        peer_if,
    ]);
    sh(&[
        "ip", "netns", "exec", &ns, "ip", "link", "set", peer_if, "up",
    ]);
    sh(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"]);
    let mut sink = std::process::Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(std::env::current_exe().unwrap())
        .arg("--sink")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(sink.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let own = devices::Netns {
        inode: devices::own_netns().unwrap(),
        pid: None,
    };
    let mut samples: BTreeMap<(&str, &str), Vec<f64>> = BTreeMap::new();
    for _ in 0..5 {
        for tc in ["tc off", "tc on"] {
            if tc == "tc on" {
                let (n, errors) = enforcer.guard_devices(&[own]);
                assert!(errors.is_empty() && n > 0, "{errors:?}");
            } else {
                enforcer.guard_devices(&[]);
            }
            for (who, cg) in [("outside", none), ("enrolled", enrolled)] {
                move_to(cg);
                samples.entry((tc, who)).or_default().push(send_bulk());
            }
        }
    }
    enforcer.guard_devices(&[]);
    println!(
        "bulk TCP over a veth pair, {} MiB per transfer, Gbit/s (median of 5):",
        BULK_BYTES >> 20
    );
    let mut med = BTreeMap::new();
    for ((tc, who), mut v) in samples {
        v.sort_by(f64::total_cmp);
        let m = pct(&v, 0.5);
        med.insert((tc, who), m);
        println!(
            "  {who:8} {tc:6}: {m:6.2}  (min {:.2}, max {:.2})",
            v[0],
            v[v.len() - 1]
        );
    }
    for who in ["outside", "enrolled"] {
        let off = med[&("tc off", who)];
        let on = med[&("tc on", who)];
        println!(
            "  throughput with the tc backstop vs without, {who}: {:+.1} % (negative = a cost)",
            (on - off) / off * 100.0
        );
    }
    let _ = sink.kill();
    let _ = sink.wait();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &ns])
        .status();
    let _ = std::process::Command::new("ip")
        .args(["link", "del", host_if])
        .status();
}

fn move_to(cg: &Path) {
    std::fs::write(cg.join("cgroup.procs"), std::process::id().to_string())
        .expect("moving into the cgroup");
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Interleaved wall-clock rounds, then a kernel-stats breakdown; prints both.
fn measure(
    enforcer: &Enforcer,
    setups: [(&'static str, &Path); 3],
    target: &str,
    per_round: usize,
    rounds: usize,
) {
    let mut samples: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut kernel: HashMap<&str, BTreeMap<String, (u64, Duration)>> = HashMap::new();
    // Warm-up.
    for (_, cg) in setups {
        move_to(cg);
        for _ in 0..200 {
            drop(TcpStream::connect(target).unwrap());
        }
    }
    // Wall clock first, with kernel stats off (they slow every program run).
    for _ in 0..rounds {
        for (name, cg) in setups {
            move_to(cg);
            let v = samples.entry(name).or_default();
            for _ in 0..per_round {
                let t = Instant::now();
                let s = TcpStream::connect(target).unwrap();
                v.push(t.elapsed().as_secs_f64() * 1e6);
                drop(s);
            }
        }
    }
    // Then the kernel's own account of the programs' run time (kernel.bpf_stats_enabled
    // while this fd lives), which includes the stats' own clock reads.
    let stats_on =
        aya::sys::enable_stats(aya::sys::Stats::RunTime).expect("enabling BPF run-time stats");
    let stat_rounds = rounds.min(10);
    for _ in 0..stat_rounds {
        for (name, cg) in setups {
            move_to(cg);
            let before = enforcer.program_stats();
            for _ in 0..per_round {
                drop(TcpStream::connect(target).unwrap());
            }
            let k = kernel.entry(name).or_default();
            for ((prog, n1, t1), (_, n0, t0)) in enforcer.program_stats().into_iter().zip(before) {
                let e = k.entry(prog).or_default();
                e.0 += n1 - n0;
                e.1 += t1 - t0;
            }
        }
    }
    drop(stats_on);
    let mut stats = BTreeMap::new();
    for (name, mut v) in samples {
        v.sort_by(f64::total_cmp);
        stats.insert(name, (pct(&v, 0.5), pct(&v, 0.99), v.len()));
    }
    println!("connect() to a loopback listener, µs (TcpStream::connect: socket + connect):");
    for (name, (p50, p99, n)) in &stats {
        println!("  {name:9} p50 {p50:7.2}  p99 {p99:7.2}  (n={n})");
    }
    let (n50, n99, _) = stats["none"];
    for name in ["attached", "enrolled"] {
        let (p50, p99, _) = stats[name];
        println!(
            "  added by the programs, {name:9}: p50 {:+.2} µs, p99 {:+.2} µs",
            p50 - n50,
            p99 - n99
        );
    }

    println!("kernel-measured program time per connect (run_time / connects), ns:");
    for name in ["attached", "enrolled"] {
        let connects = (per_round * stat_rounds) as f64;
        let mut total = 0.0;
        let mut parts = Vec::new();
        for (prog, (runs, time)) in &kernel[name] {
            if *runs == 0 {
                continue;
            }
            total += time.as_nanos() as f64 / connects;
            parts.push(format!(
                "{prog} {:.0} ns × {:.1} runs",
                time.as_nanos() as f64 / *runs as f64,
                *runs as f64 / connects
            ));
        }
        println!(
            "  {name:9} {total:6.0} ns per connect ({})",
            parts.join(", ")
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--sink") {
        // Reads every connection to its end (run inside the bench's network namespace).
        let listener = TcpListener::bind(("0.0.0.0", SINK_PORT)).unwrap();
        println!("ready");
        let mut buf = vec![0u8; 1 << 16];
        for s in listener.incoming() {
            let mut s = s.unwrap();
            while s.read(&mut buf).unwrap_or(0) > 0 {}
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("--quiet") {
        // A few denied connects, spaced out, from the quiet cgroup.
        let n: u32 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50);
        for _ in 0..n {
            assert!(TcpStream::connect("127.0.0.1:3").is_err());
            std::thread::sleep(Duration::from_millis(20));
        }
        return;
    }
    if args.get(1).map(String::as_str) == Some("--listener") {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        println!("{}", listener.local_addr().unwrap().port());
        for s in listener.incoming() {
            drop(s);
        }
        return;
    }
    let per_round: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2_000);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(15);
    let mount = cgroups::cgroup2_mount().expect("cgroup v2");
    let base = mount.join(format!("vigie-bench-{}", std::process::id()));
    let none = base.join("none");
    let root = base.join("attach");
    let attached = root.join("attached");
    let enrolled = root.join("enrolled");
    let quiet = root.join("quiet");
    for d in [&none, &attached, &enrolled, &quiet] {
        std::fs::create_dir_all(d).expect("creating cgroups (root needed)");
    }
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/vigie-bench-{}", std::process::id()));
    let original = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();

    let (mut enforcer, channels) =
        Enforcer::start(&pin_dir, &root).expect("loading the programs (root, bpffs)");
    // 10,000 /30 networks in 10.0.0.0/16.. plus loopback.
    let mut rules: Vec<Rule> = (0..10_000u32)
        .map(|i| {
            let a = Ipv4Addr::from(0x0a00_0000 + i * 4);
            Rule::new(IpNet::V4(Ipv4Net::new(a, 30).unwrap()), 443, 443, PROTO_TCP)
        })
        .collect();
    rules.push(Rule::host(Ipv4Addr::LOCALHOST.into(), 1, PROTO_TCP));
    // The listener is another process, left in our original cgroup: only the client
    // side of connect() runs through the programs, as for a pod calling out.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .arg("--listener")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let port: u16 = line.trim().parse().unwrap();
    rules.push(Rule::host(Ipv4Addr::LOCALHOST.into(), port, PROTO_TCP));
    rules.push(Rule::host(SINK_ADDR.into(), SINK_PORT, PROTO_TCP));
    let entries = Arc::new(Compiled {
        allow: compile(&rules).unwrap(),
        ..Compiled::default()
    });
    let enrolled_id = cgroups::cgroup_id(&enrolled).unwrap();
    let quiet_id = cgroups::cgroup_id(&quiet).unwrap();
    let desired = Desired {
        enrolled: BTreeMap::from([(enrolled_id, 1), (quiet_id, 1)]),
        policies: HashMap::from([(1, entries.clone())]),
        names: HashMap::new(),
    };
    let t = Instant::now();
    enforcer.apply(&desired).unwrap();
    println!(
        "policy: {} trie entries loaded in {:.1} ms",
        entries.allow.len(),
        t.elapsed().as_secs_f64() * 1e3
    );

    let target = format!("127.0.0.1:{port}");
    let setups: [(&'static str, &Path); 3] = [
        ("none", none.as_path()),
        ("attached", attached.as_path()),
        ("enrolled", enrolled.as_path()),
    ];
    println!("\n— no redirect in force (sock_ops not attached)");
    measure(&enforcer, setups, &target, per_round, rounds);
    // The same policy plus a redirect rule: the sock_ops program is attached and runs
    // on every TCP event of every socket below the attach point.
    let with_redirect = Arc::new(Compiled {
        allow: entries.allow.clone(),
        redirect: compile(&[Rule::parse("192.0.2.1", "80", PROTO_TCP).unwrap()]).unwrap(),
        redirect_port: 15080,
    });
    enforcer
        .apply(&Desired {
            enrolled: BTreeMap::from([(enrolled_id, 2), (quiet_id, 2)]),
            policies: HashMap::from([(2, with_redirect)]),
            names: HashMap::new(),
        })
        .unwrap();
    println!("\n— a redirect rule in force (sock_ops attached)");
    measure(&enforcer, setups, &target, per_round, rounds);

    // Event flood: denied connects as fast as one thread goes from the flooding cgroup,
    // while the quiet one makes 50, the drain loop running.
    let m = metrics::Metrics::new().unwrap();
    let who = |pod: &str| CgroupName {
        namespace: "bench".into(),
        pod: pod.into(),
        container: String::new(),
        role: Role::App,
    };
    let names: events::Names = Arc::new(RwLock::new(HashMap::from([
        (enrolled_id, who("flood")),
        (quiet_id, who("quiet")),
    ])));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    rt.spawn(events::drain(
        channels.events,
        names,
        m.clone(),
        20,
        events::Pending::new("bench"),
    ));
    move_to(&enrolled);
    let (denied_before, lost_before, _) = enforcer.stats();
    let quiet_sent = 50u32;
    let mut quiet_child = std::process::Command::new("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0/cgroup.procs" && exec "$@""#)
        .arg(&quiet)
        .arg(std::env::current_exe().unwrap())
        .args(["--quiet", &quiet_sent.to_string()])
        .spawn()
        .unwrap();
    let flood = Duration::from_secs(3);
    let t = Instant::now();
    let mut attempts = 0u64;
    while t.elapsed() < flood {
        let r = TcpStream::connect("127.0.0.1:2");
        assert!(r.is_err());
        attempts += 1;
    }
    let secs = t.elapsed().as_secs_f64();
    quiet_child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (denied, lost, _) = enforcer.stats();
    let drained = |pod: &str| {
        m.denials
            .with_label_values(&["bench", pod, "", "tcp"])
            .get()
    };
    let drops = enforcer.event_drops();
    let flood_drops = drops.get(&enrolled_id).copied().unwrap_or_default();
    let quiet_drops = drops.get(&quiet_id).copied().unwrap_or_default();
    println!(
        "denial flood: {attempts} refused connects in {secs:.1} s ({:.0}/s), kernel counted {}, \
         flooding cgroup's events drained {} (rate-limited {} in the kernel, ring full {}); \
         quiet cgroup: {} refused, {} drained (rate-limited {}, ring full {}); ring buffer lost {} in all",
        attempts as f64 / secs,
        denied - denied_before,
        drained("flood"),
        flood_drops.rate_limited,
        flood_drops.ring_full,
        quiet_sent,
        drained("quiet"),
        quiet_drops.rate_limited,
        quiet_drops.ring_full,
        lost - lost_before
    );

    bulk(&mut enforcer, &none, &enrolled);

    // Leave no trace: back to the original cgroup, unpin, remove.
    if let Some(path) = original.lines().find_map(|l| l.strip_prefix("0::")) {
        move_to(&mount.join(path.trim_start_matches('/')));
    }
    let _ = child.kill();
    let _ = child.wait();
    drop(enforcer);
    let _ = std::fs::remove_dir_all(&pin_dir);
    for d in [&attached, &enrolled, &quiet, &root, &none, &base] {
        let _ = std::fs::remove_dir(d);
    }
}
