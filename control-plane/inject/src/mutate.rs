//! The mutation itself, applied to the pod as raw JSON so that fields this crate's
//! Kubernetes types do not know (newer API servers) are left untouched; the patch is
//! the difference between the pod before and after.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, DownwardAPIVolumeFile,
    DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvFromSource, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, Probe, ProjectedVolumeSource, ResourceRequirements,
    SeccompProfile, SecretEnvSource, SecretVolumeSource, SecurityContext,
    ServiceAccountTokenProjection, Volume, VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use crate::decide::{containers, label};
use crate::isolation::{self, Enforceability};
use crate::overrides::PodSettings;
use crate::{
    ENFORCEABLE_ANNOTATION, ENROL_LABEL, InjectConfig, NOT_ENFORCEABLE_REASON_ANNOTATION,
    SIDECAR_NAME, STATUS_ANNOTATION,
};

/// Placeholder for SDKs that refuse to start without an API key. The sidecar drops
/// it and sends the pool's own credential; applications never hold a real one.
pub const PLACEHOLDER_KEY: &str = "vigie-placeholder-not-a-credential";

#[derive(Debug, Clone, Copy)]
pub enum SdkValue {
    /// The proxy's URL followed by this path.
    BaseUrl(&'static str),
    PlaceholderKey,
}

#[derive(Debug, Clone, Copy)]
pub struct SdkVar {
    pub name: &'static str,
    pub value: SdkValue,
}

/// Variables set on application containers. Base URLs replace a value the pod sets
/// (otherwise the SDK would bypass the sidecar and the egress agent would refuse the
/// connection); placeholder keys are only added where the pod sets none.
pub const SDK_ENV: [SdkVar; 7] = [
    // openai-python ≥ 1, openai-node, LiteLLM, most OpenAI-compatible clients.
    SdkVar {
        name: "OPENAI_BASE_URL",
        value: SdkValue::BaseUrl("/v1"),
    },
    // openai-python < 1 and LangChain.
    SdkVar {
        name: "OPENAI_API_BASE",
        value: SdkValue::BaseUrl("/v1"),
    },
    // Anthropic SDKs append /v1/messages themselves.
    SdkVar {
        name: "ANTHROPIC_BASE_URL",
        value: SdkValue::BaseUrl(""),
    },
    // The official Mistral SDK reads no URL variable: pass it as `server_url`.
    SdkVar {
        name: "MISTRAL_SERVER_URL",
        value: SdkValue::BaseUrl(""),
    },
    SdkVar {
        name: "OPENAI_API_KEY",
        value: SdkValue::PlaceholderKey,
    },
    SdkVar {
        name: "ANTHROPIC_API_KEY",
        value: SdkValue::PlaceholderKey,
    },
    SdkVar {
        name: "MISTRAL_API_KEY",
        value: SdkValue::PlaceholderKey,
    },
];

const TOKEN_DIR: &str = "/var/run/secrets/vigie";
const STATE_DIR: &str = "/var/lib/vigie";
const PODINFO_DIR: &str = "/etc/vigie/podinfo";
const CA_DIR: &str = "/etc/vigie/control-plane-ca";
/// The sidecar's default `VIGIE_CREDENTIALS_DIR`: policies' `credentials.file` are
/// read under it, and nowhere else.
const CREDENTIALS_DIR: &str = "/etc/vigie/credentials";
/// Policies' `credentials.env` names are read with this prefix (the sidecar's
/// `CREDENTIAL_ENV_PREFIX`).
const CREDENTIAL_ENV_PREFIX: &str = "VIGIE_CREDENTIAL_";
const VOLUME_TOKEN: &str = "vigie-token";
const VOLUME_STATE: &str = "vigie-state";
const VOLUME_PODINFO: &str = "vigie-podinfo";
const VOLUME_CA: &str = "vigie-control-plane-ca";
const VOLUME_CREDENTIALS: &str = "vigie-credentials";

#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error("the pod is not a JSON object")]
    NotAnObject,
    #[error("the pod already has a volume named {0}; rename it to inject the sidecar")]
    VolumeTaken(String),
    #[error("serializing the sidecar: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// The workload name the sidecar reports: the usual application labels, else the
/// service account, else the pod's name prefix.
pub fn workload_name(pod: &Value) -> String {
    for key in ["app.kubernetes.io/name", "app"] {
        if let Some(v) = label(pod, key).filter(|v| !v.is_empty()) {
            return v.to_string();
        }
    }
    if let Some(sa) = pod
        .pointer("/spec/serviceAccountName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty() && *s != "default")
    {
        return sa.to_string();
    }
    pod.pointer("/metadata/generateName")
        .and_then(Value::as_str)
        .map(|g| g.trim_end_matches('-').to_string())
        .or_else(|| {
            pod.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .unwrap_or_default()
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

fn http_probe(path: &str, port: u16, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(port)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(1),
        ..Default::default()
    }
}

fn quantities(pairs: [(&str, &String); 2]) -> Option<BTreeMap<String, Quantity>> {
    let map: BTreeMap<_, _> = pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), Quantity(v.clone())))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// The sidecar container for this pod.
pub fn sidecar(cfg: &InjectConfig, settings: &PodSettings, workload: &str) -> Container {
    let mut env = vec![
        value_env("VIGIE_LISTEN", format!("127.0.0.1:{}", cfg.proxy_port)),
        value_env("VIGIE_ADMIN_LISTEN", format!("0.0.0.0:{}", cfg.admin_port)),
        value_env("VIGIE_CONTROL_PLANE", cfg.control_plane_url.clone()),
        value_env(
            "VIGIE_CONTROL_PLANE_TOKEN_FILE",
            format!("{TOKEN_DIR}/token"),
        ),
        value_env("VIGIE_STATE_DIR", STATE_DIR),
        value_env("VIGIE_LABELS_FILE", format!("{PODINFO_DIR}/labels")),
        value_env("VIGIE_WORKLOAD", workload),
        value_env("VIGIE_LOG_FORMAT", "json"),
        value_env("RUST_LOG", settings.log_level.clone()),
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        field_env("POD_UID", "metadata.uid"),
        field_env("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        field_env("NODE_NAME", "spec.nodeName"),
    ];
    let mut mounts = vec![
        VolumeMount {
            name: VOLUME_TOKEN.into(),
            mount_path: TOKEN_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
        VolumeMount {
            name: VOLUME_STATE.into(),
            mount_path: STATE_DIR.into(),
            ..Default::default()
        },
        VolumeMount {
            name: VOLUME_PODINFO.into(),
            mount_path: PODINFO_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        },
    ];
    if cfg.egress_required {
        env.push(value_env("VIGIE_EGRESS_REQUIRED", "true"));
    }
    if !cfg.egress_agent_url.is_empty() {
        env.push(value_env(
            "VIGIE_EGRESS_AGENT_URL",
            cfg.egress_agent_url.clone(),
        ));
    }
    if !cfg.otlp_endpoint.is_empty() {
        env.push(value_env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            cfg.otlp_endpoint.clone(),
        ));
    }
    if !cfg.credentials_secret.is_empty() {
        mounts.push(VolumeMount {
            name: VOLUME_CREDENTIALS.into(),
            mount_path: CREDENTIALS_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    if !cfg.control_plane_ca_configmap.is_empty() {
        env.push(value_env(
            "VIGIE_CONTROL_PLANE_CA",
            format!("{CA_DIR}/ca.crt"),
        ));
        mounts.push(VolumeMount {
            name: VOLUME_CA.into(),
            mount_path: CA_DIR.into(),
            read_only: Some(true),
            ..Default::default()
        });
    }
    Container {
        name: SIDECAR_NAME.into(),
        image: Some(cfg.sidecar_image.clone()),
        image_pull_policy: Some(cfg.image_pull_policy.clone()),
        env: Some(env),
        // Provider keys prefixed (all a policy's `credentials.env` can reach); the
        // telemetry Secret as is, out of any policy's reach.
        env_from: Some(
            [
                (
                    &cfg.credentials_secret,
                    Some(CREDENTIAL_ENV_PREFIX.to_string()),
                ),
                (&cfg.telemetry_secret, None),
            ]
            .into_iter()
            .filter(|(name, _)| !name.is_empty())
            .map(|(name, prefix)| EnvFromSource {
                prefix,
                secret_ref: Some(SecretEnvSource {
                    name: name.clone(),
                    optional: Some(true),
                }),
                ..Default::default()
            })
            .collect::<Vec<_>>(),
        )
        .filter(|v| !v.is_empty()),
        ports: Some(vec![ContainerPort {
            name: Some("vigie-admin".into()),
            container_port: i32::from(cfg.admin_port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Two minutes to load a policy (control plane or last-known-good) before the
        // kubelet restarts the sidecar; the application waits for it meanwhile.
        startup_probe: Some(http_probe("/readyz", cfg.admin_port, 1, 120)),
        readiness_probe: Some(http_probe("/readyz", cfg.admin_port, 5, 3)),
        liveness_probe: Some(http_probe("/healthz", cfg.admin_port, 10, 3)),
        resources: Some(ResourceRequirements {
            requests: quantities([
                ("cpu", &settings.cpu_request),
                ("memory", &settings.memory_request),
            ]),
            limits: quantities([
                ("cpu", &settings.cpu_limit),
                ("memory", &settings.memory_limit),
            ]),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(cfg.run_as_user),
            run_as_group: Some(cfg.run_as_user),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..Default::default()
        }),
        volume_mounts: Some(mounts),
        restart_policy: settings.native_sidecar.then(|| "Always".into()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        ..Default::default()
    }
}

fn volumes(cfg: &InjectConfig) -> Vec<Volume> {
    let mut v = vec![
        Volume {
            name: VOLUME_TOKEN.into(),
            projected: Some(ProjectedVolumeSource {
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(cfg.token_audience.clone()),
                        expiration_seconds: Some(cfg.token_expiration_seconds),
                        path: "token".into(),
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_STATE.into(),
            // Last-known-good policy and the usage ledger, which grows by about 1 KB per
            // request while the control plane is unreachable (256 Mi: ~250,000 requests).
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("256Mi".into())),
                ..Default::default()
            }),
            ..Default::default()
        },
        Volume {
            name: VOLUME_PODINFO.into(),
            downward_api: Some(DownwardAPIVolumeSource {
                items: Some(vec![DownwardAPIVolumeFile {
                    path: "labels".into(),
                    field_ref: Some(ObjectFieldSelector {
                        field_path: "metadata.labels".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
    ];
    if !cfg.credentials_secret.is_empty() {
        v.push(Volume {
            name: VOLUME_CREDENTIALS.into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(cfg.credentials_secret.clone()),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    if !cfg.control_plane_ca_configmap.is_empty() {
        v.push(Volume {
            name: VOLUME_CA.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: cfg.control_plane_ca_configmap.clone(),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    v
}

fn object<'a>(
    v: &'a mut Value,
    key: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, MutateError> {
    let map = v.as_object_mut().ok_or(MutateError::NotAnObject)?;
    let slot = map.entry(key).or_insert_with(|| json!({}));
    if !slot.is_object() {
        *slot = json!({});
    }
    slot.as_object_mut().ok_or(MutateError::NotAnObject)
}

fn array<'a>(v: &'a mut Value, key: &str) -> Result<&'a mut Vec<Value>, MutateError> {
    let map = v.as_object_mut().ok_or(MutateError::NotAnObject)?;
    let slot = map.entry(key).or_insert_with(|| json!([]));
    if !slot.is_array() {
        *slot = json!([]);
    }
    slot.as_array_mut().ok_or(MutateError::NotAnObject)
}

/// Sets the SDK variables on one application container.
fn point_sdks_at_sidecar(
    container: &mut Value,
    proxy_url: &str,
    disabled: &[String],
) -> Result<(), MutateError> {
    let env = array(container, "env")?;
    for var in SDK_ENV
        .iter()
        .filter(|v| !disabled.iter().any(|d| d == v.name))
    {
        let existing = env
            .iter_mut()
            .find(|e| e.get("name").and_then(Value::as_str) == Some(var.name));
        match (var.value, existing) {
            (SdkValue::BaseUrl(path), Some(e)) => {
                *e = json!({"name": var.name, "value": format!("{proxy_url}{path}")});
            }
            (SdkValue::BaseUrl(path), None) => {
                env.push(json!({"name": var.name, "value": format!("{proxy_url}{path}")}));
            }
            (SdkValue::PlaceholderKey, Some(_)) => {}
            (SdkValue::PlaceholderKey, None) => {
                env.push(json!({"name": var.name, "value": PLACEHOLDER_KEY}));
            }
        }
    }
    Ok(())
}

/// Applies the injection to `pod` in place: the sidecar, the SDK variables and the
/// capabilities dropped on the app containers, the labels and annotations. The pod has
/// passed [`isolation::check`], which said how enforceable it is.
pub fn inject(
    cfg: &InjectConfig,
    settings: &PodSettings,
    enforceability: &Enforceability,
    pod: &mut Value,
) -> Result<(), MutateError> {
    let workload = workload_name(pod);
    let taken: Vec<String> = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(String::from))
        .collect();
    let new_volumes = volumes(cfg);
    if let Some(clash) = new_volumes.iter().find(|v| taken.contains(&v.name)) {
        return Err(MutateError::VolumeTaken(clash.name.clone()));
    }
    let first_app = containers(pod, "containers")
        .find_map(|c| c.get("name").and_then(Value::as_str).map(String::from));
    let mut sidecar = serde_json::to_value(sidecar(cfg, settings, &workload))?;
    if !enforceability.enforceable()
        && let Some(env) = sidecar.get_mut("env").and_then(Value::as_array_mut)
    {
        // The sidecar stays not ready unless its policy accepts the weaker enforcement
        // (egress.allowNotEnforceable).
        env.push(serde_json::json!({
            "name": "VIGIE_EGRESS_NOT_ENFORCEABLE",
            "value": enforceability.reason(),
        }));
    }
    let proxy_url = cfg.proxy_url();

    let spec = pod
        .as_object_mut()
        .ok_or(MutateError::NotAnObject)?
        .entry("spec")
        .or_insert_with(|| json!({}));
    for container in array(spec, "containers")? {
        point_sdks_at_sidecar(container, &proxy_url, &settings.disabled_sdk_env)?;
        isolation::drop_capabilities(container, &settings.kept_capabilities);
    }
    // The app's init containers share the pod's network too, whatever the mode.
    if let Some(Value::Array(init)) = spec.get_mut("initContainers") {
        for container in init {
            isolation::drop_capabilities(container, &settings.kept_capabilities);
        }
    }
    if settings.native_sidecar {
        // Application init containers start after the sidecar is ready: they may
        // call models too.
        for container in array(spec, "initContainers")? {
            point_sdks_at_sidecar(container, &proxy_url, &settings.disabled_sdk_env)?;
        }
        array(spec, "initContainers")?.insert(0, sidecar);
    } else {
        array(spec, "containers")?.insert(0, sidecar);
    }
    let volumes = array(spec, "volumes")?;
    for v in new_volumes {
        volumes.push(serde_json::to_value(v)?);
    }

    let annotations = enrol(pod, enforceability)?;
    let status = json!({
        "version": crate::VERSION,
        "container": SIDECAR_NAME,
        "mode": if settings.native_sidecar { "native" } else { "classic" },
        "image": cfg.sidecar_image,
    });
    annotations.insert(STATUS_ANNOTATION.into(), json!(status.to_string()));
    // `kubectl logs` and `exec` pick the application, not the sidecar listed first.
    if !settings.native_sidecar
        && let Some(app) = first_app
    {
        annotations
            .entry("kubectl.kubernetes.io/default-container")
            .or_insert(json!(app));
    }
    Ok(())
}

/// The enrolment label and the enforceability annotations; returns the annotations.
fn enrol<'a>(
    pod: &'a mut Value,
    enforceability: &Enforceability,
) -> Result<&'a mut serde_json::Map<String, Value>, MutateError> {
    let metadata = pod
        .as_object_mut()
        .ok_or(MutateError::NotAnObject)?
        .entry("metadata")
        .or_insert_with(|| json!({}));
    object(metadata, "labels")?.insert(ENROL_LABEL.into(), json!("enforced"));
    let annotations = object(metadata, "annotations")?;
    if enforceability.enforceable() {
        annotations.insert(ENFORCEABLE_ANNOTATION.into(), json!("true"));
        annotations.remove(NOT_ENFORCEABLE_REASON_ANNOTATION);
    } else {
        annotations.insert(ENFORCEABLE_ANNOTATION.into(), json!("false"));
        let reason = enforceability.reason();
        annotations.insert(NOT_ENFORCEABLE_REASON_ANNOTATION.into(), json!(reason));
    }
    Ok(annotations)
}
