//! Time of one AdmissionReview through the handler (parse, decide, mutate, diff,
//! serialize), on the Deployment-pod fixture:
//! `cargo run --release -p vigie-inject --example review_latency [iterations]`.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::time::Instant;

use vigie_inject::{InjectConfig, Trigger, review};

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .map_or(20_000, |a| a.parse().unwrap());
    let body = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/deployment-pod.json"
    ))
    .unwrap();
    let cfg = InjectConfig::default();
    for _ in 0..1_000 {
        review(&body, Trigger::Namespace, &cfg).unwrap();
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        let out = review(&body, Trigger::Namespace, &cfg).unwrap();
        let bytes = serde_json::to_vec(&out).unwrap();
        std::hint::black_box(bytes);
        samples.push(start.elapsed().as_nanos() as f64 / 1000.0);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
    println!(
        "{} reviews of a {}-byte AdmissionReview: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs",
        iterations,
        body.len(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}
