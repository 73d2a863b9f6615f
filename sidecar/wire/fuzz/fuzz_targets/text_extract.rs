//! Arbitrary request bodies: head parsing, and DLP over the texts of every operation.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vigie_wire::api::{Operation, request};
use vigie_wire::dlp::{Pseudonyms, response::ResponseDlp, scan_request};

fuzz_target!(|data: &[u8]| {
    let _ = request::parse_head(data);
    for op in [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Messages,
    ] {
        if let Ok(scan) = scan_request(&common::DLP, op, data, None)
            && let Some(body) = &scan.body
        {
            // A rewritten body is still JSON the head parser accepts if the original was.
            if request::parse_head(data).is_ok() {
                assert!(request::parse_head(body).is_ok());
            }
        }
        let names = Pseudonyms::default();
        if let Some(mut r) = ResponseDlp::new(Some(&common::DLP), &names) {
            let _ = r.filter_json(op, data);
        }
    }
});
