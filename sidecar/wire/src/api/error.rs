//! Errors in the client's own protocol: OpenAI's `{"error": {...}}` or Anthropic's
//! `{"type": "error", "error": {...}}`. Messages never carry prompt content or secrets.

use serde_json::json;

use super::Flavour;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    /// OpenAI `type` (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    pub code: Option<&'static str>,
    pub param: Option<&'static str>,
    pub retry_after: Option<u64>,
    pub flavour: Flavour,
}

impl ApiError {
    fn new(
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            code,
            param: None,
            retry_after: None,
            flavour: Flavour::OpenAi,
        }
    }

    pub fn with_flavour(mut self, flavour: Flavour) -> Self {
        self.flavour = flavour;
        self
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    /// The request came back to a sidecar it already went through.
    pub fn loop_detected() -> Self {
        Self::new(
            508,
            "invalid_request_error",
            Some("loop_detected"),
            "The request came back to the sidecar it went through (a redirect loop); it was not sent again.",
        )
    }

    pub fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", None, message)
    }

    /// An object names a key twice (or in two cases): parsers disagree on which copy
    /// wins, so the body is refused rather than scanned one way and read another.
    pub fn ambiguous_key(message: impl Into<String>) -> Self {
        Self::new(400, "invalid_request_error", Some("ambiguous_key"), message)
    }

    pub fn unknown_url(method: &http::Method, path: &str) -> Self {
        // Method and path are the client's own: capped so an error never echoes a large
        // payload.
        let (method, shown) = (capped(method.as_str()), capped(path));
        Self::new(
            404,
            "invalid_request_error",
            Some("unknown_url"),
            format!("Unrecognized request URL ({method} {shown})."),
        )
    }

    pub fn method_not_allowed(method: &http::Method, path: &str, expected: &http::Method) -> Self {
        let (method, shown) = (capped(method.as_str()), capped(path));
        Self::new(
            405,
            "invalid_request_error",
            Some("method_not_allowed"),
            format!("{method} is not allowed on {shown}; use {expected}."),
        )
    }

    pub fn model_not_found(model: &str) -> Self {
        let shown: String = model.chars().take(128).collect();
        Self::new(
            404,
            "invalid_request_error",
            Some("model_not_found"),
            format!("The model `{shown}` does not exist or is not allowed by the policy."),
        )
        .with_param("model")
    }

    /// No pool cleared for the request's sensitivity level serves the model: it is
    /// refused rather than sent to a less trusted pool.
    pub fn no_cleared_pool(model: &str, level: &str) -> Self {
        let shown: String = model.chars().take(128).collect();
        Self::new(
            403,
            "permission_error",
            Some("no_cleared_pool"),
            format!(
                "No pool cleared for sensitivity level `{level}` serves the model `{shown}`; the request was not sent."
            ),
        )
        .with_param("model")
    }

    /// The app declared a sensitivity level the sidecar does not know.
    pub fn bad_sensitivity(header: &str) -> Self {
        Self::invalid_request(format!(
            "The `{header}` header must be one of public, internal, personal, restricted."
        ))
    }

    /// The end-user token could not be verified (`reason` names the check, never the
    /// token).
    pub fn invalid_user_token(reason: &str) -> Self {
        Self::new(
            401,
            "authentication_error",
            Some("invalid_user_token"),
            format!("The end-user token was refused: {reason}."),
        )
    }

    /// A hard budget (policy section `budgets`) is spent until its window ends.
    pub fn budget_exceeded(budget: &str, retry_after_s: u64) -> Self {
        let mut e = Self::new(
            429,
            "rate_limit_error",
            Some("budget_exceeded"),
            format!(
                "Budget `{budget}` is exhausted for the current window; retry in {retry_after_s} s."
            ),
        );
        e.retry_after = Some(retry_after_s);
        e
    }

    /// Fail-closed budgets and no allowance from the control plane.
    pub fn quota_unavailable(budget: &str) -> Self {
        Self::new(
            503,
            "server_error",
            Some("quota_unavailable"),
            format!(
                "Allowance for budget `{budget}` cannot be obtained right now; the request was not forwarded."
            ),
        )
    }

    /// A request body in a content coding the sidecar cannot decode (and so could not
    /// inspect): refused, never forwarded as it came.
    pub fn unsupported_encoding(coding: &str) -> Self {
        Self::new(
            415,
            "invalid_request_error",
            Some("unsupported_content_encoding"),
            format!(
                "Content-Encoding `{coding}` is not supported; send the body uncompressed or as gzip, deflate, br or zstd."
            ),
        )
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!("Request body exceeds the limit of {limit} bytes."),
        )
    }

    /// The sidecar holds as many request bodies as its memory budget allows.
    pub fn bodies_in_flight() -> Self {
        let mut e = Self::new(
            503,
            "server_error",
            Some("overloaded"),
            "The sidecar is holding as many request bodies as it may; retry in a moment.",
        );
        e.retry_after = Some(1);
        e
    }

    /// The body arrived slower than the sidecar waits for.
    pub fn body_too_slow() -> Self {
        Self::new(
            408,
            "invalid_request_error",
            Some("request_timeout"),
            "The request body was not received in time.",
        )
    }

    pub fn no_policy() -> Self {
        Self::new(
            503,
            "server_error",
            Some("policy_unavailable"),
            "The sidecar has no policy loaded yet.",
        )
    }

    pub fn no_endpoint(model: &str) -> Self {
        Self::new(
            503,
            "server_error",
            Some("no_healthy_upstream"),
            format!("No endpoint is available for model `{model}`."),
        )
    }

    pub fn upstream_unreachable(model: &str) -> Self {
        Self::new(
            502,
            "server_error",
            Some("upstream_unreachable"),
            format!("The upstream serving `{model}` could not be reached."),
        )
    }

    pub fn upstream_timeout(model: &str) -> Self {
        Self::new(
            504,
            "server_error",
            Some("upstream_timeout"),
            format!("The upstream serving `{model}` did not answer in time."),
        )
    }

    pub fn upstream_broken() -> Self {
        Self::new(
            502,
            "server_error",
            Some("upstream_stream_error"),
            "The upstream connection failed before the response was complete.",
        )
    }

    /// The request carries data the policy forbids sending. Names detector types, never
    /// the values.
    pub fn dlp_blocked_request<'a>(detectors: impl IntoIterator<Item = &'a String>) -> Self {
        let names: Vec<&str> = detectors.into_iter().map(String::as_str).collect();
        Self::new(
            400,
            "invalid_request_error",
            Some("dlp_blocked"),
            format!(
                "The request was blocked by the data-loss policy: it contains {}.",
                names.join(", ")
            ),
        )
    }

    /// The answer contained data the policy forbids returning; it was cut.
    pub fn dlp_blocked_response<'a>(detectors: impl IntoIterator<Item = &'a String>) -> Self {
        let names: Vec<&str> = detectors.into_iter().map(String::as_str).collect();
        Self::new(
            451,
            "server_error",
            Some("dlp_blocked_response"),
            format!(
                "The answer was stopped by the data-loss policy: it contained {}.",
                names.join(", ")
            ),
        )
    }

    /// The upstream answered with a redirect: relaying it would let the app's SDK
    /// send its original request elsewhere.
    pub fn upstream_redirect() -> Self {
        Self::new(
            502,
            "server_error",
            Some("upstream_redirect"),
            "The upstream answered with a redirect, which the sidecar does not relay.",
        )
    }

    /// The upstream compressed its answer although asked not to, in a way DLP cannot
    /// read (a compressed stream, an unknown coding): not passed through unchecked.
    pub fn upstream_encoding() -> Self {
        Self::new(
            502,
            "server_error",
            Some("upstream_encoding"),
            "The upstream's answer is compressed in a way the data-loss check cannot read; it was not passed on.",
        )
    }

    /// A complete answer too large to check is not passed through unchecked.
    pub fn dlp_answer_too_large(limit: usize) -> Self {
        Self::new(
            502,
            "server_error",
            Some("dlp_answer_too_large"),
            format!(
                "The answer exceeds {limit} bytes and could not be checked by the data-loss policy."
            ),
        )
    }

    /// Data DLP flags sits in a structural field (model, role, type…), which is never
    /// rewritten: the request is refused instead.
    pub fn dlp_structural_field() -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("dlp_blocked"),
            "The request was blocked by the data-loss policy: a structural field (model, role, type…) carries data it flags.",
        )
    }

    /// More JSON items than DLP inspects in one body.
    pub fn too_many_items(max: usize) -> Self {
        Self::new(
            413,
            "invalid_request_error",
            Some("request_too_large"),
            format!(
                "The request has more than {max} JSON values and keys, more than the data-loss check inspects."
            ),
        )
    }

    /// A prompt given as token ids: DLP cannot read it, so it is not forwarded.
    pub fn token_prompt(param: &'static str) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("token_prompt_not_inspectable"),
            format!(
                "`{param}` is given as token ids, which the data-loss policy cannot inspect; send text instead."
            ),
        )
        .with_param(param)
    }

    /// The body is shaped so that inspecting it would take unbounded work (see
    /// `vigie_dlp::engine::work_budget`); refused rather than forwarded unchecked.
    pub fn dlp_too_complex() -> Self {
        Self::new(
            422,
            "invalid_request_error",
            Some("dlp_too_complex"),
            "The request is shaped so that the data-loss check cannot complete in bounded time; it was not forwarded.",
        )
    }

    /// DLP could not run; the request is not forwarded unchecked.
    pub fn dlp_unavailable() -> Self {
        Self::new(
            503,
            "server_error",
            Some("dlp_unavailable"),
            "The data-loss check could not run; the request was not forwarded.",
        )
    }

    /// An external detector whose policy fails closed could not check the request.
    pub fn dlp_detector_unavailable(detector: &str) -> Self {
        Self::new(
            503,
            "server_error",
            Some("dlp_detector_unavailable"),
            format!(
                "The external data-loss detector {detector:?} could not check the request; it was not forwarded."
            ),
        )
    }

    /// The policy reads complete answers with an external detector, which a stream
    /// would bypass.
    pub fn dlp_stream_not_allowed(detector: &str) -> Self {
        Self::new(
            400,
            "invalid_request_error",
            Some("dlp_stream_not_allowed"),
            format!(
                "The data-loss policy reads answers with the external detector {detector:?}, which needs the whole answer: ask without \"stream\": true."
            ),
        )
    }

    /// The JSON body in the error's flavour.
    pub fn body(&self) -> serde_json::Value {
        match self.flavour {
            Flavour::OpenAi => json!({"error": {
                "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
            }}),
            Flavour::Anthropic => json!({"type": "error", "error": {
                "type": anthropic_type(self.status), "message": self.message,
            }}),
        }
    }
}

/// At most 128 characters of a client's string, for an error message.
fn capped(s: &str) -> String {
    s.chars().take(128).collect()
}

/// Anthropic's error types by status.
fn anthropic_type(status: u16) -> &'static str {
    match status {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_shape() {
        let b = ApiError::model_not_found("gpt-x").body();
        assert_eq!(b["error"]["code"], "model_not_found");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["param"], "model");
        assert!(b["error"]["message"].as_str().unwrap().contains("gpt-x"));
    }

    #[test]
    fn anthropic_shape() {
        let b = ApiError::body_too_large(10)
            .with_flavour(Flavour::Anthropic)
            .body();
        assert_eq!(b["type"], "error");
        assert_eq!(b["error"]["type"], "request_too_large");
    }

    #[test]
    fn echoed_client_strings_are_capped() {
        let long = "x".repeat(10_000);
        assert!(ApiError::model_not_found(&long).message.len() < 300);
        assert!(
            ApiError::unknown_url(&http::Method::GET, &long)
                .message
                .len()
                < 300
        );
    }
}
