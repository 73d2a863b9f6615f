//! Admin listener: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::policy::PolicyStore;
use crate::telemetry::Metrics;

#[derive(Debug)]
pub struct AdminApp {
    pub store: Arc<PolicyStore>,
    pub metrics: Metrics,
    /// With `--egress-required`: whether the kernel enforces this pod's egress.
    pub egress_enforced: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// With `--egress-required`: why the webhook flagged this pod not enforceable.
    pub not_enforceable: Option<String>,
}

fn text(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body)
        .unwrap_or_default()
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/healthz" => text(200, "text/plain", b"ok\n".to_vec()),
            // Ready once a policy is in force: before that every request would get a 503.
            "/readyz" if self
                .egress_enforced
                .as_ref()
                .is_some_and(|e| !e.load(std::sync::atomic::Ordering::Relaxed)) =>
            {
                text(503, "application/json", br#"{"ready":false,"reason":"egress enforcement not in place yet"}"#.to_vec())
            }
            "/readyz" => match self.store.current() {
                Some(s)
                    if self.not_enforceable.is_some()
                        && !s.policy.egress.as_ref().is_some_and(|e| e.allow_not_enforceable) =>
                {
                    let reason = format!(
                        "pod not enforceable ({}); a policy must set egress.allowNotEnforceable",
                        self.not_enforceable.as_deref().unwrap_or_default()
                    );
                    text(503, "application/json", serde_json::json!({"ready": false, "reason": reason}).to_string().into_bytes())
                }
                Some(s) => text(200, "application/json", serde_json::json!({"ready": true, "policy": s.policy.name, "version": s.version}).to_string().into_bytes()),
                None => text(503, "application/json", br#"{"ready":false,"reason":"no policy loaded"}"#.to_vec()),
            },
            "/metrics" => text(200, "text/plain; version=0.0.4", self.metrics.render()),
            _ => text(404, "text/plain", b"not found\n".to_vec()),
        }
    }
}
