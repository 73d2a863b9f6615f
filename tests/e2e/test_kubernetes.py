"""Kubernetes integration without a cluster: the injection webhook over real HTTPS,
and projected service-account tokens (JWTs signed like the API server signs them)
accepted by the control plane from sidecars that read their labels from a
downward-API file."""

import base64
import copy
import json
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness import ROOT as REPO, GrpcError, binary, free_port, wait_until
from test_watch import apply, routed_to

FIXTURES = REPO / "control-plane/inject/tests/fixtures"
TESTDATA = REPO / "control-plane/testdata"


def webhook_pki(d: Path) -> dict:
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=vigie-root-ca")
    (d / "w.ext").write_text("subjectAltName=DNS:vigie-control-plane.vigie-system.svc,IP:127.0.0.1\n"
                             "extendedKeyUsage=serverAuth\n")
    run("req", *ec, "-keyout", "w.key", "-out", "w.csr", "-subj", "/CN=vigie-control-plane.vigie-system.svc")
    run("x509", "-req", "-in", "w.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "w.crt", "-days", "2", "-extfile", "w.ext")
    return {"ca": str(d / "ca.crt"), "cert": str(d / "w.crt"), "key": str(d / "w.key")}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_token(key: Path, namespace: str, sa: str, audience="vigie-control-plane", ttl=3600,
                          pod=True) -> str:
    """A projected service-account token as the kubelet gets it: RS256 by the issuer
    (`pod=False`: a token bound to no pod, as a TokenRequest without one gives)."""
    now = int(time.time())
    header = {"alg": "RS256", "kid": "test-issuer-key", "typ": "JWT"}
    claims = {"aud": [audience], "exp": now + ttl, "iat": now, "nbf": now,
              "iss": "https://kubernetes.default.svc.cluster.local",
              "sub": f"system:serviceaccount:{namespace}:{sa}",
              "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": sa, "uid": "u2"},
                                **({"pod": {"name": f"{sa}-0", "uid": "u1"}} if pod else {})}}
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key], input=signing_input.encode(),
                               check=True, capture_output=True).stdout
    return f"{signing_input}.{b64url(signature)}"


@pytest.fixture
def webhook(control_planes, tmp_path):
    pki = webhook_pki(tmp_path)
    port, metrics_port = free_port(), free_port()
    cp = control_planes(extra_args=["--webhook-listen", f"127.0.0.1:{port}", "--webhook-tls-cert", pki["cert"],
                                    "--webhook-tls-key", pki["key"],
                                    "--webhook-config", str(REPO / "deploy/base/inject.json"),
                                    "--metrics-listen", f"127.0.0.1:{metrics_port}"])
    cp.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    url = f"https://127.0.0.1:{port}"
    client = httpx.Client(verify=ssl.create_default_context(cafile=pki["ca"]), timeout=5)
    wait_until(lambda: _up(client, url), timeout=10, what="webhook listening")
    yield cp, client, url
    client.close()


def _up(client, url) -> bool:
    try:
        return client.get(url + "/healthz").status_code == 200
    except httpx.ConnectError:
        return False


def review(name: str) -> dict:
    return json.loads((FIXTURES / name).read_text())


def apply_patch(obj: dict, patch: list) -> dict:
    """A copy of `obj` with a JSON patch applied (the add, remove and replace the
    webhook's patches are made of)."""
    obj = copy.deepcopy(obj)
    for op in patch:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = obj
        for p in parents:
            target = target[int(p)] if isinstance(target, list) else target[p]
        if isinstance(target, list):
            i = len(target) if last == "-" else int(last)
            if op["op"] == "add":
                target.insert(i, op["value"])
            elif op["op"] == "remove":
                del target[i]
            else:
                target[i] = op["value"]
        elif op["op"] == "remove":
            del target[last]
        else:
            target[last] = op["value"]
    return obj


def test_webhook_injects_over_https_for_a_client_trusting_the_ca(webhook):
    cp, client, url = webhook
    r = client.post(url + "/inject/namespace", json=review("deployment-pod.json"))
    assert r.status_code == 200
    out = r.json()
    assert out["apiVersion"] == "admission.k8s.io/v1" and out["kind"] == "AdmissionReview"
    resp = out["response"]
    assert resp["uid"] == "a1b2" and resp["allowed"] is True and resp["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(resp["patch"]))
    sidecar = next(op["value"] for op in patch if op["path"] == "/spec/initContainers")[0]
    assert sidecar["name"] == "vigie-sidecar" and sidecar["restartPolicy"] == "Always"
    # The image is the one the ConfigMap (deploy/base/inject.json) names.
    assert sidecar["image"] == json.loads((REPO / "deploy/base/inject.json").read_text())["sidecarImage"]
    # The pod-selector path leaves a pod that did not opt in alone.
    r = client.post(url + "/inject/pod", json=review("deployment-pod.json"))
    assert r.status_code == 200 and "patch" not in r.json()["response"]
    r = client.post(url + "/inject/namespace", json=review("host-network-pod.json"))
    assert "patch" not in r.json()["response"]
    text = httpx.get(cp.metrics_url).text
    assert 'vigie_control_plane_injections_total{result="injected"} 1' in text
    # Skipped: the pod path without opt-in, and the hostNetwork pod.
    assert 'vigie_control_plane_injections_total{result="skipped"} 2' in text
    assert "vigie::inject" in cp.log() and "injected" in cp.log()


def test_webhook_refuses_what_is_not_an_admission_review_without_a_500(webhook):
    cp, client, url = webhook
    r = client.post(url + "/inject/namespace", content=b'{"apiVersion": "v1", "env": "sk-live-abc"')
    assert r.status_code == 400
    assert r.json()["error"].startswith("not an admission.k8s.io/v1 AdmissionReview: truncated JSON")
    assert "sk-live" not in r.text
    r = client.post(url + "/inject/namespace", json={"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"})
    assert r.status_code == 400 and "no `request`" in r.json()["error"]
    r = client.post(url + "/inject/namespace", json=review("service.json"))
    assert r.status_code == 200 and r.json()["response"]["allowed"] is True and "patch" not in r.json()["response"]
    r = client.post(url + "/inject/namespace", json=review("invalid-annotations.json"))
    assert r.json()["response"]["allowed"] is False
    assert r.status_code == 200
    assert client.post(url + "/elsewhere", json={}).status_code == 404
    # Every answer counted by result, at the control plane's /metrics.
    text = httpx.get(cp.metrics_url).text
    for result, n in [("malformed", 2), ("ignored", 1), ("denied", 1)]:
        assert f'vigie_control_plane_injections_total{{result="{result}"}} {n}' in text, text


def test_webhook_keeps_apps_from_going_around_the_egress_agent(webhook):
    cp, client, url = webhook
    sidecar_uid = json.loads((REPO / "deploy/base/inject.json").read_text())["runAsUser"]
    assert sidecar_uid == 47880
    egress_caps = {"NET_RAW", "NET_ADMIN", "SYS_ADMIN", "SYS_PTRACE"}
    # An app container with the runtime's default capabilities (NET_RAW among them).
    r = client.post(url + "/inject/namespace", json=review("deployment-pod.json"))
    resp = r.json()["response"]
    assert resp["allowed"] is True
    patch = json.loads(base64.b64decode(resp["patch"]))
    added = next(op for op in patch if op["path"] == "/spec/containers/0/securityContext")
    assert added["op"] == "add" and set(added["value"]["capabilities"]["drop"]) == egress_caps
    assert "add" not in added["value"]["capabilities"]
    pod = apply_patch(review("deployment-pod.json")["request"]["object"], patch)
    sidecar = pod["spec"]["initContainers"][0]
    assert sidecar["name"] == "vigie-sidecar"
    assert sidecar["securityContext"]["runAsUser"] == sidecar_uid
    assert sidecar["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert pod["metadata"]["annotations"]["vigie.io/egress-enforceable"] == "true"
    injected = copy.deepcopy(pod)

    # A capability the app adds is taken back; one it keeps by annotation flags the pod.
    keeping = review("deployment-pod.json")
    keeping["request"]["object"]["metadata"]["annotations"] = {"vigie.io/egress-keep-capabilities": "SYS_PTRACE"}
    keeping["request"]["object"]["spec"]["containers"][0]["securityContext"] = {
        "capabilities": {"add": ["NET_RAW", "SYS_PTRACE"]}}
    resp = client.post(url + "/inject/namespace", json=keeping).json()["response"]
    pod = apply_patch(keeping["request"]["object"], json.loads(base64.b64decode(resp["patch"])))
    caps = pod["spec"]["containers"][0]["securityContext"]["capabilities"]
    assert caps["add"] == ["SYS_PTRACE"] and set(caps["drop"]) == egress_caps - {"SYS_PTRACE"}
    annotations = pod["metadata"]["annotations"]
    assert annotations["vigie.io/egress-enforceable"] == "false"
    assert annotations["vigie.io/egress-not-enforceable-reason"] == "keeps SYS_PTRACE"
    # Its sidecar is told why: not ready unless a policy says egress.allowNotEnforceable.
    flagged_sidecar = next(c for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]
                           if c["name"] == "vigie-sidecar")
    assert {"name": "VIGIE_EGRESS_NOT_ENFORCEABLE", "value": "keeps SYS_PTRACE"} in flagged_sidecar["env"]
    assert any("egress not enforceable" in w for w in resp["warnings"])

    # Refused: a shared process namespace, and an app running as the sidecar's uid.
    shared = review("deployment-pod.json")
    shared["request"]["object"]["spec"]["shareProcessNamespace"] = True
    r = client.post(url + "/inject/namespace", json=shared)
    resp = r.json()["response"]
    assert r.status_code == 200 and resp["allowed"] is False and "patch" not in resp
    assert resp["status"]["code"] == 400
    message = resp["status"]["message"]
    assert message.startswith("vigie sidecar injection: spec.shareProcessNamespace: true "), message
    assert "vigie.io/egress-allow-shared-process-namespace" in message
    same_uid = review("deployment-pod.json")
    same_uid["request"]["object"]["spec"]["containers"][0]["securityContext"] = {"runAsUser": sidecar_uid}
    r = client.post(url + "/inject/namespace", json=same_uid)
    resp = r.json()["response"]
    assert resp["allowed"] is False and "patch" not in resp
    assert resp["status"]["message"] == (
        "vigie sidecar injection: spec.containers[0].securityContext.runAsUser: 47880 is the Vigie sidecar's uid; "
        "an app running as it could take the sidecar's sockets")
    # The pod's own values (its Secret's name, its env) are not echoed.
    assert "legacy-openai" not in r.text and "api.openai.com" not in r.text
    text = httpx.get(cp.metrics_url).text
    assert 'vigie_control_plane_injections_total{result="denied"} 2' in text, text
    assert 'vigie_control_plane_injections_total{result="injected"} 2' in text, text

    def post(request: dict) -> dict:
        r = client.post(url + "/inject/namespace", json=request)
        assert r.status_code == 200
        return r.json()["response"]

    def patched(request: dict, resp: dict) -> dict:
        return apply_patch(request["request"]["object"], json.loads(base64.b64decode(resp["patch"])))

    # Whatever marks of injection a pod carries, it is checked. A status annotation the
    # pod wrote itself marks nothing: the pod is refused like any other, or injected.
    forged = review("deployment-pod.json")
    forged["request"]["object"]["metadata"]["annotations"] = {"vigie.io/status": '{"mode":"native"}'}
    forged["request"]["object"]["spec"]["shareProcessNamespace"] = True
    resp = post(forged)
    assert resp["allowed"] is False and "patch" not in resp
    assert resp["status"]["message"].startswith("vigie sidecar injection: spec.shareProcessNamespace: true ")
    del forged["request"]["object"]["spec"]["shareProcessNamespace"]
    resp = post(forged)
    assert resp["allowed"] is True and resp["auditAnnotations"]["injection"] == "injected"
    assert patched(forged, resp)["spec"]["initContainers"][0]["name"] == "vigie-sidecar"
    # A container named vigie-sidecar in a pod being created: refused. The webhook is
    # registered with reinvocationPolicy: Never, so the API server never sends it its own
    # output; such a pod was written by someone else (a spec copied from an injected pod).
    refusal = ("a container named vigie-sidecar is injected by the webhook; "
               "remove it (and its volumes) from the pod spec")
    by_hand = review("deployment-pod.json")
    by_hand["request"]["object"]["spec"]["containers"].append({
        "name": "vigie-sidecar", "image": "registry.example/proxy:1",
        "securityContext": {"privileged": True, "runAsUser": sidecar_uid, "capabilities": {"add": ["NET_RAW"]}}})
    resp = post(by_hand)
    assert resp["allowed"] is False and "patch" not in resp
    message = resp["status"]["message"]
    assert message.startswith(f"vigie sidecar injection: spec.containers[1]: {refusal}"), message
    assert "registry.example" not in message
    # …the webhook's own output copied into a new pod included.
    again = review("deployment-pod.json")
    again["request"]["object"] = injected
    resp = post(again)
    assert resp["allowed"] is False and "patch" not in resp
    assert resp["status"]["message"] == f"vigie sidecar injection: spec.initContainers[0]: {refusal}"

    # capabilities.add: ALL is refused like privileged; a hostPath volume is refused.
    adds_all = review("deployment-pod.json")
    adds_all["request"]["object"]["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["ALL"]}}
    resp = post(adds_all)
    assert resp["allowed"] is False and "patch" not in resp
    message = resp["status"]["message"]
    assert message.startswith(
        "vigie sidecar injection: spec.containers[0].securityContext.capabilities.add[0]: adding ALL "), message
    assert "vigie.io/egress-keep-capabilities" in message
    host_path = review("deployment-pod.json")
    host_path["request"]["object"]["spec"].setdefault("volumes", []).append(
        {"name": "host-bpf", "hostPath": {"path": "/sys/fs/bpf"}})
    resp = post(host_path)
    assert resp["allowed"] is False and "patch" not in resp
    message = resp["status"]["message"]
    assert message.startswith("vigie sidecar injection: spec.volumes["), message
    assert "].hostPath: " in message and "vigie.io/egress-allow-host-path" in message

    # The node's process and IPC namespaces: refused unless the annotation accepts them,
    # then injected and flagged.
    for key in ("hostPID", "hostIPC"):
        host = review("deployment-pod.json")
        host["request"]["object"]["spec"][key] = True
        resp = post(host)
        assert resp["allowed"] is False and "patch" not in resp
        message = resp["status"]["message"]
        assert message.startswith(f"vigie sidecar injection: spec.{key}: true "), message
        assert "vigie.io/egress-allow-host-pid-ipc" in message
    host = review("deployment-pod.json")
    host["request"]["object"]["metadata"]["annotations"] = {"vigie.io/egress-allow-host-pid-ipc": "true"}
    host["request"]["object"]["spec"].update(hostPID=True, hostIPC=True)
    resp = post(host)
    assert resp["allowed"] is True
    pod = patched(host, resp)
    annotations = pod["metadata"]["annotations"]
    assert annotations["vigie.io/egress-enforceable"] == "false"
    assert annotations["vigie.io/egress-not-enforceable-reason"] == (
        "uses the node's process namespace (spec.hostPID); uses the node's IPC namespace (spec.hostIPC)")
    assert any("egress not enforceable" in w for w in resp["warnings"])
    assert pod["metadata"]["labels"]["vigie.io/egress"] == "enforced"
    text = httpx.get(cp.metrics_url).text
    assert 'vigie_control_plane_injections_total{result="denied"} 9' in text, text
    assert 'vigie_control_plane_injections_total{result="injected"} 4' in text, text


def test_webhook_is_not_trusted_without_the_ca(webhook):
    _, _, url = webhook
    with pytest.raises(httpx.ConnectError):
        httpx.post(url + "/inject/namespace", json=review("deployment-pod.json"), timeout=5)


def test_a_bad_injection_config_stops_the_control_plane_at_start(tmp_path):
    pki = webhook_pki(tmp_path)
    bad = tmp_path / "inject.json"
    bad.write_text(json.dumps({"sidecarImage": "", "logLevel": "loud"}))
    r = subprocess.run([binary("vigie-control-plane"), "--data-dir", tmp_path / "d", "serve", "--listen", "127.0.0.1:0",
                        "--webhook-listen", "127.0.0.1:0", "--webhook-tls-cert", pki["cert"],
                        "--webhook-tls-key", pki["key"], "--webhook-config", bad],
                       capture_output=True, timeout=20)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "sidecarImage: must not be empty" in err and "logLevel" in err


def test_projected_service_account_token_lets_a_sidecar_watch_as_its_namespace(control_planes, mocks, sidecars, tmp_path):
    cp = control_planes(extra_args=["--k8s-jwks-file", str(TESTDATA / "sa-jwks.json"),
                                    "--k8s-token-issuer", "https://kubernetes.default.svc.cluster.local"])
    admin = cp.token("alice", "admin")
    m = mocks("gpu")
    # Scoped by a workload label that only the downward-API file carries.
    cp.call("PolicyService/ApplyPolicy", {"policy": routed_to(m, scope={"namespace": "team-a",
                                                                        "workloadLabels": {"app": "chat"}})},
            token=admin)
    eff = cp.call("PolicyService/GetEffectivePolicy",
                  {"identity": {"namespace": "team-a", "serviceAccount": "app", "labels": {"app": "chat"}}},
                  token=admin)
    labels = tmp_path / "labels"
    labels.write_text('app="chat"\npod-template-hash="7d9f8b6c5"\n')
    token = service_account_token(TESTDATA / "sa-signer.pem", "team-a", "app")
    s = sidecars(None, control_plane=cp, token=token, env={"VIGIE_LABELS_FILE": str(labels)})
    assert s.policy_version() == eff["version"]
    r = httpx.post(s.base_url + "/v1/chat/completions",
                   json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}, timeout=10)
    assert r.status_code == 200

    # The token is a workload credential: no admin calls.
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ListPolicies", {}, token=token)
    assert e.value.code == "PermissionDenied"
    # Forged, expired, for another audience: refused, and the reason says which.
    for bad, reason in [
        (service_account_token(TESTDATA / "forger.pem", "team-a", "app"), "bad signature"),
        (service_account_token(TESTDATA / "sa-signer.pem", "team-a", "app", ttl=-120), "expired"),
        (service_account_token(TESTDATA / "sa-signer.pem", "team-a", "app", audience="api"), "wrong audience"),
    ]:
        with pytest.raises(GrpcError) as e:
            cp.call("StatusService/ListClients", {}, token=bad)
        assert e.value.code == "Unauthenticated" and reason in e.value.text, e.value.text
        assert bad.split(".")[2][:16] not in e.value.text
    # A token of team-b cannot watch as team-a.
    other = service_account_token(TESTDATA / "sa-signer.pem", "team-b", "app")
    intruder = sidecars(None, control_plane=cp, token=other, wait_ready=False)
    time.sleep(1.5)
    assert intruder.policy_version() in (None, "")
    assert "PermissionDenied" in intruder.process.log() or "permission" in intruder.process.log().lower()
