//! Connecting to the control plane, for its clients (sidecars, egress agents): the
//! channel (TLS from a CA file, optional client certificate for mTLS, keep-alives)
//! and the bearer token, re-read at every connection because projected tokens rotate.

use std::path::Path;
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("control plane: {}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    #[error("the control plane closed the stream")]
    Closed,
}

fn read(p: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(p).map_err(|e| ClientError::Config(format!("{}: {e}", p.display())))
}

/// A channel to `url` (`http://` or `https://`; https needs `ca`).
pub async fn channel(
    url: &str,
    ca: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<Channel, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|e| ClientError::Config(format!("control plane URL: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    if url.starts_with("https://") {
        let ca = ca.ok_or_else(|| {
            ClientError::Config("an https control plane needs --control-plane-ca".into())
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        if let Some((cert, key)) = client_cert {
            tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    Ok(endpoint.connect().await?)
}

/// Delay before reconnection attempt `n` (0-based): exponential from 250 ms, capped,
/// with full jitter so a control-plane restart is not met by every client at once.
pub fn backoff(n: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1u32 << n.min(16));
    let ceiling = base.min(max);
    ceiling.mul_f64(0.5 + fastrand::f64() * 0.5)
}

/// The token in `path` (trimmed), or none.
pub fn read_token(path: Option<&Path>) -> Result<String, ClientError> {
    Ok(match path {
        Some(p) => std::fs::read_to_string(p)
            .map_err(|e| ClientError::Config(format!("token file {}: {e}", p.display())))?
            .trim()
            .to_string(),
        None => String::new(),
    })
}

/// Adds `authorization: Bearer <token>` (nothing for an empty token).
pub fn authorize<T>(request: &mut tonic::Request<T>, token: &str) -> Result<(), ClientError> {
    if !token.is_empty() {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Config("token has invalid characters".into()))?;
        request.metadata_mut().insert("authorization", value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let max = Duration::from_secs(30);
        for _ in 0..100 {
            let d0 = backoff(0, max);
            assert!(d0 >= Duration::from_millis(125) && d0 <= Duration::from_millis(250));
            let d20 = backoff(20, max);
            assert!(d20 >= Duration::from_secs(15) && d20 <= max);
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| backoff(5, max)).collect();
        assert!(spread.len() > 10, "jittered");
    }
}
