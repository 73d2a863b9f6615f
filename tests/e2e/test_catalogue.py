"""The catalogue and the transport the official clients expect (issue: APIs and
clients, parts "Catalogue" and "Transport"): `models.list`/`models.retrieve` with the
OpenAI and Anthropic SDKs (with what the policy says of each model), Anthropic's
`count_tokens` answered by the sidecar, `OPTIONS`, keep-alive after a 404 and after
`Expect: 100-continue`, and HTTP/2 with prior knowledge (h2c) refused explicitly."""

import json
import socket
import subprocess

import anthropic
import httpx
import openai
import pytest

from conftest import simple_policy
from harness import pool

NIR = "1 85 05 78 006 084 91"


def catalogue_policy(m) -> dict:
    p = simple_policy(m, models=[{"name": "mistral-7b", "aliases": ["gpt-4o-mini", "mistralai/Mistral-7B-v0.3"]}],
                      cost={"currency": "EUR", "inputPer1k": 0.002, "outputPer1k": 0.006})
    p["pools"].append(pool("cloud", ["https://api.openai.com"], [{"name": "gpt-4o"}], kind="POOL_KIND_OPENAI"))
    p["dlp"] = {"rules": [{"detector": "FR_NIR", "action": "DLP_ACTION_PSEUDONYMIZE"}]}
    return p


@pytest.fixture
def served(mocks, sidecars):
    m = mocks("gpu", echo=True, tokens_per_sec=2000)
    return m, sidecars(catalogue_policy(m))


def oa(s) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0, timeout=30)


def an(s) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=s.base_url, api_key="x", max_retries=0, timeout=30)


def test_openai_sdk_lists_and_retrieves_models_with_the_policy_view(served):
    m, s = served
    models = {x.id: x for x in oa(s).models.list()}
    assert sorted(models) == ["gpt-4o", "gpt-4o-mini", "mistral-7b", "mistralai/Mistral-7B-v0.3"]
    mini = models["gpt-4o-mini"].model_extra["vigie"]
    assert mini["pools"] == [{"pool": "gpu-a", "model": "mistral-7b", "hosting": "on_prem", "clearance": "restricted",
                              "price": {"currency": "EUR", "inputPer1k": 0.002, "outputPer1k": 0.006}}]
    assert mini["clearance"] == "restricted"
    cloud = models["gpt-4o"].model_extra["vigie"]
    assert cloud["pools"][0]["hosting"] == "external" and cloud["clearance"] == "internal"
    assert "api.openai.com" not in json.dumps([x.model_extra for x in models.values()]), "endpoints are not shown"

    one = oa(s).models.retrieve("gpt-4o-mini")
    assert (one.id, one.object, one.owned_by) == ("gpt-4o-mini", "model", "vigie")
    # An id with a slash, as sent and percent-encoded.
    assert oa(s).models.retrieve("mistralai/Mistral-7B-v0.3").id == "mistralai/Mistral-7B-v0.3"
    r = httpx.get(f"{s.base_url}/v1/models/mistralai%2FMistral-7B-v0.3")
    assert r.status_code == 200 and r.json()["id"] == "mistralai/Mistral-7B-v0.3"
    with pytest.raises(openai.NotFoundError) as e:
        oa(s).models.retrieve("gpt-5-secret")
    assert e.value.code == "model_not_found"
    assert m.stats()["requests_total"] == 0, "answered from the policy"


def test_anthropic_sdk_lists_retrieves_and_counts_tokens(served):
    m, s = served
    page = an(s).models.list()
    ids = [x.id for x in page.data]
    assert "mistral-7b" in ids and all(x.type == "model" and x.display_name == x.id for x in page.data)
    assert page.data[0].created_at.year == 1970
    assert an(s).models.retrieve("gpt-4o-mini").display_name == "gpt-4o-mini"
    with pytest.raises(anthropic.NotFoundError) as e:
        an(s).models.retrieve("claude-unknown")
    assert e.value.body["error"]["type"] == "not_found_error"

    short = an(s).messages.count_tokens(model="mistral-7b", messages=[{"role": "user", "content": "Bonjour"}])
    long = an(s).messages.count_tokens(
        model="mistral-7b", system="Tu es un assistant de la préfecture.",
        messages=[{"role": "user", "content": "Bonjour, résume la note de service du 4 juillet. " * 20}])
    assert 0 < short.input_tokens < long.input_tokens
    raw = httpx.post(f"{s.base_url}/v1/messages/count_tokens", headers={"anthropic-version": "2023-06-01"},
                     json={"model": "mistral-7b", "messages": [{"role": "user", "content": f"NIR {NIR}"}]})
    assert raw.status_code == 200 and raw.headers["x-vigie-estimate"] == "o200k_base"
    with pytest.raises(anthropic.NotFoundError):
        an(s).messages.count_tokens(model="not-in-policy", messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):
        an(s).messages.count_tokens(model="mistral-7b", messages="pas une liste")
    assert m.stats()["requests_total"] == 0, "nothing leaves the pod"


def test_count_tokens_bodies_are_bounded(mocks, sidecars):
    m = mocks("gpu")
    s = sidecars(catalogue_policy(m), extra_args=["--max-body-bytes", "4096"])
    r = httpx.post(f"{s.base_url}/v1/messages/count_tokens", headers={"anthropic-version": "2023-06-01"},
                   json={"model": "mistral-7b", "messages": [{"role": "user", "content": "x" * 10_000}]})
    assert r.status_code == 413 and r.json()["type"] == "error"


def exchange(sock: socket.socket, raw: bytes) -> bytes:
    """Sends one request and reads one whole answer (Content-Length framed)."""
    sock.sendall(raw)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return head + b"\r\n\r\n" + body


def test_options_and_keep_alive_after_a_404_and_after_100_continue(served):
    _, s = served
    r = httpx.options(f"{s.base_url}/v1/chat/completions")
    assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS"
    assert httpx.options(f"{s.base_url}/v1/models").headers["allow"] == "GET, OPTIONS"
    assert httpx.options(f"{s.base_url}/nowhere").status_code == 404
    host, port = s.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        body = b'{"x": 1}'
        answer = exchange(sock, b"POST /v2/unknown HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                          b"content-length: %d\r\n\r\n%s" % (len(body), body))
        assert answer.startswith(b"HTTP/1.1 404") and b"unknown_url" in answer
        answer = exchange(sock, b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 204")
        # 100-continue: the sidecar asks for the body, answers, and keeps the connection.
        chat = json.dumps({"model": "mistral-7b", "max_tokens": 3,
                           "messages": [{"role": "user", "content": "Bonjour"}]}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                     b"expect: 100-continue\r\ncontent-length: %d\r\n\r\n" % len(chat))
        interim = sock.recv(65536)
        assert interim.startswith(b"HTTP/1.1 100"), interim
        answer = exchange(sock, chat)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        answer = exchange(sock, b"GET /v1/models HTTP/1.1\r\nhost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and b"mistral-7b" in answer
    # A large body to an unknown URL is not read: that connection is closed.
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /v2/unknown HTTP/1.1\r\nhost: x\r\ncontent-length: 10000000\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 404")
        sock.settimeout(5)
        rest = b""
        while chunk := sock.recv(65536):
            rest += chunk
        assert rest == b"" or b"HTTP/1.1" not in rest


def test_http2_with_prior_knowledge_is_refused_in_so_many_words(served):
    """h2c is not served (ADR 0021): the client is told HTTP_1_1_REQUIRED, the log says
    why, and HTTP/1.1 keeps working — even a request shorter than HTTP/2's preface."""
    _, s = served
    out = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-H", "content-type: application/json",
                          "-d", json.dumps({"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}]}),
                          f"{s.base_url}/v1/chat/completions"], capture_output=True, text=True, timeout=30)
    # curl 7.88 names the GOAWAY's code (HTTP_1_1_REQUIRED) or its framing error.
    assert out.returncode != 0 and ("HTTP_1_1_REQUIRED" in out.stderr or "HTTP2" in out.stderr), out.stderr
    assert "HTTP/2 with prior knowledge (h2c) is not served" in s.process.log()
    host, port = s.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        frames = sock.recv(64)
    assert frames[3] == 0x4 and frames[12] == 0x7 and frames[-4:] == b"\x00\x00\x00\x0d", frames
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        answer = exchange(sock, b"GET / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 404") or answer.startswith(b"HTTP/1.0 404"), answer[:80]
    assert oa(s).models.list().data, "HTTP/1.1 is served"


def test_long_method_and_path_are_not_echoed_whole(served):
    _, s = served
    r = httpx.request("PATCH", f"{s.base_url}/v1/models/{'B' * 30_000}")
    assert r.status_code == 405 and len(r.content) < 1024


def test_the_policy_view_is_this_workloads(mocks, sidecars):
    """Routes limited to other namespaces are neither shown nor their pools named; a
    fallback chain and header-conditional routes are (attacker review)."""
    m = mocks("gpu")
    policy = {"name": "p", "pools": [
        pool("onprem", [m.url], [{"name": "mistral-7b", "aliases": ["chat"]}]),
        pool("hsm-team-b", [m.url], [{"name": "llama-70b-psy-notes", "aliases": ["chat"]}]),
        pool("gold", [m.url], [{"name": "mistral-large", "aliases": ["chat"]}]),
        pool("public-api", ["https://api.openai.com"], [{"name": "gpt-4o"}], kind="POOL_KIND_OPENAI"),
    ], "routes": [
        {"model": "chat", "pools": ["hsm-team-b"], "match": {"namespaces": ["team-b"]}},
        {"model": "chat", "pools": ["gold"], "match": {"headers": {"x-tier": "gold"}}},
        {"model": "chat", "pools": ["onprem"], "fallbackModel": "gpt-4o"},
    ]}
    s = sidecars(policy, env={"POD_NAMESPACE": "team-a"})
    view = oa(s).models.retrieve("chat").model_extra["vigie"]
    shown = {p["pool"]: p for p in view["pools"]}
    assert "hsm-team-b" not in shown and "llama-70b-psy-notes" not in json.dumps(view)
    assert shown["gold"]["conditional"] is True
    assert shown["public-api"]["fallback"] == "gpt-4o" and shown["public-api"]["hosting"] == "external"
    assert "conditional" not in shown["onprem"] and view["clearance"] == "restricted"
