"""Routing to GPU pools (issue: routing) — what is built so far: failover on 5xx and 429
before the first byte, passive ejection with recovery, prefix affinity, and no retry
once the answer has started. Real sidecar, real `openai` SDK, several mock pools."""

import httpx
import openai
import pytest

from harness import pool, wait_until

SYSTEM = {"role": "system", "content": "Tu es l'assistant du service des titres de la préfecture."}


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="app-placeholder-key", max_retries=0, timeout=30)


def ask(s, question: str, system: bool = False, **kw):
    """Without a system prompt each question is its own affinity key; with the shared one,
    all questions share a key."""
    messages = ([SYSTEM] if system else []) + [{"role": "user", "content": question}]
    return client(s.base_url).chat.completions.create(model="mistral-7b", messages=messages, **kw)


def gauge(s, name: str, **labels) -> float | None:
    """The value of one series, or None when the sidecar has not exported it yet."""
    for line in httpx.get(s.admin_url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def metric(s, name: str, **labels) -> float:
    text = httpx.get(s.admin_url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_5xx_and_429_fail_over_to_another_endpoint_and_the_sick_one_is_ejected(mocks, sidecars):
    sick, healthy = mocks(), mocks()
    s = sidecars({"name": "r", "pools": [pool("gpu-a", [sick.url, healthy.url], [{"name": "mistral-7b"}])]})
    sick.set_behaviour(fail={"kind": "status", "code": 503})
    for i in range(20):
        assert ask(s, f"question {i}").choices[0].message.content
    # Three consecutive failures eject it: it saw at most three of the twenty.
    assert 1 <= sick.stats()["requests_total"] <= 3
    assert healthy.stats()["requests_total"] == 20
    assert metric(s, "vigie_sidecar_upstream_attempts_total", pool="gpu-a", outcome="status_503") >= 1

    # 429 is "busy", not "sick": the request still goes elsewhere, nothing is ejected.
    busy, other = mocks(), mocks()
    s2 = sidecars({"name": "r2", "pools": [pool("gpu-b", [busy.url, other.url], [{"name": "mistral-7b"}])]})
    busy.set_behaviour(fail={"kind": "status", "code": 429, "retry_after_s": 30})
    for i in range(10):
        assert ask(s2, f"q{i}").choices
    assert other.stats()["requests_total"] == 10
    assert busy.stats()["requests_total"] >= 1


def test_ejected_endpoint_comes_back_after_recovery(mocks, sidecars):
    flaky, steady = mocks(), mocks()
    s = sidecars({"name": "r", "pools": [pool("gpu-a", [flaky.url, steady.url], [{"name": "mistral-7b"}])]})
    flaky.set_behaviour(fail={"kind": "status", "code": 500})
    # Requests spread by prompt affinity: go on until it has failed three times.
    for i in range(40):
        ask(s, f"a{i}")
        if flaky.stats()["requests_total"] >= 3:
            break
    for i in range(10):
        ask(s, f"c{i}")
    ejected_at = flaky.stats()["requests_total"]
    assert ejected_at == 3, "ejected after three consecutive failures"
    flaky.set_behaviour()
    # The ejection lasts 5 s; then the next request is its probe — even a prompt whose
    # affinity points to the other endpoint — and on success it takes traffic again.
    def probed():
        ask(s, "Toujours la même question ?", system=True)
        return flaky.stats()["requests_total"] > ejected_at
    wait_until(probed, timeout=15, interval=0.2, what="ejected endpoint probed")
    assert metric(s, "vigie_sidecar_route_picks_total", pool="gpu-a", reason="probe") == 1
    after_probe = flaky.stats()["requests_total"]
    for i in range(40):
        ask(s, f"b{i}")
    assert flaky.stats()["requests_total"] > after_probe, "back in rotation after the probe succeeded"


def test_prefix_affinity_keeps_a_prompt_on_one_endpoint(mocks, sidecars):
    ms = [mocks(), mocks(), mocks()]
    s = sidecars({"name": "r", "pools": [pool("gpu-a", [m.url for m in ms], [{"name": "mistral-7b"}])]})
    # One shared system prompt, different questions: one endpoint keeps its KV cache.
    for i in range(15):
        ask(s, f"Quels documents pour un passeport ? ({i})", system=True)
    counts = [m.stats()["requests_total"] for m in ms]
    assert sorted(counts) == [0, 0, 15], counts
    # Other system prompts spread over the pool.
    for i in range(30):
        client(s.base_url).chat.completions.create(model="mistral-7b", messages=[
            {"role": "system", "content": f"Tu es l'assistant du service n°{i}."},
            {"role": "user", "content": "Bonjour"}])
    after = [m.stats()["requests_total"] for m in ms]
    assert sum(1 for a, c in zip(after, counts) if a > c) >= 2, after
    assert metric(s, "vigie_sidecar_route_picks_total", pool="gpu-a", reason="affinity") == 45


def test_no_retry_once_the_answer_has_started(mocks, sidecars):
    first, fallback = mocks(), mocks()
    s = sidecars({"name": "r", "pools": [
        pool("gpu-a", [first.url], [{"name": "mistral-7b"}]),
        pool("gpu-b", [fallback.url], [{"name": "mistral-7b"}]),
    ], "routes": [{"model": "mistral-7b", "pools": ["gpu-a", "gpu-b"]}]})
    first.set_behaviour(fail={"kind": "reset", "after_tokens": 3})
    with pytest.raises(openai.APIError):
        for _ in ask(s, "raconte", stream=True, max_tokens=10):
            pass
    assert first.stats()["requests_total"] == 1
    assert fallback.stats()["requests_total"] == 0, "no duplicate generation"
    # Before the first byte, the next pool of the route is used.
    first.set_behaviour(fail={"kind": "status", "code": 502})
    assert ask(s, "encore").choices
    assert fallback.stats()["requests_total"] == 1


def sensitivity_policy(onprem, external, dlp=False):
    p = {"name": "sens", "pools": [
        pool("onprem", [onprem.url], [{"name": "mistral-7b", "aliases": ["chat"]}]),
        # A public provider (kind OPENAI → hosting external → clearance internal),
        # served here by a mock over plain HTTP.
        pool("external", [external.url], [{"name": "mistral-7b", "aliases": ["chat", "big"]}], kind="POOL_KIND_OPENAI"),
    ], "routes": [{"model": "chat", "pools": ["external", "onprem"]}]}
    if dlp:
        p["dlp"] = {"rules": [{"detector": "FR_NIR", "action": "DLP_ACTION_REDACT"}]}
    return p


def post(s, model, level=None, content="Bonjour", headers=None):
    h = dict(headers or {})
    if level:
        h["x-vigie-sensitivity"] = level
    return httpx.post(s.base_url + "/v1/chat/completions", headers=h, timeout=10,
                      json={"model": model, "messages": [{"role": "user", "content": content}]})


def test_sensitive_requests_only_reach_cleared_pools(mocks, sidecars):
    onprem, external = mocks(), mocks()
    s = sidecars(sensitivity_policy(onprem, external))
    # Public: the preferred (external) pool.
    assert post(s, "chat").status_code == 200
    assert external.stats()["requests_total"] == 1
    # Declared personal / restricted: the external pool (cleared for internal) is skipped.
    for level in ("personal", "restricted"):
        assert post(s, "chat", level).status_code == 200
    assert (onprem.stats()["requests_total"], external.stats()["requests_total"]) == (2, 1)
    # Only the external pool serves "big": refused with 403, nothing sent anywhere.
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(s.base_url).chat.completions.create(
            model="big", messages=[{"role": "user", "content": "x"}], extra_headers={"x-vigie-sensitivity": "restricted"})
    assert exc.value.body["code"] == "no_cleared_pool"
    assert "restricted" in exc.value.message and "big" in exc.value.message
    assert external.stats()["requests_total"] == 1
    assert metric(s, "vigie_sidecar_route_refusals_total", level="restricted") == 1
    # An unreadable declaration is refused, never taken as public.
    r = post(s, "chat", "personnel")
    assert r.status_code == 400 and "x-vigie-sensitivity" in r.json()["error"]["message"]
    assert external.stats()["requests_total"] == 1
    # The cleared pool is down: an error, never the external pool.
    onprem.stop()
    r = post(s, "chat", "restricted")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unreachable"
    assert external.stats()["requests_total"] == 1


def test_dlp_findings_raise_the_level_used_for_routing(mocks, sidecars):
    onprem, external = mocks(), mocks()
    s = sidecars(sensitivity_policy(onprem, external, dlp=True))
    assert post(s, "chat", content="Mon NIR est 1 85 05 78 006 084 91.").status_code == 200
    assert (onprem.stats()["requests_total"], external.stats()["requests_total"]) == (1, 0)
    assert post(s, "chat", content="Quelle heure est-il ?").status_code == 200
    assert external.stats()["requests_total"] == 1


def test_route_conditions_and_debug_header(mocks, sidecars):
    gold, standard = mocks(), mocks()
    policy = {"name": "cond", "pools": [
        pool("gold", [gold.url], [{"name": "mistral-7b"}]),
        pool("standard", [standard.url], [{"name": "mistral-7b"}]),
    ], "routes": [
        {"model": "mistral-7b", "match": {"headers": {"x-tier": "gold"}}, "pools": ["gold"]},
        {"model": "mistral-7b", "pools": ["standard"], "fallbackModel": "mistral-7b-gold"},
    ]}
    policy["pools"][0]["models"][0]["aliases"] = ["mistral-7b-gold"]
    s = sidecars(policy, extra_args=["--route-debug-header"])
    r = post(s, "mistral-7b", headers={"x-tier": "gold"})
    assert r.status_code == 200 and gold.stats()["requests_total"] == 1
    assert r.headers["x-vigie-route"].startswith(f"pool=gold; endpoint={gold.url}; reason=only; attempts=1")
    r = post(s, "mistral-7b")
    assert r.status_code == 200 and standard.stats()["requests_total"] == 1
    # The standard pool fails: the fallback chain leads to the gold pool's model.
    standard.set_behaviour(fail={"kind": "status", "code": 500})
    r = post(s, "mistral-7b")
    assert r.status_code == 200 and gold.stats()["requests_total"] == 2
    assert "pool=gold" in r.headers["x-vigie-route"] and "attempts=2" in r.headers["x-vigie-route"]
    # Off by default.
    s2 = sidecars(policy)
    assert "x-vigie-route" not in post(s2, "mistral-7b").headers


def test_queue_aware_balancing_follows_the_servers_own_queue(mocks, sidecars):
    import threading
    busy, idle = mocks(capacity=1, tokens_per_sec=5), mocks()
    policy = {"name": "q", "pools": [pool("gpu-a", [busy.url, idle.url], [{"name": "mistral-7b"}], probeInterval="0.3s")]}
    s = sidecars(policy)
    # Other clients of the busy GPU (not through this sidecar): one running, five queued.
    def direct():
        try:
            httpx.post(busy.url + "/v1/chat/completions", timeout=60,
                       json={"model": "mistral-7b", "max_tokens": 40, "messages": [{"role": "user", "content": "x"}]})
        except httpx.HTTPError:
            pass  # the mock is stopped at teardown, mid-answer
    threads = [threading.Thread(target=direct, daemon=True) for _ in range(6)]
    for t in threads:
        t.start()
    wait_until(lambda: busy.stats()["waiting"] >= 4, what="queue on the busy endpoint")
    # The sidecar has scraped the queue from the endpoint's /metrics.
    wait_until(lambda: (gauge(s, "vigie_sidecar_endpoint_waiting_requests", pool="gpu-a", endpoint=busy.url) or 0) >= 4,
               what="queue scraped")
    for i in range(20):
        assert ask(s, f"question {i}").choices
    # Every sidecar request avoided the queue, although this sidecar had nothing in flight there.
    assert busy.stats()["requests_total"] == 6
    assert idle.stats()["requests_total"] == 20


def test_active_health_checks_take_an_endpoint_out_and_back(mocks, sidecars):
    sick, well = mocks(), mocks()
    policy = {"name": "h", "pools": [pool("gpu-a", [sick.url, well.url], [{"name": "mistral-7b"}],
                                          balancing="BALANCING_LEAST_REQUEST", probeInterval="0.2s")]}
    s = sidecars(policy)
    sick.set_behaviour(fail={"kind": "unhealthy"})  # /health answers 503; requests would still work
    wait_until(lambda: gauge(s, "vigie_sidecar_endpoint_available", pool="gpu-a", endpoint=sick.url) == 0,
               what="endpoint marked unavailable")
    before = sick.stats()["requests_total"]
    for i in range(20):
        assert ask(s, f"h{i}").choices
    assert sick.stats()["requests_total"] == before
    sick.set_behaviour()
    wait_until(lambda: gauge(s, "vigie_sidecar_endpoint_available", pool="gpu-a", endpoint=sick.url) == 1,
               what="endpoint back")
    for i in range(20):
        ask(s, f"k{i}")
    assert sick.stats()["requests_total"] > before


def test_first_byte_timeout_fails_over_to_another_endpoint(mocks, sidecars):
    slow, fast = mocks(ttft_ms=3000), mocks()
    s = sidecars({"name": "t", "pools": [pool("gpu-a", [slow.url, fast.url], [{"name": "mistral-7b"}],
                                              timeouts={"firstByte": "0.3s"})]})
    # Each prompt has its own affinity (rendezvous over endpoint ids that change every
    # run): keep asking until one prefers the slow endpoint (6 in a row missing it is a
    # 1-in-64 event; 30 is one in a billion).
    sent = 0
    for i in range(30):
        r = post(s, "mistral-7b", content=f"t{i}")
        sent += 1
        assert r.status_code == 200, r.text
        if metric(s, "vigie_sidecar_upstream_attempts_total", pool="gpu-a", outcome="first_byte_timeout") >= 1:
            break
    assert fast.stats()["requests_total"] == sent
    assert metric(s, "vigie_sidecar_upstream_attempts_total", pool="gpu-a", outcome="first_byte_timeout") >= 1
