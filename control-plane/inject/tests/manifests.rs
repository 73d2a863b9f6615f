//! `deploy/` rendered by the real `kubectl kustomize`; every object read into its
//! `k8s-openapi` type (nothing dropped on the way back: a misspelt field fails), and
//! ports, paths, images and labels cross-checked with the webhook and the code.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test code"
)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Namespace, PersistentVolumeClaim, Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde::Deserialize as _;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use vigie_inject::{InjectConfig, Trigger};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

fn kustomize(dir: &Path, extra: &[&str]) -> Vec<Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .args(extra)
        .arg(dir)
        .output()
        .expect("kubectl must be installed (it is on this machine kind; see README)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_slice(&out.stdout)
        .map(|doc| {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// Reads `v` as `T` and back: any field `T` does not know is lost and fails here.
fn strict<T: DeserializeOwned + Serialize>(v: &Value) -> T {
    let typed: T = serde_json::from_value(v.clone())
        .unwrap_or_else(|e| panic!("{} {}: {e}", v["kind"], v["metadata"]["name"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        back, *v,
        "{} {} does not round-trip",
        v["kind"], v["metadata"]["name"]
    );
    typed
}

/// Checks every object of a rendering; returns them by kind/name.
fn check_all(objects: &[Value]) -> BTreeMap<String, Value> {
    let mut by = BTreeMap::new();
    for o in objects {
        let kind = o["kind"].as_str().unwrap();
        match (o["apiVersion"].as_str().unwrap(), kind) {
            ("v1", "Namespace") => drop(strict::<Namespace>(o)),
            ("v1", "ServiceAccount") => drop(strict::<ServiceAccount>(o)),
            ("v1", "Service") => drop(strict::<Service>(o)),
            ("v1", "ConfigMap") => drop(strict::<ConfigMap>(o)),
            ("v1", "Secret") => drop(strict::<Secret>(o)),
            ("v1", "PersistentVolumeClaim") => drop(strict::<PersistentVolumeClaim>(o)),
            ("apps/v1", "Deployment") => drop(strict::<Deployment>(o)),
            ("apps/v1", "DaemonSet") => drop(strict::<DaemonSet>(o)),
            ("policy/v1", "PodDisruptionBudget") => drop(strict::<PodDisruptionBudget>(o)),
            ("networking.k8s.io/v1", "NetworkPolicy") => drop(strict::<NetworkPolicy>(o)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => drop(strict::<ClusterRole>(o)),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                drop(strict::<ClusterRoleBinding>(o))
            }
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                drop(strict::<MutatingWebhookConfiguration>(o))
            }
            // Custom resources: no k8s-openapi type; their required fields are checked.
            ("cert-manager.io/v1", "Issuer") => assert!(o["spec"].is_object()),
            ("cert-manager.io/v1", "Certificate") => {
                assert!(o["spec"]["secretName"].is_string());
                assert!(o["spec"]["issuerRef"]["name"].is_string());
            }
            ("postgresql.cnpg.io/v1", "Cluster") => {
                assert!(o["spec"]["instances"].as_u64().unwrap() >= 3)
            }
            (api, kind) => panic!("unexpected object {api} {kind}"),
        }
        let name = o["metadata"]["name"].as_str().unwrap();
        assert!(
            by.insert(format!("{kind}/{name}"), o.clone()).is_none(),
            "duplicate {kind}/{name}"
        );
    }
    by
}

fn env(container: &Value, name: &str) -> Option<String> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str().map(String::from))
}

fn port_of(addr: &str) -> u64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

fn inject_config(objects: &BTreeMap<String, Value>) -> InjectConfig {
    let cm = objects
        .iter()
        .find(|(k, _)| k.starts_with("ConfigMap/vigie-inject"))
        .map(|(_, v)| v)
        .expect("the vigie-inject ConfigMap");
    let cfg: InjectConfig = serde_json::from_str(cm["data"]["inject.json"].as_str().unwrap())
        .expect("inject.json is an InjectConfig");
    cfg.validate().unwrap();
    cfg
}

/// What the deployment, service, webhook and injection config must agree on.
fn cross_check(objects: &BTreeMap<String, Value>) {
    let cfg = inject_config(objects);
    let deployment = &objects["Deployment/vigie-control-plane"];
    let pod = &deployment["spec"]["template"]["spec"];
    let cp = &pod["containers"][0];
    let service = &objects["Service/vigie-control-plane"];
    let version = vigie_inject::VERSION;

    // Images: one release everywhere, and the sidecar the webhook injects is of it.
    assert_eq!(
        cp["image"],
        format!("ghcr.io/vigie-dev/vigie-control-plane:{version}")
    );
    assert_eq!(
        cfg.sidecar_image,
        format!("ghcr.io/vigie-dev/vigie-sidecar:{version}")
    );
    // The control plane runs as the image's user; the sidecars it injects as another,
    // which no app may use (65532 is distroless `nonroot`, common in app images).
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(cfg.run_as_user, vigie_inject::config::DEFAULT_SIDECAR_UID);
    assert_ne!(pod["securityContext"]["runAsUser"], cfg.run_as_user);

    // Ports: container ports, their env, the service.
    let container_port = |name: &str| {
        cp["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["containerPort"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        port_of(&env(cp, "VIGIE_LISTEN").unwrap()),
        container_port("grpc")
    );
    assert_eq!(
        port_of(&env(cp, "VIGIE_WEBHOOK_LISTEN").unwrap()),
        container_port("webhook")
    );
    let service_port = |name: &str| {
        let p = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap();
        assert_eq!(
            p["targetPort"], name,
            "service port {name} targets the named container port"
        );
        p["port"].as_u64().unwrap()
    };
    assert_eq!(
        service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"],
        "the service selects the control-plane pods"
    );

    // The sidecars reach the control plane through that service and port.
    let svc_host = format!(
        "{}.{}.svc",
        service["metadata"]["name"].as_str().unwrap(),
        service["metadata"]["namespace"].as_str().unwrap()
    );
    assert_eq!(
        cfg.control_plane_url,
        format!("http://{svc_host}:{}", service_port("grpc"))
    );
    // The token the sidecars present is the one the control plane accepts.
    assert_eq!(
        env(cp, "VIGIE_K8S_TOKEN_AUDIENCE").unwrap(),
        cfg.token_audience
    );
    // The webhook mounts its certificate from the Secret cert-manager writes.
    let cert = &objects["Certificate/vigie-webhook"];
    let tls_volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "webhook-tls")
        .unwrap();
    assert_eq!(
        tls_volume["secret"]["secretName"],
        cert["spec"]["secretName"]
    );
    let dns: Vec<_> = cert["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(dns.contains(&svc_host.as_str()));

    // The webhook entries call the service's webhook port, on the handler's paths.
    let webhook = &objects["MutatingWebhookConfiguration/vigie-sidecar-injector"];
    assert_eq!(
        webhook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        format!(
            "vigie-system/{}",
            cert["metadata"]["name"].as_str().unwrap()
        )
    );
    let paths: Vec<_> = webhook["webhooks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| {
            let svc = &w["clientConfig"]["service"];
            assert_eq!(svc["name"], service["metadata"]["name"]);
            assert_eq!(svc["namespace"], service["metadata"]["namespace"]);
            assert_eq!(svc["port"].as_u64().unwrap(), service_port("webhook"));
            assert_eq!(w["failurePolicy"], "Fail");
            assert_eq!(w["sideEffects"], "None");
            assert!(w["timeoutSeconds"].as_u64().unwrap() <= 10);
            svc["path"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        paths,
        [vigie_inject::PATH_NAMESPACE, vigie_inject::PATH_POD]
    );
    // The system namespaces the handler skips are the ones the selectors exclude.
    for w in webhook["webhooks"].as_array().unwrap() {
        let exprs = w["namespaceSelector"]["matchExpressions"]
            .as_array()
            .unwrap();
        let names = exprs
            .iter()
            .find(|e| e["key"] == "kubernetes.io/metadata.name")
            .unwrap();
        assert_eq!(names["operator"], "NotIn");
        assert_eq!(
            names["values"],
            serde_json::to_value(&cfg.skip_namespaces).unwrap()
        );
    }
}

#[test]
fn dev_overlay_renders_valid_objects_that_agree() {
    let objects = check_all(&kustomize(&repo().join("deploy/overlays/dev"), &[]));
    cross_check(&objects);
    let d = &objects["Deployment/vigie-control-plane"];
    assert_eq!(d["spec"]["replicas"], 1);
    assert_eq!(d["spec"]["strategy"]["type"], "Recreate");
    let env_names: Vec<_> = d["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert!(
        !env_names.contains(&"VIGIE_DATABASE_URL".into()),
        "dev uses the embedded store"
    );
    assert_eq!(
        d["spec"]["template"]["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "vigie-control-plane-data"
    );
    assert!(objects.contains_key("PersistentVolumeClaim/vigie-control-plane-data"));
}

#[test]
fn ha_overlay_runs_three_replicas_on_cloudnativepg() {
    let objects = check_all(&kustomize(&repo().join("deploy/overlays/ha"), &[]));
    cross_check(&objects);
    let d = &objects["Deployment/vigie-control-plane"];
    assert_eq!(d["spec"]["replicas"], 3);
    let cp = &d["spec"]["template"]["spec"]["containers"][0];
    let db = cp["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "VIGIE_DATABASE_URL")
        .unwrap();
    let cluster = &objects["Cluster/vigie-db"];
    // CloudNativePG names the application secret <cluster>-app.
    assert_eq!(
        db["valueFrom"]["secretKeyRef"]["name"],
        format!("{}-app", cluster["metadata"]["name"].as_str().unwrap())
    );
    assert_eq!(
        objects["PodDisruptionBudget/vigie-control-plane"]["spec"]["minAvailable"],
        2
    );
    let netpol = &objects["NetworkPolicy/vigie-control-plane"];
    assert!(
        netpol
            .to_string()
            .contains("\"cnpg.io/cluster\":\"vigie-db\"")
    );
}

#[test]
fn ha_overlay_reconciles_the_configmap_the_policy_repository_generates() {
    let ha = check_all(&kustomize(&repo().join("deploy/overlays/ha"), &[]));
    let pod = &ha["Deployment/vigie-control-plane"]["spec"]["template"]["spec"];
    let cp = &pod["containers"][0];
    let dir = env(cp, "VIGIE_POLICY_DIR").unwrap();
    assert_eq!(env(cp, "VIGIE_POLICY_PRUNE").as_deref(), Some("true"));
    let mount = cp["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["mountPath"] == dir.as_str())
        .expect("the policy directory is mounted");
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    let configmap = volume["configMap"]["name"].as_str().unwrap();
    let repo_objects = check_all(&kustomize(&repo().join("deploy/examples/policy-repo"), &[]));
    let generated = &repo_objects[&format!("ConfigMap/{configmap}")];
    assert_eq!(
        generated["metadata"]["namespace"],
        ha["Deployment/vigie-control-plane"]["metadata"]["namespace"]
    );
    let keys = generated["data"].as_object().unwrap();
    assert!(keys.keys().all(|k| k.ends_with(".yaml")), "{keys:?}");
    assert!(
        keys.values()
            .all(|v| v.as_str().unwrap().contains("name: ")),
        "each key is one policy file"
    );
}

#[test]
fn egress_agent_component_has_only_the_capabilities_it_needs() {
    let dir = repo().join("target/kustomize-egress");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("kustomization.yaml"),
        "resources: [../../deploy/base]\ncomponents: [../../deploy/components/egress-agent]\n",
    )
    .unwrap();
    let objects = check_all(&kustomize(
        &dir,
        &["--load-restrictor", "LoadRestrictionsNone"],
    ));
    let ds = &objects["DaemonSet/vigie-egress-agent"];
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        serde_json::json!(["BPF", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"])
    );
    assert_eq!(sc["privileged"], false);
    // The lister selects exactly the pods the webhook enrols.
    let lister = &ds["spec"]["template"]["spec"]["containers"][1];
    let script = lister["args"][0].as_str().unwrap();
    assert!(
        script.contains(&format!("{}=enforced", vigie_inject::ENROL_LABEL)),
        "{script}"
    );
    assert_eq!(env(c, "VIGIE_PODS_FILE").unwrap(), "/run/vigie/pods.json");
    assert_eq!(
        ds["spec"]["template"]["metadata"]["labels"][vigie_inject::INJECT_LABEL],
        "disabled"
    );
}

#[test]
fn example_app_namespace_is_opted_in() {
    let objects = check_all(&kustomize(&repo().join("deploy/examples/shop"), &[]));
    let ns = &objects["Namespace/shop"];
    assert_eq!(
        ns["metadata"]["labels"][vigie_inject::INJECT_LABEL],
        "enabled"
    );
    let app = &objects["Deployment/chat"]["spec"]["template"]["spec"]["containers"][0];
    assert!(
        app.get("env").is_none(),
        "the app sets no key and no base URL itself"
    );
}

fn selects(selector: &Value, labels: &BTreeMap<String, String>) -> bool {
    let s: LabelSelector = serde_json::from_value(selector.clone()).unwrap();
    let labels_ok = s
        .match_labels
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = s.match_expressions.unwrap_or_default().iter().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let got = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => got.is_some_and(|v| values.contains(v)),
            "NotIn" => got.is_none_or(|v| !values.contains(v)),
            "Exists" => got.is_some(),
            "DoesNotExist" => got.is_none(),
            other => panic!("operator {other}"),
        }
    });
    labels_ok && exprs_ok
}

/// The API server's part: which webhook entries a pod in a namespace goes through.
/// Then the handler's: whether any of them patches it.
fn injected(webhook: &Value, namespace: &str, ns_labels: &[(&str, &str)], fixture: &str) -> bool {
    let mut ns: BTreeMap<String, String> = ns_labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    ns.insert("kubernetes.io/metadata.name".into(), namespace.into());
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let mut review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    review["request"]["namespace"] = namespace.into();
    let pod_labels: BTreeMap<String, String> =
        serde_json::from_value(review["request"]["object"]["metadata"]["labels"].clone())
            .unwrap_or_default();
    let cfg = InjectConfig::default();
    webhook["webhooks"].as_array().unwrap().iter().any(|w| {
        if !selects(&w["namespaceSelector"], &ns) || !selects(&w["objectSelector"], &pod_labels) {
            return false;
        }
        let trigger = match w["clientConfig"]["service"]["path"].as_str().unwrap() {
            vigie_inject::PATH_NAMESPACE => Trigger::Namespace,
            vigie_inject::PATH_POD => Trigger::Pod,
            other => panic!("path {other}"),
        };
        let out =
            vigie_inject::review(&serde_json::to_vec(&review).unwrap(), trigger, &cfg).unwrap();
        out["response"].get("patch").is_some()
    })
}

#[test]
fn selectors_and_handler_together_decide_who_is_injected() {
    let objects = check_all(&kustomize(&repo().join("deploy/overlays/dev"), &[]));
    let w = &objects["MutatingWebhookConfiguration/vigie-sidecar-injector"];
    let enabled = [("vigie.io/inject", "enabled")];
    let disabled = [("vigie.io/inject", "disabled")];
    assert!(injected(w, "shop", &enabled, "deployment-pod.json"));
    assert!(injected(w, "shop", &enabled, "job-pod.json"));
    assert!(!injected(w, "shop", &enabled, "opted-out-pod.json"));
    assert!(!injected(w, "shop", &enabled, "host-network-pod.json"));
    // An opted-out namespace: not even a pod that opts in.
    assert!(!injected(w, "legacy", &disabled, "deployment-pod.json"));
    assert!(!injected(w, "legacy", &disabled, "opted-in-pod.json"));
    // No namespace label: only pods that opt in.
    assert!(injected(w, "research", &[], "opted-in-pod.json"));
    assert!(!injected(w, "research", &[], "deployment-pod.json"));
    // System namespaces and Vigie's own, whatever their labels.
    assert!(!injected(w, "kube-system", &enabled, "deployment-pod.json"));
    assert!(!injected(w, "vigie-system", &enabled, "opted-in-pod.json"));
}

#[test]
fn dockerfile_builds_each_binary_into_a_non_root_image_with_the_manifest_ports() {
    let text = std::fs::read_to_string(repo().join("deploy/docker/Dockerfile")).unwrap();
    let cfg = InjectConfig::default();
    assert!(text.contains("USER 65532:65532"));
    assert_eq!(cfg.run_as_user, 47880);
    for (target, binary, ports) in [
        (
            "sidecar",
            "vigie-sidecar",
            format!("EXPOSE {} {}", cfg.proxy_port, cfg.admin_port),
        ),
        (
            "control-plane",
            "vigie-control-plane",
            "EXPOSE 50051 9443".to_string(),
        ),
    ] {
        let stage = text
            .split(&format!("AS {target}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("no stage {target}"));
        let stage = stage.split("\nFROM ").next().unwrap();
        assert!(
            stage.contains(&format!("/usr/local/bin/{binary}")),
            "{target}"
        );
        assert!(stage.contains(&ports), "{target}: {ports}");
        // The sidecar image runs as the uid the webhook sets; the others as 65532.
        let user = format!("USER {0}:{0}", cfg.run_as_user);
        assert_eq!(stage.contains(&user), target == "sidecar", "{target}");
    }
    // The control plane's ports in the Dockerfile are the manifest's.
    let objects = check_all(&kustomize(&repo().join("deploy/overlays/dev"), &[]));
    let cp =
        &objects["Deployment/vigie-control-plane"]["spec"]["template"]["spec"]["containers"][0];
    let ports: Vec<_> = cp["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_u64().unwrap())
        .collect();
    assert_eq!(ports, [50051, 9443]);
}
