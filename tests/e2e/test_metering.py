"""Token metering (issue: metering) — usage capture: exact figures from the upstream in
every wire format, the usage chunk asked for on the app's behalf and hidden from it,
estimates (flagged) when the upstream gives none or the stream is cut. Checked against
the mock's own ground truth, through the real sidecar with the official SDKs."""

import anthropic
import httpx
import openai
import pytest

from conftest import simple_policy
from harness import wait_until

MSG = [{"role": "user", "content": "Bonjour, résume la note de service."}]


def client(s) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0, timeout=30)


def metric(s, name: str, **labels) -> float:
    total = 0.0
    for line in httpx.get(s.admin_url + "/metrics").text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def tokens(s, kind: str) -> float:
    return metric(s, "vigie_sidecar_tokens_total", type=kind)


def records(s, n: int, source: str = "upstream"):
    """The record is written when the request ends, just after the app has its answer."""
    wait_until(lambda: metric(s, "vigie_sidecar_usage_records_total", source=source) == n, what=f"{n} {source} records")


def test_non_streamed_usage_matches_the_upstream(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m), extra_args=["--namespace", "team-a", "--workload", "chatbot"])
    r = client(s).chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=7)
    records(s, 1)
    truth = m.stats()
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (truth["prompt_tokens"], truth["generation_tokens"])
    assert metric(s, "vigie_sidecar_tokens_total", namespace="team-a", workload="chatbot", model="gpt-4o-mini",
                  served_model="mistral-7b", pool="gpu-a", type="prompt") == truth["prompt_tokens"]
    assert tokens(s, "completion") == truth["generation_tokens"] == 7


def test_stream_without_include_usage_is_metered_and_the_app_sees_exactly_what_it_asked(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    chunks = list(client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=9, stream=True))
    records(s, 1)
    # The sidecar asked the upstream for usage...
    assert m.stats()["last_request"]["body"]["stream_options"] == {"include_usage": True}
    # ...and the app, which did not, gets no usage chunk.
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks)
    truth = m.stats()
    assert (tokens(s, "prompt"), tokens(s, "completion")) == (truth["prompt_tokens"], truth["generation_tokens"])


def test_stream_with_include_usage_passes_the_chunk_through(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    chunks = list(client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=5, stream=True,
                                                    stream_options={"include_usage": True}))
    records(s, 1)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 5 == tokens(s, "completion")


def test_dlp_path_strips_the_usage_chunk_too(mocks, sidecars):
    m = mocks()
    policy = simple_policy(m)
    policy["dlp"] = {"rules": [{"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_REDACT"}]}
    s = sidecars(policy)
    chunks = list(client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=6, stream=True))
    records(s, 1)
    assert all(c.usage is None for c in chunks)
    assert tokens(s, "completion") == 6 == m.stats()["generation_tokens"]


def test_anthropic_and_embeddings(mocks, sidecars):
    m = mocks(models=("mistral-7b", "claude-sonnet", "embed"))
    policy = simple_policy(m, models=[{"name": "mistral-7b"}, {"name": "claude-sonnet"}, {"name": "embed"}])
    s = sidecars(policy)
    a = anthropic.Anthropic(base_url=s.base_url, api_key="x", max_retries=0)
    with a.messages.stream(model="claude-sonnet", max_tokens=8, messages=[{"role": "user", "content": "Salut"}]) as st:
        final = st.get_final_message()
    records(s, 1)
    truth = m.stats()
    assert final.usage.output_tokens == 8
    assert (tokens(s, "prompt"), tokens(s, "completion")) == (truth["prompt_tokens"], truth["generation_tokens"])
    before = tokens(s, "prompt")
    e = client(s).embeddings.create(model="embed", input=["un texte à vectoriser"])
    records(s, 2)
    assert tokens(s, "prompt") - before == e.usage.prompt_tokens > 0


def test_no_usage_from_the_upstream_is_estimated_and_flagged(mocks, sidecars):
    m = mocks(omit_usage=True)
    s = sidecars(simple_policy(m))
    r = client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=10)
    assert r.usage is None
    records(s, 1, "estimated")
    # A real tokenizer (o200k): close to, not equal to, the mock's own count.
    assert 5 <= tokens(s, "completion") <= 20
    assert 8 <= tokens(s, "prompt") <= 30


def test_cut_streams_and_client_aborts_are_billed_for_what_was_generated(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    m.set_behaviour(fail={"kind": "reset", "after_tokens": 4})
    with pytest.raises(openai.APIError):
        for _ in client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=30, stream=True):
            pass
    records(s, 1, "estimated")
    assert 2 <= tokens(s, "completion") <= 8, "about the four tokens generated"
    assert tokens(s, "prompt") > 0
    # The app leaves after a few chunks of a slow stream.
    m.set_behaviour(tokens_per_sec=20)
    stream = client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=200, stream=True)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    records(s, 2, "estimated")
    assert tokens(s, "completion") < 8 + 50


def test_cost_and_gpu_seconds_from_the_pool_prices(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m, cost={"currency": "EUR", "inputPer1k": 0.5, "outputPer1k": 1.5, "gpuSecondsPer1k": 2}),
                 extra_args=["--namespace", "team-a"])
    client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=20)
    records(s, 1)
    p, c = m.stats()["prompt_tokens"], m.stats()["generation_tokens"]
    cost = metric(s, "vigie_sidecar_cost_total", namespace="team-a", pool="gpu-a", currency="EUR")
    assert abs(cost - (p * 0.5 + c * 1.5) / 1000) < 1e-9
    assert abs(metric(s, "vigie_sidecar_gpu_seconds_total", pool="gpu-a") - (p + c) * 2 / 1000) < 1e-9


def test_absurd_max_tokens_is_refused_before_anything_is_sent(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    for bad in (-5, 0, 10**12):
        with pytest.raises(openai.BadRequestError) as exc:
            client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=bad)
        assert exc.value.body["param"] == "max_tokens"
    assert m.stats()["requests_total"] == 0


def test_a_model_priced_apart_from_its_pool(mocks, sidecars):
    m = mocks(models=("mistral-7b", "mixtral-8x22b"))
    policy = simple_policy(m, cost={"currency": "EUR", "inputPer1k": 0.5, "outputPer1k": 1.5})
    policy["pools"][0]["models"] = [
        {"name": "mistral-7b"},
        {"name": "mixtral-8x22b", "cost": {"currency": "EUR", "inputPer1k": 2, "outputPer1k": 6, "gpuSecondsPer1k": 9}},
    ]
    s = sidecars(policy, extra_args=["--namespace", "team-a"])
    client(s).chat.completions.create(model="mixtral-8x22b", messages=MSG, max_tokens=10)
    records(s, 1)
    p, c = m.stats()["prompt_tokens"], m.stats()["generation_tokens"]
    cost = metric(s, "vigie_sidecar_cost_total", model="mixtral-8x22b", currency="EUR")
    assert abs(cost - (p * 2 + c * 6) / 1000) < 1e-9
    assert abs(metric(s, "vigie_sidecar_gpu_seconds_total", model="mixtral-8x22b") - (p + c) * 9 / 1000) < 1e-9
    # The pool's price still applies to the other model.
    client(s).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=10)
    records(s, 2)
    assert metric(s, "vigie_sidecar_cost_total", model="mistral-7b", currency="EUR") > 0
