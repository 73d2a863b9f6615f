//! Server-sent events framing for events the sidecar itself emits.

use bytes::Bytes;

use super::{ApiError, Flavour};

/// An SSE event carrying an error, as each SDK expects it mid-stream: the OpenAI SDKs
/// raise on a `data:` object with an `error` key; Anthropic's on an `event: error`.
pub fn error_event(err: &ApiError) -> Bytes {
    let body = err.body();
    match err.flavour {
        Flavour::OpenAi => Bytes::from(format!("data: {body}\n\n")),
        Flavour::Anthropic => Bytes::from(format!("event: error\ndata: {body}\n\n")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_events_are_complete_frames() {
        let e = error_event(&ApiError::upstream_broken());
        let s = std::str::from_utf8(&e).unwrap();
        assert!(s.starts_with("data: {\"error\":"));
        assert!(s.ends_with("\n\n"));
        let a = error_event(&ApiError::upstream_broken().with_flavour(Flavour::Anthropic));
        assert!(
            std::str::from_utf8(&a)
                .unwrap()
                .starts_with("event: error\ndata: {\"error\":")
        );
    }
}
