//! `cargo run --release -p vigie-metering --example tap_overhead`: what metering adds to
//! one request — the request rewrite (`include_usage`) and watching a streamed answer of
//! 200 chunks with the usage chunk stripped; and a non-streamed answer. One core.
#![expect(
    clippy::unwrap_used,
    clippy::print_stdout,
    reason = "benchmark program"
)]

use std::time::Instant;

use vigie_metering::UsageTap;
use vigie_wire::api::Operation;
use vigie_wire::api::request::LlmRequest;

fn main() {
    const N: u32 = 20_000;
    let request = br#"{"model":"mistral-small","stream":true,"max_tokens":200,"messages":[{"role":"system","content":"Tu es l'assistant du bureau des titres."},{"role":"user","content":"Quels documents pour renouveler un passeport ?"}]}"#;
    let chunks: Vec<String> = (0..200)
        .map(|i| format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"m\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\" mot{i}\"}},\"finish_reason\":null}}]}}\n\n"))
        .chain(std::iter::once("data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":40,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n".to_string()))
        .collect();
    let json = br#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"Une carte d'identite et une photo."},"finish_reason":"stop"}],"usage":{"prompt_tokens":40,"completion_tokens":9,"total_tokens":49}}"#;

    let t = Instant::now();
    let mut kept = 0usize;
    for _ in 0..N {
        let mut req = LlmRequest::parse(Operation::ChatCompletions, request[..].into()).unwrap();
        let strip = req.lacks_stream_usage();
        let body = req.body_for("mistral-small", strip).unwrap();
        let mut tap = UsageTap::new(Operation::ChatCompletions, true, strip);
        for c in &chunks {
            kept += tap.observe(c.as_bytes()).map_or(0, |o| o.len());
        }
        kept += tap.finish().map_or(0, |o| o.len()) + body.len();
        assert_eq!(tap.result(|| 0).0.completion, 200);
    }
    let stream_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);

    let t = Instant::now();
    for _ in 0..N {
        let mut tap = UsageTap::new(Operation::ChatCompletions, false, false);
        tap.observe(json);
        tap.finish();
        assert_eq!(tap.result(|| 0).0.completion, 9);
    }
    let json_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(N);
    println!(
        "{{\"streamed_200_chunks_us\": {stream_us:.1}, \"per_chunk_us\": {:.3}, \"non_streamed_us\": {json_us:.2}, \"bytes\": {kept}}}",
        stream_us / 201.0
    );
}
