//! `cargo run --release -p vigie-dlp --example worst_case -- KIND`: one 8 MiB text of
//! the worst shapes for the engine, in block mode; prints the time and the outcome.
//! Run under `/usr/bin/time -f %M` for the peak RSS (`cargo xtask bench dlp` does).
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use vigie_dlp::engine::DlpError;
use vigie_dlp::{Engine, Redact, builtins, transform_block};

const MIB8: usize = 8 << 20;

fn main() {
    let e = Engine::new(builtins()).unwrap();
    let kind = std::env::args().nth(1).unwrap_or_default();
    let text = match kind.as_str() {
        "digits" => "1".repeat(MIB8),
        "spaced-digits" => "1 ".repeat(MIB8 / 2),
        "zero-width" => "1\u{200b}".repeat(MIB8 / 4),
        "full-width" => "１".repeat(MIB8 / 3),
        "phones" => "06 12 34 56 78 ".repeat(MIB8 / 15),
        "private-key" => format!("-----BEGIN PRIVATE KEY-----{}", "ab+/".repeat(MIB8 / 4)),
        "token-dashes" => format!("sk-{}", "a-".repeat(MIB8 / 2)),
        // Every word a name after a civility, every clause an address.
        "civilities" => "M. Aaaa Bbbb de La Cccc ".repeat(MIB8 / 24),
        "addresses" => "12 bis rue de la Aaaa Bbbb, 75011 Paris ".repeat(MIB8 / 40),
        "capitals" => "Aaaa ".repeat(MIB8 / 5),
        // The capitals of the Latin-1 and Latin Extended sets the name scan is split by.
        "accented-capitals" => "Éaaa Øbbb Łccc ".repeat(MIB8 / 18),
        "civility-runs" => "Mme ".repeat(MIB8 / 4),
        "hyphenated" => format!("M. {}", "Aa-".repeat(MIB8 / 3)),
        _ => "x".repeat(MIB8),
    };
    let t = std::time::Instant::now();
    let outcome = match transform_block(&e, &text, &mut Redact::default()) {
        Ok(out) => format!("{} bytes out", out.len()),
        Err(DlpError::TooComplex) => "refused: too complex".to_string(),
        Err(other) => format!("error: {other}"),
    };
    println!(
        "{{\"kind\": \"{kind}\", \"bytes\": {}, \"seconds\": {:.3}, \"outcome\": \"{outcome}\"}}",
        text.len(),
        t.elapsed().as_secs_f64()
    );
}
