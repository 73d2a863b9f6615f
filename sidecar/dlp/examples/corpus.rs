//! `cargo run --release -p vigie-dlp --example corpus -- N SEED`: prints the labelled
//! corpus as JSON lines (character offsets, for other tools such as Presidio), then a
//! last line with Vigie's own scores and scan throughput on it. `-- --file PATH`: the
//! same for a labelled JSON-lines file (byte offsets), such as the hand-written corpus
//! `sidecar/dlp/tests/data/personal_handwritten.jsonl`.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::time::Instant;

use vigie_dlp::corpus::{Sample, generate};
use vigie_dlp::scoring::score;
use vigie_dlp::{Engine, builtins};

fn chars(text: &str, byte: usize) -> usize {
    text[..byte].chars().count()
}

/// A labelled JSON-lines file: `{"text": …, "labels": [[TYPE, start, end], …]}`.
fn read(path: &str) -> Vec<Sample> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Sample>(l).unwrap())
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let samples = if args.first().map(String::as_str) == Some("--file") {
        read(&args[1])
    } else {
        let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(2000);
        let seed: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20261129);
        generate(seed, n)
    };
    for s in &samples {
        let labels: Vec<_> = s
            .labels
            .iter()
            .map(|(d, a, b)| serde_json::json!([d, chars(&s.text, *a), chars(&s.text, *b)]))
            .collect();
        println!("{}", serde_json::json!({"text": s.text, "labels": labels}));
    }
    let engine = Engine::new(builtins()).unwrap();
    let bytes: usize = samples.iter().map(|s| s.text.len()).sum();
    // Throughput: several passes, so the figure is not one cold pass.
    let passes = 20;
    let t = Instant::now();
    for _ in 0..passes {
        for s in &samples {
            std::hint::black_box(engine.find(&s.text, "").unwrap());
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let scores = score(&engine, &samples).unwrap();
    let per: serde_json::Map<String, serde_json::Value> = scores
        .iter()
        .map(|(k, s)| {
            (
                k.clone(),
                serde_json::json!({"tp": s.tp, "fp": s.fp, "fn": s.fn_}),
            )
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({"vigie": {"scores": per, "mb_per_s": (bytes * passes) as f64 / 1e6 / secs,
            "ms_per_sample": secs * 1000.0 / (passes * samples.len()) as f64}})
    );
}
