//! `cargo run --release -p vigie-wire --example dlp_request_cost -- [N]`: what DLP costs
//! one small chat request and its answer with every built-in detector on in both
//! directions (the realistic configuration of `cargo xtask bench realistic`): CPU time
//! per call, and the resident memory of compiling the policy, before and after glibc is
//! asked to give freed pages back (ADR 0014).
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    unsafe_code,
    reason = "benchmark program; malloc_trim has no safe wrapper"
)]

use std::time::Instant;

use vigie_wire::api::Operation;
use vigie_wire::api::request::LlmRequest;
use vigie_wire::dlp::response::ResponseDlp;
use vigie_wire::dlp::{Pseudonyms, scan_request};

const REQUEST: &str = r#"{"model": "bench-model", "max_tokens": 8, "messages": [{"role": "system", "content": "Tu es l'assistant du bureau des titres de la préfecture."}, {"role": "user", "content": "Bonjour, peux-tu résumer ce document en trois points ? Merci."}]}"#;
const ANSWER: &str = r#"{"choices":[{"finish_reason":"length","index":0,"logprobs":null,"message":{"content":"Les pools GPU servent le modèle avec une","role":"assistant"}}],"created":1796608664,"id":"chatcmpl-mock-mock-65790","model":"bench-model","object":"chat.completion","usage":{"completion_tokens":8,"prompt_tokens":20,"total_tokens":28}}"#;

/// (resident, anonymous) KiB of this process.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("RssAnon:"))
}

unsafe extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

fn main() {
    let n: u32 = std::env::args()
        .nth(1)
        .map_or(100_000, |a| a.parse().unwrap());
    let before = rss();
    let dlp = vigie_dlp::policy::compile(
        &serde_json::from_str(
            r#"{"rules":[{"detector":"*","action":"DLP_ACTION_REDACT","direction":"DLP_DIRECTION_BOTH"}]}"#,
        )
        .unwrap(),
    )
    .unwrap();
    let compiled = rss();
    // SAFETY: malloc_trim only releases free heap pages.
    unsafe { malloc_trim(0) };
    let trimmed = rss();

    let t = Instant::now();
    for _ in 0..n {
        let mut r = LlmRequest::parse(
            Operation::ChatCompletions,
            REQUEST.as_bytes().to_vec().into(),
        )
        .unwrap();
        let s = scan_request(&dlp, &mut r, None).unwrap();
        assert!(s.counts.is_empty());
    }
    let request = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    let names = Pseudonyms::default();
    let t = Instant::now();
    for _ in 0..n {
        let mut f = ResponseDlp::new(Some(&dlp), &names).unwrap();
        let out = f.filter_body(ANSWER.as_bytes()).unwrap();
        assert_eq!(out.len(), ANSWER.len());
    }
    let answer = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
    println!(
        "{{\"request_us\": {request:.2}, \"answer_us\": {answer:.2}, \
         \"rss_kib\": {{\"start\": {}, \"compiled\": {}, \"trimmed\": {}}}, \
         \"anon_kib\": {{\"start\": {}, \"compiled\": {}, \"trimmed\": {}}}}}",
        before.0, compiled.0, trimmed.0, before.1, compiled.1, trimmed.1
    );
}
