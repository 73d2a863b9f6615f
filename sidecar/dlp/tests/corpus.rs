//! Precision and recall of every built-in detector on the generated labelled corpus.
#![expect(clippy::print_stdout, reason = "test code")]

use vigie_dlp::corpus::{DETECTORS, generate};
use vigie_dlp::scoring::{Score, score, table};
use vigie_dlp::{Engine, builtins};

#[test]
fn precision_and_recall_per_detector() {
    let engine = Engine::new(builtins()).unwrap();
    let samples = generate(20261129, 3000);
    let scores = score(&engine, &samples).unwrap();
    println!("{}", table(&scores));
    for d in DETECTORS {
        let s = scores.get(*d).copied().unwrap_or_default();
        assert!(s.tp > 0, "{d} never appeared in the corpus");
        assert!(s.recall() >= 0.99, "{d}: recall {:.3} ({s:?})", s.recall());
    }
    let total = scores.values().fold(Score::default(), |a, s| Score {
        tp: a.tp + s.tp,
        fp: a.fp + s.fp,
        fn_: a.fn_ + s.fn_,
    });
    assert!(
        total.precision() >= 0.98,
        "overall precision {:.3}\n{}",
        total.precision(),
        table(&scores)
    );
}
