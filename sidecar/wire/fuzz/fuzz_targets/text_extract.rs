//! Arbitrary request bodies: head parsing, and DLP over the texts of every operation.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use vigie_wire::api::{Operation, request};
use vigie_wire::dlp::{Pseudonyms, response::ResponseDlp, scan_request};

fuzz_target!(|data: &[u8]| {
    for op in [
        Operation::ChatCompletions,
        Operation::Completions,
        Operation::Embeddings,
        Operation::Messages,
    ] {
        if let Ok(mut req) = request::LlmRequest::parse(op, bytes::Bytes::copy_from_slice(data))
            && scan_request(&common::DLP, &mut req, None).is_ok()
        {
            // A rewritten request still serialises to a body the parser accepts.
            let model = req.model().to_string();
            let body = req.body_for(&model, false).expect("serialises");
            assert!(request::parse_head(&body).is_ok());
        }
        let names = Pseudonyms::default();
        if let Some(mut r) = ResponseDlp::new(Some(&common::DLP), &names) {
            let _ = r.filter_body(data);
        }
    }
});
