"""The sidecar proxies the OpenAI and Anthropic APIs end to end (issue: foundation).

Real binaries, real SDKs: the official `openai` and `anthropic` Python packages.
"""

import asyncio
import json
import socket
import time

import anthropic
import httpx
import openai
import pytest

from conftest import simple_policy
from harness import pool, wait_until

MSG = [{"role": "user", "content": "Bonjour, résume la note."}]


def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="app-placeholder-key", max_retries=0, timeout=30)


def collect_stream(c: openai.OpenAI, **kwargs):
    chunks = list(c.chat.completions.create(model=kwargs.pop("model", "mistral-7b"), messages=MSG, stream=True, **kwargs))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    return chunks, text


def test_chat_non_streamed_matches_direct(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    direct = client(m.url).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=7)
    via = client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=7)
    assert via.choices[0].message.content == direct.choices[0].message.content
    assert via.usage.completion_tokens == direct.usage.completion_tokens == 7
    assert via.usage.prompt_tokens == direct.usage.prompt_tokens


def test_alias_is_rewritten_to_the_pool_model(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    r = client(s.base_url).chat.completions.create(model="gpt-4o-mini", messages=MSG)
    assert r.model == "mistral-7b"
    assert m.stats()["last_request"]["body"]["model"] == "mistral-7b"


def test_chat_streamed_identical_to_direct(mocks, sidecars):
    m = mocks(tokens_per_sec=500)
    s = sidecars(simple_policy(m))
    d_chunks, d_text = collect_stream(client(m.url), max_tokens=20, stream_options={"include_usage": True})
    v_chunks, v_text = collect_stream(client(s.base_url), max_tokens=20, stream_options={"include_usage": True})
    assert v_text == d_text and len(d_text.split()) == 20
    assert len(v_chunks) == len(d_chunks)
    assert v_chunks[-1].usage.completion_tokens == 20
    # Without include_usage, no usage chunk arrives (the client gets what it asked for).
    chunks, _ = collect_stream(client(s.base_url), max_tokens=3)
    assert all(ch.usage is None for ch in chunks)


def test_stream_chunks_arrive_as_they_are_generated(mocks, sidecars):
    """No buffering: the first token reaches the client long before the last is generated."""
    m = mocks(tokens_per_sec=20)
    s = sidecars(simple_policy(m))
    start = time.monotonic()
    stream = client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG, stream=True, max_tokens=20)
    arrivals = [time.monotonic() - start for ch in stream if ch.choices and ch.choices[0].delta.content]
    assert len(arrivals) == 20
    # 20 tokens at 20/s take ~1 s to generate; a buffering proxy would deliver all at the end.
    assert arrivals[0] < 0.5, arrivals
    assert arrivals[-1] - arrivals[0] > 0.7, arrivals


def test_completions_and_embeddings(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    c = client(s.base_url)
    r = c.completions.create(model="mistral-7b", prompt="Il était une fois", max_tokens=4)
    assert r.object == "text_completion" and len(r.choices[0].text.split()) == 4
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(model="mistral-7b", prompt="x", max_tokens=5, stream=True) if ch.choices)
    assert len(streamed.split()) == 5
    # The SDK asks for base64 embeddings and decodes them.
    e = c.embeddings.create(model="gpt-4o-mini", input=["un", "deux", "trois"])
    assert [d.index for d in e.data] == [0, 1, 2]
    assert all(len(d.embedding) == 8 for d in e.data)
    assert e.usage.prompt_tokens == 3
    assert m.stats()["by_path"] == {"/v1/completions": 2, "/v1/embeddings": 1}


def test_model_listing_comes_from_the_policy(mocks, sidecars):
    m = mocks()
    policy = simple_policy(m)
    policy["pools"].append(pool("cloud", ["https://api.openai.com"], [{"name": "gpt-4o"}], kind="POOL_KIND_OPENAI"))
    s = sidecars(policy)
    assert sorted(x.id for x in client(s.base_url).models.list()) == ["gpt-4o", "gpt-4o-mini", "mistral-7b"]
    assert m.stats()["requests_total"] == 0


def test_anthropic_messages_streamed_and_not(mocks, sidecars):
    m = mocks(models=["claude-mock"])
    s = sidecars(simple_policy(m, models=[{"name": "claude-mock"}], kind="POOL_KIND_ANTHROPIC"))
    a = anthropic.Anthropic(base_url=s.base_url, api_key="app-placeholder-key", max_retries=0)
    r = a.messages.create(model="claude-mock", max_tokens=4, messages=MSG)
    assert r.stop_reason == "max_tokens" and len(r.content[0].text.split()) == 4
    with a.messages.stream(model="claude-mock", max_tokens=6, messages=MSG) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert len(text.split()) == 6 and final.usage.output_tokens == 6


def test_sidecar_holds_the_credentials(mocks, sidecars, tmp_path):
    openai_mock, anthropic_mock = mocks("oa"), mocks("an", models=["claude-mock"])
    key_file = tmp_path / "anthropic-key"
    key_file.write_text("sk-ant-real-from-secret\n")
    policy = {
        "name": "creds",
        "pools": [
            pool("oa", [openai_mock.url], [{"name": "mistral-7b"}], kind="POOL_KIND_OPENAI", credentials={"env": "VIGIE_E2E_OPENAI_KEY"}),
            pool("an", [anthropic_mock.url], [{"name": "claude-mock"}], kind="POOL_KIND_ANTHROPIC", credentials={"file": "anthropic-key"}),
        ],
    }
    # Policies reach VIGIE_CREDENTIAL_* variables and files under VIGIE_CREDENTIALS_DIR
    # only (the webhook injects the credentials Secret both ways).
    s = sidecars(policy, env={"VIGIE_CREDENTIAL_VIGIE_E2E_OPENAI_KEY": "sk-real-openai",
                              "VIGIE_CREDENTIALS_DIR": str(tmp_path)})
    client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
    seen = openai_mock.stats()["last_request"]
    assert seen["authorization"] == "Bearer sk-real-openai"
    anthropic.Anthropic(base_url=s.base_url, api_key="app-placeholder-key", max_retries=0).messages.create(
        model="claude-mock", max_tokens=2, messages=MSG
    )
    seen = anthropic_mock.stats()["last_request"]
    assert seen["x_api_key"] == "sk-ant-real-from-secret"
    assert seen["authorization"] is None
    assert "sk-real-openai" not in s.process.log() and "sk-ant-real" not in s.process.log()


# --- errors -------------------------------------------------------------------------


def post_raw(s, body: bytes, path="/v1/chat/completions", headers=None):
    return httpx.post(s.base_url + path, content=body, headers={"content-type": "application/json", **(headers or {})}, timeout=10)


def test_bad_requests_get_openai_errors(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m), extra_args=["--max-body-bytes", "4096"])
    cases = [
        (b'{"model": "mistral-7b", "messages": [', 400, "invalid_request_error", None),
        (b'["not", "an", "object"]', 400, "invalid_request_error", None),
        (b'{"messages": []}', 400, "invalid_request_error", None),
        (b"\xff\xfe not utf-8", 400, "invalid_request_error", None),
        (json.dumps({"model": "mistral-7b", "x": "a" * 5000}).encode(), 413, "invalid_request_error", "request_too_large"),
    ]
    for body, status, kind, code in cases:
        r = post_raw(s, body)
        assert r.status_code == status, (body[:40], r.text)
        err = r.json()["error"]
        assert err["type"] == kind and err["code"] == code, r.text
    # The SDK surfaces them as its own exceptions.
    with pytest.raises(openai.NotFoundError) as exc:
        client(s.base_url).chat.completions.create(model="gpt-5-unknown", messages=MSG)
    assert exc.value.code == "model_not_found"
    r = httpx.get(s.base_url + "/v1/chat/completions")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
    r = httpx.post(s.base_url + "/v1/unknown", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_url"
    # Anthropic clients get Anthropic-shaped errors.
    r = post_raw(s, b"{}", path="/v1/messages")
    assert r.status_code == 400 and r.json()["type"] == "error" and r.json()["error"]["type"] == "invalid_request_error"
    assert m.stats()["requests_total"] == 0, "no bad request may reach the upstream"
    # And the sidecar still serves.
    assert client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG).choices


def test_upstream_errors_pass_through_unchanged(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    m.set_behaviour(fail={"kind": "status", "code": 429, "retry_after_s": 7})
    direct = httpx.post(m.url + "/v1/chat/completions", json={"model": "mistral-7b", "messages": MSG})
    via = httpx.post(s.base_url + "/v1/chat/completions", json={"model": "mistral-7b", "messages": MSG})
    assert via.status_code == direct.status_code == 429
    assert via.headers["retry-after"] == "7"
    assert via.json() == direct.json()
    m.set_behaviour(fail={"kind": "status", "code": 500})
    with pytest.raises(openai.InternalServerError) as exc:
        client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
    assert "injected failure 500" in exc.value.message


def test_unreachable_upstream_is_502_and_connect_failover(mocks, sidecars):
    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    dead_url = f"http://127.0.0.1:{dead.getsockname()[1]}"
    try:
        only_dead = {"name": "dead", "pools": [pool("gpu-a", [dead_url], [{"name": "mistral-7b"}])]}
        s = sidecars(only_dead)
        with pytest.raises(openai.APIStatusError) as exc:
            client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
        assert exc.value.status_code == 502
        assert exc.value.body["code"] == "upstream_unreachable"

        # With a live endpoint beside the dead one, every request succeeds.
        m = mocks()
        s.write_policy({"name": "mixed", "pools": [pool("gpu-a", [dead_url, m.url], [{"name": "mistral-7b"}])]})
        wait_until(lambda: s.policy_version() and "mixed" in httpx.get(s.admin_url + "/readyz").text, what="policy reload")
        for _ in range(10):
            client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
        assert m.stats()["requests_total"] == 10
    finally:
        dead.close()


def test_first_byte_timeout_is_504(mocks, sidecars):
    m = mocks(ttft_ms=3000)
    s = sidecars(simple_policy(m, timeouts={"firstByte": "0.300s"}))
    start = time.monotonic()
    r = httpx.post(s.base_url + "/v1/chat/completions", json={"model": "mistral-7b", "messages": MSG}, timeout=10)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - start < 2


def test_client_disconnect_releases_upstream(mocks, sidecars):
    m = mocks(tokens_per_sec=20)
    s = sidecars(simple_policy(m))
    stream = client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG, stream=True, max_tokens=200)
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    wait_until(lambda: m.stats()["aborted"] == 1 and m.stats()["running"] == 0, timeout=5, what="upstream released")
    assert m.stats()["generation_tokens"] < 50


def test_upstream_reset_mid_stream_gives_a_clean_error(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    m.set_behaviour(fail={"kind": "reset", "after_tokens": 3})
    received = []
    with pytest.raises(openai.APIError) as exc:
        for ch in client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG, stream=True, max_tokens=10):
            if ch.choices:
                received.append(ch.choices[0].delta.content)
    assert "before the response was complete" in str(exc.value)
    assert 1 <= len([r for r in received if r]) <= 3
    m.set_behaviour()
    assert m.stats()["requests_total"] == 1, "no retry after the first byte"
    assert client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG).choices


def test_200_concurrent_streams_complete_intact(mocks, sidecars):
    m = mocks(tokens_per_sec=50, capacity=1000)
    s = sidecars(simple_policy(m))

    async def one(c, i):
        stream = await c.chat.completions.create(model="mistral-7b", messages=MSG, stream=True, max_tokens=15, stream_options={"include_usage": True})
        text, usage, n = "", None, 0
        async for ch in stream:
            n += 1
            if ch.choices:
                text += ch.choices[0].delta.content or ""
            if ch.usage:
                usage = ch.usage
        return text, usage, n

    async def run_all():
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with openai.AsyncOpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0, timeout=60,
                                      http_client=httpx.AsyncClient(limits=limits, timeout=60)) as c:
            return await asyncio.gather(*(one(c, i) for i in range(200)))

    results = asyncio.run(run_all())
    expected = client(m.url).chat.completions.create(model="mistral-7b", messages=MSG, max_tokens=15).choices[0].message.content
    assert len(results) == 200
    for text, usage, n in results:
        assert text == expected
        assert usage.completion_tokens == 15
        assert n == 18  # role chunk, 15 tokens, finish chunk, usage chunk
    assert m.stats()["aborted"] == 0


def test_policy_reload_keeps_in_flight_requests(mocks, sidecars):
    old, new = mocks("old", tokens_per_sec=20), mocks("new")
    s = sidecars(simple_policy(old))
    v1 = s.policy_version()
    stream = client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG, stream=True, max_tokens=30)
    first = next(iter(stream))
    s.write_policy(simple_policy(new, name="moved"))
    wait_until(lambda: s.policy_version() != v1, timeout=5, what="policy reload")
    # New requests follow the new policy at once...
    client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
    assert new.stats()["requests_total"] == 1
    # ...while the in-flight stream finishes intact on the old pool.
    rest = [ch for ch in stream]
    text = "".join(ch.choices[0].delta.content or "" for ch in [first, *rest] if ch.choices)
    assert len(text.split()) == 30
    assert old.stats()["completed"] == 1 and old.stats()["aborted"] == 0
    # A broken policy is rejected and the last good one stays in force.
    # Written whole (tmp + rename), so the poller never reads a half-written file.
    tmp = s.policy_path.with_suffix(".tmp")
    tmp.write_text('{"name": "broken", "pools": [{"name": "x", "endpoints": [{"url": "ftp://nope"}]}]}')
    tmp.replace(s.policy_path)
    wait_until(lambda: 'vigie_sidecar_policy_reloads_total{result="rejected"} 1' in s.metrics(), timeout=5, what="rejection")
    assert "pools[0].endpoints[0].url: scheme must be http or https" in s.process.log()
    client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
    assert new.stats()["requests_total"] == 2


def test_admin_endpoints_and_metrics(mocks, sidecars):
    m = mocks()
    s = sidecars(simple_policy(m))
    client(s.base_url).chat.completions.create(model="mistral-7b", messages=MSG)
    httpx.post(s.base_url + "/v1/chat/completions", content=b"{")
    assert httpx.get(s.admin_url + "/healthz").status_code == 200
    ready = httpx.get(s.admin_url + "/readyz").json()
    assert ready["ready"] and ready["policy"] == "e2e"
    text = s.metrics()
    assert 'vigie_sidecar_requests_total{operation="chat",status="200"} 1' in text
    assert 'vigie_sidecar_requests_total{operation="chat",status="400"} 1' in text
    assert f'vigie_sidecar_policy_info{{name="e2e",version="{ready["version"]}"}} 1' in text
    assert 'vigie_sidecar_upstream_attempts_total{outcome="response",pool="gpu-a"} 1' in text


def test_invalid_policy_at_boot_fails_with_field_paths(tmp_path):
    import subprocess

    from harness import binary

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "pools": [pool("gpu-a", ["http://h:1"], [{"name": "m"}])], "routes": [{"model": "m", "pools": ["gpu-b"]}]}))
    r = subprocess.run([binary("vigie-sidecar"), "--policy-file", bad, "--check"], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0
    assert 'routes[0].pools[0]: unknown pool "gpu-b"' in r.stderr
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"name": "x", "pools": [pool("gpu-a", ["http://h:1"], [{"name": "m"}])]}))
    r = subprocess.run([binary("vigie-sidecar"), "--policy-file", good, "--check"], capture_output=True, text=True, timeout=20)
    assert r.returncode == 0 and "is valid" in r.stdout
