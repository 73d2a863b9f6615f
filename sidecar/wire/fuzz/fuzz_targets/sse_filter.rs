//! Arbitrary upstream SSE bytes, cut at arbitrary points, through the answer filter.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vigie_wire::api::Operation;
use vigie_wire::dlp::Pseudonyms;
use vigie_wire::dlp::response::ResponseDlp;

fuzz_target!(|data: &[u8]| {
    let Some((&head, body)) = data.split_first() else {
        return;
    };
    let op = match head % 3 {
        0 => Operation::ChatCompletions,
        1 => Operation::Completions,
        _ => Operation::Messages,
    };
    let step = usize::from(head / 3).max(1);
    let mut names = Pseudonyms::default();
    names.placeholder("FR_NIR", "185057800608491");
    let Some(filter) = ResponseDlp::new(Some(&common::DLP), &names) else {
        return;
    };
    let mut sse = filter.sse(op);
    for chunk in body.chunks(step) {
        if sse.push(chunk).is_err() {
            return;
        }
    }
    let _ = sse.finish();
});
