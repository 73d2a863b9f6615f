//! Helpers shared by the engine's integration tests.
#![expect(clippy::unwrap_used, reason = "test code")]

use vigie_dlp::{Engine, Redact, StreamScanner};

/// `text` streamed through a scanner in chunks cut at `cuts` (taken modulo the length,
/// moved back to character boundaries), redacted.
pub fn stream(e: &Engine, text: &str, cuts: &[usize]) -> String {
    let mut s = StreamScanner::new(e, 4096);
    let mut t = Redact::default();
    let mut out = String::new();
    let mut last = 0;
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
    points.sort_unstable();
    for p in points {
        let p = vigie_dlp::engine::floor_boundary(text, p);
        if p > last {
            s.push(&text[last..p], &mut t, &mut out).unwrap();
            last = p;
        }
    }
    s.push(&text[last..], &mut t, &mut out).unwrap();
    s.finish(&mut t, &mut out).unwrap();
    out
}
