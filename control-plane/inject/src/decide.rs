//! Whether a pod gets the sidecar. The webhook's selectors already filter by
//! namespace and pod labels; the same rules are checked again here so that a
//! hand-edited `MutatingWebhookConfiguration` cannot inject where it must not.

use std::fmt;

use serde_json::Value;

use crate::{INJECT_LABEL, InjectConfig, SIDECAR_NAME};

/// Which webhook entry called: the URL path tells how the pod was selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// `/inject/namespace`: the namespace is labelled `vigie.io/inject=enabled`.
    Namespace,
    /// `/inject/pod`: the pod is labelled `vigie.io/inject=enabled`.
    Pod,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Inject,
    Skip(SkipReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SkipReason {
    SystemNamespace(String),
    HostNetwork,
    OptedOut,
    NotOptedIn,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::SystemNamespace(ns) => write!(f, "namespace {ns} is never injected"),
            SkipReason::HostNetwork => {
                f.write_str("hostNetwork pod: a loopback sidecar would be shared by the node")
            }
            SkipReason::OptedOut => write!(f, "pod labelled {INJECT_LABEL}=disabled"),
            SkipReason::NotOptedIn => write!(f, "pod not labelled {INJECT_LABEL}=enabled"),
        }
    }
}

pub(crate) fn label<'a>(pod: &'a Value, key: &str) -> Option<&'a str> {
    pod.pointer("/metadata/labels")?.get(key)?.as_str()
}

pub(crate) fn containers<'a>(pod: &'a Value, field: &str) -> impl Iterator<Item = &'a Value> {
    pod.get("spec")
        .and_then(|s| s.get(field))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// Whether a container is the sidecar, by name. A pod created with one is refused by
/// [`crate::isolation::check`]: reinvocation is off, so the webhook never sees its own
/// output, and someone else wrote it.
pub(crate) fn is_sidecar(container: &Value) -> bool {
    container.get("name").and_then(Value::as_str) == Some(SIDECAR_NAME)
}

/// Whether the pod gets the sidecar. Nothing a pod carries marks it injected: a container
/// named [`SIDECAR_NAME`] gets it refused ([`crate::isolation::check`]), and the
/// `vigie.io/status` annotation alone marks nothing (a pod may carry any annotation).
pub fn decide(cfg: &InjectConfig, namespace: &str, pod: &Value, trigger: Trigger) -> Decision {
    if cfg.skip_namespaces.iter().any(|n| n == namespace) {
        return Decision::Skip(SkipReason::SystemNamespace(namespace.to_string()));
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Decision::Skip(SkipReason::HostNetwork);
    }
    match (label(pod, INJECT_LABEL), trigger) {
        (Some("disabled"), _) => return Decision::Skip(SkipReason::OptedOut),
        (Some("enabled"), _) | (_, Trigger::Namespace) => {}
        (_, Trigger::Pod) => return Decision::Skip(SkipReason::NotOptedIn),
    }
    Decision::Inject
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::STATUS_ANNOTATION;
    use serde_json::json;

    fn pod(labels: Value, spec: Value) -> Value {
        json!({"metadata": {"labels": labels}, "spec": spec})
    }

    #[test]
    fn rules() {
        let cfg = InjectConfig::default();
        let plain = pod(json!({}), json!({"containers": [{"name": "app"}]}));
        assert_eq!(
            decide(&cfg, "apps", &plain, Trigger::Namespace),
            Decision::Inject
        );
        assert_eq!(
            decide(&cfg, "apps", &plain, Trigger::Pod),
            Decision::Skip(SkipReason::NotOptedIn)
        );
        assert_eq!(
            decide(&cfg, "kube-system", &plain, Trigger::Namespace),
            Decision::Skip(SkipReason::SystemNamespace("kube-system".into()))
        );
        let opted_in = pod(json!({INJECT_LABEL: "enabled"}), json!({}));
        assert_eq!(
            decide(&cfg, "apps", &opted_in, Trigger::Pod),
            Decision::Inject
        );
        let opted_out = pod(json!({INJECT_LABEL: "disabled"}), json!({}));
        assert_eq!(
            decide(&cfg, "apps", &opted_out, Trigger::Namespace),
            Decision::Skip(SkipReason::OptedOut)
        );
        let host = pod(json!({}), json!({"hostNetwork": true}));
        assert_eq!(
            decide(&cfg, "apps", &host, Trigger::Namespace),
            Decision::Skip(SkipReason::HostNetwork)
        );
        // Not skipped: isolation::check refuses it (reinvocation is off, so a pod
        // carrying the sidecar was written by someone else).
        let by_hand = pod(json!({}), json!({"containers": [{"name": SIDECAR_NAME}]}));
        assert_eq!(
            decide(&cfg, "apps", &by_hand, Trigger::Namespace),
            Decision::Inject
        );
    }

    #[test]
    fn the_status_annotation_alone_is_no_mark_of_injection() {
        let cfg = InjectConfig::default();
        let mut forged = pod(json!({}), json!({"containers": [{"name": "app"}]}));
        forged["metadata"]["annotations"] = json!({STATUS_ANNOTATION: "{}"});
        assert_eq!(
            decide(&cfg, "apps", &forged, Trigger::Namespace),
            Decision::Inject
        );
        // A sidecar-named container in a pod that is skipped anyway: the reason given is
        // the one that holds whatever the pod carries.
        let host = pod(
            json!({}),
            json!({"hostNetwork": true, "initContainers": [{"name": SIDECAR_NAME}]}),
        );
        assert_eq!(
            decide(&cfg, "apps", &host, Trigger::Namespace),
            Decision::Skip(SkipReason::HostNetwork)
        );
    }
}
