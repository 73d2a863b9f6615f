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


def ask(s, question: str, **kw):
    return client(s.base_url).chat.completions.create(
        model="mistral-7b", messages=[SYSTEM, {"role": "user", "content": question}], **kw)


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
    for i in range(10):
        ask(s, f"a{i}")
    ejected_at = flaky.stats()["requests_total"]
    assert ejected_at <= 3
    flaky.set_behaviour()
    # The ejection lasts 5 s; then the next request is its probe — even a prompt whose
    # affinity points to the other endpoint — and on success it takes traffic again.
    def probed():
        ask(s, "Toujours la même question ?")
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
    for _ in range(15):
        ask(s, "Quels documents pour un passeport ?")
    counts = [m.stats()["requests_total"] for m in ms]
    assert sorted(counts) == [0, 0, 15], counts
    # Other prompts spread over the pool.
    for i in range(30):
        ask(s, f"Question différente numéro {i}")
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
