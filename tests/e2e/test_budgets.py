"""Budgets and rate limits (issue: metering): enforced before forwarding by reserving
an estimate, settled with actual usage; allowance leased from the control plane so
that several sidecars of a workload share one budget; 429 with Retry-After over a
hard limit, a warning header over a soft one; windows roll over; fail-open or
fail-closed without the control plane."""

import time

import httpx
import openai
import pytest

from conftest import simple_policy
from harness import wait_until

MSG = [{"role": "user", "content": "Bonjour, résume la note de service."}]


def budgets(*items, fail_mode="BUDGET_FAIL_MODE_OPEN"):
    return {"budgets": list(items), "failMode": fail_mode}


def chat(s, user=None, max_tokens=20):
    headers = {"x-vigie-user": user} if user else {}
    return httpx.post(f"{s.base_url}/v1/chat/completions", headers=headers, timeout=10,
                      json={"model": "mistral-7b", "messages": MSG, "max_tokens": max_tokens})


def managed_setup(control_planes, mocks, section, database_url=None):
    cp = control_planes(database_url=database_url)
    admin = cp.token("alice", "admin")
    workload = cp.token("w", "workload", namespace="team-a")
    m = mocks("gpu")
    cp.call("PolicyService/ApplyPolicy",
            {"policy": simple_policy(m) | {"scope": {"namespace": "team-a"}, "budgets": section}}, token=admin)
    return cp, admin, workload, m


def test_three_sidecars_share_one_token_budget_and_the_window_rolls_over(database_url, control_planes, mocks,
                                                                         sidecars):
    limit = 2000
    cp, admin, workload, m = managed_setup(control_planes, mocks, budgets({
        "name": "team-tokens", "unit": "BUDGET_UNIT_TOKENS", "limit": limit, "windowDuration": "12s",
        "match": {"namespace": "team-a"}}), database_url)
    # Start at the beginning of a window, so the run fits in one.
    time.sleep(12 - time.time() % 12 + 0.2)
    fleet = [sidecars(None, control_plane=cp, token=workload, identity={"pod": f"app-{i}"}) for i in range(3)]
    admitted, rejections = 0, []
    for i in range(300):
        r = chat(fleet[i % 3])
        if r.status_code == 200:
            admitted += 1
        else:
            assert r.status_code == 429, r.text
            rejections.append(r)
            if len(rejections) >= 6:
                break
    truth = m.stats()
    used = truth["prompt_tokens"] + truth["generation_tokens"]
    # Reservations (prompt ≈ bytes/4 ≥ the real count, max_tokens = what the mock
    # generates) never exceed the limit, so neither does real usage.
    assert used <= limit, f"{used} tokens used for a {limit} budget"
    assert used >= limit * 0.6, f"only {used} of {limit}: allowance stranded in the sidecars"
    body = rejections[0].json()["error"]
    assert body["code"] == "budget_exceeded" and body["type"] == "rate_limit_error"
    assert "team-tokens" in body["message"]
    retry = int(rejections[0].headers["retry-after"])
    assert 1 <= retry <= 12
    # Leases, not calls per request: a handful per sidecar.
    leases = sum(float(line.rsplit(" ", 1)[1]) for s in fleet
                 for line in httpx.get(s.admin_url + "/metrics").text.splitlines()
                 if line.startswith("vigie_sidecar_budget_leases_total{"))
    print(f"shared budget: {used}/{limit} tokens used, {admitted} admitted, {leases:.0f} leases")
    assert leases <= admitted / 2, f"{leases} leases for {admitted} requests"
    assert 'decision="rejected"' in httpx.get(fleet[0].admin_url + "/metrics").text or \
        any('decision="rejected"' in httpx.get(s.admin_url + "/metrics").text for s in fleet)
    # The authority's view: everything charged in this window, never above the limit.
    [counter] = cp.call("UsageService/GetBudgetStatus", {"budget": "team-tokens"}, token=admin)["counters"]
    assert counter["budget"] == "e2e/team-tokens" and counter["limit"] == limit
    assert used <= counter["charged"] <= limit
    assert "budget_decision" not in rejections[0].text
    # The next window starts afresh.
    time.sleep(retry + 0.3)
    assert chat(fleet[0]).status_code == 200


def test_request_limits_per_user_and_soft_budgets_in_a_standalone_sidecar(mocks, sidecars):
    m = mocks("gpu")
    s = sidecars(simple_policy(m) | {"budgets": budgets(
        {"name": "rpm-per-user", "unit": "BUDGET_UNIT_REQUESTS", "limit": 2, "window": "BUDGET_WINDOW_MINUTE",
         "per": ["BUDGET_KEY_USER"]},
        {"name": "daily-soft", "unit": "BUDGET_UNIT_TOKENS", "limit": 50, "window": "BUDGET_WINDOW_DAY",
         "soft": True})})
    first = chat(s, "ana")
    assert first.status_code == 200
    assert chat(s, "ana").status_code == 200
    # The soft budget is over after a couple of requests: still served, with a warning.
    assert chat(s, "bob").headers.get("x-vigie-budget-warning") == "daily-soft"
    over = chat(s, "ana")
    assert over.status_code == 429 and over.json()["error"]["code"] == "budget_exceeded"
    assert 1 <= int(over.headers["retry-after"]) <= 60
    # The official SDK raises its rate-limit error, with the body and the header.
    client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0,
                           default_headers={"x-vigie-user": "ana"})
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=5)
    assert "rpm-per-user" in e.value.body["message"]
    assert m.stats()["requests_total"] == 3, "refused requests never reach the upstream"


@pytest.mark.parametrize("mode,status", [("BUDGET_FAIL_MODE_OPEN", 200), ("BUDGET_FAIL_MODE_CLOSED", 503)])
def test_without_the_control_plane_budgets_fail_open_or_closed(control_planes, mocks, sidecars, mode, status):
    cp, admin, workload, m = managed_setup(control_planes, mocks, budgets({
        "name": "team-tokens", "unit": "BUDGET_UNIT_TOKENS", "limit": 100000, "window": "BUDGET_WINDOW_HOUR"},
        fail_mode=mode))
    s = sidecars(None, control_plane=cp, token=workload)
    cp.stop()
    r = chat(s)
    assert r.status_code == status, r.text
    if status == 503:
        assert r.json()["error"]["code"] == "quota_unavailable"
        assert m.stats()["requests_total"] == 0
    else:
        # Counted locally; charged to the control plane's counter when it is back.
        cp.start()
        wait_until(lambda: chat(s).status_code == 200, what="admission with the control plane back")


def test_budget_validation_names_the_fields(control_planes, mocks):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    m = mocks("gpu")
    from harness import GrpcError
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ValidatePolicy", {"policy": simple_policy(m) | {"budgets": budgets(
            {"name": "a", "unit": "BUDGET_UNIT_COST", "limit": -1, "window": "BUDGET_WINDOW_DAY"},
            {"name": "a", "limit": 5, "windowDuration": "0.5s", "per": ["BUDGET_KEY_USER", "BUDGET_KEY_USER"]})}},
            token=admin)
    for path in ["budgets.budgets[0].limit", "budgets.budgets[0].currency", "budgets.budgets[1].name",
                 "budgets.budgets[1].unit", "budgets.budgets[1].windowDuration", "budgets.budgets[1].per[1]"]:
        assert path in e.value.text, path
