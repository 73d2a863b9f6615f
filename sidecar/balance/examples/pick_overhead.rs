//! `cargo run --release -p vigie-balance --example pick_overhead`: time per pick for
//! pools of 2 to 64 endpoints, with and without a prefix key, on one core.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::time::Instant;

use vigie_balance::{EndpointState, HealthConfig, Request, ServerLoad, pick, prefix_hash};

fn main() {
    const N: u32 = 1_000_000;
    for size in [2usize, 8, 64] {
        let eps: Vec<EndpointState> = (0..size)
            .map(|i| {
                EndpointState::new(
                    &format!("http://10.0.0.{i}:8000"),
                    1 + (i as u32 % 3),
                    0,
                    HealthConfig::default(),
                )
            })
            .collect();
        let now = Instant::now();
        for (i, e) in eps.iter().enumerate() {
            e.set_server_load(
                ServerLoad {
                    waiting: i as u32 % 4,
                    running: 8,
                    kv_cache_usage: 0.3,
                },
                now,
            );
            for _ in 0..(i % 5) {
                e.acquire();
            }
        }
        let prefixes: Vec<u64> = (0..1024)
            .map(|p: u32| prefix_hash([p.to_le_bytes().as_slice()]))
            .collect();
        for affinity in [false, true] {
            let t = Instant::now();
            let mut sum = 0usize;
            for k in 0..N {
                let req = Request {
                    prefix: affinity.then(|| prefixes[(k % 1024) as usize]),
                    ..Request::default()
                };
                sum += pick(&eps, &[], &req, now).unwrap().index;
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(N);
            println!(
                "{{\"endpoints\": {size}, \"prefix_affinity\": {affinity}, \"ns_per_pick\": {ns:.0}, \"checksum\": {sum}}}"
            );
        }
    }
}
