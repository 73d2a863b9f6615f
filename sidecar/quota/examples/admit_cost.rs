//! Budget cost on the request path: `admit` + `settle` per request against local
//! allowance (leases from an in-process source, so only the engine is timed), and
//! lease round-trips per 1,000 requests for several limits:
//! `cargo run --release -p vigie-quota --example admit_cost [requests]`.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use vigie_quota::{Budget, Decision, KeyDim, LocalLeases, Match, Quota, Request, Unit, Window};

fn budgets(limit: f64) -> Vec<Budget> {
    let base = Budget {
        name: "team-tokens".into(),
        matcher: Match {
            namespace: "team-a".into(),
            ..Default::default()
        },
        per: vec![],
        window: Window::Day,
        unit: Unit::Tokens,
        limit,
        currency: String::new(),
        soft: false,
    };
    vec![
        base.clone(),
        Budget {
            name: "per-user".into(),
            per: vec![KeyDim::User],
            limit: limit / 10.0,
            ..base.clone()
        },
        Budget {
            name: "rpm".into(),
            unit: Unit::Requests,
            window: Window::Minute,
            limit: 1e9,
            ..base
        },
    ]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map_or(200_000, |a| a.parse().unwrap());
    for limit in [1e7, 1e8, 1e9] {
        let quota = Quota::new(Arc::new(LocalLeases::default()));
        let b = budgets(limit);
        let mut samples = Vec::with_capacity(n);
        let mut admitted = 0u64;
        for i in 0..n {
            let req = Request {
                namespace: "team-a".into(),
                workload: "chatbot".into(),
                user: format!("user-{}", i % 8),
                model: "gpt-4o-mini".into(),
                tokens: 700.0,
                cost: vec![],
            };
            let t = Instant::now();
            if let Decision::Admit { reservation, .. } =
                quota.admit(&b, &req, true, 1_795_942_800_000).await
            {
                quota.settle(&reservation, 540.0, 0.0, "");
                admitted += 1;
            }
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
        samples.sort_by(f64::total_cmp);
        let q = |p: f64| samples[((samples.len() as f64 - 1.0) * p) as usize];
        let leases = quota.stats.leases.load(Ordering::Relaxed);
        println!(
            "limit {limit:e} tokens/day (per user: a tenth), 3 budgets: admit+settle p50 {:.2} µs, p99 {:.2} µs; {admitted} admitted of {n}; {:.1} lease requests per 1,000 admitted",
            q(0.5),
            q(0.99),
            leases as f64 * 1000.0 / admitted.max(1) as f64
        );
    }
}
