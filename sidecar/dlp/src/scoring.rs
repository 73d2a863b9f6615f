//! Precision and recall per detector against a labelled corpus.

use std::collections::BTreeMap;

use crate::corpus::Sample;
use crate::engine::{DlpError, Engine};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Score {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Score {
    pub fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fp) as f64
        }
    }
    pub fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 {
            1.0
        } else {
            self.tp as f64 / (self.tp + self.fn_) as f64
        }
    }
}

/// A finding counts when it overlaps a label of the same detector.
pub fn score(engine: &Engine, samples: &[Sample]) -> Result<BTreeMap<String, Score>, DlpError> {
    let mut scores: BTreeMap<String, Score> = BTreeMap::new();
    for s in samples {
        let found: Vec<(String, usize, usize)> = engine
            .find(&s.text, "")?
            .into_iter()
            .map(|f| (engine.detectors[f.detector].name.clone(), f.start, f.end))
            .collect();
        let overlaps = |a: &(String, usize, usize), b: &(String, usize, usize)| {
            a.0 == b.0 && a.1 < b.2 && b.1 < a.2
        };
        for f in &found {
            let e = scores.entry(f.0.clone()).or_default();
            if s.labels.iter().any(|l| overlaps(f, l)) {
                e.tp += 1;
            } else {
                e.fp += 1;
            }
        }
        for l in &s.labels {
            if !found.iter().any(|f| overlaps(f, l)) {
                scores.entry(l.0.clone()).or_default().fn_ += 1;
            }
        }
    }
    Ok(scores)
}

/// Markdown table of scores.
pub fn table(scores: &BTreeMap<String, Score>) -> String {
    let mut out = String::from(
        "| detector | TP | FP | FN | precision | recall |\n|---|---|---|---|---|---|\n",
    );
    let mut total = Score::default();
    for (name, s) in scores {
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {:.3} | {:.3} |\n",
            s.tp,
            s.fp,
            s.fn_,
            s.precision(),
            s.recall()
        ));
        total.tp += s.tp;
        total.fp += s.fp;
        total.fn_ += s.fn_;
    }
    out.push_str(&format!(
        "| **all** | {} | {} | {} | {:.3} | {:.3} |\n",
        total.tp,
        total.fp,
        total.fn_,
        total.precision(),
        total.recall()
    ));
    out
}
