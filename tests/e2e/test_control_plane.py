"""Control-plane API driven with the real grpcurl, on both storage backends."""

import copy
import json
import subprocess

import pytest

from harness import ROOT, GrpcError, binary, pool

EXAMPLE = json.loads((ROOT / "docs" / "examples" / "policy.json").read_text())


def policy(name="team-a", scope=None, endpoint="http://10.0.0.1:8000", model="mistral-7b"):
    p = {"name": name, "pools": [pool("gpu-a", [endpoint], [{"name": model, "aliases": ["gpt-4o-mini"]}])],
         "routes": [{"model": "gpt-4o-mini", "pools": ["gpu-a"]}]}
    if scope is not None:
        p["scope"] = scope
    return p


@pytest.fixture
def cp(control_planes, database_url):
    return control_planes(database_url=database_url)


@pytest.fixture
def admin(cp):
    return cp.token("alice", "admin")


def test_reflection_lists_services_without_proto_files(cp):
    out = subprocess.run([*cp.grpcurl_args(), cp.address, "list"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    for svc in ["vigie.v1.PolicyService", "vigie.v1.DiscoveryService", "vigie.v1.StatusService",
                "vigie.v1.AuditService", "grpc.health.v1.Health"]:
        assert svc in out.stdout.split()
    out = subprocess.run([*cp.grpcurl_args(), cp.address, "describe", "vigie.v1.Policy"],
                         capture_output=True, text=True, timeout=30)
    assert "repeated .vigie.v1.Pool pools" in out.stdout, out.stdout
    health = subprocess.run([*cp.grpcurl_args(), cp.address, "grpc.health.v1.Health/Check"],
                            capture_output=True, text=True, timeout=30)
    assert json.loads(health.stdout) == {"status": "SERVING"}


def test_policy_lifecycle_revisions_rollback_and_audit(cp, admin):
    # Apply from the documented example file, as a security team would.
    applied = cp.call("PolicyService/ApplyPolicy", {"policy": EXAMPLE, "comment": "CHG-1"}, token=admin)
    r1 = int(applied["revision"]["revision"])
    assert applied["revision"]["action"] == "REVISION_ACTION_APPLY"
    assert applied["revision"]["author"] == "alice"
    assert applied["revision"]["policy"] == EXAMPLE

    # Same content again: nothing recorded.
    again = cp.call("PolicyService/ApplyPolicy", {"policy": EXAMPLE}, token=admin)
    assert again["unchanged"] is True and int(again["revision"]["revision"]) == r1

    changed = copy.deepcopy(EXAMPLE)
    changed["pools"][0]["endpoints"][0]["url"] = "http://10.9.9.9:8000"
    del changed["routes"]
    r2 = int(cp.call("PolicyService/ApplyPolicy", {"policy": changed}, token=admin)["revision"]["revision"])
    assert r2 > r1

    listed = cp.call("PolicyService/ListPolicies", {}, token=admin)["policies"]
    assert [(p["name"], int(p["revision"])) for p in listed] == [("example", r2)]

    got = cp.call("PolicyService/GetPolicy", {"name": "example"}, token=admin)
    assert got["policy"] == changed
    old = cp.call("PolicyService/GetPolicy", {"name": "example", "revision": r1}, token=admin)
    assert old["policy"] == EXAMPLE

    revs = cp.call("PolicyService/ListRevisions", {"name": "example"}, token=admin)["revisions"]
    assert [int(r["revision"]) for r in revs] == [r2, r1]
    assert revs[0]["summary"] == "pools changed: onprem-gpu; routes removed: gpt-4o-mini"

    rolled = cp.call("PolicyService/Rollback", {"name": "example", "revision": r1, "comment": "bad change"}, token=admin)
    r3 = int(rolled["revision"]["revision"])
    assert r3 > r2
    assert rolled["revision"]["action"] == "REVISION_ACTION_ROLLBACK"
    assert int(rolled["revision"]["restoredRevision"]) == r1
    assert cp.call("PolicyService/GetPolicy", {"name": "example"}, token=admin)["policy"] == EXAMPLE

    deleted = int(cp.call("PolicyService/DeletePolicy", {"name": "example"}, token=admin)["revision"])
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/GetPolicy", {"name": "example"}, token=admin)
    assert e.value.code == "NotFound" and f"deleted at revision {deleted}" in e.value.text
    assert cp.call("PolicyService/ListPolicies", {}, token=admin) == {}
    # A deletion is a revision: it can be rolled back too.
    cp.call("PolicyService/Rollback", {"name": "example", "revision": r3}, token=admin)
    assert cp.call("PolicyService/GetPolicy", {"name": "example"}, token=admin)["policy"] == EXAMPLE

    auditor = cp.token("bob", "auditor")
    events = cp.call("AuditService/ListAuditEvents", {"policy": "example"}, token=auditor)["events"]
    assert [e["action"] for e in events] == ["policy.rollback", "policy.delete", "policy.rollback",
                                            "policy.apply", "policy.apply"]
    assert all(e["actor"] == "alice" and e["role"] == "admin" for e in events)
    assert events[-1]["comment"] == "CHG-1"
    assert events[-1]["summary"].startswith("created (cluster-wide): pools onprem-gpu, mistral-cloud")
    assert events[2]["summary"].startswith(f"rollback to revision {r1}:")
    assert events[2]["comment"] == "bad change"
    # Every write is also a structured log event.
    assert cp.log().count("vigie::audit") == 5


def test_validation_reports_every_problem_with_field_paths(cp, admin):
    broken = {
        "name": "broken",
        "scope": {"namespace": "Team_A"},
        "pools": [
            pool("gpu-a", ["http://10.0.0.1:8000"], [{"name": "m"}]),
            pool("gpu-a", ["ftp://10.0.0.2"], [{"name": "m", "aliases": ["m"]}], kind="POOL_KIND_UNSPECIFIED"),
        ],
        "routes": [{"model": "m", "pools": ["gpu-b"]}],
    }
    for method in ["PolicyService/ValidatePolicy", "PolicyService/ApplyPolicy"]:
        with pytest.raises(GrpcError) as e:
            cp.call(method, {"policy": broken}, token=admin)
        assert e.value.code == "InvalidArgument"
        for expected in [
            "invalid policy (6 problems)",
            "scope.namespace: \"Team_A\" must be lower-case letters, digits and '-' (DNS label)",
            "pools[1].name: duplicate pool name \"gpu-a\"",
            "pools[1].kind: must be set",
            "pools[1].endpoints[0].url: scheme must be http or https",
            "pools[1].models[0].aliases[0]: model name \"m\" is already used in this pool",
            "routes[0].pools[0]: unknown pool \"gpu-b\"",
            # The machine-readable detail, decoded by grpcurl thanks to reflection.
            '"field":"routes[0].pools[0]"',
        ]:
            assert expected in e.value.text, e.value.text
    # Nothing stored, nothing audited.
    assert cp.call("PolicyService/ListPolicies", {}, token=admin) == {}
    assert "events" not in cp.call("AuditService/ListAuditEvents", {"policy": "broken"}, token=admin)
    # A valid one: the dry run says what would change, and stores nothing.
    ok = cp.call("PolicyService/ValidatePolicy", {"policy": policy()}, token=admin)
    assert ok == {"valid": True, "changeSummary": "created (cluster-wide): pools gpu-a; routes gpt-4o-mini"}
    assert cp.call("PolicyService/ListPolicies", {}, token=admin) == {}


def test_bad_input_is_refused_and_nothing_is_stored(control_planes, database_url):
    cp = control_planes(database_url=database_url, extra_args=["--max-message-bytes", "65536"])
    admin = cp.token("alice", "admin")
    cases = [
        ({"policy": {**policy(), "name": ""}}, "name: must not be empty"),
        ({}, "policy: is required"),
        # Unknown enum number (a newer client, or a typo'd integer): refused by validation.
        ({"policy": {**policy(), "pools": [{**policy()["pools"][0], "kind": 42}]}}, "pools[0].kind: unknown pool kind 42"),
        ({"policy": {**policy(), "routes": [{"model": "gpt-4o-mini", "pools": ["gpu-a", "gpu-a"]}]}},
         "routes[0].pools[1]: pool \"gpu-a\" is listed twice"),
        ({"policy": {**policy(), "routes": [{"model": "gpt-4o-mini", "pools": ["gpu-a"]},
                                             {"model": "gpt-4o-mini", "pools": ["gpu-a"]}]}},
         "routes[1].model: an earlier route for model \"gpt-4o-mini\" has no conditions: this one would never be used"),
        # A model that names itself as its own alias.
        ({"policy": {**policy(), "pools": [pool("gpu-a", ["http://h"], [{"name": "m", "aliases": ["m"]}])], "routes": []}},
         "pools[0].models[0].aliases[0]: model name \"m\" is already used in this pool"),
    ]
    for body, expected in cases:
        with pytest.raises(GrpcError) as e:
            cp.call("PolicyService/ApplyPolicy", body, token=admin)
        assert e.value.code == "InvalidArgument", e.value.text
        assert expected in e.value.text, e.value.text
    # Unknown enum name: grpcurl refuses it before sending, with the name in the error.
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": {**policy(), "pools": [{**policy()["pools"][0], "kind": "POOL_KIND_NOPE"}]}}, token=admin)
    assert "POOL_KIND_NOPE" in e.value.text
    # Oversized message.
    big = policy()
    big["pools"][0]["models"] = [{"name": f"model-{i:06d}-" + "x" * 40} for i in range(2000)]
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": big}, token=admin)
    # tonic's code for an over-limit message; the text says what and the limit.
    assert e.value.code == "OutOfRange" and "the limit is: 65536 bytes" in e.value.text, e.value.text
    # Optimistic concurrency.
    cp.call("PolicyService/ApplyPolicy", {"policy": policy(), "expectedRevision": "-1"}, token=admin)
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": policy(), "expectedRevision": "-1"}, token=admin)
    assert e.value.code == "FailedPrecondition" and "already exists" in e.value.text
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": policy(endpoint="http://h2"), "expectedRevision": "999"}, token=admin)
    assert e.value.code == "FailedPrecondition" and "not 999" in e.value.text
    # Only the one valid policy was stored.
    listed = cp.call("PolicyService/ListPolicies", {}, token=admin)["policies"]
    assert [p["name"] for p in listed] == ["team-a"]
    assert len(cp.call("PolicyService/ListRevisions", {"name": "team-a"}, token=admin)["revisions"]) == 1
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/Rollback", {"name": "team-a", "revision": "424242"}, token=admin)
    assert e.value.code == "NotFound"


def test_authentication_and_roles(cp, admin):
    auditor = cp.token("bob", "auditor")
    workload = cp.token("app", "workload", namespace="team-a", service_account="app")
    body = {"policy": policy()}

    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ListPolicies", {})
    assert e.value.code == "Unauthenticated" and "missing token" in e.value.text
    for bad in ["nonsense", admin[:-4] + "0000", "vigie_nothere_abc"]:
        with pytest.raises(GrpcError) as e:
            cp.call("PolicyService/ListPolicies", {}, token=bad)
        assert e.value.code == "Unauthenticated"
        assert bad not in e.value.text  # tokens are never echoed
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", body, token=auditor)
    assert e.value.code == "PermissionDenied" and "needs admin" in e.value.text
    for method in ["PolicyService/ListPolicies", "AuditService/ListAuditEvents", "StatusService/ListClients"]:
        with pytest.raises(GrpcError) as e:
            cp.call(method, {}, token=workload)
        assert e.value.code == "PermissionDenied"
    cp.call("PolicyService/ApplyPolicy", body, token=admin)
    assert cp.call("PolicyService/ListPolicies", {}, token=auditor)["policies"][0]["name"] == "team-a"
    # A workload may see its own effective policy, not another namespace's.
    mine = cp.call("PolicyService/GetEffectivePolicy",
                   {"identity": {"namespace": "team-a", "serviceAccount": "app"}}, token=workload)
    assert [(s["section"], s["policy"]) for s in mine["sources"]] == [("routing", "team-a")]
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/GetEffectivePolicy", {"identity": {"namespace": "team-b"}}, token=workload)
    assert e.value.code == "PermissionDenied"
    # Watching as somebody else is refused.
    out = subprocess.run([*cp.grpcurl_args(workload), "-d", json.dumps(
        {"hello": {"identity": {"namespace": "team-b", "pod": "x", "kind": "CLIENT_KIND_SIDECAR"}}}),
        cp.address, "vigie.v1.DiscoveryService/Watch"], capture_output=True, text=True, timeout=30)
    assert "PermissionDenied" in out.stderr, out.stderr
    # Revocation takes effect on the next call.
    revoke = subprocess.run([str(binary("vigie-control-plane")), *cp.db_args, "token", "revoke", "--name", "bob"],
                            capture_output=True, text=True, timeout=30)
    assert revoke.returncode == 0, revoke.stderr
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ListPolicies", {}, token=auditor)
    assert e.value.code == "Unauthenticated"
    actions = [e["action"] for e in cp.call("AuditService/ListAuditEvents", {}, token=admin)["events"]]
    assert actions[0] == "token.revoke" and actions.count("token.create") == 3


def test_effective_policy_precedence(cp, admin):
    cp.call("PolicyService/ApplyPolicy", {"policy": policy("cluster", endpoint="http://global")}, token=admin)
    cp.call("PolicyService/ApplyPolicy", {"policy": policy("team-a", {"namespace": "team-a"}, endpoint="http://ns")}, token=admin)
    cp.call("PolicyService/ApplyPolicy", {"policy": policy(
        "chatbot", {"namespace": "team-a", "workloadLabels": {"app": "chatbot"}}, endpoint="http://wl")}, token=admin)

    def endpoint_for(identity):
        eff = cp.call("PolicyService/GetEffectivePolicy", {"identity": identity}, token=admin)
        return eff["policy"]["pools"][0]["endpoints"][0]["url"], eff["sources"][0]["policy"], eff["version"]

    assert endpoint_for({"namespace": "team-a", "labels": {"app": "chatbot"}})[:2] == ("http://wl", "chatbot")
    assert endpoint_for({"namespace": "team-a", "labels": {"app": "web"}})[:2] == ("http://ns", "team-a")
    assert endpoint_for({"namespace": "team-b", "labels": {"app": "chatbot"}})[:2] == ("http://global", "cluster")
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/GetEffectivePolicy", {"identity": {}}, token=admin)
    assert "identity.namespace: must not be empty" in e.value.text


def test_concurrent_writers_never_lose_an_update(cp, admin):
    from concurrent.futures import ThreadPoolExecutor

    r0 = cp.call("PolicyService/ApplyPolicy", {"policy": policy()}, token=admin)["revision"]["revision"]

    def guarded(i):
        try:
            cp.call("PolicyService/ApplyPolicy",
                    {"policy": policy(endpoint=f"http://guarded-{i}"), "expectedRevision": r0}, token=admin)
            return "ok"
        except GrpcError as e:
            return e.code

    # Eight writers that all read revision r0: exactly one wins, the others are told.
    with ThreadPoolExecutor(8) as ex:
        outcomes = sorted(ex.map(guarded, range(8)))
    assert outcomes == ["FailedPrecondition"] * 7 + ["ok"], outcomes

    # Eight unguarded writers: all land, one after the other, none overwritten silently.
    with ThreadPoolExecutor(8) as ex:
        list(ex.map(lambda i: cp.call("PolicyService/ApplyPolicy",
                                      {"policy": policy(endpoint=f"http://free-{i}")}, token=admin), range(8)))
    revs = cp.call("PolicyService/ListRevisions", {"name": "team-a"}, token=admin)["revisions"]
    assert len(revs) == 1 + 1 + 8
    urls = {r["policy"]["pools"][0]["endpoints"][0]["url"] for r in revs}
    assert {f"http://free-{i}" for i in range(8)} <= urls
    assert len(cp.call("AuditService/ListAuditEvents", {"policy": "team-a"}, token=admin)["events"]) == 10


def test_dlp_section_is_compiled_at_apply_time(cp, admin):
    bad = {**policy("dlp-bad"), "dlp": {
        "rules": [{"detector": "FR_NIRR", "action": "DLP_ACTION_REDACT"}, {"detector": "IBAN"}],
        "customDetectors": [{"name": "CODE", "regex": "AB(["}, {"name": "iban", "keywords": {"words": ["x"]}}]}}
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ValidatePolicy", {"policy": bad}, token=admin)
    for expected in ['dlp.customDetectors[0].regex: does not compile:',
                     'dlp.customDetectors[1].name: "iban" must be upper-case letters',
                     'dlp.rules[0].detector: unknown detector "FR_NIRR"',
                     'dlp.rules[1].action: must be set']:
        assert expected in e.value.text, e.value.text
    # A DLP-only baseline is a valid policy: sections are independent.
    baseline = {"name": "dlp-baseline", "dlp": {"rules": [{"detector": "*", "action": "DLP_ACTION_REDACT"}]}}
    r = cp.call("PolicyService/ApplyPolicy", {"policy": baseline}, token=admin)
    assert r["revision"]["summary"] == "created (cluster-wide): pools none; routes none; dlp 1 rules"
    cp.call("PolicyService/ApplyPolicy", {"policy": policy("team-a", {"namespace": "team-a"})}, token=admin)
    eff = cp.call("PolicyService/GetEffectivePolicy", {"identity": {"namespace": "team-a"}}, token=admin)
    assert [(s["section"], s["policy"]) for s in eff["sources"]] == [("routing", "team-a"), ("dlp", "dlp-baseline")]
    assert eff["policy"]["dlp"]["rules"][0]["detector"] == "*"
