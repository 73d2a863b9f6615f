"""Policy distribution: control plane -> sidecars (watch, ACK/NACK, last-known-good, HA)."""

import subprocess
import threading
import time

import httpx
import pytest

from harness import GrpcError, pool, wait_until
from test_proxy import MSG, client


def routed_to(mock, name="team-a", scope=None, **pool_extra):
    return {"name": name, "scope": scope if scope is not None else {"namespace": "team-a"},
            "pools": [pool("gpu", [mock.url], [{"name": "mistral-7b", "aliases": ["gpt-4o-mini"]}], **pool_extra)]}


def apply(cp, token, policy) -> str:
    """Applies and returns the effective version team-a/app gets."""
    cp.call("PolicyService/ApplyPolicy", {"policy": policy}, token=token)
    eff = cp.call("PolicyService/GetEffectivePolicy",
                  {"identity": {"namespace": "team-a", "serviceAccount": "app"}}, token=token)
    return eff["version"]


def client_status(cp, token, client_id="team-a/app-0", **filters):
    clients = cp.call("StatusService/ListClients", filters, token=token).get("clients", [])
    return next((c for c in clients if c["clientId"] == client_id), None)


def acked(cp, token, version, client_id="team-a/app-0"):
    c = client_status(cp, token, client_id)
    return c is not None and c.get("connected") and c.get("ackedVersion") == version


@pytest.fixture
def setup(control_planes, database_url):
    cp = control_planes(database_url=database_url)
    return cp, cp.token("alice", "admin"), cp.token("team-a-app", "workload", namespace="team-a", service_account="app")


def test_new_policy_reaches_a_loaded_sidecar_without_failing_in_flight_streams(setup, mocks, sidecars):
    cp, admin, workload = setup
    old, new = mocks("old", tokens_per_sec=20), mocks("new")
    v1 = apply(cp, admin, routed_to(old))
    s = sidecars(None, control_plane=cp, token=workload)
    assert s.policy_version() == v1
    wait_until(lambda: acked(cp, admin, v1), what="status shows the ACK")

    # 20 streams in flight on the old pool (30 tokens at 20 tokens/s each).
    results, errors = [], []

    def stream():
        try:
            chunks = list(client(s.base_url).chat.completions.create(
                model="gpt-4o-mini", messages=MSG, stream=True, max_tokens=30))
            results.append("".join(c.choices[0].delta.content or "" for c in chunks if c.choices))
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=stream) for _ in range(20)]
    for t in threads:
        t.start()
    wait_until(lambda: old.stats()["running"] == 20, what="streams in flight")

    v2 = apply(cp, admin, routed_to(new))
    applied_at = time.monotonic()
    # New requests follow the new policy within a second.
    c = client(s.base_url)
    while new.stats()["requests_total"] == 0:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=2)
        assert time.monotonic() - applied_at < 1.0, "new policy not followed within 1 s"
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    assert len(results) == 20 and all(len(r.split()) == 30 for r in results)
    assert old.stats()["completed"] == 20
    assert old.stats()["aborted"] == 0
    assert s.policy_version() == v2
    wait_until(lambda: acked(cp, admin, v2), what="status shows the new ACK")


def test_sidecar_survives_control_plane_outage_and_restarts_from_disk(control_planes, mocks, sidecars):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    workload = cp.token("w", "workload", namespace="team-a")
    m = mocks("gpu")
    v1 = apply(cp, admin, routed_to(m))
    s = sidecars(None, control_plane=cp, token=workload)
    assert s.policy_version() == v1

    cp.stop()
    # Keeps serving on what it has.
    assert client(s.base_url).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices[0].message.content
    # Restarted while the control plane is down: starts from the last-known-good on disk.
    s.stop()
    s2 = sidecars(None, control_plane=cp, token=workload, workdir=s.dir)
    assert s2.policy_version() == v1
    assert "started from the last-known-good snapshot" in s2.process.log()
    assert client(s2.base_url).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices[0].message.content

    # Control plane back on the same port and data: the sidecar reconnects and converges.
    cp.start()
    wait_until(lambda: acked(cp, admin, v1), timeout=15, what="reconnection and ACK")
    v2 = apply(cp, admin, routed_to(m) | {
        "pools": [pool("gpu", [m.url], [{"name": "mistral-7b", "aliases": ["gpt-4o-mini", "chat"]}])]})
    wait_until(lambda: s2.policy_version() == v2, timeout=5, what="convergence")
    wait_until(lambda: acked(cp, admin, v2), what="ACK of the new version")
    assert client(s2.base_url).chat.completions.create(model="chat", messages=MSG).choices[0].message.content


def test_nack_keeps_previous_policy_and_shows_in_status(control_planes, mocks, sidecars):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    workload = cp.token("w", "workload", namespace="team-a")
    m = mocks("gpu")
    v1 = apply(cp, admin, routed_to(m))
    s = sidecars(None, control_plane=cp, token=workload)
    # Valid for the control plane, impossible for this sidecar: the key's variable is unset.
    v2 = apply(cp, admin, routed_to(m, credentials={"env": "VIGIE_E2E_SURELY_UNSET_KEY"}))

    def nacked():
        c = client_status(cp, admin, nackedOnly=True)
        return c if c and c.get("nackedVersion") == v2 else None

    c = wait_until(nacked, what="NACK in status")
    assert c["ackedVersion"] == v1 and c["sentVersion"] == v2
    assert ('pools[0].credentials.env: credential "VIGIE_E2E_SURELY_UNSET_KEY" is not set '
            '(environment variable VIGIE_CREDENTIAL_VIGIE_E2E_SURELY_UNSET_KEY)') in c["nackError"]
    assert s.policy_version() == v1
    assert client(s.base_url).chat.completions.create(model="gpt-4o-mini", messages=MSG).choices[0].message.content
    assert "snapshot rejected by client" in cp.log()
    # Fixing the policy clears it from the NACK view.
    v3 = apply(cp, admin, routed_to(m) | {"pools": [pool("gpu", [m.url], [{"name": "mistral-7b", "aliases": ["gpt-4o-mini", "x"]}])]})
    wait_until(lambda: acked(cp, admin, v3), what="ACK after the fix")
    assert client_status(cp, admin, nackedOnly=True) is None


def test_only_affected_watchers_get_a_push(control_planes, mocks, sidecars):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    m = mocks("gpu")
    apply(cp, admin, routed_to(m, name="cluster", scope={}))
    a = sidecars(None, control_plane=cp, token=cp.token("a", "workload", namespace="team-a"),
                 identity={"namespace": "team-a", "pod": "a-0"})
    b = sidecars(None, control_plane=cp, token=cp.token("b", "workload", namespace="team-b"),
                 identity={"namespace": "team-b", "pod": "b-0"})
    va, vb = a.policy_version(), b.policy_version()
    assert va == vb
    v_a2 = apply(cp, admin, routed_to(m, name="team-a") | {
        "pools": [pool("gpu", [m.url], [{"name": "mistral-7b", "aliases": ["only-team-a"]}])]})
    wait_until(lambda: a.policy_version() == v_a2, what="team-a converges")
    wait_until(lambda: acked(cp, admin, v_a2, "team-a/a-0"), what="team-a ACK")
    time.sleep(0.5)
    assert b.policy_version() == vb
    assert b.process.log().count("policy installed from the control plane") == 1
    assert client_status(cp, admin, "team-b/b-0")["sentVersion"] == vb


def test_two_replicas_on_postgres_converge(postgres, control_planes, mocks, sidecars):
    url = postgres.new_database()
    # A long resync interval: only NOTIFY can carry the change fast.
    a = control_planes(database_url=url, replica="cp-a", resync_ms=600_000)
    b = control_planes(database_url=url, replica="cp-b", resync_ms=600_000)
    admin = a.token("alice", "admin")
    workload = a.token("w", "workload", namespace="team-a")
    m = mocks("gpu")
    v1 = apply(a, admin, routed_to(m))
    s = sidecars(None, control_plane=b, token=workload)
    assert s.policy_version() == v1
    v2 = apply(a, admin, routed_to(m) | {"pools": [pool("gpu", [m.url], [{"name": "mistral-7b", "aliases": ["gpt-4o-mini", "v2"]}])]})
    t0 = time.monotonic()
    wait_until(lambda: s.policy_version() == v2, timeout=5, interval=0.01, what="change through replica A reaching a watcher of B")
    assert time.monotonic() - t0 < 2
    # Status is shared: replica A reports the sidecar connected to B, with its ACK.
    wait_until(lambda: acked(a, admin, v2), what="status through A")
    assert client_status(a, admin)["replica"] == "cp-b"
    # Writes through both replicas keep one history.
    b.call("PolicyService/ApplyPolicy", {"policy": routed_to(m, name="other")}, token=admin)
    names = [p["name"] for p in a.call("PolicyService/ListPolicies", {}, token=admin)["policies"]]
    assert names == ["other", "team-a"]


def make_pki(d):
    def run(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=vigie-test-ca")
    for name, ext in [("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"),
                      ("client", "subjectAltName=DNS:team-a.app\nextendedKeyUsage=clientAuth")]:
        (d / f"{name}.ext").write_text(ext + "\n")
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {"ca": str(d / "ca.crt"), "cert": str(d / "server.crt"), "key": str(d / "server.key"),
            "client_ca": str(d / "ca.crt"), "client_cert": str(d / "client.crt"), "client_key": str(d / "client.key")}


def test_mtls(control_planes, mocks, sidecars, tmp_path):
    cp = control_planes(tls=make_pki(tmp_path))
    admin = cp.token("alice", "admin")
    workload = cp.token("w", "workload", namespace="team-a")
    m = mocks("gpu")
    v1 = apply(cp, admin, routed_to(m))
    # Without a client certificate the handshake is refused.
    with pytest.raises(GrpcError):
        cp.call("PolicyService/ListPolicies", {}, token=admin, tls_client=False)
    s = sidecars(None, control_plane=cp, token=workload)
    assert s.policy_version() == v1
    assert "\nvigie_sidecar_control_plane_connected 1\n" in httpx.get(s.admin_url + "/metrics").text
