//! Kubernetes projected service-account tokens as workload credentials.
//!
//! The webhook mounts a token with audience `vigie-control-plane` into every sidecar.
//! It is a JWT signed by the cluster's service-account issuer; its public keys are
//! the issuer's JWKS (`/openid/v1/jwks` on the API server, or a file). A valid token
//! makes the caller a workload of the namespace and service account it names.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use http_body_util::{BodyExt as _, Empty};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use tracing::{info, warn};

use crate::auth::{Principal, Role};

/// Where the issuer's keys come from.
#[derive(Debug, Clone)]
pub enum JwksSource {
    File(PathBuf),
    /// Fetched with the control plane's own service-account token, trusting the
    /// cluster CA (both from the standard in-pod paths).
    Url {
        url: String,
        ca: PathBuf,
        token: PathBuf,
    },
}

#[derive(Debug, Clone)]
pub struct K8sTokenSettings {
    pub audience: String,
    /// When set, the `iss` claim must equal it.
    pub issuer: Option<String>,
    pub jwks: JwksSource,
    /// `namespace/serviceaccount` of the egress agents: their tokens get the agent role.
    pub agent_service_account: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: NamedRef,
    /// Present in projected tokens bound to a pod (what the webhook mounts).
    pod: Option<NamedRef>,
    /// The pod's node, in pod-bound tokens of Kubernetes 1.30+.
    node: Option<NamedRef>,
}

#[derive(Debug, Deserialize)]
struct NamedRef {
    name: String,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signed with an unknown key")]
    UnknownKey,
    #[error("token rejected: {0}")]
    Invalid(String),
}

#[derive(Debug)]
pub struct K8sTokens {
    settings: K8sTokenSettings,
    keys: ArcSwap<JwkSet>,
}

impl K8sTokens {
    /// Loads the keys once (failing at start if they cannot be read) and refreshes
    /// them every five minutes: the issuer rotates keys with overlap.
    pub async fn start(settings: K8sTokenSettings) -> anyhow::Result<Arc<Self>> {
        let keys = load(&settings.jwks).await?;
        info!(keys = keys.keys.len(), audience = %settings.audience, "Kubernetes service-account tokens accepted");
        let this = Arc::new(Self {
            settings,
            keys: ArcSwap::from_pointee(keys),
        });
        let weak = Arc::downgrade(&this);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(300)).await;
                let Some(this) = weak.upgrade() else { break };
                match load(&this.settings.jwks).await {
                    Ok(keys) => this.keys.store(Arc::new(keys)),
                    Err(e) => {
                        warn!(error = %e, "refreshing the service-account issuer keys failed; keeping the previous ones")
                    }
                }
            }
        });
        Ok(this)
    }

    /// For tests: fixed keys, no refresh.
    pub fn with_keys(settings: K8sTokenSettings, keys: JwkSet) -> Self {
        Self {
            settings,
            keys: ArcSwap::from_pointee(keys),
        }
    }

    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = decode_header(token).map_err(|_| TokenError::Malformed)?;
        let keys = self.keys.load();
        let jwk = match &header.kid {
            Some(kid) => keys.find(kid),
            None if keys.keys.len() == 1 => keys.keys.first(),
            None => None,
        }
        .ok_or(TokenError::UnknownKey)?;
        let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::UnknownKey)?;
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[&self.settings.audience]);
        validation.leeway = 30;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "aud", "sub"]);
        if let Some(iss) = &self.settings.issuer {
            validation.set_issuer(&[iss]);
        }
        let data = decode::<Claims>(token, &key, &validation)
            .map_err(|e| TokenError::Invalid(e.kind_description()))?;
        let claims = data.claims;
        let who = format!(
            "{}/{}",
            claims.kubernetes.namespace, claims.kubernetes.serviceaccount.name
        );
        let role = if self.settings.agent_service_account.as_deref() == Some(who.as_str()) {
            Role::Agent
        } else {
            Role::Workload
        };
        Ok(Principal {
            name: claims.sub,
            role,
            namespace: claims.kubernetes.namespace,
            service_account: claims.kubernetes.serviceaccount.name,
            pod: claims.kubernetes.pod.map(|p| p.name).unwrap_or_default(),
            node: claims.kubernetes.node.map(|n| n.name).unwrap_or_default(),
        })
    }
}

trait KindDescription {
    fn kind_description(&self) -> String;
}

impl KindDescription for jsonwebtoken::errors::Error {
    /// The reason without any part of the token.
    fn kind_description(&self) -> String {
        use jsonwebtoken::errors::ErrorKind as K;
        match self.kind() {
            K::ExpiredSignature => "expired".into(),
            K::ImmatureSignature => "not yet valid".into(),
            K::InvalidAudience => "wrong audience".into(),
            K::InvalidIssuer => "wrong issuer".into(),
            K::InvalidSignature => "bad signature".into(),
            K::InvalidAlgorithm => "algorithm does not match the key".into(),
            K::MissingRequiredClaim(c) => format!("missing claim {c}"),
            _ => "unreadable claims".into(),
        }
    }
}

async fn load(source: &JwksSource) -> anyhow::Result<JwkSet> {
    let text = match source {
        JwksSource::File(path) => tokio::fs::read(path)
            .await
            .with_context(|| format!("reading {}", path.display()))?,
        JwksSource::Url { url, ca, token } => fetch(url, ca, token).await?,
    };
    serde_json::from_slice(&text).context("the issuer keys are not a JWKS document")
}

/// One GET over HTTPS, trusting only `ca`.
async fn fetch(url: &str, ca: &PathBuf, token: &PathBuf) -> anyhow::Result<Vec<u8>> {
    let uri: http::Uri = url.parse().context("JWKS URL")?;
    let host = uri.host().context("JWKS URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(443);
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots
            .add(cert.context("cluster CA")?)
            .context("cluster CA")?;
    }
    let bearer =
        std::fs::read_to_string(token).with_context(|| format!("reading {}", token.display()))?;
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let name = rustls_pki_types::ServerName::try_from(host.clone())?;
    let stream = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
        .await
        .context("TLS handshake timed out")??;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = http::Request::get(uri.path())
        .header("host", host)
        .header("authorization", format!("Bearer {}", bearer.trim()))
        .header("accept", "application/json")
        .body(Empty::<bytes::Bytes>::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .context("JWKS request timed out")??;
    if !response.status().is_success() {
        anyhow::bail!("GET {url}: {}", response.status());
    }
    Ok(response.into_body().collect().await?.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use serde_json::json;

    const SIGNER: &str = include_str!("../testdata/sa-signer.pem");
    const FORGER: &str = include_str!("../testdata/forger.pem");
    const JWKS: &str = include_str!("../testdata/sa-jwks.json");

    fn verifier(issuer: Option<&str>) -> K8sTokens {
        K8sTokens::with_keys(
            K8sTokenSettings {
                agent_service_account: None,
                audience: "vigie-control-plane".into(),
                issuer: issuer.map(String::from),
                jwks: JwksSource::File("unused".into()),
            },
            serde_json::from_str(JWKS).unwrap(),
        )
    }

    fn now() -> i64 {
        crate::store::now_ms() / 1000
    }

    fn token(key: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = kid.map(String::from);
        encode(
            &header,
            &claims,
            &EncodingKey::from_rsa_pem(key.as_bytes()).unwrap(),
        )
        .unwrap()
    }

    /// The claims the kubelet's projected tokens carry.
    fn claims(aud: &str, exp: i64) -> serde_json::Value {
        json!({
            "aud": [aud],
            "exp": exp,
            "iat": now() - 10,
            "nbf": now() - 10,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": "system:serviceaccount:shop:chat",
            "kubernetes.io": {
                "namespace": "shop",
                "pod": {"name": "chat-7d9f8b6c5-x2x4q", "uid": "3c1e"},
                "serviceaccount": {"name": "chat", "uid": "9f0a"}
            }
        })
    }

    #[test]
    fn a_projected_token_is_a_workload_of_its_namespace_and_service_account() {
        let t = token(
            SIGNER,
            Some("test-issuer-key"),
            claims("vigie-control-plane", now() + 3600),
        );
        let p = verifier(Some("https://kubernetes.default.svc.cluster.local"))
            .verify(&t)
            .unwrap();
        assert_eq!(p.role, Role::Workload);
        assert_eq!(p.namespace, "shop");
        assert_eq!(p.service_account, "chat");
        assert_eq!(p.name, "system:serviceaccount:shop:chat");
    }

    #[test]
    fn forged_expired_and_misdirected_tokens_are_refused_without_echo() {
        let v = verifier(Some("https://kubernetes.default.svc.cluster.local"));
        let good = claims("vigie-control-plane", now() + 3600);
        let cases = [
            (
                token(FORGER, Some("test-issuer-key"), good.clone()),
                "bad signature",
            ),
            (
                token(SIGNER, Some("other-key"), good.clone()),
                "unknown key",
            ),
            (
                token(
                    SIGNER,
                    Some("test-issuer-key"),
                    claims("vigie-control-plane", now() - 120),
                ),
                "expired",
            ),
            (
                token(
                    SIGNER,
                    Some("test-issuer-key"),
                    claims("https://kubernetes.default.svc", now() + 3600),
                ),
                "wrong audience",
            ),
            ("a.b.c".to_string(), "malformed"),
        ];
        for (t, expected) in cases {
            let err = v.verify(&t).unwrap_err().to_string();
            assert!(err.contains(expected), "{expected}: {err}");
            assert!(!err.contains(&t[..20.min(t.len())]), "token echoed: {err}");
        }
        let mut other_issuer = good;
        other_issuer["iss"] = json!("https://evil.example");
        let err = v
            .verify(&token(SIGNER, Some("test-issuer-key"), other_issuer))
            .unwrap_err();
        assert!(err.to_string().contains("wrong issuer"), "{err}");
    }
}
