"""The usage ledger and the GDPR (issue: FinOps, "RGPD for the ledger"), on both stores:
end users are stored as keyed pseudonyms by default and found by their clear value; an
admin erases one user's identity from every record, audited without it, totals kept;
records past the retention are folded into monthly aggregates that queries still count."""

import datetime
import json

import openai
import pytest

from harness import GrpcError, wait_until
from test_usage_ledger import MSG, exported, managed, setup, wait_records

ANA = "ana.lefevre@interieur.gouv.fr"
BOB = "bob.martin@interieur.gouv.fr"


def month_start(months_ago: int) -> int:
    """First day (UTC, ms) of the month `months_ago` before this one."""
    d = datetime.datetime.now(datetime.timezone.utc).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    for _ in range(months_ago):
        d = (d - datetime.timedelta(days=1)).replace(day=1)
    return int(d.timestamp() * 1000)


def record(rid: str, at_ms: int, user: str, model="gpt-4o-mini", prompt=10, cost=0.25) -> dict:
    return {"id": rid, "startedAtMs": str(at_ms), "endedAtMs": str(at_ms + 5), "namespace": "team-a",
            "workload": "chatbot", "user": user, "model": model, "pool": "gpu", "promptTokens": str(prompt),
            "completionTokens": "3", "currency": "EUR", "cost": cost, "outcome": "USAGE_OUTCOME_COMPLETED",
            "source": "USAGE_SOURCE_REPORTED"}


def totals(cp, token, **query) -> dict:
    rows = cp.call("UsageService/QueryUsage", query, token=token).get("rows", [])
    return {(r.get("bucketStartMs", "0"), *r.get("key", [])):
            (int(r["totals"].get("requests", 0)), int(r["totals"].get("promptTokens", 0)),
             round(r["totals"].get("cost", 0.0), 6)) for r in rows}


def database_bytes(cp) -> bytes:
    """The embedded database's files as they are on disk (the write-ahead log too)."""
    return b"".join(p.read_bytes() for p in (cp.dir / "data").glob("vigie.db*"))


def test_users_are_stored_as_pseudonyms_and_found_by_their_clear_value(database_url, control_planes, mocks,
                                                                        sidecars):
    cp, admin, workload, _ = setup(control_planes, mocks, database_url)
    auditor = cp.token("audit", "auditor")
    s = managed(sidecars, cp, workload)
    c = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0, timeout=30)
    for user in (ANA, ANA, BOB):
        c.chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=2, extra_headers={"x-vigie-user": user})
    records = wait_records(cp, admin, 3)
    ana = cp.pseudonym(ANA)
    assert sorted(r["user"] for r in records) == sorted([ana, ana, cp.pseudonym(BOB)])
    assert ANA not in json.dumps(records) and "ana.lefevre" not in json.dumps(records)
    # Found by the clear value and by the pseudonym; grouped by pseudonym.
    for user in (ANA, ana):
        assert sum(v[0] for v in totals(cp, auditor, filter={"user": user}).values()) == 2
        assert len(cp.stream("UsageService/ExportUsage", {"filter": {"user": user}}, auditor)) == 2
    by_user = totals(cp, auditor, groupBy=["USAGE_DIMENSION_USER"])
    assert by_user[("0", ana)][0] == 2 and ("0", ANA) not in by_user
    if database_url is None:
        assert ANA.encode() not in database_bytes(cp), "the clear user reached the database file"
    assert ANA not in cp.log()
    # A sidecar cannot file records under someone else's pseudonym: what it reports is
    # pseudonymised again.
    cp.call("UsageService/ReportUsage", {"records": [record("forged-1", month_start(0), ana)]}, token=workload)
    forged = next(r for r in exported(cp, admin) if r["id"] == "forged-1")
    assert forged["user"] == cp.pseudonym(ana) != ana
    assert sum(v[0] for v in totals(cp, auditor, filter={"user": ANA}).values()) == 2


def test_users_in_clear_when_the_operator_asks(control_planes, mocks):
    cp = control_planes(extra_args=["--usage-users-in-clear"])
    admin = cp.token("alice", "admin")
    cp.call("UsageService/ReportUsage", {"records": [record("c-1", month_start(0), ANA)]}, token=admin)
    assert [r["user"] for r in exported(cp, admin)] == [ANA]
    # No key was created for nothing.
    assert not cp.user_key_path.exists()


def test_postgresql_needs_a_shared_key_or_users_in_clear(postgres, control_planes):
    url = postgres.new_database()
    with pytest.raises(RuntimeError) as e:
        control_planes(database_url=url, env={"VIGIE_USAGE_USER_KEY_FILE": None})
    assert "--usage-user-key-file" in str(e.value)
    cp = control_planes(database_url=url, extra_args=["--usage-users-in-clear"],
                        env={"VIGIE_USAGE_USER_KEY_FILE": None})
    admin = cp.token("alice", "admin")
    cp.call("UsageService/ReportUsage", {"records": [record("c-1", month_start(0), ANA)]}, token=admin)
    assert [r["user"] for r in exported(cp, admin)] == [ANA]


def test_erasure_by_an_admin_removes_the_user_keeps_the_totals_and_is_audited_without_it(
        database_url, control_planes, mocks):
    cp, admin, workload, _ = setup(control_planes, mocks, database_url)
    auditor = cp.token("audit", "auditor")
    now = month_start(0)
    batch = [record(f"r-{i}", now + i, ANA if i % 3 else BOB, prompt=10 + i) for i in range(30)]
    cp.call("UsageService/ReportUsage", {"records": batch}, token=admin)
    before = totals(cp, auditor, groupBy=["USAGE_DIMENSION_MODEL"])
    ana = cp.pseudonym(ANA)

    # Only admins; bad input named by field.
    for token in (auditor, workload):
        with pytest.raises(GrpcError) as e:
            cp.call("UsageService/EraseUser", {"user": ANA}, token=token)
        assert e.value.code == "PermissionDenied"
    with pytest.raises(GrpcError) as e:
        cp.call("UsageService/EraseUser", {"user": ""}, token=admin)
    assert e.value.code == "InvalidArgument" and "user" in e.value.text
    with pytest.raises(GrpcError) as e:
        cp.call("UsageService/EraseUser", {"user": ANA, "comment": f"demande de {ANA.upper()}"}, token=admin)
    assert e.value.code == "InvalidArgument" and "comment" in e.value.text
    with pytest.raises(GrpcError) as e:
        cp.call("UsageService/EraseUser", {"user": "x" * 5000}, token=admin)
    assert e.value.code == "InvalidArgument"
    # Values are compared, not matched as patterns.
    for pattern in ("%", "hmac:%", "*", "' OR 1=1 --"):
        assert int(cp.call("UsageService/EraseUser", {"user": pattern}, token=admin).get("records", 0)) == 0
    assert sum(1 for r in exported(cp, admin) if r.get("user") == ana) == 20, "refused calls erased nothing"

    out = cp.call("UsageService/EraseUser", {"user": ANA, "comment": "ticket RGPD-2026-117"}, token=admin)
    assert int(out["records"]) == 20
    records = exported(cp, admin)
    assert len(records) == 30 and not any(r.get("user") == ana for r in records)
    assert sum(1 for r in records if r.get("user") == cp.pseudonym(BOB)) == 10
    assert totals(cp, auditor, groupBy=["USAGE_DIMENSION_MODEL"]) == before, "the figures stay"
    assert totals(cp, auditor, filter={"user": ANA}) == {}
    # By pseudonym too, and twice: nothing left.
    assert int(cp.call("UsageService/EraseUser", {"user": ana}, token=admin).get("records", 0)) == 0

    events = cp.call("AuditService/ListAuditEvents", {}, token=admin)["events"]
    erase = [e for e in events if e.get("action") == "usage.erase_user"]
    assert len(erase) == 6 and all(e["actor"] == "alice" for e in erase)
    ticket = [e for e in erase if e.get("comment") == "ticket RGPD-2026-117"]
    assert len(ticket) == 1 and "20 usage records" in ticket[0]["summary"]
    trail = json.dumps(events) + cp.log()
    assert ANA not in trail and ana not in trail, "the audit trail or the log names the erased user"
    if database_url is None:
        assert ana.encode() not in database_bytes(cp), "the pseudonym is still in the database file"


def test_retention_folds_old_months_into_aggregates_that_queries_still_count(database_url, control_planes, mocks):
    cp, admin, _, _ = setup(control_planes, mocks, database_url)
    cp.stop()
    cp.extra_args += ["--usage-retention-months", "1"]
    cp.start()
    three, two, last, this = month_start(3), month_start(2), month_start(1), month_start(0)
    batch = [record("old-1", three + 1000, ANA, prompt=11), record("old-2", three + 2000, BOB, "llama", 12, 1.5),
             record("old-3", two + 1000, ANA, prompt=13), record("kept-1", last + 1000, ANA, prompt=14),
             record("kept-2", this + 1000, BOB, prompt=15)]
    cp.call("UsageService/ReportUsage", {"records": batch}, token=admin)
    query = {"groupBy": ["USAGE_DIMENSION_MODEL"], "bucket": "TIME_BUCKET_MONTH"}
    before = totals(cp, admin, **query)
    assert sum(v[0] for v in before.values()) == 5

    # The purge runs at start (then hourly) on the replica holding its lease.
    cp.stop()
    cp.start()
    wait_until(lambda: len(exported(cp, admin)) == 2, what="records of the last two months only")
    assert sorted(r["id"] for r in exported(cp, admin)) == ["kept-1", "kept-2"]
    assert totals(cp, admin, **query) == before, "monthly totals count the aggregates"
    assert totals(cp, admin, groupBy=["USAGE_DIMENSION_NAMESPACE"])[("0", "team-a")][0] == 5
    # A query by user reads the records only: the aggregates keep no user.
    assert sum(v[0] for v in totals(cp, admin, filter={"user": ANA}).values()) == 1
    assert "folded into monthly aggregates" in cp.log()
    if database_url is None:
        assert cp.pseudonym(ANA).encode() in database_bytes(cp)  # kept-1 still names her
