//! Fixture AdmissionReviews through the handler; each patch is applied with
//! `json-patch` and the result read back as a `k8s-openapi` Pod.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};
use serde_json::{Value, json};
use vigie_inject::{InjectConfig, Trigger, review};

fn fixture(name: &str) -> Value {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn respond(request: &Value, trigger: Trigger) -> Value {
    let body = serde_json::to_vec(request).unwrap();
    let out = review(&body, trigger, &InjectConfig::default()).unwrap();
    assert_eq!(out["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(out["kind"], "AdmissionReview");
    assert_eq!(out["response"]["uid"], request["request"]["uid"]);
    out["response"].clone()
}

fn patch_of(response: &Value) -> Option<json_patch::Patch> {
    // Base64, as the API server's decoding of a []byte field expects.
    let b64 = response.get("patch")?.as_str().expect("a base64 string");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    assert_eq!(response["patchType"], "JSONPatch");
    Some(serde_json::from_slice(&raw).unwrap())
}

/// Reviews, applies the patch, checks the patched pod is refused if seen again (the
/// webhook is registered with `reinvocationPolicy: Never`, so a pod created with the
/// sidecar in it was written by someone else); returns the patched pod and the patch.
fn inject(name: &str, trigger: Trigger) -> (Pod, json_patch::Patch) {
    let mut request = fixture(name);
    let response = respond(&request, trigger);
    assert_eq!(response["allowed"], true, "{response}");
    let patch = patch_of(&response).expect("a patch");
    let mut object = request["request"]["object"].clone();
    json_patch::patch(&mut object, &patch).unwrap();
    let pod: Pod = serde_json::from_value(object.clone()).unwrap();

    request["request"]["object"] = object;
    let again = respond(&request, trigger);
    assert_eq!(again["allowed"], false, "{again}");
    assert!(patch_of(&again).is_none(), "{again}");
    let message = again["status"]["message"].as_str().unwrap();
    assert!(
        message.contains(
            "]: a container named vigie-sidecar is injected by the webhook; remove it (and its volumes) from the pod spec"
        ),
        "{message}"
    );
    (pod, patch)
}

fn not_patched(name: &str, trigger: Trigger) -> Value {
    let response = respond(&fixture(name), trigger);
    assert_eq!(response["allowed"], true, "{response}");
    assert!(patch_of(&response).is_none(), "{response}");
    response
}

fn env<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.as_ref()?.iter().find(|e| e.name == name)
}

fn value<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    env(c, name)?.value.as_deref()
}

fn field_ref<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
    Some(
        env(c, name)?
            .value_from
            .as_ref()?
            .field_ref
            .as_ref()?
            .field_path
            .as_str(),
    )
}

fn check_sidecar(sidecar: &Container, native: bool) {
    let cfg = InjectConfig::default();
    assert_eq!(sidecar.name, "vigie-sidecar");
    assert_eq!(sidecar.image.as_deref(), Some(cfg.sidecar_image.as_str()));
    assert_eq!(
        sidecar.restart_policy.as_deref(),
        if native { Some("Always") } else { None }
    );
    let startup = sidecar
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/readyz"));
    assert_eq!(
        startup.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15090)
    );
    let port = &sidecar.ports.as_ref().unwrap()[0];
    assert_eq!(
        (port.name.as_deref(), port.container_port),
        (Some("vigie-admin"), 15090)
    );
    assert_eq!(value(sidecar, "VIGIE_LISTEN"), Some("127.0.0.1:15080"));
    assert_eq!(value(sidecar, "VIGIE_ADMIN_LISTEN"), Some("0.0.0.0:15090"));
    assert_eq!(
        value(sidecar, "VIGIE_CONTROL_PLANE"),
        Some(cfg.control_plane_url.as_str())
    );
    assert_eq!(
        value(sidecar, "VIGIE_CONTROL_PLANE_TOKEN_FILE"),
        Some("/var/run/secrets/vigie/token")
    );
    // The sidecar asks the node's egress agent where redirected connections were going.
    assert_eq!(
        value(sidecar, "VIGIE_EGRESS_AGENT_URL"),
        Some("http://vigie-egress-agent.vigie-system.svc:15095")
    );
    // …and is not ready before the pod's egress is enforced (app containers wait).
    assert_eq!(value(sidecar, "VIGIE_EGRESS_REQUIRED"), Some("true"));
    // No collector by default (`otlpEndpoint`): nothing exported.
    assert_eq!(value(sidecar, "OTEL_EXPORTER_OTLP_ENDPOINT"), None);
    for (var, path) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
        ("POD_UID", "metadata.uid"),
        ("POD_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        ("NODE_NAME", "spec.nodeName"),
    ] {
        assert_eq!(field_ref(sidecar, var), Some(path), "{var}");
    }
    // Provider credentials reach the sidecar only, from an optional Secret, prefixed
    // (all a policy's `credentials.env` can name); the telemetry Secret as is, out of
    // any policy's reach.
    let from: Vec<_> = sidecar
        .env_from
        .as_ref()
        .unwrap()
        .iter()
        .map(|f| {
            let s = f.secret_ref.as_ref().unwrap();
            (s.name.as_str(), f.prefix.as_deref(), s.optional)
        })
        .collect();
    assert_eq!(
        from,
        [
            (
                "vigie-provider-credentials",
                Some("VIGIE_CREDENTIAL_"),
                Some(true)
            ),
            ("vigie-telemetry-credentials", None, Some(true)),
        ]
    );
    let sc = sidecar.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    // Not 65532 (distroless `nonroot`, which app images use too): an app as the
    // sidecar's uid could take its sockets.
    assert_eq!(sc.run_as_user, Some(47880));
    assert_eq!(sc.run_as_user, Some(cfg.run_as_user));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop.as_deref(),
        Some(&["ALL".to_string()][..])
    );
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let mounts: Vec<_> = sidecar
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .map(|m| (m.name.as_str(), m.mount_path.as_str()))
        .collect();
    assert!(mounts.contains(&("vigie-token", "/var/run/secrets/vigie")));
    assert!(mounts.contains(&("vigie-state", "/var/lib/vigie")));
    // The provider Secret as files: what `credentials.file` may name.
    assert!(mounts.contains(&("vigie-credentials", "/etc/vigie/credentials")));
}

fn check_app(app: &Container) {
    assert_eq!(
        value(app, "OPENAI_BASE_URL"),
        Some("http://127.0.0.1:15080/v1")
    );
    assert_eq!(
        value(app, "OPENAI_API_BASE"),
        Some("http://127.0.0.1:15080/v1")
    );
    assert_eq!(
        value(app, "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:15080")
    );
    assert_eq!(
        value(app, "ANTHROPIC_API_KEY"),
        Some(vigie_inject::mutate::PLACEHOLDER_KEY)
    );
    let names: Vec<_> = app.env.as_ref().unwrap().iter().map(|e| &e.name).collect();
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(names.len(), unique.len(), "duplicate variables: {names:?}");
    assert!(app.env_from.is_none(), "the app gets no credential Secret");
    check_capabilities_dropped(app);
}

/// What goes around the egress enforcement is dropped from every app container.
fn check_capabilities_dropped(app: &Container) {
    let sc = app.security_context.as_ref().expect("a security context");
    let list = sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap();
    for cap in vigie_inject::isolation::EGRESS_CAPABILITIES {
        assert!(list.iter().any(|d| d == cap), "{cap}: {list:?}");
    }
}

#[test]
fn deployment_pod_is_injected_as_a_native_sidecar() {
    let (pod, patch) = inject("deployment-pod.json", Trigger::Namespace);
    let spec = pod.spec.as_ref().unwrap();
    let init = spec.init_containers.as_ref().unwrap();
    assert_eq!(init.len(), 1);
    check_sidecar(&init[0], true);
    assert_eq!(value(&init[0], "VIGIE_WORKLOAD"), Some("chat"));

    let app = &spec.containers[0];
    assert_eq!(spec.containers.len(), 1);
    check_app(app);
    // The pod's own key stays as it was; the base URL it set is replaced in place.
    let key = env(app, "OPENAI_API_KEY").unwrap();
    assert_eq!(
        key.value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap()
            .name,
        "legacy-openai"
    );
    let order: Vec<_> = app
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(
        &order[..3],
        ["OPENAI_BASE_URL", "OPENAI_API_KEY", "LOG_LEVEL"]
    );
    assert_eq!(app.image.as_deref(), Some("registry.example/shop/chat:1.4"));

    let volumes: Vec<_> = spec.volumes.as_ref().unwrap().iter().collect();
    assert_eq!(
        volumes[0].name, "kube-api-access-x1",
        "existing volumes kept first"
    );
    let token = volumes.iter().find(|v| v.name == "vigie-token").unwrap();
    let projection = token.projected.as_ref().unwrap().sources.as_ref().unwrap()[0]
        .service_account_token
        .as_ref()
        .unwrap();
    assert_eq!(projection.audience.as_deref(), Some("vigie-control-plane"));
    assert_eq!(projection.expiration_seconds, Some(3600));
    // Room for the usage ledger while the control plane is unreachable.
    let state = volumes.iter().find(|v| v.name == "vigie-state").unwrap();
    assert_eq!(
        state
            .empty_dir
            .as_ref()
            .unwrap()
            .size_limit
            .as_ref()
            .unwrap()
            .0,
        "256Mi"
    );

    let meta = &pod.metadata;
    let labels = meta.labels.as_ref().unwrap();
    assert_eq!(labels["vigie.io/egress"], "enforced");
    assert_eq!(labels["pod-template-hash"], "7d9f8b6c5");
    let annotations = meta.annotations.as_ref().unwrap();
    assert_eq!(annotations["vigie.io/egress-enforceable"], "true");
    let reason = "vigie.io/egress-not-enforceable-reason";
    assert!(!annotations.contains_key(reason));
    let status: Value =
        serde_json::from_str(&meta.annotations.as_ref().unwrap()["vigie.io/status"]).unwrap();
    assert_eq!(status["version"], vigie_inject::VERSION);
    assert_eq!(status["mode"], "native");
    assert_eq!(
        meta.owner_references.as_ref().unwrap()[0].kind,
        "ReplicaSet"
    );

    // The patch adds, and replaces only the base URL the pod had set.
    for op in &patch.0 {
        match op {
            json_patch::PatchOperation::Add(_) => {}
            json_patch::PatchOperation::Replace(r) => {
                assert!(
                    r.path.to_string().starts_with("/spec/containers/0/env/0"),
                    "{op:?}"
                )
            }
            other => panic!("unexpected patch operation {other:?}"),
        }
    }
}

#[test]
fn job_pod_gets_a_sidecar_that_lets_the_job_complete() {
    let (pod, _) = inject("job-pod.json", Trigger::Namespace);
    let spec = pod.spec.unwrap();
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    let init = spec.init_containers.unwrap();
    // restartPolicy Always on an init container = native sidecar: the kubelet stops
    // it once the Job's containers have exited.
    check_sidecar(&init[0], true);
    assert_eq!(value(&init[0], "VIGIE_WORKLOAD"), Some("nightly-summary"));
    check_app(&spec.containers[0]);
    assert_eq!(spec.containers[0].command.as_ref().unwrap()[0], "python");
}

#[test]
fn existing_init_containers_run_after_the_sidecar_and_use_it() {
    let (pod, _) = inject("existing-init-containers.json", Trigger::Namespace);
    let spec = pod.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let names: Vec<_> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["vigie-sidecar", "wait-db", "embed-catalog"]);
    check_sidecar(&init[0], true);
    assert_eq!(
        value(&init[2], "ANTHROPIC_BASE_URL"),
        Some("http://127.0.0.1:15080")
    );
    for app in &spec.containers {
        check_app(app);
    }
    // The app's init containers too (they share the pod's network).
    for app in &init[1..] {
        check_capabilities_dropped(app);
    }
    let volumes: Vec<_> = spec.volumes.unwrap().into_iter().map(|v| v.name).collect();
    assert_eq!(volumes[0], "scratch");
    assert_eq!(value(&init[0], "VIGIE_WORKLOAD"), Some("reindex"));
}

#[test]
fn per_pod_annotations_override_resources_level_variables_and_mode() {
    let (pod, _) = inject("tuned-classic.json", Trigger::Namespace);
    let spec = pod.spec.unwrap();
    assert!(spec.init_containers.is_none());
    let sidecar = &spec.containers[0];
    check_sidecar(sidecar, false);
    let limits = sidecar.resources.as_ref().unwrap().limits.as_ref().unwrap();
    assert_eq!(limits["memory"].0, "512Mi");
    assert_eq!(limits["cpu"].0, "2");
    assert_eq!(value(sidecar, "RUST_LOG"), Some("debug"));
    let app = &spec.containers[1];
    check_app(app);
    assert!(env(app, "MISTRAL_SERVER_URL").is_none());
    assert!(env(app, "MISTRAL_API_KEY").is_none());
    let annotations = pod.metadata.annotations.unwrap();
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"],
        "app"
    );

    let response = respond(&fixture("tuned-classic.json"), Trigger::Namespace);
    assert!(
        response["warnings"][0]
            .as_str()
            .unwrap()
            .contains("classic sidecar")
    );
}

#[test]
fn pod_opted_in_outside_an_enabled_namespace_is_injected() {
    let (pod, _) = inject("opted-in-pod.json", Trigger::Pod);
    check_sidecar(&pod.spec.unwrap().init_containers.unwrap()[0], true);
    // Called through the pod-selector path without the label: nothing.
    not_patched("deployment-pod.json", Trigger::Pod);
}

#[test]
fn skipped_pods_are_allowed_without_patch_and_say_why() {
    let r = not_patched("host-network-pod.json", Trigger::Namespace);
    assert!(
        r["auditAnnotations"]["injection"]
            .as_str()
            .unwrap()
            .contains("hostNetwork")
    );
    let r = not_patched("opted-out-pod.json", Trigger::Namespace);
    assert_eq!(
        r["auditAnnotations"]["injection"],
        "skipped: pod labelled vigie.io/inject=disabled"
    );
    let mut system = fixture("deployment-pod.json");
    system["request"]["namespace"] = json!("kube-system");
    let r = respond(&system, Trigger::Namespace);
    assert!(patch_of(&r).is_none());
    assert!(
        r["auditAnnotations"]["injection"]
            .as_str()
            .unwrap()
            .contains("kube-system")
    );
}

#[test]
fn invalid_annotations_deny_with_every_reason() {
    let r = respond(&fixture("invalid-annotations.json"), Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(patch_of(&r).is_none());
    assert_eq!(r["status"]["code"], 400);
    let message = r["status"]["message"].as_str().unwrap();
    for needle in [
        "vigie.io/sidecar-memory-limit: \"a lot\" is not a Kubernetes quantity",
        "vigie.io/log-level: \"chatty\"",
        "\"HOME\" is not an injected variable",
        "vigie.io/sidecar-cpu-requets is not a Vigie setting",
        "vigie.io/inject=disabled",
    ] {
        assert!(message.contains(needle), "{needle} missing from {message}");
    }
}

#[test]
fn apps_that_could_go_around_the_egress_enforcement_are_refused() {
    let mut shared = fixture("job-pod.json");
    shared["request"]["object"]["spec"]["shareProcessNamespace"] = json!(true);
    let r = respond(&shared, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(patch_of(&r).is_none());
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("vigie sidecar injection: spec.shareProcessNamespace: "),
        "{message}"
    );

    let mut same_uid = fixture("job-pod.json");
    same_uid["request"]["object"]["spec"]["securityContext"] = json!({"runAsUser": 47880});
    let r = respond(&same_uid, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["message"],
        "vigie sidecar injection: spec.securityContext.runAsUser: 47880 is the Vigie sidecar's uid; an app running as it could take the sidecar's sockets"
    );
}

#[test]
fn pods_carrying_the_marks_of_injection_are_checked_all_the_same() {
    // A status annotation the pod wrote itself marks nothing.
    let mut forged = fixture("job-pod.json");
    let object = &mut forged["request"]["object"];
    object["metadata"]["annotations"] = json!({"vigie.io/status": "{}"});
    object["spec"]["hostPID"] = json!(true);
    let r = respond(&forged, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(patch_of(&r).is_none());
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("vigie sidecar injection: spec.hostPID: true "),
        "{message}"
    );
    assert!(
        message.contains("vigie.io/egress-allow-host-pid-ipc"),
        "{message}"
    );

    // A container named like the sidecar: refused (reinvocation is off, so it is not
    // the webhook's own output).
    let mut by_hand = fixture("job-pod.json");
    let containers = by_hand["request"]["object"]["spec"]["containers"]
        .as_array_mut()
        .unwrap();
    containers.push(json!({"name": "vigie-sidecar", "image": "registry.example/proxy:1"}));
    let r = respond(&by_hand, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["message"],
        "vigie sidecar injection: spec.containers[1]: a container named vigie-sidecar is injected by the webhook; remove it (and its volumes) from the pod spec"
    );

    // hostPID accepted by annotation: injected, flagged; the injected pod seen again is
    // refused (reinvocation is off: a pod carrying the sidecar was written by someone
    // else).
    let mut host_pid = fixture("job-pod.json");
    let object = &mut host_pid["request"]["object"];
    object["metadata"]["annotations"] = json!({"vigie.io/egress-allow-host-pid-ipc": "true"});
    object["spec"]["hostPID"] = json!(true);
    let r = respond(&host_pid, Trigger::Namespace);
    assert_eq!(r["allowed"], true, "{r}");
    let mut object = host_pid["request"]["object"].clone();
    json_patch::patch(&mut object, &patch_of(&r).unwrap()).unwrap();
    let annotations = &object["metadata"]["annotations"];
    assert_eq!(annotations["vigie.io/egress-enforceable"], "false");
    assert_eq!(
        annotations["vigie.io/egress-not-enforceable-reason"],
        "uses the node's process namespace (spec.hostPID)"
    );
    host_pid["request"]["object"] = object;
    let again = respond(&host_pid, Trigger::Namespace);
    assert_eq!(again["allowed"], false, "{again}");
    assert!(patch_of(&again).is_none(), "{again}");
    let message = again["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "vigie sidecar injection: spec.initContainers[0]: a container named vigie-sidecar is injected by the webhook; "
        ),
        "{message}"
    );
}

#[test]
fn adding_all_capabilities_or_mounting_a_host_path_is_refused() {
    let mut all = fixture("job-pod.json");
    all["request"]["object"]["spec"]["containers"][0]["securityContext"] =
        json!({"capabilities": {"add": ["NET_BIND_SERVICE", "ALL"]}});
    let r = respond(&all, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(patch_of(&r).is_none());
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "vigie sidecar injection: spec.containers[0].securityContext.capabilities.add[1]: adding ALL "
        ),
        "{message}"
    );

    let mut outside = fixture("job-pod.json");
    outside["request"]["object"]["spec"]["containers"][0]["securityContext"] =
        json!({"capabilities": {"add": ["SYS_MODULE"]}});
    let r = respond(&outside, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with(
            "vigie sidecar injection: spec.containers[0].securityContext.capabilities.add[0]: SYS_MODULE is outside the Kubernetes Pod Security baseline capabilities"
        ),
        "{message}"
    );

    let mut host_path = fixture("job-pod.json");
    host_path["request"]["object"]["spec"]["volumes"] =
        json!([{"name": "bpf", "hostPath": {"path": "/sys/fs/bpf"}}]);
    let r = respond(&host_path, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(patch_of(&r).is_none());
    let message = r["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("vigie sidecar injection: spec.volumes[0].hostPath: "),
        "{message}"
    );
    assert!(
        message.contains("vigie.io/egress-allow-host-path"),
        "{message}"
    );
    host_path["request"]["object"]["metadata"]["annotations"] =
        json!({"vigie.io/egress-allow-host-path": "true"});
    let r = respond(&host_path, Trigger::Namespace);
    assert_eq!(r["allowed"], true, "{r}");
    let mut object = host_path["request"]["object"].clone();
    json_patch::patch(&mut object, &patch_of(&r).unwrap()).unwrap();
    let annotations = &object["metadata"]["annotations"];
    assert_eq!(annotations["vigie.io/egress-enforceable"], "false");
    assert_eq!(
        annotations["vigie.io/egress-not-enforceable-reason"],
        "mounts a host path (spec.volumes[0])"
    );
}

#[test]
fn other_kinds_and_operations_pass_untouched() {
    not_patched("service.json", Trigger::Namespace);
    not_patched("pod-update.json", Trigger::Namespace);
}

#[test]
fn malformed_reviews_are_clear_errors_that_do_not_echo_the_body() {
    let cfg = InjectConfig::default();
    let err = review(b"{not json", Trigger::Namespace, &cfg).unwrap_err();
    assert!(err.to_string().contains("invalid JSON at line 1"), "{err}");
    let err = review(
        br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#,
        Trigger::Namespace,
        &cfg,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no `request`"), "{err}");

    // A secret in a field of the wrong type is not repeated in the error.
    let mut bad = fixture("deployment-pod.json");
    bad["request"]["object"]["metadata"]["labels"] = json!(["sk-live-0123456789abcdef"]);
    let err = review(&serde_json::to_vec(&bad).unwrap(), Trigger::Namespace, &cfg).unwrap_err();
    assert!(!err.to_string().contains("sk-live"), "{err}");
    assert!(err.to_string().contains("unexpected field type"), "{err}");

    let mut missing = fixture("deployment-pod.json");
    missing["request"].as_object_mut().unwrap().remove("object");
    let r = respond(&missing, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("no `object`")
    );
}

#[test]
fn a_clashing_volume_name_is_refused_clearly() {
    let mut req = fixture("job-pod.json");
    req["request"]["object"]["spec"]["volumes"] = json!([{"name": "vigie-state", "emptyDir": {}}]);
    let r = respond(&req, Trigger::Namespace);
    assert_eq!(r["allowed"], false);
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .contains("volume named vigie-state")
    );
}
