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
//! `capabilities.add`; it refuses capability names that are not plain ASCII,
//! `capabilities.add` entries outside [`BASELINE_CAPABILITIES`] and the four, an app
//! running as the sidecar's uid, a privileged app container (or one adding `ALL`),
//! `shareProcessNamespace: true`, `hostPID: true`, `hostIPC: true` and `hostPath`
//! volumes. Four annotations opt out ([`EGRESS_KEEP_CAPABILITIES`],
//! [`EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE`], [`EGRESS_ALLOW_HOST_PID_IPC`],
//! [`EGRESS_ALLOW_HOST_PATH`]); the pod is then injected but flagged
//! `vigie.io/egress-enforceable: "false"` with the reason. A classic sidecar (an app
//! container like the others, started with them) is flagged too.
//!
//! A pod created with a container already named [`SIDECAR_NAME`] is refused: the
//! webhook is registered with `reinvocationPolicy: Never`, so the API server never
//! sends the webhook's own output back to it, and such a container was written by
//! someone else (a spec copied from an injected pod, say).

use serde_json::{Map, Value};

use crate::SIDECAR_NAME;
use crate::config::InjectConfig;
use crate::decide::{containers, is_sidecar};
use crate::overrides::{
    EGRESS_ALLOW_HOST_PATH, EGRESS_ALLOW_HOST_PID_IPC, EGRESS_ALLOW_SHARED_PROCESS_NAMESPACE,
    EGRESS_KEEP_CAPABILITIES, PodSettings,
};

/// Capabilities that go around the egress enforcement: dropped from every app
/// container unless kept with [`EGRESS_KEEP_CAPABILITIES`].
pub const EGRESS_CAPABILITIES: [&str; 4] = ["NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"];

/// The capabilities the Kubernetes Pod Security "baseline" standard lets a container
/// add. An app container may add these and [`EGRESS_CAPABILITIES`] (governed by
/// [`EGRESS_KEEP_CAPABILITIES`]); any other name is refused (`ALL` like `privileged`).
pub const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];

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

/// A capability name without its optional `CAP_` prefix (any case).
fn bare_capability(name: &str) -> &str {
    match (name.get(..4), name.get(4..)) {
        (Some(prefix), Some(rest)) if prefix.eq_ignore_ascii_case("CAP_") => rest,
        _ => name,
    }
}

/// A plain `capabilities.add` entry as a refusal shows it: short plain names only
/// (see [`plain_capability`]), anything else not repeated.
fn shown_capability(name: &str) -> String {
    if name.len() <= 32 {
        name.to_string()
    } else {
        "this entry (not shown)".into()
    }
}

/// Refuses what no annotation allows; otherwise says whether the pod is enforceable.
/// Run on every pod created: a container named [`SIDECAR_NAME`] is refused (reinvocation
/// is off, so the webhook never sees its own output: someone else wrote it), every
/// other one is checked as an app container.
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
    let classic = !settings.native_sidecar;
    for list in CONTAINER_LISTS {
        for (i, container) in containers(pod, list).enumerate() {
            let path = format!("spec.{list}[{i}]");
            if is_sidecar(container) {
                refused.push(format!(
                    "{path}: a container named {SIDECAR_NAME} is injected by the webhook; remove it (and its volumes) from the pod spec"
                ));
                continue;
            }
            let context = container.get("securityContext");
            for key in ["add", "drop"] {
                let entries = field(context, "capabilities")
                    .and_then(|c| c.get(key))
                    .and_then(Value::as_array);
                for (j, entry) in entries.into_iter().flatten().enumerate() {
                    let at = format!("{path}.securityContext.capabilities.{key}[{j}]");
                    let name = match entry.as_str() {
                        Some(name) if plain_capability(entry) => name,
                        _ => {
                            refused.push(format!(
                                "{at}: not a plain capability name (ASCII letters and underscores, optionally after CAP_); runtimes fold other characters and spaces into names the webhook would not recognise"
                            ));
                            continue;
                        }
                    };
                    if key != "add" {
                        continue;
                    }
                    let bare = bare_capability(name);
                    if bare.eq_ignore_ascii_case("ALL") {
                        if keeps_all {
                            reasons.push(format!("{path} adds ALL capabilities"));
                        } else {
                            refused.push(format!(
                                "{at}: adding ALL grants every capability ({} included) and goes around the egress enforcement; refused unless the annotation {EGRESS_KEEP_CAPABILITIES} lists all four (the pod is then flagged not enforceable)",
                                EGRESS_CAPABILITIES.join(", ")
                            ));
                        }
                    } else if !BASELINE_CAPABILITIES
                        .iter()
                        .chain(EGRESS_CAPABILITIES.iter())
                        .any(|c| bare.eq_ignore_ascii_case(c))
                    {
                        refused.push(format!(
                            "{at}: {} is outside the Kubernetes Pod Security baseline capabilities and {}; refused",
                            shown_capability(name),
                            EGRESS_CAPABILITIES.join(", ")
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
    let volumes = pod
        .pointer("/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for (i, volume) in volumes.enumerate() {
        if volume.get("hostPath").is_none_or(Value::is_null) {
            continue;
        }
        if settings.allow_host_path {
            reasons.push(format!("mounts a host path (spec.volumes[{i}])"));
        } else {
            refused.push(format!(
                "spec.volumes[{i}].hostPath: a host path gives the app containers the node's files, where a root process can remove the egress agent's pinned maps (/sys/fs/bpf) and go around the egress enforcement; refused unless the annotation {EGRESS_ALLOW_HOST_PATH} is \"true\" (the pod is then flagged not enforceable)"
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
    entry
        .as_str()
        .is_some_and(|name| bare_capability(name).eq_ignore_ascii_case(cap))
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

    /// W3: the webhook is registered with `reinvocationPolicy: Never`, so the API server
    /// never sends it its own output: a pod created with a container named like the
    /// sidecar was written by someone else (a spec copied from an injected pod, say),
    /// and is refused wherever the container is and whatever it holds.
    #[test]
    fn a_container_named_like_the_sidecar_is_refused_even_the_injected_one() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let fake = json!({"name": SIDECAR_NAME, "image": "registry.example/evil:1"});
        let p = pod(json!({"containers": [{"name": "a"}, fake]}));
        let err = check(&cfg, &none, &p).unwrap_err().to_string();
        assert_eq!(
            err,
            "spec.containers[1]: a container named vigie-sidecar is injected by the webhook; remove it (and its volumes) from the pod spec"
        );
        assert!(!err.contains("evil"), "{err}");
        // Exactly the one the webhook injects, in either place: refused all the same.
        let native = pod(json!({
            "initContainers": [injected_sidecar("true")],
            "containers": [{"name": "a"}]
        }));
        assert_eq!(
            check(&cfg, &none, &native).unwrap_err().to_string(),
            "spec.initContainers[0]: a container named vigie-sidecar is injected by the webhook; remove it (and its volumes) from the pod spec"
        );
        let classic = pod(json!({"containers": [injected_sidecar("false"), {"name": "a"}]}));
        let err = check(&cfg, &none, &classic).unwrap_err();
        assert_eq!(err.0.len(), 1, "{err}");
        assert!(err.0[0].starts_with("spec.containers[0]: "), "{err}");
    }

    /// W3: reinvocation is off, so a pod arriving with the sidecar (here the webhook's
    /// own output, copied into a new pod) was written by someone else: refused, nothing
    /// patched; no second pass to be a no-op.
    #[test]
    fn a_pod_already_carrying_the_sidecar_is_refused_as_reinvocation_is_off() {
        let (_, injected) = through_review(|_| {});
        let injected = injected.unwrap();
        let (response, again) = through_review(|pod| *pod = injected.clone());
        assert!(again.is_none(), "{response}");
        assert_eq!(response["allowed"], false, "{response}");
        assert_eq!(response["status"]["code"], 400);
        assert_eq!(
            response["status"]["message"],
            "vigie sidecar injection: spec.initContainers[0]: a container named vigie-sidecar is injected by the webhook; remove it (and its volumes) from the pod spec"
        );
        // Its other refusals are listed with it.
        let (response, refused) = through_review(|pod| {
            *pod = injected.clone();
            pod["spec"]["shareProcessNamespace"] = json!(true);
        });
        assert!(refused.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        for field in ["spec.initContainers[0]: ", "spec.shareProcessNamespace: "] {
            assert!(message.contains(field), "{field} missing from {message}");
        }
    }

    /// `capabilities.add`: `ALL` is refused like `privileged` (accepted, flagged, when
    /// all four are kept); a name outside the Pod Security baseline set and the four is
    /// refused, naming the entry's field and the (plain) name.
    #[test]
    fn adding_all_or_a_capability_outside_the_baseline_is_refused() {
        let cfg = InjectConfig::default();
        let none = settings(&[]);
        let p = pod(json!({
            "initContainers": [{"name": "i", "securityContext": {
                "capabilities": {"add": ["cap_all"]}
            }}],
            "containers": [{"name": "a", "securityContext": {
                "capabilities": {"add": ["CHOWN", "NET_RAW", "SYS_MODULE", "cap_bpf", "ALL"]}
            }}]
        }));
        let err = check(&cfg, &none, &p).unwrap_err();
        assert_eq!(err.0.len(), 4, "{err}");
        assert_eq!(
            err.0[0],
            "spec.containers[0].securityContext.capabilities.add[2]: SYS_MODULE is outside the Kubernetes Pod Security baseline capabilities and NET_RAW, NET_ADMIN, SYS_ADMIN, SYS_PTRACE; refused"
        );
        assert!(
            err.0[1].starts_with(
                "spec.containers[0].securityContext.capabilities.add[3]: cap_bpf is outside "
            ),
            "{err}"
        );
        for (reason, at) in [
            (
                &err.0[2],
                "spec.containers[0].securityContext.capabilities.add[4]: adding ALL ",
            ),
            (
                &err.0[3],
                "spec.initContainers[0].securityContext.capabilities.add[0]: adding ALL ",
            ),
        ] {
            assert!(reason.starts_with(at), "{reason}");
            assert!(reason.contains(EGRESS_KEEP_CAPABILITIES), "{reason}");
        }
        // All four kept: ALL is accepted and flagged; the unknown names are still refused.
        let four = settings(&[(EGRESS_KEEP_CAPABILITIES, ALL_FOUR)]);
        assert_eq!(check(&cfg, &four, &p).unwrap_err().0.len(), 2);
        let all = pod(json!({
            "containers": [{"name": "a", "securityContext": {"capabilities": {"add": ["ALL"]}}}]
        }));
        let some = settings(&[(EGRESS_KEEP_CAPABILITIES, "NET_RAW,SYS_PTRACE")]);
        assert!(check(&cfg, &some, &all).is_err());
        let e = check(&cfg, &four, &all).unwrap();
        assert_eq!(
            e.reason(),
            "keeps NET_RAW, NET_ADMIN, SYS_ADMIN, SYS_PTRACE; spec.containers[0] adds ALL capabilities"
        );
        // Every baseline name and the four, any case, with or without CAP_: accepted.
        let mut names: Vec<String> = BASELINE_CAPABILITIES
            .iter()
            .chain(EGRESS_CAPABILITIES.iter())
            .map(|c| c.to_string())
            .collect();
        names.push("cap_net_bind_service".into());
        names.push("Cap_Sys_Chroot".into());
        let baseline = pod(json!({
            "containers": [{"name": "a", "securityContext": {"capabilities": {"add": names}}}]
        }));
        assert!(check(&cfg, &none, &baseline).is_ok());
        // `drop` may name anything.
        let drops = pod(json!({
            "containers": [{"name": "a", "securityContext": {"capabilities": {"drop": ["SYS_MODULE", "ALL"]}}}]
        }));
        assert!(check(&cfg, &none, &drops).unwrap().enforceable());
        // Through the handler: denied, nothing patched.
        let (response, patched) = through_review(|pod| {
            let sc = json!({"capabilities": {"add": ["ALL"]}});
            pod["spec"]["containers"][0]["securityContext"] = sc;
        });
        assert!(patched.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "vigie sidecar injection: spec.containers[0].securityContext.capabilities.add[0]: adding ALL "
            ),
            "{message}"
        );
    }

    /// A root process with a host path on /sys/fs/bpf (or /) can remove the egress
    /// agent's pinned maps.
    #[test]
    fn host_path_volumes_are_refused_unless_allowed_then_flagged() {
        let cfg = InjectConfig::default();
        let p = pod(json!({
            "containers": [{"name": "a"}],
            "volumes": [
                {"name": "scratch", "emptyDir": {}},
                {"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}},
                {"name": "root", "hostPath": {"path": "/", "type": "Directory"}}
            ]
        }));
        for refusing in [
            settings(&[]),
            settings(&[(EGRESS_ALLOW_HOST_PATH, "false")]),
            settings(&[
                (EGRESS_ALLOW_HOST_PID_IPC, "true"),
                (EGRESS_KEEP_CAPABILITIES, ALL_FOUR),
            ]),
        ] {
            let err = check(&cfg, &refusing, &p).unwrap_err();
            assert_eq!(err.0.len(), 2, "{err}");
            assert!(err.0[0].starts_with("spec.volumes[1].hostPath: "), "{err}");
            assert!(err.0[1].starts_with("spec.volumes[2].hostPath: "), "{err}");
            assert!(err.0[0].contains(EGRESS_ALLOW_HOST_PATH), "{err}");
            assert!(!err.to_string().contains("Directory"), "{err}");
        }
        let allowed = settings(&[
            (EGRESS_ALLOW_HOST_PATH, "true"),
            (EGRESS_KEEP_CAPABILITIES, "NET_RAW"),
        ]);
        let e = check(&cfg, &allowed, &p).unwrap();
        assert_eq!(
            e.reason(),
            "keeps NET_RAW; mounts a host path (spec.volumes[1]); mounts a host path (spec.volumes[2])"
        );
        let none_mounted = pod(json!({
            "containers": [{"name": "a"}],
            "volumes": [{"name": "scratch", "emptyDir": {}}]
        }));
        assert!(
            check(&cfg, &settings(&[]), &none_mounted)
                .unwrap()
                .enforceable()
        );

        // Through the handler: refused; allowed by annotation, injected and flagged.
        let (response, refused) = through_review(|pod| {
            pod["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": "/"}}]);
        });
        assert!(refused.is_none());
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("vigie sidecar injection: spec.volumes[0].hostPath: "),
            "{message}"
        );
        let (response, injected) = through_review(|pod| {
            pod["metadata"]["annotations"] = json!({EGRESS_ALLOW_HOST_PATH: "true"});
            pod["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": "/"}}]);
        });
        assert_eq!(response["allowed"], true, "{response}");
        let injected = injected.unwrap();
        let annotations = &injected["metadata"]["annotations"];
        assert_eq!(annotations[ENFORCEABLE_ANNOTATION], "false");
        assert_eq!(
            annotations[NOT_ENFORCEABLE_REASON_ANNOTATION],
            "mounts a host path (spec.volumes[0])"
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

        // Through the handler: injected (not refused), flagged; the injected pod seen
        // again is refused (reinvocation is off: a pod carrying the sidecar was written by
        // someone else).
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
        assert_eq!(response["allowed"], false, "{response}");
        let message = response["status"]["message"].as_str().unwrap();
        assert!(
            message.starts_with(
                "vigie sidecar injection: spec.containers[0]: a container named vigie-sidecar is injected by the webhook; "
            ),
            "{message}"
        );
    }
}
