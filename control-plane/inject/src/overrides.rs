//! Per-pod overrides through `vigie.io/*` annotations. Every annotation under the
//! prefix is checked: a typo is an error, not a silently ignored setting.

use std::collections::BTreeMap;

use crate::config::{InjectConfig, LOG_LEVELS};
use crate::isolation::EGRESS_CAPABILITIES;
use crate::mutate::SDK_ENV;
use crate::quantity;

pub const CPU_REQUEST: &str = "vigie.io/sidecar-cpu-request";
pub const CPU_LIMIT: &str = "vigie.io/sidecar-cpu-limit";
pub const MEMORY_REQUEST: &str = "vigie.io/sidecar-memory-request";
pub const MEMORY_LIMIT: &str = "vigie.io/sidecar-memory-limit";
pub const LOG_LEVEL: &str = "vigie.io/log-level";
/// Comma-separated SDK variables not to set on the application containers.
pub const DISABLE_SDK_ENV: &str = "vigie.io/disable-sdk-env";
/// `false`: classic sidecar container for this pod (clusters older than 1.29).
pub const NATIVE_SIDECAR: &str = "vigie.io/native-sidecar";
/// Comma-separated capabilities of [`EGRESS_CAPABILITIES`] the app containers keep
/// (not dropped, left in `add`); the pod is then flagged not enforceable.
pub const EGRESS_KEEP_CAPABILITIES: &str = "vigie.io/egress-keep-capabilities";
/// `true`: a pod with `shareProcessNamespace: true` is injected (otherwise refused),
/// flagged not enforceable.
pub const EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE: &str =
    "vigie.io/egress-allow-shared-process-namespace";
/// `true`: a pod with `hostPID: true` or `hostIPC: true` is injected (otherwise
/// refused), flagged not enforceable. One annotation for both host namespaces.
pub const EGRESS_ALLOW_HOST_PID_IPC: &str = "vigie.io/egress-allow-host-pid-ipc";
/// `true`: a pod with `hostPath` volumes is injected (otherwise refused), flagged not
/// enforceable: a root process with a host path on `/sys/fs/bpf` (or `/`) can delete
/// the egress agent's pinned maps.
pub const EGRESS_ALLOW_HOST_PATH: &str = "vigie.io/egress-allow-host-path";

/// The annotations a pod may set.
const SETTINGS: [&str; 11] = [
    CPU_REQUEST,
    CPU_LIMIT,
    MEMORY_REQUEST,
    MEMORY_LIMIT,
    LOG_LEVEL,
    DISABLE_SDK_ENV,
    NATIVE_SIDECAR,
    EGRESS_KEEP_CAPABILITIES,
    EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE,
    EGRESS_ALLOW_HOST_PID_IPC,
    EGRESS_ALLOW_HOST_PATH,
];

/// An annotation's entry as an error shows it: only what looks like a capability
/// name is repeated (an annotation value may hold anything, a secret included).
fn shown(entry: &str) -> String {
    let plain = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    if (1..=32).contains(&entry.len()) && entry.bytes().all(plain) {
        format!("{entry:?}")
    } else {
        "an entry (not shown)".into()
    }
}

/// The injection settings of one pod: the configuration with its annotations applied.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    pub cpu_request: String,
    pub cpu_limit: String,
    pub memory_request: String,
    pub memory_limit: String,
    pub log_level: String,
    pub disabled_sdk_env: Vec<String>,
    pub native_sidecar: bool,
    /// Capabilities of [`EGRESS_CAPABILITIES`] the app containers keep, in that list's
    /// order; any makes the pod not enforceable.
    pub kept_capabilities: Vec<&'static str>,
    /// `shareProcessNamespace: true` accepted (the pod is then not enforceable).
    pub allow_shared_process_namespace: bool,
    /// `hostPID: true` and `hostIPC: true` accepted (the pod is then not enforceable).
    pub allow_host_pid_ipc: bool,
    /// `hostPath` volumes accepted (the pod is then not enforceable).
    pub allow_host_path: bool,
}

/// The pod's settings, or every invalid annotation with its reason.
pub fn resolve(
    cfg: &InjectConfig,
    annotations: &BTreeMap<String, String>,
) -> Result<PodSettings, Vec<String>> {
    let mut errors = Vec::new();
    let r = &cfg.resources;
    let mut settings = PodSettings {
        cpu_request: r.cpu_request.clone(),
        cpu_limit: r.cpu_limit.clone(),
        memory_request: r.memory_request.clone(),
        memory_limit: r.memory_limit.clone(),
        log_level: cfg.log_level.clone(),
        disabled_sdk_env: Vec::new(),
        native_sidecar: cfg.native_sidecar,
        kept_capabilities: Vec::new(),
        allow_shared_process_namespace: false,
        allow_host_pid_ipc: false,
        allow_host_path: false,
    };
    for (key, value) in annotations {
        if !key.starts_with("vigie.io/") {
            continue;
        }
        let value = value.trim();
        match key.as_str() {
            CPU_REQUEST | CPU_LIMIT | MEMORY_REQUEST | MEMORY_LIMIT => {
                match quantity::parse(value) {
                    Ok(_) => {
                        let slot = match key.as_str() {
                            CPU_REQUEST => &mut settings.cpu_request,
                            CPU_LIMIT => &mut settings.cpu_limit,
                            MEMORY_REQUEST => &mut settings.memory_request,
                            _ => &mut settings.memory_limit,
                        };
                        *slot = value.to_string();
                    }
                    Err(e) => errors.push(format!("annotation {key}: {e}")),
                }
            }
            LOG_LEVEL => {
                if LOG_LEVELS.contains(&value) {
                    settings.log_level = value.to_string();
                } else {
                    errors.push(format!(
                        "annotation {key}: {value:?} is not one of {}",
                        LOG_LEVELS.join(", ")
                    ));
                }
            }
            DISABLE_SDK_ENV => {
                for name in value.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                    if SDK_ENV.iter().any(|v| v.name == name) {
                        settings.disabled_sdk_env.push(name.to_string());
                    } else {
                        let known: Vec<_> = SDK_ENV.iter().map(|v| v.name).collect();
                        errors.push(format!(
                            "annotation {key}: {name:?} is not an injected variable ({})",
                            known.join(", ")
                        ));
                    }
                }
            }
            NATIVE_SIDECAR => match value {
                "true" => settings.native_sidecar = true,
                "false" => settings.native_sidecar = false,
                other => errors.push(format!("annotation {key}: {other:?} is not true or false")),
            },
            EGRESS_KEEP_CAPABILITIES => {
                let names: Vec<&str> = value
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect();
                for name in &names {
                    if !EGRESS_CAPABILITIES.contains(name) {
                        errors.push(format!(
                            "annotation {key}: {} is not one of {} (the capabilities the webhook drops)",
                            shown(name),
                            EGRESS_CAPABILITIES.join(", ")
                        ));
                    }
                }
                settings.kept_capabilities = EGRESS_CAPABILITIES
                    .into_iter()
                    .filter(|c| names.contains(c))
                    .collect();
            }
            EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE
            | EGRESS_ALLOW_HOST_PID_IPC
            | EGRESS_ALLOW_HOST_PATH => {
                let slot = match key.as_str() {
                    EGRESS_ALLOW_HOST_PID_IPC => &mut settings.allow_host_pid_ipc,
                    EGRESS_ALLOW_HOST_PATH => &mut settings.allow_host_path,
                    _ => &mut settings.allow_shared_process_namespace,
                };
                match value {
                    "true" => *slot = true,
                    "false" => *slot = false,
                    other => errors.push(format!(
                        "annotation {key}: {} is not true or false",
                        shown(other)
                    )),
                }
            }
            // Written by the webhook: whatever the pod says is replaced.
            crate::STATUS_ANNOTATION
            | crate::ENFORCEABLE_ANNOTATION
            | crate::NOT_ENFORCEABLE_REASON_ANNOTATION => {}
            unknown => {
                errors.push(format!(
                    "annotation {unknown} is not a Vigie setting (known: {})",
                    SETTINGS.join(", ")
                ));
            }
        }
    }
    for (what, request, limit) in [
        ("cpu", &settings.cpu_request, &settings.cpu_limit),
        ("memory", &settings.memory_request, &settings.memory_limit),
    ] {
        if let (Ok(req), Ok(lim)) = (quantity::parse(request), quantity::parse(limit))
            && req > lim
        {
            errors.push(format!(
                "sidecar {what} request {request} is above its limit {limit}"
            ));
        }
    }
    if errors.is_empty() {
        Ok(settings)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn valid_overrides_apply() {
        let s = resolve(
            &InjectConfig::default(),
            &annotations(&[
                (CPU_REQUEST, "250m"),
                (MEMORY_LIMIT, "1Gi"),
                (LOG_LEVEL, "debug"),
                (DISABLE_SDK_ENV, "ANTHROPIC_BASE_URL, OPENAI_API_BASE"),
                (NATIVE_SIDECAR, "false"),
                ("other.io/thing", "anything"),
            ]),
        )
        .unwrap();
        assert_eq!(s.cpu_request, "250m");
        assert_eq!(s.memory_limit, "1Gi");
        assert_eq!(s.memory_request, "64Mi");
        assert_eq!(s.log_level, "debug");
        assert_eq!(
            s.disabled_sdk_env,
            ["ANTHROPIC_BASE_URL", "OPENAI_API_BASE"]
        );
        assert!(!s.native_sidecar);
    }

    #[test]
    fn kept_capabilities_are_read_in_a_fixed_order_without_duplicates() {
        let s = resolve(
            &InjectConfig::default(),
            &annotations(&[
                (EGRESS_KEEP_CAPABILITIES, " SYS_PTRACE,NET_RAW , NET_RAW,"),
                (EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, "true"),
            ]),
        )
        .unwrap();
        assert_eq!(s.kept_capabilities, ["NET_RAW", "SYS_PTRACE"]);
        assert!(s.allow_shared_process_namespace);
        let plain = resolve(&InjectConfig::default(), &annotations(&[])).unwrap();
        assert!(plain.kept_capabilities.is_empty());
        assert!(!plain.allow_shared_process_namespace);
        assert!(!plain.allow_host_pid_ipc);
    }

    #[test]
    fn host_pid_and_ipc_are_allowed_by_one_annotation_checked_like_the_others() {
        let cfg = InjectConfig::default();
        let allowed = resolve(&cfg, &annotations(&[(EGRESS_ALLOW_HOST_PID_IPC, " true")])).unwrap();
        assert!(allowed.allow_host_pid_ipc);
        assert!(
            !allowed.allow_shared_process_namespace,
            "one does not imply the other"
        );
        let refused = resolve(&cfg, &annotations(&[(EGRESS_ALLOW_HOST_PID_IPC, "false")])).unwrap();
        assert!(!refused.allow_host_pid_ipc);
        let errors = resolve(
            &cfg,
            &annotations(&[(EGRESS_ALLOW_HOST_PID_IPC, "sk-live-0123")]),
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "annotation vigie.io/egress-allow-host-pid-ipc: an entry (not shown) is not true or false"
            ]
        );
        assert!(SETTINGS.contains(&EGRESS_ALLOW_HOST_PID_IPC));
    }

    #[test]
    fn host_path_is_allowed_by_its_own_annotation() {
        let cfg = InjectConfig::default();
        let allowed = resolve(&cfg, &annotations(&[(EGRESS_ALLOW_HOST_PATH, "true")])).unwrap();
        assert!(allowed.allow_host_path);
        assert!(!allowed.allow_host_pid_ipc, "one does not imply the other");
        let plain = resolve(&cfg, &annotations(&[])).unwrap();
        assert!(!plain.allow_host_path);
        let errors = resolve(
            &cfg,
            &annotations(&[(EGRESS_ALLOW_HOST_PATH, "yes please")]),
        )
        .unwrap_err();
        assert_eq!(
            errors,
            [
                "annotation vigie.io/egress-allow-host-path: an entry (not shown) is not true or false"
            ]
        );
        assert!(SETTINGS.contains(&EGRESS_ALLOW_HOST_PATH));
    }

    #[test]
    fn an_unknown_capability_is_refused_naming_the_annotation_without_echoing_values() {
        let errors = resolve(
            &InjectConfig::default(),
            &annotations(&[
                (EGRESS_KEEP_CAPABILITIES, "NET_RAW,CHOWN,sk-live-0123"),
                (EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, "sk-live-0123"),
            ]),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
        let all = errors.join("\n");
        assert!(
            all.contains(
                "annotation vigie.io/egress-keep-capabilities: \"CHOWN\" is not one of NET_RAW, NET_ADMIN, SYS_ADMIN, SYS_PTRACE"
            ),
            "{all}"
        );
        assert!(
            all.contains(
                "vigie.io/egress-allow-shared-process-namespace: an entry (not shown) is not true or false"
            ),
            "{all}"
        );
        assert!(!all.contains("sk-live"), "{all}");
        // The annotations the webhook writes are not settings, and not errors either.
        resolve(
            &InjectConfig::default(),
            &annotations(&[
                (crate::ENFORCEABLE_ANNOTATION, "true"),
                (crate::NOT_ENFORCEABLE_REASON_ANNOTATION, "stale"),
            ]),
        )
        .unwrap();
    }

    #[test]
    fn every_invalid_annotation_is_reported() {
        let errors = resolve(
            &InjectConfig::default(),
            &annotations(&[
                (CPU_REQUEST, "lots"),
                (LOG_LEVEL, "verbose"),
                (DISABLE_SDK_ENV, "PATH"),
                (NATIVE_SIDECAR, "yes"),
                ("vigie.io/sidecar-memroy-limit", "1Gi"),
                (MEMORY_REQUEST, "2Gi"),
            ]),
        )
        .unwrap_err();
        assert_eq!(errors.len(), 6, "{errors:?}");
        let all = errors.join("\n");
        for needle in [
            "sidecar-cpu-request: \"lots\"",
            "\"verbose\" is not one of",
            "\"PATH\" is not an injected variable",
            "\"yes\" is not true or false",
            "vigie.io/sidecar-memroy-limit is not a Vigie setting",
            "memory request 2Gi is above its limit 256Mi",
        ] {
            assert!(all.contains(needle), "{needle} missing from {all}");
        }
    }
}
