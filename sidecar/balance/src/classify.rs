//! What an upstream's answer says about the endpoint and about retrying: one place for
//! the rules the request path and the prober follow.

use std::time::Duration;

use crate::Outcome;

/// The verdict on one attempt that got an answer head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// For the endpoint's passive health.
    pub health: Outcome,
    /// Whether the time to first byte is a latency sample (fast errors must not attract
    /// traffic, so only successes are).
    pub sample_latency: bool,
    /// Nothing has reached the client yet and another endpoint may answer: 5xx, 429.
    pub retry_elsewhere: bool,
    /// The endpoint asked not to be sent anything for this long (`Retry-After` seconds
    /// on a 429).
    pub throttle: Option<Duration>,
}

/// Longest `Retry-After` honoured (a larger value would park an endpoint for hours).
pub const MAX_THROTTLE: Duration = Duration::from_secs(300);

/// 5xx says the endpoint is unwell; a 4xx (429 included) is the request's or the
/// quota's problem: no health verdict. 5xx and 429 may be retried on another endpoint.
pub fn classify(status: u16, headers: &http::HeaderMap) -> Verdict {
    let throttle = (status == 429)
        .then(|| headers.get(http::header::RETRY_AFTER))
        .flatten()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s).min(MAX_THROTTLE));
    let health = match status {
        500.. => Outcome::Failure,
        400..=499 => Outcome::Neutral,
        _ => Outcome::Success,
    };
    Verdict {
        health,
        sample_latency: health == Outcome::Success,
        retry_elsewhere: status >= 500 || status == 429,
        throttle,
    }
}

/// Attempts that got no answer head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptFailure {
    /// Nothing reached the upstream.
    Connect,
    /// No answer head within the first-byte timeout.
    FirstByteTimeout,
    /// The request may have reached the upstream and be generating.
    Broken,
}

impl AttemptFailure {
    /// Every one counts against the endpoint; only a broken exchange is never sent
    /// again (no duplicate generation).
    pub fn retry_elsewhere(self) -> bool {
        !matches!(self, AttemptFailure::Broken)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptFailure::Connect => "connect_error",
            AttemptFailure::FirstByteTimeout => "first_byte_timeout",
            AttemptFailure::Broken => "broken",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(retry_after: Option<&str>) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(v) = retry_after {
            h.insert(http::header::RETRY_AFTER, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn statuses() {
        let ok = classify(200, &headers(None));
        assert_eq!(
            (ok.health, ok.sample_latency, ok.retry_elsewhere),
            (Outcome::Success, true, false)
        );
        let bad = classify(503, &headers(Some("5")));
        assert_eq!(
            (
                bad.health,
                bad.sample_latency,
                bad.retry_elsewhere,
                bad.throttle
            ),
            (Outcome::Failure, false, true, None),
            "Retry-After is read on 429 only"
        );
        let client = classify(400, &headers(None));
        assert_eq!(
            (client.health, client.sample_latency, client.retry_elsewhere),
            (Outcome::Neutral, false, false)
        );
        let quota = classify(429, &headers(Some(" 7 ")));
        assert_eq!(
            (quota.health, quota.retry_elsewhere, quota.throttle),
            (Outcome::Neutral, true, Some(Duration::from_secs(7)))
        );
        assert_eq!(
            classify(429, &headers(Some("Wed, 21 Oct 2015 07:28:00 GMT"))).throttle,
            None
        );
        assert_eq!(
            classify(429, &headers(Some("999999"))).throttle,
            Some(MAX_THROTTLE)
        );
    }

    #[test]
    fn failures() {
        assert!(AttemptFailure::Connect.retry_elsewhere());
        assert!(AttemptFailure::FirstByteTimeout.retry_elsewhere());
        assert!(!AttemptFailure::Broken.retry_elsewhere());
    }
}
