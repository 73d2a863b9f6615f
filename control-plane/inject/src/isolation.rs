//! What keeps an injected pod's app containers from going around the egress
//! enforcement. The egress agent judges each socket by the cgroup of the container
//! that made it, at `connect()` and on the pod's packets: an app container that takes
//! the sidecar's sockets (ptrace or `pidfd_getfd(2)` on the sidecar's processes, which
//! needs to see them — a shared process namespace — and their uid or `SYS_PTRACE`),
//! sends raw frames (`NET_RAW`: `AF_PACKET`), or rewrites the pod's network or cgroups
//! (`NET_ADMIN`, `SYS_ADMIN`) is not held by it.
//!
//! So, on every app container (every container but the sidecar, init containers
//! included), the webhook drops [`EGRESS_CAPABILITIES`] and removes them from
//! `capabilities.add`; it refuses an app running as the sidecar's uid, a privileged app
//! container and `shareProcessNamespace: true`. Two annotations opt out
//! ([`EGRESS_KEEP_CAPABILITIES`], [`EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE`]); the pod is
//! then injected but flagged `vigie.io/egress-enforceable: "false"` with the reason.

use serde_json::{Map, Value};

use crate::config::InjectConfig;
use crate::decide::containers;
use crate::overrides::{
    EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, EGRESS_KEEP_CAPABILITIES, PodSettings,
};

/// Capabilities that go around the egress enforcement: dropped from every app
/// container unless kept with [`EGRESS_KEEP_CAPABILITIES`].
pub const EGRESS_CAPABILITIES: [&str; 4] = ["NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

/// The app's container lists. Checked before injection: the sidecar is in none yet.
const APP_CONTAINERS: [&str; 2] = ["containers", "initContainers"];

/// Why a pod is refused, each reason naming its field. Shown to whoever created the
/// pod: made of field paths and of names and numbers the webhook knows, never of the
/// pod's values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct Refused(pub Vec<String>);

/// Whether the egress agent holds the pod's app containers; if not, why.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Enforceability {
    /// Empty: enforceable.
    pub reasons: Vec<String>,
}

impl Enforceability {
    pub fn enforceable(&self) -> bool {
        self.reasons.is_empty()
    }

    /// The value of the `vigie.io/egress-not-enforceable-reason` annotation.
    pub fn reason(&self) -> String {
        self.reasons.join("; ")
    }
}

fn sidecar_uid(field: &str, uid: i64) -> String {
    format!(
        "{field}: {uid} is the Vigie sidecar's uid; an app running as it could take the sidecar's sockets"
    )
}

/// A field of a container's `securityContext`.
fn field<'a>(context: Option<&'a Value>, key: &str) -> Option<&'a Value> {
    context?.get(key)
}

/// Refuses what no annotation allows; otherwise says whether the pod is enforceable.
pub fn check(
    cfg: &InjectConfig,
    settings: &PodSettings,
    pod: &Value,
) -> Result<Enforceability, Refused> {
    let mut refused = Vec::new();
    let mut reasons = Vec::new();
    if !settings.kept_capabilities.is_empty() {
        reasons.push(format!("keeps {}", settings.kept_capabilities.join(", ")));
    }
    let keeps_all = EGRESS_CAPABILITIES
        .iter()
        .all(|c| settings.kept_capabilities.contains(c));
    let pod_uid = pod
        .pointer("/spec/securityContext/runAsUser")
        .and_then(Value::as_i64);
    let mut inherits_pod_uid = false;
    for list in APP_CONTAINERS {
        for (i, container) in containers(pod, list).enumerate() {
            let path = format!("spec.{list}[{i}]");
            let context = container.get("securityContext");
            match field(context, "runAsUser").and_then(Value::as_i64) {
                Some(uid) if uid == cfg.run_as_user => {
                    let at = format!("{path}.securityContext.runAsUser");
                    refused.push(sidecar_uid(&at, uid));
                }
                Some(_) => {}
                None => inherits_pod_uid = true,
            }
            if field(context, "privileged") == Some(&Value::Bool(true)) {
                if keeps_all {
                    reasons.push(format!("{path} is privileged"));
                } else {
                    refused.push(format!(
                        "{path}.securityContext.privileged: a privileged container has every capability ({} included) and goes around the egress enforcement; refused unless the annotation {EGRESS_KEEP_CAPABILITIES} lists all four (the pod is then flagged not enforceable)",
                        EGRESS_CAPABILITIES.join(", ")
                    ));
                }
            }
        }
    }
    if let Some(uid) = pod_uid.filter(|u| inherits_pod_uid && *u == cfg.run_as_user) {
        refused.push(sidecar_uid("spec.securityContext.runAsUser", uid));
    }
    let shared = pod.pointer("/spec/shareProcessNamespace") == Some(&Value::Bool(true));
    if shared && settings.allow_shared_process_namespace {
        reasons.push("shares its process namespace with the sidecar".into());
    } else if shared {
        refused.push(format!(
            "spec.shareProcessNamespace: true shows the sidecar's processes to the app containers, which could take its sockets and go around the egress enforcement; refused unless the annotation {EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE} is \"true\" (the pod is then flagged not enforceable)"
        ));
    }
    if refused.is_empty() {
        Ok(Enforceability { reasons })
    } else {
        Err(Refused(refused))
    }
}

/// Whether a capability as a pod writes it is `cap` (runtimes upper-case the names,
/// and some accept a `CAP_` prefix).
fn is_capability(entry: &Value, cap: &str) -> bool {
    let Some(name) = entry.as_str().map(str::trim) else {
        return false;
    };
    let bare = match (name.get(..4), name.get(4..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("CAP_") => rest,
        _ => name,
    };
    bare.eq_ignore_ascii_case(cap)
}

fn child_object<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

fn child_array<'a>(map: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Vec<Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    slot.as_array_mut()
}

/// Drops [`EGRESS_CAPABILITIES`] but `kept` from one app container: each added to
/// `securityContext.capabilities.drop` once (left as is when it drops `ALL`), and
/// removed from `capabilities.add`, which runtimes apply after a `drop: [ALL]`.
pub(crate) fn drop_capabilities(container: &mut Value, kept: &[&str]) {
    let dropped: Vec<&str> = EGRESS_CAPABILITIES
        .into_iter()
        .filter(|c| !kept.contains(c))
        .collect();
    if dropped.is_empty() {
        return;
    }
    let Some(capabilities) = container
        .as_object_mut()
        .and_then(|c| child_object(c, "securityContext"))
        .and_then(|s| child_object(s, "capabilities"))
    else {
        return;
    };
    if let Some(list) = child_array(capabilities, "drop")
        && !list.iter().any(|d| is_capability(d, "ALL"))
    {
        for cap in &dropped {
            if !list.iter().any(|d| is_capability(d, cap)) {
                list.push(Value::from(*cap));
            }
        }
    }
    let mut emptied = false;
    if let Some(Value::Array(add)) = capabilities.get_mut("add") {
        let before = add.len();
        add.retain(|a| !dropped.iter().any(|cap| is_capability(a, cap)));
        emptied = before > 0 && add.is_empty();
    }
    if emptied {
        capabilities.remove("add");
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use base64::Engine as _;
    use serde_json::json;

    use super::*;
    use crate::{
        ENFORCEABLE_ANNOTATION, ENROL_LABEL, NOT_ENFORCEABLE_REASON_ANNOTATION, Trigger, overrides,
    };

    const ALL_FOUR: &str = "NET_RAW,NET_ADMIN,SYS_ADMIN,SYS_PTRACE";

    fn settings(pairs: &[(&str, &str)]) -> PodSettings {
        let annotations: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        overrides::resolve(&InjectConfig::default(), &annotations).unwrap()
    }

    fn app(security_context: Value) -> Value {
        json!({"name": "app", "securityContext": security_context})
    }

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p"}, "spec": spec})
    }

    #[test]
    fn the_four_capabilities_are_merged_into_drop_once() {
        let mut c = app(json!({"capabilities": {"drop": ["net_raw", "CHOWN"]}}));
        drop_capabilities(&mut c, &[]);
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"drop": ["net_raw", "CHOWN", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]})
        );
        let once = c.clone();
        drop_capabilities(&mut c, &[]);
        assert_eq!(c, once, "a second pass adds nothing");
        // No security context: one is made, with nothing else in it.
        let mut bare = json!({"name": "app", "image": "busybox"});
        drop_capabilities(&mut bare, &[]);
        assert_eq!(
            bare["securityContext"],
            json!({"capabilities": {"drop": EGRESS_CAPABILITIES}})
        );
        assert_eq!(bare["image"], "busybox");
    }

    #[test]
    fn the_four_capabilities_are_removed_from_add() {
        let mut c = app(json!({
            "runAsUser": 1000,
            "capabilities": {"add": ["NET_RAW", "CAP_SYS_PTRACE", "NET_BIND_SERVICE"]}
        }));
        drop_capabilities(&mut c, &[]);
        assert_eq!(
            c["securityContext"],
            json!({
                "runAsUser": 1000,
                "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": EGRESS_CAPABILITIES}
            })
        );
        // An `add` left empty goes; `drop: [ALL]` stays as it was.
        let mut only = app(json!({
            "capabilities": {"add": ["sys_admin"], "drop": ["ALL"]}
        }));
        drop_capabilities(&mut only, &[]);
        assert_eq!(
            only["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
    }

    #[test]
    fn a_drop_of_all_is_left_as_is() {
        let mut c = app(json!({
            "capabilities": {"drop": ["all"], "add": ["NET_BIND_SERVICE"]}
        }));
        let before = c.clone();
        drop_capabilities(&mut c, &[]);
        assert_eq!(c, before);
    }

    #[test]
    fn kept_capabilities_are_neither_dropped_nor_removed() {
        let mut c = app(json!({"capabilities": {"add": ["NET_RAW", "SYS_PTRACE"]}}));
        drop_capabilities(&mut c, &["NET_RAW"]);
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"add": ["NET_RAW"], "drop": ["NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]})
        );
        let mut all = app(json!({"privileged": true}));
        let before = all.clone();
        drop_capabilities(&mut all, &EGRESS_CAPABILITIES);
        assert_eq!(all, before);
    }

    #[test]
    fn an_opt_out_flags_the_pod_not_enforceable() {
        let cfg = InjectConfig::default();
        let p = pod(json!({"containers": [{"name": "a"}]}));
        assert!(check(&cfg, &settings(&[]), &p).unwrap().enforceable());
        let keep = settings(&[(EGRESS_KEEP_CAPABILITIES, "SYS_PTRACE,NET_RAW")]);
        let e = check(&cfg, &keep, &p).unwrap();
        assert!(!e.enforceable());
        assert_eq!(e.reason(), "keeps NET_RAW, SYS_PTRACE");
    }

    #[test]
    fn an_app_running_as_the_sidecar_uid_is_refused_at_container_and_pod_level() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let container_level = pod(json!({
            "containers": [
                {"name": "a", "securityContext": {"runAsUser": 1000}},
                {"name": "b", "securityContext": {"runAsUser": 47880}}
            ]
        }));
        let err = check(&cfg, &none, &container_level).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.containers[1].securityContext.runAsUser: 47880 is the Vigie sidecar's uid; an app running as it could take the sidecar's sockets"
        );
        let init = pod(json!({
            "initContainers": [{"name": "i", "securityContext": {"runAsUser": 47880}}],
            "containers": [{"name": "a"}]
        }));
        let err = check(&cfg, &none, &init).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.initContainers[0].securityContext.runAsUser: 47880 "),
            "{err}"
        );
        let pod_level = pod(json!({
            "securityContext": {"runAsUser": 47880},
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1000}}, {"name": "b"}]
        }));
        let err = check(&cfg, &none, &pod_level).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.securityContext.runAsUser: 47880 is the Vigie sidecar's uid; an app running as it could take the sidecar's sockets"
        );
        // Every container sets its own uid: none runs as the pod's.
        let overridden = pod(json!({
            "securityContext": {"runAsUser": 47880},
            "containers": [{"name": "a", "securityContext": {"runAsUser": 1000}}]
        }));
        let e = check(&cfg, &none, &overridden).unwrap();
        assert_eq!(e, Enforceability::default());
        // The configured uid is the one compared.
        let custom = InjectConfig {
            run_as_user: 1000,
            ..InjectConfig::default()
        };
        assert!(check(&custom, &none, &overridden).is_err());
        // 65532, distroless `nonroot`, is an app's uid like any other now.
        let nonroot = pod(json!({
            "securityContext": {"runAsUser": 65532},
            "containers": [{"name": "a"}]
        }));
        assert!(check(&cfg, &none, &nonroot).unwrap().enforceable());
    }

    #[test]
    fn a_privileged_app_container_is_refused_unless_all_four_are_kept() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let p = pod(json!({
            "containers": [
                {"name": "a"},
                {"name": "b", "securityContext": {"privileged": true}}
            ]
        }));
        let err = check(&cfg, &none, &p).unwrap_err().to_string();
        assert!(
            err.starts_with("spec.containers[1].securityContext.privileged: "),
            "{err}"
        );
        assert!(err.contains(EGRESS_KEEP_CAPABILITIES), "{err}");
        let some = settings(&[(EGRESS_KEEP_CAPABILITIES, "NET_RAW,SYS_PTRACE")]);
        assert!(check(&cfg, &some, &p).is_err());
        let four = settings(&[(EGRESS_KEEP_CAPABILITIES, ALL_FOUR)]);
        let e = check(&cfg, &four, &p).unwrap();
        assert!(!e.enforceable());
        assert_eq!(
            e.reason(),
            "keeps NET_RAW, NET_ADMIN, SYS_ADMIN, SYS_PTRACE; spec.containers[1] is privileged"
        );
        // `privileged: false` is no reason.
        let unprivileged = pod(json!({
            "containers": [{"name": "a", "securityContext": {"privileged": false}}]
        }));
        assert!(check(&cfg, &none, &unprivileged).unwrap().enforceable());
    }

    #[test]
    fn a_shared_process_namespace_is_refused_unless_allowed_then_flagged() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let p = pod(json!({
            "shareProcessNamespace": true,
            "containers": [{"name": "a"}]
        }));
        for refusing in [
            settings(&[]),
            settings(&[(EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, "false")]),
        ] {
            let err = check(&cfg, &refusing, &p).unwrap_err().to_string();
            assert!(err.starts_with("spec.shareProcessNamespace: "), "{err}");
            assert!(err.contains(EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE));
        }
        let allowed = settings(&[
            (EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, "true"),
            (EGRESS_KEEP_CAPABILITIES, "NET_RAW"),
        ]);
        let e = check(&cfg, &allowed, &p).unwrap();
        assert_eq!(
            e.reason(),
            "keeps NET_RAW; shares its process namespace with the sidecar"
        );
        let unshared = pod(json!({
            "shareProcessNamespace": false,
            "containers": [{"name": "a"}]
        }));
        assert!(check(&cfg, &none, &unshared).unwrap().enforceable());
    }

    #[test]
    fn every_refusal_is_listed() {
        let cfg = InjectConfig::default();
        let p = pod(json!({
            "shareProcessNamespace": true,
            "securityContext": {"runAsUser": 47880},
            "containers": [{"name": "a", "securityContext": {"privileged": true}}]
        }));
        let err = check(&cfg, &settings(&[]), &p).unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    /// `object` with the base64 JSON patch of a response applied.
    fn patched(object: &Value, b64: &str) -> Value {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&raw).unwrap();
        let mut object = object.clone();
        json_patch::patch(&mut object, &patch).unwrap();
        object
    }

    /// The deployment fixture, changed by `edit`, through the handler: the response,
    /// and the pod with its patch applied when there is one.
    fn through_review(edit: impl FnOnce(&mut Value)) -> (Value, Option<Value>) {
        let text = include_str!("../tests/fixtures/deployment-pod.json");
        let mut review: Value = serde_json::from_str(text).unwrap();
        edit(&mut review["request"]["object"]);
        let body = serde_json::to_vec(&review).unwrap();
        let cfg = InjectConfig::default();
        let out = crate::review(&body, Trigger::Namespace, &cfg).unwrap();
        let response = out["response"].clone();
        let object = &review["request"]["object"];
        let patch = response.get("patch").and_then(Value::as_str);
        let injected = patch.map(|b64| patched(object, b64));
        (response, injected)
    }

    #[test]
    fn an_enforceable_pod_is_flagged_and_its_apps_lose_the_capabilities() {
        let (response, pod) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({NOT_ENFORCEABLE_REASON_ANNOTATION: "stale"});
        });
        assert_eq!(response["allowed"], true, "{response}");
        let pod = pod.unwrap();
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations[ENFORCEABLE_ANNOTATION], "true");
        assert_eq!(
            annotations.get(NOT_ENFORCEABLE_REASON_ANNOTATION),
            None,
            "a stale reason is removed"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": EGRESS_CAPABILITIES})
        );
        // The sidecar keeps its own: everything dropped, nothing added, its own uid.
        let sidecar = &pod["spec"]["initContainers"][0];
        assert_eq!(sidecar["name"], crate::SIDECAR_NAME);
        assert_eq!(
            sidecar["securityContext"]["capabilities"],
            json!({"drop": ["ALL"]})
        );
        assert_eq!(sidecar["securityContext"]["runAsUser"], 47880);
    }

    #[test]
    fn keeping_a_capability_injects_the_pod_flagged_not_enforceable() {
        let (response, pod) = through_review(|pod| {
            let keep = json!({EGRESS_KEEP_CAPABILITIES: "NET_RAW,SYS_PTRACE"});
            pod["metadata"]["annotations"] = keep;
            let adds = json!({"capabilities": {"add": ["NET_RAW"]}});
            pod["spec"]["containers"][0]["securityContext"] = adds;
        });
        assert_eq!(response["allowed"], true, "{response}");
        let warning = response["warnings"][0].as_str().unwrap();
        assert!(warning.contains("keeps NET_RAW, SYS_PTRACE"), "{warning}");
        let pod = pod.unwrap();
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations[ENFORCEABLE_ANNOTATION], "false");
        assert_eq!(
            annotations[NOT_ENFORCEABLE_REASON_ANNOTATION],
            "keeps NET_RAW, SYS_PTRACE"
        );
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"add": ["NET_RAW"], "drop": ["NET_ADMIN", "SYS_ADMIN"]})
        );
        // Still enrolled: the agent enforces what it can.
        assert_eq!(pod["metadata"]["labels"][ENROL_LABEL], "enforced");
    }

    #[test]
    fn refusals_deny_the_review_naming_fields_not_values() {
        let (response, pod) = through_review(|pod| {
            pod["spec"]["containers"][0]["securityContext"] = json!({"runAsUser": 47880});
            pod["spec"]["shareProcessNamespace"] = json!(true);
        });
        assert!(pod.is_none());
        assert_eq!(response["allowed"], false);
        assert_eq!(response["status"]["code"], 400);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "vigie sidecar injection: spec.containers[0].securityContext.runAsUser: 47880 is the Vigie sidecar's uid; an app running as it could take the sidecar's sockets; spec.shareProcessNamespace: "
            ),
            "{message}"
        );
        // Nothing of the pod's own (its env, its Secret's name) is repeated.
        for value in ["legacy-openai", "api.openai.com", "registry.example"] {
            assert!(!message.contains(value), "{message}");
        }

        let (response, pod) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({EGRESS_KEEP_CAPABILITIES: "NET_RAW,CHOWN"});
        });
        assert!(pod.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.contains(
                "annotation vigie.io/egress-keep-capabilities: \"CHOWN\" is not one of NET_RAW, NET_ADMIN, SYS_ADMIN, SYS_PTRACE"
            ),
            "{message}"
        );
    }
}
