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
    # Grouped by pseudonym; found by the pseudonym, and by name for admins only (an
    # auditor could otherwise test guessed addresses), audited without the name.
    by_user = totals(cp, auditor, groupBy=["USAGE_DIMENSION_USER"])
    assert by_user[("0", ana)][0] == 2 and ("0", ANA) not in by_user
    assert sum(v[0] for v in totals(cp, auditor, filter={"user": ana}).values()) == 2
    assert len(cp.stream("UsageService/ExportUsage", {"filter": {"user": ana}}, auditor)) == 2
    with pytest.raises(GrpcError) as e:
        totals(cp, auditor, filter={"user": ANA})
    assert e.value.code == "PermissionDenied" and "filter.user" in e.value.text
    with pytest.raises(GrpcError):
        cp.stream("UsageService/ExportUsage", {"filter": {"user": ANA}}, auditor)
    assert sum(v[0] for v in totals(cp, admin, filter={"user": ANA}).values()) == 2
    assert len(cp.stream("UsageService/ExportUsage", {"filter": {"user": ANA}}, admin)) == 2
    events = cp.call("AuditService/ListAuditEvents", {}, token=admin)["events"]
    lookups = [e for e in events if e.get("action") == "usage.lookup_user"]
    assert len(lookups) == 2 and all(e["actor"] == "alice" for e in lookups)
    assert ANA not in json.dumps(events) and ana not in json.dumps(events)
    if database_url is None:
        assert ANA.encode() not in database_bytes(cp), "the clear user reached the database file"
    assert ANA not in cp.log()
    # A sidecar cannot file records under someone else's pseudonym: what it reports is
    # pseudonymised again.
    cp.call("UsageService/ReportUsage", {"records": [record("forged-1", month_start(0), ana)]}, token=workload)
    forged = next(r for r in exported(cp, admin) if r["id"] == "forged-1")
    assert forged["user"] == cp.pseudonym(ana) != ana
    assert sum(v[0] for v in totals(cp, auditor, filter={"user": ana}).values()) == 2


def test_users_in_clear_when_the_operator_asks(control_planes, mocks):
    cp = control_planes(extra_args=["--usage-users-in-clear"])
    admin = cp.token("alice", "admin")
    cp.call("UsageService/ReportUsage", {"records": [record("c-1", month_start(0), ANA)]}, token=admin)
    assert [r["user"] for r in exported(cp, admin)] == [ANA]
    # No key was created for nothing.
    assert not cp.user_key_path.exists()


def test_users_stored_in_clear_before_are_pseudonymised_at_start(database_url, control_planes):
    """A database written in clear (an older version, or clear mode) is rewritten when
    the control plane starts pseudonymising."""
    cp = control_planes(database_url=database_url, extra_args=["--usage-users-in-clear"])
    admin = cp.token("alice", "admin")
    cp.call("UsageService/ReportUsage", {"records": [record(f"c-{i}", month_start(0) + i, ANA) for i in range(3)]},
            token=admin)
    assert {r["user"] for r in exported(cp, admin)} == {ANA}
    cp.stop()
    cp.extra_args = []
    cp.start()
    assert {r["user"] for r in exported(cp, admin)} == {cp.pseudonym(ANA)}
    assert "replaced by their pseudonyms" in cp.log()
    if database_url is None:
        assert ANA.encode() not in database_bytes(cp), "the clear user is still in the database file"


def test_erasure_in_clear_mode_also_finds_the_records_pseudonymised_before(control_planes):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    cp.call("UsageService/ReportUsage", {"records": [record("p-1", month_start(0), ANA)]}, token=admin)
    cp.stop()
    cp.extra_args = ["--usage-users-in-clear"]
    cp.start()
    cp.call("UsageService/ReportUsage", {"records": [record("c-1", month_start(0) + 1, ANA)]}, token=admin)
    assert sorted(r["user"] for r in exported(cp, admin)) == sorted([ANA, cp.pseudonym(ANA)])
    assert int(cp.call("UsageService/EraseUser", {"user": ANA}, token=admin)["records"]) == 2
    assert not any(r.get("user") for r in exported(cp, admin))


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
    for comment in (f"demande de {ana}", "demande de ana.l@interieur.gouv.fr", "voir hmac:0123"):
        with pytest.raises(GrpcError) as e:
            cp.call("UsageService/EraseUser", {"user": ANA, "comment": comment}, token=admin)
        assert e.value.code == "InvalidArgument" and "comment" in e.value.text
    with pytest.raises(GrpcError) as e:
        cp.call("UsageService/EraseUser", {"user": ana, "comment": f"pour {ANA}"}, token=admin)
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
    assert totals(cp, admin, filter={"user": ANA}) == {}
    # By pseudonym too, and twice: nothing left.
    assert int(cp.call("UsageService/EraseUser", {"user": ana}, token=admin).get("records", 0)) == 0
    # An end user whose name looks like a pseudonym is erased by that name.
    odd = "hmac:0123456789abcdef0123456789abcdef"
    cp.call("UsageService/ReportUsage", {"records": [record("odd-1", now + 99, odd)]}, token=admin)
    assert int(cp.call("UsageService/EraseUser", {"user": odd}, token=admin)["records"]) == 1

    events = cp.call("AuditService/ListAuditEvents", {}, token=admin)["events"]
    erase = [e for e in events if e.get("action") == "usage.erase_user"]
    assert len(erase) == 7 and all(e["actor"] == "alice" for e in erase)
    ticket = [e for e in erase if e.get("comment") == "ticket RGPD-2026-117"]
    assert len(ticket) == 1 and "20 usage records" in ticket[0]["summary"]
    trail = json.dumps(events) + cp.log()
    assert ANA not in trail and ana not in trail, "the audit trail or the log names the erased user"
    if database_url is None:
        assert ana.encode() not in database_bytes(cp), "the pseudonym is still in the database file"


def test_retention_folds_old_months_into_aggregates_that_queries_still_count(database_url, control_planes, mocks):
    cp, admin, _, _ = setup(control_planes, mocks, database_url)
    three, two, last, this = month_start(3), month_start(2), month_start(1), month_start(0)
    batch = [record("old-1", three + 1000, ANA, prompt=11), record("old-2", three + 2000, BOB, "llama", 12, 1.5),
             record("old-3", two + 1000, ANA, prompt=13), record("kept-1", last + 1000, ANA, prompt=14),
             record("kept-2", this + 1000, BOB, prompt=15)]
    cp.call("UsageService/ReportUsage", {"records": batch}, token=admin)
    query = {"groupBy": ["USAGE_DIMENSION_MODEL"], "bucket": "TIME_BUCKET_MONTH"}
    before = totals(cp, admin, **query)
    assert sum(v[0] for v in before.values()) == 5

    # Retention turned on: the pass runs at start (then hourly) on the lease holder.
    cp.stop()
    cp.extra_args += ["--usage-retention-months", "1"]
    cp.start()
    wait_until(lambda: len(exported(cp, admin)) == 2, what="records of the last two months only")
    assert sorted(r["id"] for r in exported(cp, admin)) == ["kept-1", "kept-2"]
    assert totals(cp, admin, **query) == before, "monthly totals count the aggregates"
    assert totals(cp, admin, groupBy=["USAGE_DIMENSION_NAMESPACE"])[("0", "team-a")][0] == 5
    # The aggregates keep no user: a query by user, or grouped by user, reads records.
    assert sum(v[0] for v in totals(cp, admin, filter={"user": cp.pseudonym(ANA)}).values()) == 1
    assert sum(v[0] for v in totals(cp, admin, groupBy=["USAGE_DIMENSION_USER"]).values()) == 2
    assert "folded into monthly aggregates" in cp.log()
    # A resend of purged records is not counted again: older than the retention start,
    # reports are answered `expired` and not stored; newer ones stay idempotent.
    reply = cp.call("UsageService/ReportUsage", {"records": batch}, token=admin)
    assert reply == {"expired": 3, "duplicates": 2}
    assert totals(cp, admin, **query) == before
    if database_url is None:
        data = database_bytes(cp)
        assert cp.pseudonym(ANA).encode() in data  # kept-1 still names her
        assert b"old-1" not in data, "a purged record is still in the database file"


def test_erasure_overwrites_the_file_once_a_reader_lets_go(control_planes):
    """A backup tool holding a read snapshot keeps SQLite's write-ahead log from being
    copied into the file: the erasure retries until it can, then the value is gone."""
    import sqlite3
    import threading
    import time

    cp = control_planes()
    admin = cp.token("alice", "admin")
    cp.call("UsageService/ReportUsage",
            {"records": [record(f"r-{i}", month_start(0) + i, ANA if i % 2 else BOB) for i in range(40)]},
            token=admin)
    ana = cp.pseudonym(ANA)
    reader = sqlite3.connect(cp.dir / "data" / "vigie.db", isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    assert reader.execute("SELECT COUNT(*) FROM vigie_usage").fetchone()[0] == 40
    release = threading.Timer(2.0, lambda: reader.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        assert int(cp.call("UsageService/EraseUser", {"user": ANA}, token=admin)["records"]) == 20
    finally:
        release.join()
        reader.close()
    assert time.monotonic() - started >= 1.5, "the erasure waited for the reader"
    assert ana.encode() not in database_bytes(cp), "the pseudonym is still in the database files"
