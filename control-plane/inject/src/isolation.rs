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
//! `capabilities.add`; it refuses capability names that are not plain ASCII, an app
//! running as the sidecar's uid, a privileged app container, `shareProcessNamespace:
//! true`, `hostPID: true` and `hostIPC: true`. Three annotations opt out
//! ([`EGRESS_KEEP_CAPABILITIES`], [`EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE`],
//! [`EGRESS_ALLOW_HOST_PID_IPC`]); the pod is then injected but flagged
//! `vigie.io/egress-enforceable: "false"` with the reason. A classic sidecar (an app
//! container like the others, started with them) is flagged too.
//!
//! This runs on every pod created, whatever it carries: a container already named
//! [`SIDECAR_NAME`] (the webhook's own patch seen again, or one written by hand) must be
//! the one the webhook injects, or the pod is refused.

use serde_json::{Map, Value};

use crate::SIDECAR_NAME;
use crate::config::InjectConfig;
use crate::decide::{containers, is_sidecar};
use crate::overrides::{
    EGRESS_ALLOW_HOST_PID_IPC, EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, EGRESS_KEEP_CAPABILITIES,
    PodSettings,
};

/// Capabilities that go around the egress enforcement: dropped from every app
/// container unless kept with [`EGRESS_KEEP_CAPABILITIES`].
pub const EGRESS_CAPABILITIES: [&str; 4] = ["NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

/// The pod's container lists. Every container in them is an app container, but one
/// named [`SIDECAR_NAME`], which is checked as the sidecar.
const CONTAINER_LISTS: [&str; 2] = ["containers", "initContainers"];

/// Why a pod with a classic sidecar is not enforceable: the kubelet starts its
/// containers together, so the app may connect before the egress agent enrols the
/// pod, and a connection made then is never judged.
pub const CLASSIC_SIDECAR_REASON: &str = "classic sidecar: the app may start before enforcement";

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

/// Whether a `capabilities.add` or `.drop` entry is a plain name: ASCII letters and
/// underscores (a `CAP_` prefix is made of them too). Runtimes upper-case names with
/// Unicode rules (Go's `ToUpper` turns `ſ`, U+017F, into `S` and `ı`, U+0131, into
/// `I`) or trim them; anything but a plain name could be a capability the webhook does
/// not recognise.
fn plain_capability(entry: &Value) -> bool {
    entry.as_str().is_some_and(|name| {
        !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_')
    })
}

/// What a container named [`SIDECAR_NAME`] has that the injected sidecar has not, each
/// naming its field, never its value; empty when it matches. `init`: it is among the
/// init containers, where the webhook injects a native sidecar.
fn sidecar_mismatches(cfg: &InjectConfig, container: &Value, init: bool) -> Vec<String> {
    let context = container.get("securityContext");
    let capabilities = field(context, "capabilities");
    let mut wrong = Vec::new();
    if container.get("image").and_then(Value::as_str) != Some(cfg.sidecar_image.as_str()) {
        wrong.push("image is not the configured sidecar image".to_string());
    }
    if init && container.get("restartPolicy").and_then(Value::as_str) != Some("Always") {
        wrong.push("restartPolicy is not Always".into());
    }
    // `ALL` as both containerd and CRI-O recognise it: the whole entry, any case.
    let drops_all = capabilities
        .and_then(|c| c.get("drop"))
        .and_then(Value::as_array)
        .is_some_and(|list| {
            list.iter()
                .any(|d| d.as_str().is_some_and(|n| n.eq_ignore_ascii_case("ALL")))
        });
    if !drops_all {
        wrong.push("securityContext.capabilities.drop does not contain ALL".into());
    }
    let adds = match capabilities.and_then(|c| c.get("add")) {
        None | Some(Value::Null) => false,
        Some(Value::Array(add)) => !add.is_empty(),
        Some(_) => true,
    };
    if adds {
        wrong.push("securityContext.capabilities.add is not empty".into());
    }
    if field(context, "privileged") == Some(&Value::Bool(true)) {
        wrong.push("securityContext.privileged is true".into());
    }
    if field(context, "allowPrivilegeEscalation") != Some(&Value::Bool(false)) {
        wrong.push("securityContext.allowPrivilegeEscalation is not false".into());
    }
    if field(context, "runAsUser").and_then(Value::as_i64) != Some(cfg.run_as_user) {
        wrong.push(format!(
            "securityContext.runAsUser is not {}",
            cfg.run_as_user
        ));
    }
    wrong
}

/// Refuses what no annotation allows; otherwise says whether the pod is enforceable.
/// Run on every pod created, injected already or not: a container named
/// [`SIDECAR_NAME`] is checked against the sidecar the webhook injects, every other
/// one as an app container.
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
    let mut classic = !settings.native_sidecar;
    for list in CONTAINER_LISTS {
        for (i, container) in containers(pod, list).enumerate() {
            let path = format!("spec.{list}[{i}]");
            if is_sidecar(container) {
                let wrong = sidecar_mismatches(cfg, container, list == "initContainers");
                if !wrong.is_empty() {
                    refused.push(format!(
                        "{path}: a container named {SIDECAR_NAME} that the webhook did not inject ({}); rename it, the webhook injects its own",
                        wrong.join(", ")
                    ));
                }
                // Among the regular containers, it starts with the apps: classic mode.
                classic |= list == "containers";
                continue;
            }
            let context = container.get("securityContext");
            for key in ["add", "drop"] {
                let entries = field(context, "capabilities")
                    .and_then(|c| c.get(key))
                    .and_then(Value::as_array);
                for (j, entry) in entries.into_iter().flatten().enumerate() {
                    if !plain_capability(entry) {
                        refused.push(format!(
                            "{path}.securityContext.capabilities.{key}[{j}]: not a plain capability name (ASCII letters and underscores, optionally after CAP_); runtimes fold other characters and spaces into names the webhook would not recognise"
                        ));
                    }
                }
            }
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
    for (key, refusal, reason) in [
        (
            "hostPID",
            "shows every process of the node to the app containers, the sidecars of this pod and of others included, whose sockets they could take (ptrace, pidfd_getfd(2)) to go around the egress enforcement",
            "uses the node's process namespace (spec.hostPID)",
        ),
        (
            "hostIPC",
            "shares the node's IPC namespace (shared memory, message queues) with the app containers, a channel to processes of the node the egress agent does not hold",
            "uses the node's IPC namespace (spec.hostIPC)",
        ),
    ] {
        if pod.get("spec").and_then(|s| s.get(key)) != Some(&Value::Bool(true)) {
            continue;
        }
        if settings.allow_host_pid_ipc {
            reasons.push(reason.to_string());
        } else {
            refused.push(format!(
                "spec.{key}: true {refusal}; refused unless the annotation {EGRESS_ALLOW_HOST_PID_IPC} is \"true\" (the pod is then flagged not enforceable)"
            ));
        }
    }
    if classic {
        reasons.push(CLASSIC_SIDECAR_REASON.into());
    }
    if refused.is_empty() {
        Ok(Enforceability { reasons })
    } else {
        Err(Refused(refused))
    }
}

/// Whether a `capabilities.add` entry may grant `cap`: any case, with or without the
/// `CAP_` prefix CRI-O accepts (removing too much from `add` is harmless). Entries are
/// plain ASCII: [`check`] refused the others.
fn may_grant(entry: &Value, cap: &str) -> bool {
    let Some(name) = entry.as_str() else {
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

/// Drops [`EGRESS_CAPABILITIES`] but `kept` from one app container: each appended to
/// `securityContext.capabilities.drop` unless an entry spelt exactly like it is there,
/// and removed from `capabilities.add`. Appended even beside `ALL`: containerd takes
/// only an entry that is exactly `ALL` (any case) for all — not `" ALL"`, not
/// `CAP_ALL` — and keeps its default set (`NET_RAW` in it) otherwise; nor does it read
/// a `CAP_` prefix in `drop`. Runtimes apply the named drops after every addition, so an
/// appended name always holds. The sidecar is not an app container: never passed here.
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
    if let Some(list) = child_array(capabilities, "drop") {
        for cap in &dropped {
            if !list.iter().any(|d| d.as_str() == Some(*cap)) {
                list.push(Value::from(*cap));
            }
        }
    }
    let mut emptied = false;
    if let Some(Value::Array(add)) = capabilities.get_mut("add") {
        let before = add.len();
        add.retain(|a| !dropped.iter().any(|cap| may_grant(a, cap)));
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
    use crate::overrides::NATIVE_SIDECAR;
    use crate::{
        ENFORCEABLE_ANNOTATION, ENROL_LABEL, NOT_ENFORCEABLE_REASON_ANNOTATION, STATUS_ANNOTATION,
        Trigger, overrides,
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
        let mut c = app(json!({"capabilities": {"drop": ["NET_RAW", "CHOWN"]}}));
        drop_capabilities(&mut c, &[]);
        assert_eq!(
            c["securityContext"]["capabilities"],
            json!({"drop": ["NET_RAW", "CHOWN", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]})
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
        // An `add` left empty goes; the four are appended after `ALL`.
        let mut only = app(json!({
            "capabilities": {"add": ["sys_admin"], "drop": ["ALL"]}
        }));
        drop_capabilities(&mut only, &[]);
        assert_eq!(
            only["securityContext"]["capabilities"],
            json!({"drop": ["ALL", "NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]})
        );
        // Any case, with or without `CAP_`: whatever a runtime could read as one of them.
        let mut spelt = app(json!({
            "capabilities": {"add": ["Net_Raw", "cap_net_admin", "CAP_SYS_ADMIN", "CHOWN"]}
        }));
        drop_capabilities(&mut spelt, &[]);
        assert_eq!(
            spelt["securityContext"]["capabilities"]["add"],
            json!(["CHOWN"])
        );
    }

    /// W1: containerd reads only an entry that is exactly `ALL` (any case) as all, and
    /// no `CAP_` prefix in `drop` ("CAP_" + upper-case name); whatever the entries, the
    /// four are named, unless spelt exactly so already.
    #[test]
    fn the_four_are_appended_whatever_the_drop_list_holds() {
        for given in [
            json!(["ALL"]),
            json!(["all"]),
            json!(["CAP_ALL"]),
            json!([
                "ALL",
                "net_raw",
                "CAP_NET_ADMIN",
                "Sys_Admin",
                "cap_sys_ptrace"
            ]),
        ] {
            let mut c = app(json!({
                "capabilities": {"drop": given.clone(), "add": ["NET_BIND_SERVICE"]}
            }));
            drop_capabilities(&mut c, &[]);
            let caps = &c["securityContext"]["capabilities"];
            let list = caps["drop"].as_array().unwrap();
            let given = given.as_array().unwrap().as_slice();
            assert_eq!(
                &list[..given.len()],
                given,
                "what the pod dropped stays first"
            );
            for cap in EGRESS_CAPABILITIES {
                let exact = list.iter().filter(|d| d.as_str() == Some(cap)).count();
                assert_eq!(exact, 1, "{cap} in {list:?}");
            }
            assert_eq!(caps["add"], json!(["NET_BIND_SERVICE"]));
            let once = c.clone();
            drop_capabilities(&mut c, &[]);
            assert_eq!(c, once, "a second pass adds nothing");
        }
    }

    /// W2: names a runtime upper-cases with Unicode rules or trims (`ſYS_ADMIN` is
    /// SYS_ADMIN to Go's `ToUpper`) are refused, naming the entry, not repeating it.
    #[test]
    fn capability_names_that_are_not_plain_ascii_are_refused() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let p = pod(json!({
            "initContainers": [{"name": "i", "securityContext": {
                "capabilities": {"add": ["CHOWN", "\u{17f}YS_ADMIN"]}
            }}],
            "containers": [{"name": "a", "securityContext": {
                "capabilities": {
                    "add": ["NET_ADM\u{131}N", " NET_RAW", "SYS_PTRACE\n", "", 7],
                    "drop": [" ALL", "ALL\u{0}", "CAP_ALL"]
                }
            }}]
        }));
        let err = check(&cfg, &none, &p).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|r| r.split(':').next().unwrap()).collect();
        assert_eq!(
            paths,
            [
                "spec.containers[0].securityContext.capabilities.add[0]",
                "spec.containers[0].securityContext.capabilities.add[1]",
                "spec.containers[0].securityContext.capabilities.add[2]",
                "spec.containers[0].securityContext.capabilities.add[3]",
                "spec.containers[0].securityContext.capabilities.add[4]",
                "spec.containers[0].securityContext.capabilities.drop[0]",
                "spec.containers[0].securityContext.capabilities.drop[1]",
                "spec.initContainers[0].securityContext.capabilities.add[1]",
            ]
        );
        let all = err.to_string();
        assert!(all.contains("not a plain capability name"), "{all}");
        for value in ["\u{17f}", "\u{131}", "ADM", " NET_RAW", "YS_ADMIN"] {
            assert!(!all.contains(value), "{value:?} echoed in {all}");
        }
        // Plain names in any case, with or without `CAP_`, pass.
        let plain = pod(json!({
            "containers": [{"name": "a", "securityContext": {
                "capabilities": {"add": ["net_bind_service", "CAP_CHOWN"], "drop": ["all", "CAP_ALL"]}
            }}]
        }));
        assert!(check(&cfg, &none, &plain).unwrap().enforceable());
        // Through the handler: denied, nothing patched.
        let (response, patched) = through_review(|pod| {
            let sc = json!({"capabilities": {"add": ["\u{17f}YS_ADMIN"], "drop": ["ALL"]}});
            pod["spec"]["containers"][0]["securityContext"] = sc;
        });
        assert!(patched.is_none());
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "vigie sidecar injection: spec.containers[0].securityContext.capabilities.add[0]: not a plain capability name"
            ),
            "{message}"
        );
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
        // Kept beside `ALL`: the others are still named.
        let mut beside_all = app(json!({"capabilities": {"drop": ["ALL"]}}));
        drop_capabilities(&mut beside_all, &["NET_RAW", "SYS_ADMIN"]);
        assert_eq!(
            beside_all["securityContext"]["capabilities"],
            json!({"drop": ["ALL", "NET_ADMIN", "SYS_PTRACE"]})
        );
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

    /// The sidecar the webhook injects with the default configuration, as JSON.
    fn injected_sidecar(native: &str) -> Value {
        let cfg = InjectConfig::default();
        let settings = settings(&[(NATIVE_SIDECAR, native)]);
        serde_json::to_value(crate::mutate::sidecar(&cfg, &settings, "chat")).unwrap()
    }

    /// W3: `vigie.io/status` is the webhook's to write; carried by a pod, it skips nothing.
    #[test]
    fn a_status_annotation_written_by_the_pod_skips_nothing() {
        let (response, pod) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({STATUS_ANNOTATION: "{\"mode\":\"native\"}"});
            pod["spec"]["shareProcessNamespace"] = json!(true);
        });
        assert!(pod.is_none());
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("vigie sidecar injection: spec.shareProcessNamespace: "),
            "{message}"
        );
        // Nothing refused: injected, the annotation replaced.
        let (response, pod) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({STATUS_ANNOTATION: "forged"});
        });
        assert_eq!(response["auditAnnotations"]["injection"], "injected");
        let pod = pod.unwrap();
        assert_eq!(pod["spec"]["initContainers"][0]["name"], SIDECAR_NAME);
        assert_ne!(pod["metadata"]["annotations"][STATUS_ANNOTATION], "forged");
        assert_eq!(
            pod["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": EGRESS_CAPABILITIES})
        );
    }

    /// W3: a container named like the sidecar must be the one the webhook injects.
    #[test]
    fn a_sidecar_written_by_hand_is_refused_unless_it_is_the_injected_one() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let fake = json!({"name": SIDECAR_NAME, "image": "registry.example/evil:1", "securityContext": {
            "privileged": true,
            "runAsUser": 47880,
            "capabilities": {"add": ["NET_RAW"], "drop": [" ALL"]}
        }});
        let p = pod(json!({"containers": [{"name": "a"}, fake]}));
        let err = check(&cfg, &none, &p).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.containers[1]: a container named vigie-sidecar that the webhook did not inject (image is not the configured sidecar image, securityContext.capabilities.drop does not contain ALL, securityContext.capabilities.add is not empty, securityContext.privileged is true, securityContext.allowPrivilegeEscalation is not false); rename it, the webhook injects its own"
        );
        assert!(!err.contains("evil"), "{err}");
        // No security context at all, among the init containers.
        let bare = pod(json!({
            "initContainers": [{"name": SIDECAR_NAME, "image": cfg.sidecar_image}],
            "containers": [{"name": "a"}]
        }));
        let err = check(&cfg, &none, &bare).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "spec.initContainers[0]: a container named vigie-sidecar that the webhook did not inject (restartPolicy is not Always, securityContext.capabilities.drop does not contain ALL, securityContext.allowPrivilegeEscalation is not false, securityContext.runAsUser is not 47880)"
            ),
            "{err}"
        );
        // The injected sidecar passes (its uid is not an app's), in either place.
        let native = injected_sidecar("true");
        let genuine =
            pod(json!({"initContainers": [native.clone()], "containers": [{"name": "a"}]}));
        assert!(check(&cfg, &none, &genuine).unwrap().enforceable());
        let classic = pod(json!({"containers": [injected_sidecar("false"), {"name": "a"}]}));
        assert!(check(&cfg, &none, &classic).is_ok());
        // Any one field that differs is enough.
        for (parent, key, value) in [
            ("", "image", json!("registry.example/evil:1")),
            ("", "restartPolicy", json!("Never")),
            ("/securityContext", "runAsUser", json!(1000)),
            ("/securityContext", "privileged", json!(true)),
            ("/securityContext", "allowPrivilegeEscalation", json!(true)),
            ("/securityContext/capabilities", "drop", json!(["CAP_ALL"])),
            (
                "/securityContext/capabilities",
                "add",
                json!(["SYS_PTRACE"]),
            ),
        ] {
            let mut changed = native.clone();
            changed.pointer_mut(parent).unwrap()[key] = value;
            let p = pod(json!({"initContainers": [changed], "containers": [{"name": "a"}]}));
            let err = check(&cfg, &none, &p).unwrap_err();
            assert_eq!(err.0.len(), 1, "{key}: {err}");
            assert!(
                err.0[0].starts_with("spec.initContainers[0]: a container named vigie-sidecar "),
                "{key}: {err}"
            );
        }
    }

    /// W3: a pod that arrives with the sidecar in it (reinvocation, or written so) is
    /// checked like any other and its apps are held; a pod the webhook injected and
    /// nobody changed is left as it is.
    #[test]
    fn a_pod_carrying_the_sidecar_is_checked_and_its_apps_held() {
        let (_, injected) = through_review(|_| {});
        let injected = injected.unwrap();
        let (response, again) = through_review(|pod| *pod = injected.clone());
        assert_eq!(response["allowed"], true, "{response}");
        assert!(again.is_none(), "{response}");
        assert_eq!(
            response["auditAnnotations"]["injection"],
            "skipped: already injected"
        );

        // Changed since: the apps are held again, the pod enrolled and flagged anew.
        let (response, held) = through_review(|pod| {
            *pod = injected.clone();
            let sc = json!({"capabilities": {"add": ["NET_RAW"], "drop": ["ALL"]}});
            pod["spec"]["containers"][0]["securityContext"] = sc;
            let labels = pod["metadata"]["labels"].as_object_mut().unwrap();
            labels.remove(ENROL_LABEL);
            pod["metadata"]["annotations"][ENFORCEABLE_ANNOTATION] = json!("false");
        });
        assert_eq!(response["allowed"], true, "{response}");
        assert_eq!(
            response["auditAnnotations"]["injection"],
            "already injected: app containers held again"
        );
        let held = held.unwrap();
        assert_eq!(
            held["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": ["ALL", "NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"]})
        );
        assert_eq!(held["metadata"]["labels"][ENROL_LABEL], "enforced");
        assert_eq!(
            held["metadata"]["annotations"][ENFORCEABLE_ANNOTATION],
            "true"
        );
        assert_eq!(
            held["spec"]["initContainers"][0], injected["spec"]["initContainers"][0],
            "the sidecar is left as it is"
        );

        // Refused what any pod is refused.
        let (response, refused) = through_review(|pod| {
            *pod = injected.clone();
            pod["spec"]["shareProcessNamespace"] = json!(true);
            let sc = json!({"runAsUser": 47880, "privileged": true});
            pod["spec"]["containers"][0]["securityContext"] = sc;
        });
        assert!(refused.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        for field in [
            "spec.containers[0].securityContext.runAsUser: 47880 ",
            "spec.containers[0].securityContext.privileged: ",
            "spec.shareProcessNamespace: ",
        ] {
            assert!(message.contains(field), "{field} missing from {message}");
        }

        // A sidecar changed since is not the injected one any more.
        let (response, refused) = through_review(|pod| {
            *pod = injected.clone();
            let caps = json!({"add": ["SYS_PTRACE"], "drop": ["ALL"]});
            pod["spec"]["initContainers"][0]["securityContext"]["capabilities"] = caps;
        });
        assert!(refused.is_none());
        assert_eq!(
            response["status"]["message"],
            "vigie sidecar injection: spec.initContainers[0]: a container named vigie-sidecar that the webhook did not inject (securityContext.capabilities.add is not empty); rename it, the webhook injects its own"
        );

        // One written exactly as the webhook would: accepted, the apps held, enrolled.
        let (response, supplied) = through_review(|pod| {
            pod["spec"]["initContainers"] = json!([injected_sidecar("true")]);
        });
        assert_eq!(response["allowed"], true, "{response}");
        let supplied = supplied.unwrap();
        assert_eq!(
            supplied["spec"]["containers"][0]["securityContext"]["capabilities"],
            json!({"drop": EGRESS_CAPABILITIES})
        );
        assert_eq!(supplied["metadata"]["labels"][ENROL_LABEL], "enforced");
        assert_eq!(
            supplied["metadata"]["annotations"][ENFORCEABLE_ANNOTATION],
            "true"
        );
    }

    /// W4: the node's process and IPC namespaces.
    #[test]
    fn host_pid_and_ipc_are_refused_unless_allowed_then_flagged() {
        let cfg = InjectConfig::default();
        let p = pod(json!({"hostPID": true, "hostIPC": true, "containers": [{"name": "a"}]}));
        let err = check(&cfg, &settings(&[]), &p).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.0[0].starts_with("spec.hostPID: true "), "{err}");
        assert!(err.0[1].starts_with("spec.hostIPC: true "), "{err}");
        for reason in &err.0 {
            assert!(reason.contains(EGRESS_ALLOW_HOST_PID_IPC), "{reason}");
        }
        // The other opt-outs do not cover it.
        let others = settings(&[
            (EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE, "true"),
            (EGRESS_KEEP_CAPABILITIES, ALL_FOUR),
            (EGRESS_ALLOW_HOST_PID_IPC, "false"),
        ]);
        assert_eq!(check(&cfg, &others, &p).unwrap_err().0.len(), 2);
        let allowed = settings(&[(EGRESS_ALLOW_HOST_PID_IPC, "true")]);
        let e = check(&cfg, &allowed, &p).unwrap();
        assert_eq!(
            e.reason(),
            "uses the node's process namespace (spec.hostPID); uses the node's IPC namespace (spec.hostIPC)"
        );
        let only_ipc =
            pod(json!({"hostPID": false, "hostIPC": true, "containers": [{"name": "a"}]}));
        let err = check(&cfg, &settings(&[]), &only_ipc).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].starts_with("spec.hostIPC: "), "{err}");
        let neither =
            pod(json!({"hostPID": false, "hostIPC": false, "containers": [{"name": "a"}]}));
        assert!(check(&cfg, &settings(&[]), &neither).unwrap().enforceable());

        // Through the handler: refused; allowed by annotation, injected and flagged.
        let (response, refused) = through_review(|pod| pod["spec"]["hostPID"] = json!(true));
        assert!(refused.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("vigie sidecar injection: spec.hostPID: true "),
            "{message}"
        );
        let (response, injected) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({EGRESS_ALLOW_HOST_PID_IPC: "true"});
            pod["spec"]["hostPID"] = json!(true);
        });
        assert_eq!(response["allowed"], true, "{response}");
        let injected = injected.unwrap();
        let annotations = &injected["metadata"]["annotations"];
        assert_eq!(annotations[ENFORCEABLE_ANNOTATION], "false");
        assert_eq!(
            annotations[NOT_ENFORCEABLE_REASON_ANNOTATION],
            "uses the node's process namespace (spec.hostPID)"
        );
        assert_eq!(injected["metadata"]["labels"][ENROL_LABEL], "enforced");
    }

    /// W5: with a classic sidecar the app may connect before the pod is enrolled.
    #[test]
    fn a_classic_sidecar_flags_the_pod_not_enforceable() {
        let cfg = InjectConfig::default();
        let p = pod(json!({"containers": [{"name": "a"}]}));
        let by_annotation = settings(&[(NATIVE_SIDECAR, "false")]);
        let e = check(&cfg, &by_annotation, &p).unwrap();
        assert_eq!(e.reason(), CLASSIC_SIDECAR_REASON);
        let classic_cfg = InjectConfig {
            native_sidecar: false,
            ..InjectConfig::default()
        };
        let by_config = overrides::resolve(&classic_cfg, &BTreeMap::new()).unwrap();
        assert_eq!(
            check(&cfg, &by_config, &p).unwrap().reason(),
            CLASSIC_SIDECAR_REASON
        );
        let keep = settings(&[
            (NATIVE_SIDECAR, "false"),
            (EGRESS_KEEP_CAPABILITIES, "NET_RAW"),
        ]);
        assert_eq!(
            check(&cfg, &keep, &p).unwrap().reason(),
            format!("keeps NET_RAW; {CLASSIC_SIDECAR_REASON}")
        );

        // Through the handler: injected (not refused), flagged; a second pass changes
        // nothing.
        let (response, injected) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({NATIVE_SIDECAR: "false"});
        });
        assert_eq!(response["allowed"], true, "{response}");
        let warnings = response["warnings"].as_array().unwrap();
        assert!(
            warnings[0]
                .as_str()
                .unwrap()
                .contains("classic sidecar container")
        );
        assert_eq!(
            warnings[1],
            format!("vigie: egress not enforceable: {CLASSIC_SIDECAR_REASON}")
        );
        let injected = injected.unwrap();
        assert_eq!(injected["spec"]["containers"][0]["name"], SIDECAR_NAME);
        let annotations = &injected["metadata"]["annotations"];
        assert_eq!(annotations[ENFORCEABLE_ANNOTATION], "false");
        assert_eq!(
            annotations[NOT_ENFORCEABLE_REASON_ANNOTATION],
            CLASSIC_SIDECAR_REASON
        );
        let (response, again) = through_review(|pod| *pod = injected.clone());
        assert!(again.is_none(), "{response}");
        // A sidecar among the regular containers is classic whatever the annotations say.
        let (_, supplied) = through_review(|pod| {
            let containers = pod["spec"]["containers"].as_array_mut().unwrap();
            containers.push(injected_sidecar("false"));
        });
        let supplied = supplied.unwrap();
        assert_eq!(
            supplied["metadata"]["annotations"][NOT_ENFORCEABLE_REASON_ANNOTATION],
            CLASSIC_SIDECAR_REASON
        );
    }
}
