//! `cargo run --release -p vigie-metering --example estimate_memory -- vigie|tiktoken`:
//! resident memory added by loading the estimate tokenizer and counting a prompt, and the
//! time per count, for Vigie's compact o200k and for tiktoken-rs. Run each in its own
//! process (`cargo xtask bench estimate` runs both and checks the counts agree).
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::time::Instant;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "vigie".into());
    let text = "Bonjour, pouvez-vous résumer la note de la préfecture sur le renouvellement des titres de séjour ? Merci de citer les articles du CESEDA concernés. ".repeat(20);
    let before = rss_kib();
    let started = Instant::now();
    let count: Box<dyn Fn(&str) -> u64> = match which.as_str() {
        "tiktoken" => {
            let bpe = tiktoken_rs::o200k_base().unwrap();
            Box::new(move |t| bpe.encode_ordinary(t).len() as u64)
        }
        _ => Box::new(vigie_metering::estimate::tokens),
    };
    let n = count(&text);
    let load_ms = started.elapsed().as_secs_f64() * 1e3;
    let after = rss_kib();
    let rounds = 2_000;
    let t = Instant::now();
    for _ in 0..rounds {
        assert_eq!(count(&text), n);
    }
    let per_count_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds);
    println!(
        "{{\"tokenizer\":\"{which}\",\"tokens\":{n},\"bytes\":{},\"rss_before_kib\":{before},\"rss_after_kib\":{after},\"added_kib\":{},\"first_count_ms\":{load_ms:.1},\"per_count_us\":{per_count_us:.1}}}",
        text.len(),
        after - before
    );
}
