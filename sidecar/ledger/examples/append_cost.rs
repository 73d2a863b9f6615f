//! Cost of the ledger on the request path: one `begin` and one `end` line per request,
//! with a realistic record, in a temporary directory, and the `write` system calls it
//! took per request (`syscw` of /proc/self/io):
//! `cargo run --release -p vigie-ledger --example append_cost [requests] [eager]`;
//! `eager` writes each `end` at once (the ledger before group commit), for comparison.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::time::Instant;

use vigie_ledger::Ledger;
use vigie_proto::v1::UsageRecord;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().unwrap());
    let eager = std::env::args().nth(2).as_deref() == Some("eager");
    let dir = std::env::temp_dir().join(format!("vigie-ledger-bench-{}", std::process::id()));
    let (ledger, _) = Ledger::open(&dir).unwrap();
    let base = UsageRecord {
        namespace: "team-a".into(),
        workload: "chatbot".into(),
        pod: "chatbot-7d9f8b6c5-x2x4q".into(),
        user: "ana@corp.example".into(),
        model: "gpt-4o-mini".into(),
        operation: "chat_completions".into(),
        started_at_ms: 1_795_942_800_000,
        ..Default::default()
    };
    let writes = || -> u64 {
        std::fs::read_to_string("/proc/self/io")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("syscw: "))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    let writes_before = writes();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let mut r = base.clone();
        r.id = format!("0123456789abcdef-{i}");
        let t = Instant::now();
        ledger.begin(&r).unwrap();
        r.served_model = "mistral-small".into();
        r.pool = "onprem-gpu".into();
        r.endpoint = "http://10.0.3.7:8000".into();
        r.prompt_tokens = 412;
        r.completion_tokens = 128;
        r.status = 200;
        r.outcome = 1;
        r.source = 1;
        ledger.end(&r).unwrap();
        if eager {
            ledger.flush().unwrap();
        }
        samples.push(t.elapsed().as_secs_f64() * 1e6);
        if i % 10_000 == 9_999 {
            // What the shipper does: ship and acknowledge, so segments are recycled.
            let b = ledger.pending(usize::MAX).unwrap();
            ledger.ack(b.next).unwrap();
        }
    }
    ledger.flush().unwrap();
    let per_request = (writes() - writes_before) as f64 / n as f64;
    samples.sort_by(f64::total_cmp);
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "{n} requests (begin + end{}): p50 {:.2} µs, p99 {:.2} µs, max {:.1} µs, {per_request:.3} write calls per request (shipping's cursor writes included)",
        if eager {
            ", each end written at once"
        } else {
            ", group commit"
        },
        q(0.5),
        q(0.99),
        q(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
