"""Prometheus metrics with the OpenTelemetry GenAI names (issue: observability, first
part): scraped from the sidecar and read with the Prometheus project's own text-format
parser (`prometheus_client.parser`); values checked against the mock's ground truth."""

import anthropic
import httpx
import openai
from prometheus_client.parser import text_string_to_metric_families

from conftest import simple_policy

MSG = [{"role": "user", "content": "Bonjour, résume la note de service."}]


def families(s) -> dict:
    return {f.name: f for f in text_string_to_metric_families(httpx.get(s.admin_url + "/metrics").text)}


def samples(fam, suffix: str, **labels):
    return [x for x in fam.samples
            if x.name == fam.name + suffix and all(x.labels.get(k) == v for k, v in labels.items())]


def test_genai_token_usage_duration_and_time_to_first_chunk(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    c = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0)
    c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=7)
    list(c.chat.completions.create(model="gpt-4o-mini", messages=MSG, max_tokens=5, stream=True))
    anthropic.Anthropic(base_url=s.base_url, api_key="x", max_retries=0).messages.create(
        model="mistral-7b", max_tokens=3, messages=[{"role": "user", "content": "Bonjour"}])
    truth = m.stats()
    f = families(s)

    usage = f["gen_ai_client_token_usage"]
    assert usage.type == "histogram"
    base = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "vllm", "server_address": m.url.split("//")[1]}
    out_gpt = samples(usage, "_sum", **base, gen_ai_request_model="gpt-4o-mini",
                      gen_ai_response_model="mistral-7b", gen_ai_token_type="output")
    assert [x.value for x in out_gpt] == [12.0]
    total_in = sum(x.value for x in samples(usage, "_sum", gen_ai_token_type="input"))
    total_out = sum(x.value for x in samples(usage, "_sum", gen_ai_token_type="output"))
    assert (total_in, total_out) == (truth["prompt_tokens"], truth["generation_tokens"]) == (total_in, 15)
    assert sum(x.value for x in samples(usage, "_count", gen_ai_token_type="output")) == 3

    duration = f["gen_ai_client_operation_duration_seconds"]
    assert duration.type == "histogram"
    ok = samples(duration, "_count", error_type="", gen_ai_operation_name="chat")
    assert sum(x.value for x in ok) == 3
    ttfc = f["vigie_sidecar_time_to_first_chunk_seconds"]
    assert sum(x.value for x in samples(ttfc, "_count")) == 3

    # An upstream error is an operation with its error type.
    m.set_behaviour(fail={"kind": "status", "code": 503})
    try:
        c.chat.completions.create(model="gpt-4o-mini", messages=MSG)
    except openai.APIStatusError:
        pass
    f = families(s)
    failed = samples(f["gen_ai_client_operation_duration_seconds"], "_count", error_type="503")
    assert sum(x.value for x in failed) == 1
