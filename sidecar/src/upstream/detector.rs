//! Calls to external detectors (policy `dlp.externalDetectors`): one HTTP/1.1 POST
//! per request and detector, Presidio analyzer's shape, the whole call bounded by the
//! detector's timeout and its answer by [`MAX_ANSWER_BYTES`]. Errors name what went
//! wrong, never the text sent or received.

use http_body_util::{BodyExt, Full, Limited};
use vigie_dlp::external::{
    AnswerError, ExternalDetector, Found, MAX_ANSWER_BYTES, parse_answer, request_body,
};

/// Why a detector's findings could not be had.
#[derive(Debug, thiserror::Error)]
pub enum DetectorError {
    #[error("no answer within {0} ms")]
    Timeout(u128),
    #[error("unreachable: {0}")]
    Unreachable(std::io::Error),
    #[error("HTTP exchange failed: {0}")]
    Http(#[from] hyper::Error),
    #[error("request could not be built: {0}")]
    Build(#[from] http::Error),
    #[error("answered with status {0}")]
    Status(http::StatusCode),
    #[error("answer unreadable: {0}")]
    Unreadable(String),
    #[error("texts larger than the detector's {0} bytes")]
    TooLarge(usize),
}

impl DetectorError {
    /// The metric label of this failure.
    pub fn outcome(&self) -> &'static str {
        match self {
            DetectorError::Timeout(_) => "timeout",
            DetectorError::Unreachable(_) | DetectorError::Http(_) | DetectorError::Build(_) => {
                "unreachable"
            }
            DetectorError::Status(_) => "status",
            DetectorError::Unreadable(_) => "unreadable",
            DetectorError::TooLarge(_) => "too_large",
        }
    }
}

/// Asks `d` for its findings in `text`.
pub async fn analyze(d: &ExternalDetector, text: &str) -> Result<Vec<Found>, DetectorError> {
    if text.len() > d.max_bytes {
        return Err(DetectorError::TooLarge(d.max_bytes));
    }
    tokio::time::timeout(d.timeout, exchange(d, text))
        .await
        .map_err(|_| DetectorError::Timeout(d.timeout.as_millis()))?
}

async fn exchange(d: &ExternalDetector, text: &str) -> Result<Vec<Found>, DetectorError> {
    let host = d.url.host_str().unwrap_or_default();
    let port = d.url.port_or_known_default().unwrap_or(80);
    let stream = match d.url.host() {
        // `host_str` keeps an IPv6 literal's brackets, which no resolver reads.
        Some(url::Host::Ipv6(a)) => tokio::net::TcpStream::connect((a, port)).await,
        Some(url::Host::Ipv4(a)) => tokio::net::TcpStream::connect((a, port)).await,
        _ => tokio::net::TcpStream::connect((host, port)).await,
    }
    .map_err(DetectorError::Unreachable)?;
    // Requests are small and few: one connection per call, closed after it.
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let authority = match d.url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    };
    let path = match d.url.query() {
        Some(q) => format!("{}?{q}", d.url.path()),
        None => d.url.path().to_string(),
    };
    let req = http::Request::post(path)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::CONNECTION, "close")
        .body(Full::new(bytes::Bytes::from(request_body(
            text,
            &d.language,
        ))))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(DetectorError::Status(status));
    }
    let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| {
            DetectorError::Unreadable(
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    format!("more than {MAX_ANSWER_BYTES} bytes")
                } else {
                    "the answer's body broke off".to_string()
                },
            )
        })?
        .to_bytes();
    parse_answer(&body).map_err(|e| {
        DetectorError::Unreadable(match e {
            // serde's messages quote the values they met: only where and what kind.
            AnswerError::Shape(e) => format!(
                "not a list of findings ({:?} error at line {}, column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
            other => other.to_string(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn detector(url: &str) -> ExternalDetector {
        let dlp = vigie_dlp::policy::compile(
            &serde_json::from_str(&format!(
                r#"{{"externalDetectors":[{{"name":"n","url":"{url}","entities":[{{"type":"PERSON","detector":"PERSON"}}]}}]}}"#
            ))
            .unwrap(),
        )
        .unwrap();
        dlp.external.into_iter().next().unwrap()
    }

    #[tokio::test]
    async fn an_ipv6_literal_is_connected_to() {
        // `host_str` keeps the brackets of `[::1]`, which no resolver reads: the
        // address itself must be used.
        let listener = tokio::net::TcpListener::bind("[::1]:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            let body = r#"[{"entity_type":"PERSON","start":0,"end":6,"score":0.9}]"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(answer.as_bytes()).await.unwrap();
        });
        let found = analyze(&detector(&format!("http://[::1]:{port}/analyze")), "Sophie")
            .await
            .unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].entity_type, "PERSON");
    }
}
