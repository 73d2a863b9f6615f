//! Precision and recall on the hand-written corpus of French administrative prose
//! (`tests/data/personal_handwritten.jsonl`, written independently of the detectors:
//! see `tests/data/README.md`). Unlike the generated corpus, it measures what the
//! detectors find in prose as agents write it — bare names, signatures, forms — and
//! what they wrongly take for personal data. The floors below are the figures
//! measured when the corpus was added (docs/BENCHMARKS.md): a change that lowers one
//! fails here.
#![expect(clippy::print_stdout, clippy::unwrap_used, reason = "test code")]

use vigie_dlp::corpus::Sample;
use vigie_dlp::scoring::{score, table};
use vigie_dlp::{Engine, builtins};

fn corpus() -> Vec<Sample> {
    include_str!("data/personal_handwritten.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Sample>(l).unwrap())
        .collect()
}

#[test]
fn precision_and_recall_on_hand_written_prose() {
    let samples = corpus();
    assert!(samples.len() >= 250, "corpus truncated: {}", samples.len());
    let engine = Engine::new(builtins()).unwrap();
    let scores = score(&engine, &samples).unwrap();
    println!("{}", table(&scores));
    // (type, precision floor, recall floor): measured, rounded down.
    let floors: &[(&str, f64, f64)] = &[
        ("PERSON", 0.99, 0.96),
        ("ADDRESS", 0.99, 0.96),
        ("DATE_OF_BIRTH", 0.95, 0.97),
        ("HEALTH", 0.82, 0.66),
        ("RELIGION", 0.99, 0.84),
        ("POLITICAL_OPINION", 0.99, 0.63),
        ("UNION_MEMBERSHIP", 0.99, 0.66),
        ("SEXUAL_ORIENTATION", 0.99, 0.45),
        ("ETHNIC_ORIGIN", 0.99, 0.63),
        ("CRIMINAL_RECORD", 0.99, 0.99),
    ];
    for (name, p, r) in floors {
        let s = scores.get(*name).copied().unwrap_or_default();
        assert!(s.tp > 0, "{name} never found");
        assert!(
            s.precision() >= *p && s.recall() >= *r,
            "{name}: precision {:.3} (floor {p}), recall {:.3} (floor {r})\n{}",
            s.precision(),
            s.recall(),
            table(&scores)
        );
    }
}
