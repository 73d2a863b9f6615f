"""The catalogue and the transport the official clients expect (issue: APIs and
clients, parts "Catalogue" and "Transport"): `models.list`/`models.retrieve` with the
OpenAI and Anthropic SDKs (with what the policy says of each model), Anthropic's
`count_tokens` answered by the sidecar, `OPTIONS`, keep-alive after a 404 and after
`Expect: 100-continue`, and HTTP/2 with prior knowledge (h2c) with DLP on."""

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


def curl_h2(url: str, body: dict, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version}", "-H",
                           "content-type: application/json", "-d", json.dumps(body), *extra, url],
                          capture_output=True, text=True, timeout=30)


def test_http2_with_prior_knowledge_is_served_with_dlp(served):
    m, s = served
    prompt = f"Dossier NIR {NIR} à traiter."
    out = curl_h2(f"{s.base_url}/v1/chat/completions",
                  {"model": "mistral-7b", "messages": [{"role": "user", "content": prompt}]})
    body, _, version = out.stdout.rpartition("\n")
    assert out.returncode == 0 and version == "2", out.stderr
    assert json.loads(body)["choices"][0]["message"]["content"] == prompt
    assert NIR not in json.dumps(m.stats()["last_request"]["body"]), "the model saw a pseudonym"
    out = curl_h2(f"{s.base_url}/v1/chat/completions",
                  {"model": "mistral-7b", "stream": True, "messages": [{"role": "user", "content": prompt}]}, "-N")
    events, _, version = out.stdout.rpartition("\n")
    assert version == "2"
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
                   for line in events.splitlines()
                   if line.startswith("data: {") and json.loads(line[6:]).get("choices"))
    assert text == prompt and "data: [DONE]" in events
    listed = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", f"{s.base_url}/v1/models"],
                            capture_output=True, text=True, timeout=30)
    assert "mistral-7b" in listed.stdout
