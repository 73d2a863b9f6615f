//! HTTPS server of the sidecar-injection webhook (decisions and patches are in the
//! `vigie-inject` crate). The API server only calls webhooks over TLS; the
//! certificate is re-read when its files change, so cert-manager renewals need no
//! restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tracing::{info, warn};
use vigie_inject::{InjectConfig, Trigger};

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: InjectConfig,
    pub metrics: crate::metrics::Metrics,
}

/// Reads an injection configuration file (JSON, see `deploy/base/inject.json`).
pub fn load_config(path: Option<&PathBuf>) -> anyhow::Result<InjectConfig> {
    let cfg = match path {
        None => InjectConfig::default(),
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?
        }
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("invalid injection configuration: {e}"))?;
    Ok(cfg)
}

/// The largest AdmissionReview read: a pod of the API server's maximum object size
/// (1.5 MiB), twice for UPDATE, with room to spare.
const MAX_REVIEW_BYTES: usize = 4 << 20;

#[derive(Debug, Clone)]
struct WebhookState {
    config: Arc<InjectConfig>,
    metrics: crate::metrics::Metrics,
}

fn router(state: WebhookState) -> Router {
    Router::new()
        .route(
            vigie_inject::PATH_NAMESPACE,
            post(|State(state), body| async move { handle(state, Trigger::Namespace, body) }),
        )
        .route(
            vigie_inject::PATH_POD,
            post(|State(state), body| async move { handle(state, Trigger::Pod, body) }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .layer(DefaultBodyLimit::max(MAX_REVIEW_BYTES))
        .with_state(state)
}

/// What an answer did, for the counter.
fn result_of(review: &serde_json::Value) -> &'static str {
    let response = &review["response"];
    if response["allowed"] == false {
        "denied"
    } else if response.get("patch").is_some() {
        "injected"
    } else if response["auditAnnotations"]["injection"]
        .as_str()
        .is_some_and(|a| a.starts_with("skipped"))
    {
        "skipped"
    } else {
        "ignored"
    }
}

fn handle(state: WebhookState, trigger: Trigger, body: Bytes) -> Response {
    match vigie_inject::review(&body, trigger, &state.config) {
        Ok(review) => {
            state.metrics.injection(result_of(&review));
            axum::Json(review).into_response()
        }
        Err(e) => {
            state.metrics.injection("malformed");
            warn!(target: "vigie::inject", error = %e, "malformed admission review");
            (
                StatusCode::BAD_REQUEST,
                axum::Json(serde_json::json!({ "error": e.to_string() })),
            )
                .into_response()
        }
    }
}

fn load_key(cert: &PathBuf, key: &PathBuf) -> anyhow::Result<CertifiedKey> {
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(cert).with_context(|| format!("opening {}", cert.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("reading certificates from {}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!("no certificate in {}", cert.display());
    }
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(key).with_context(|| format!("opening {}", key.display()))?,
    ))
    .with_context(|| format!("reading the private key from {}", key.display()))?
    .with_context(|| format!("no private key in {}", key.display()))?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(certs, key, &provider).context("certificate and key do not match")
}

#[derive(Debug)]
struct ReloadingCert {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn modified(paths: [&PathBuf; 2]) -> Option<[SystemTime; 2]> {
    let m = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    Some([m(paths[0])?, m(paths[1])?])
}

/// Serves until `shutdown`. Prints nothing on stdout (the gRPC server does).
pub async fn serve(
    settings: WebhookSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let resolver = Arc::new(ReloadingCert {
        current: ArcSwap::from_pointee(load_key(&settings.cert, &settings.key)?),
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS versions")?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(tls));

    let reload = {
        let (cert, key) = (settings.cert.clone(), settings.key.clone());
        let resolver = resolver.clone();
        tokio::spawn(async move {
            let mut seen = modified([&cert, &key]);
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                let now = modified([&cert, &key]);
                if now == seen {
                    continue;
                }
                match load_key(&cert, &key) {
                    Ok(k) => {
                        resolver.current.store(Arc::new(k));
                        seen = now;
                        info!(target: "vigie::inject", "webhook certificate reloaded");
                    }
                    // cert-manager writes the two files one after the other: retry.
                    Err(e) => {
                        warn!(target: "vigie::inject", error = %e, "webhook certificate not reloaded yet")
                    }
                }
            }
        })
    };

    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("binding {}", settings.listen))?;
    info!(
        listen = %listener.local_addr()?,
        image = %settings.config.sidecar_image,
        native = settings.config.native_sidecar,
        "injection webhook serving"
    );
    let app = router(WebhookState {
        config: Arc::new(settings.config),
        metrics: settings.metrics,
    });
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "webhook accept failed");
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let service = TowerToHyperService::new(app.clone());
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    warn!(%peer, error = %e, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), service)
                .await
            {
                warn!(%peer, error = %e, "webhook connection ended with an error");
            }
        });
    }
    reload.abort();
    Ok(())
}
