//! What the webhook injects. Read at start from a JSON file (the `vigie-inject`
//! ConfigMap in `deploy/base`), every field optional, unknown fields refused.

use serde::{Deserialize, Serialize};

use crate::quantity;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct InjectConfig {
    /// Sidecar image, pinned by tag or digest.
    pub sidecar_image: String,
    pub image_pull_policy: String,
    /// Where the proxy listens inside the pod (loopback only: only the pod's own
    /// containers reach it).
    pub proxy_port: u16,
    /// Health, readiness and metrics; on all addresses so the kubelet's probes and
    /// Prometheus reach it.
    pub admin_port: u16,
    /// The control plane as seen from application namespaces.
    pub control_plane_url: String,
    /// The node's egress agent (a node-local Service), which the sidecar asks where
    /// redirected connections were going (`egress.redirect`); empty: not asked.
    pub egress_agent_url: String,
    /// The sidecar is not ready (and holds the app containers back) until the node's
    /// egress agent enforces the pod. Turn off only where no egress agent runs.
    pub egress_required: bool,
    /// OTLP collector for the sidecars' traces and security events
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT`); empty: not exported (a policy's `telemetry`
    /// section may still set one). Collector credentials go in the telemetry Secret as
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub otlp_endpoint: String,
    /// CA bundle the sidecar trusts for the control plane, as a path mounted from the
    /// `vigie-control-plane-ca` ConfigMap; empty for plaintext.
    pub control_plane_ca_configmap: String,
    /// Audience of the projected service-account token the sidecar presents.
    pub token_audience: String,
    pub token_expiration_seconds: i64,
    /// Secret holding provider credentials, for the sidecar only: its keys become
    /// `VIGIE_CREDENTIAL_<key>` variables and files under `/etc/vigie/credentials`,
    /// which is all a policy's `credentials` can name. Optional, so pods start in
    /// namespaces that use only on-prem pools.
    pub credentials_secret: String,
    /// Secret of the sidecar's own environment that policies cannot reach (the
    /// collector's `OTEL_EXPORTER_OTLP_HEADERS`); optional.
    pub telemetry_secret: String,
    /// Native sidecar (init container with `restartPolicy: Always`, Kubernetes ≥ 1.29).
    /// `false` injects a classic container for older clusters (see docs/kubernetes.md).
    pub native_sidecar: bool,
    pub log_level: String,
    pub resources: SidecarResources,
    /// Never injected, whatever their labels.
    pub skip_namespaces: Vec<String>,
    /// The sidecar's uid (and gid). No app container may run as it (the webhook
    /// refuses the pod): to the kernel it would be the sidecar. Not 65532, the
    /// `nonroot` user of distroless and many other app images.
    pub run_as_user: i64,
}

/// The sidecar's default uid: no well-known image user.
pub const DEFAULT_SIDECAR_UID: i64 = 47880;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct SidecarResources {
    pub cpu_request: String,
    pub memory_request: String,
    /// Empty: no CPU limit (throttling a proxy adds latency to every request).
    pub cpu_limit: String,
    pub memory_limit: String,
}

impl Default for SidecarResources {
    fn default() -> Self {
        Self {
            cpu_request: "100m".into(),
            memory_request: "64Mi".into(),
            cpu_limit: String::new(),
            memory_limit: "256Mi".into(),
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        Self {
            sidecar_image: format!("ghcr.io/vigie-dev/vigie-sidecar:{}", crate::VERSION),
            image_pull_policy: "IfNotPresent".into(),
            proxy_port: 15080,
            admin_port: 15090,
            control_plane_url: "http://vigie-control-plane.vigie-system.svc:50051".into(),
            egress_agent_url: "http://vigie-egress-agent.vigie-system.svc:15095".into(),
            egress_required: true,
            otlp_endpoint: String::new(),
            control_plane_ca_configmap: String::new(),
            token_audience: "vigie-control-plane".into(),
            token_expiration_seconds: 3600,
            credentials_secret: "vigie-provider-credentials".into(),
            telemetry_secret: "vigie-telemetry-credentials".into(),
            native_sidecar: true,
            log_level: "info".into(),
            resources: SidecarResources::default(),
            skip_namespaces: [
                "kube-system",
                "kube-public",
                "kube-node-lease",
                "vigie-system",
            ]
            .map(String::from)
            .to_vec(),
            run_as_user: DEFAULT_SIDECAR_UID,
        }
    }
}

/// Every problem of an injection configuration, each naming its field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct ConfigErrors(pub Vec<String>);

pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

impl InjectConfig {
    /// Every problem, each naming its field, so a bad ConfigMap fails at start.
    pub fn validate(&self) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        if self.sidecar_image.trim().is_empty() {
            errors.push("sidecarImage: must not be empty".to_string());
        }
        if !["Always", "IfNotPresent", "Never"].contains(&self.image_pull_policy.as_str()) {
            errors.push(format!(
                "imagePullPolicy: {:?} is not Always, IfNotPresent or Never",
                self.image_pull_policy
            ));
        }
        if self.proxy_port == 0 || self.admin_port == 0 || self.proxy_port == self.admin_port {
            errors.push("proxyPort, adminPort: must be two different non-zero ports".into());
        }
        if !self.control_plane_url.starts_with("http://")
            && !self.control_plane_url.starts_with("https://")
        {
            errors.push("controlPlaneUrl: must start with http:// or https://".into());
        }
        if !self.egress_agent_url.is_empty() && !self.egress_agent_url.starts_with("http://") {
            errors.push(
                "egressAgentUrl: must start with http:// (a node-local agent), or be empty".into(),
            );
        }
        if !self.otlp_endpoint.is_empty()
            && !self.otlp_endpoint.starts_with("http://")
            && !self.otlp_endpoint.starts_with("https://")
        {
            errors.push("otlpEndpoint: must start with http:// or https://, or be empty".into());
        }
        if self.token_audience.is_empty() {
            errors.push("tokenAudience: must not be empty".into());
        }
        // The kubelet refuses projected tokens valid for less than 10 minutes.
        if self.token_expiration_seconds < 600 {
            errors.push("tokenExpirationSeconds: must be at least 600".into());
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            errors.push(format!(
                "logLevel: {:?} is not one of {LOG_LEVELS:?}",
                self.log_level
            ));
        }
        // Kubernetes' range for runAsUser; 0 would be root (and `runAsNonRoot` refuses it).
        if !(1..=i64::from(i32::MAX)).contains(&self.run_as_user) {
            errors.push("runAsUser: must be a non-root uid, 1 to 2147483647".into());
        }
        let r = &self.resources;
        for (field, value) in [
            ("resources.cpuRequest", &r.cpu_request),
            ("resources.memoryRequest", &r.memory_request),
            ("resources.cpuLimit", &r.cpu_limit),
            ("resources.memoryLimit", &r.memory_limit),
        ] {
            if !value.is_empty()
                && let Err(e) = quantity::parse(value)
            {
                errors.push(format!("{field}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// The proxy's base URL as the application sees it.
    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        InjectConfig::default().validate().unwrap();
    }

    #[test]
    fn every_bad_field_is_named() {
        let cfg: InjectConfig = serde_json::from_value(serde_json::json!({
            "sidecarImage": "",
            "proxyPort": 15090,
            "controlPlaneUrl": "grpc://cp",
            "logLevel": "loud",
            "tokenExpirationSeconds": 60,
            "otlpEndpoint": "collector:4317",
            "resources": {"memoryLimit": "lots"},
            "runAsUser": 0
        }))
        .unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        for field in [
            "sidecarImage",
            "proxyPort",
            "controlPlaneUrl",
            "logLevel",
            "tokenExpirationSeconds",
            "otlpEndpoint",
            "resources.memoryLimit",
            "runAsUser",
        ] {
            assert!(err.contains(field), "{field} missing from {err}");
        }
    }

    #[test]
    fn the_sidecar_uid_is_not_distroless_nonroot() {
        let cfg = InjectConfig::default();
        assert_eq!(cfg.run_as_user, 47880);
        assert_ne!(cfg.run_as_user, 65532);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<InjectConfig>(r#"{"sidecarImg": "x"}"#).unwrap_err();
        assert!(err.to_string().contains("sidecarImg"), "{err}");
    }
}
