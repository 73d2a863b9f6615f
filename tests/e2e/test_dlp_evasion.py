"""DLP that cannot be walked around, through the real sidecar (issue 18).

The upstream is the mock pool: in echo mode it records the body it received (what
the request side let through); with a canned answer it sends exactly the bytes a test
wrote in a provider's wire format (what the answer side must catch). The check is the
same everywhere: the value's letters and digits, read as a person would (Unicode
compatibility forms, any digit script, invisible characters dropped), never appear."""

import gzip
import json
import threading
import time
import unicodedata
import zlib

import httpx
import pytest

from conftest import simple_policy
from test_proxy import client

VALUES = {
    "FR_NIR": "1 85 05 78 006 084 91",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN": "FR76 3000 6000 0112 3456 7890 189",
    "EMAIL_ADDRESS": "jean.dupont@interieur.gouv.fr",
    "PHONE_NUMBER": "06 12 34 56 78",
}
CANARY = VALUES["FR_NIR"]
REDACT_REQUESTS = [{"detector": "*", "action": "DLP_ACTION_REDACT", "direction": "DLP_DIRECTION_REQUEST"}]
REDACT_ANSWERS = [{"detector": "*", "action": "DLP_ACTION_REDACT", "direction": "DLP_DIRECTION_RESPONSE"}]


def essence(text: str) -> str:
    """Letters and digits as a reader recovers them."""
    out = []
    for ch in unicodedata.normalize("NFKC", text):
        cat = unicodedata.category(ch)
        if cat in ("Cf", "Mn", "Me"):
            continue
        if cat == "Nd":
            out.append(str(unicodedata.digit(ch)))
        elif ch.isalnum():
            out.append(ch.lower())
    return "".join(out)


def leaked(value: str, seen: str) -> bool:
    return essence(value) in essence(seen)


def in_script(zero: int, v: str) -> str:
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in v)


SUPERSCRIPT = "⁰¹²³⁴⁵⁶⁷⁸⁹"


def variants(v: str) -> list[tuple[str, str]]:
    """Each transformation of the report: what French software writes, what an
    attacker does."""
    out = [(name, v.replace(" ", sp)) for name, sp in
           [("no-break space", "\u00a0"), ("narrow no-break space", "\u202f"), ("thin space", "\u2009")]]
    out += [(f"separator {s!r}", v.replace(" ", s)) for s in [".", "-", "/", "_", "\t", "\r\n", "\x85"]]
    out += [("no separator", v.replace(" ", "")), ("lower case", v.lower()),
            ("mixed case", "".join(c.lower() if i % 2 == 0 else c for i, c in enumerate(v)))]
    for name, inv in [("zero-width space", "\u200b"), ("zero-width joiner", "\u200d"),
                      ("zero-width non-joiner", "\u200c"), ("word joiner", "\u2060"),
                      ("soft hyphen", "\u00ad"), ("BOM", "\ufeff"), ("combining acute", "\u0301"),
                      ("Hangul filler", "\u3164"), ("tag character", "\U000E0031")]:
        out.append((name, "".join(c + inv for c in v)))
    out += [("full-width", "".join(chr(ord(c) - 0x21 + 0xFF01) if "!" <= c <= "~" else c for c in v)),
            ("Arabic-Indic digits", in_script(0x660, v)), ("Devanagari digits", in_script(0x966, v)),
            ("mathematical bold digits", in_script(0x1D7CE, v)),
            ("superscript digits", "".join(SUPERSCRIPT[int(c)] if c.isdigit() else c for c in v))]
    if "@" in v:
        out += [("%40", v.replace("@", "%40")), ("[at]", v.replace("@", "[at]")),
                ("full-width at", v.replace("@", "＠")), ("accented domain", v.replace("interieur", "intérieur"))]
    elif not v.startswith("06"):
        out.append(("glued to letters", f"ref{v.replace(' ', '')}x"))
    else:
        out += [("(06) 12…", v.replace("06", "(06)", 1)), ("3-3-4", "061 234 5678")]
    return out


@pytest.fixture
def echo(mocks):
    return mocks("gpu", echo=True)


def with_rules(mock, rules):
    p = simple_policy(mock)
    p["dlp"] = {"rules": rules}
    return p


def upstream_body(mock) -> str:
    return json.dumps(mock.stats()["last_request"]["body"], ensure_ascii=False)


def test_request_side_every_transformation_of_every_value(echo, sidecars):
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    c = client(s.base_url)
    leaks = []
    for name, value in VALUES.items():
        for label, variant in variants(value):
            c.chat.completions.create(model="mistral-7b", messages=[
                {"role": "user", "content": f"Bonjour, voici : {variant}. Merci."}])
            if leaked(variant, upstream_body(echo)):
                leaks.append(f"{name} / {label}")
    assert not leaks, f"{len(leaks)} reached the upstream: {leaks}"


def values_text(doc) -> str:
    """The string values of a document joined in order: what the model reads, with no
    key in between to break a value a check would otherwise miss."""
    if isinstance(doc, str):
        return doc
    if isinstance(doc, list):
        return "".join(values_text(d) for d in doc)
    if isinstance(doc, dict):
        return "".join(values_text(v) for k, v in doc.items() if k not in ("role", "type"))
    return ""


def test_a_value_split_across_parts_messages_and_system(echo, sidecars):
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    c = client(s.base_url)
    nir, card, mail = CANARY, VALUES["CREDIT_CARD"], VALUES["EMAIL_ADDRESS"]
    for value, messages in (
        (nir, [{"role": "user", "content": [{"type": "text", "text": f"NIR {nir[:8]}"}, {"type": "text", "text": nir[8:]}]}]),
        (nir, [{"role": "user", "content": f"NIR {nir[:5]}"}, {"role": "user", "content": nir[5:]}]),
        (nir, [{"role": "user", "content": "NIR 1 85 "}, {"role": "user", "content": "05 78 006 084 91"}]),
        (nir, [{"role": "system", "content": f"Le NIR est {nir[:11]}"}, {"role": "user", "content": f"{nir[11:]} merci"}]),
        (card, [{"role": "user", "content": "carte 4111 1111"}, {"role": "user", "content": "1111 1111"}]),
        (mail, [{"role": "user", "content": "écrire à jean.dupont@"}, {"role": "user", "content": "interieur.gouv.fr"}]),
    ):
        r = c.chat.completions.create(model="mistral-7b", messages=messages)
        body = echo.stats()["last_request"]["body"]
        # Really checked: the halves were there to join, and the model got them redacted.
        assert leaked(value, values_text({"messages": messages})), messages
        assert not leaked(value, values_text(body)), (messages, body)
        assert "[" in values_text(body) and r.choices, body


# Every string field of each API shape; the canary goes into each (and into each key) in
# turn. A field that is structure (model, role, type…) refuses the request instead.
CHAT = {
    "model": "mistral-7b",
    "messages": [
        {"role": "system", "content": [{"type": "text", "text": "x"}]},
        {"role": "user", "name": "x", "content": [
            {"type": "text", "text": "x"},
            {"type": "image_url", "image_url": {"url": "https://img.example/a.png?q=x", "detail": "low"}},
            {"type": "image_url", "image_url": {"url": "data:text/plain,x"}},
            {"type": "file", "file": {"filename": "x", "file_data": "data:text/plain;base64,eA=="}},
            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}}]},
        {"role": "assistant", "content": None, "refusal": "x",
         "tool_calls": [{"id": "x", "type": "function", "function": {"name": "x", "arguments": "{\"q\": \"x\"}"}}],
         "function_call": {"name": "x", "arguments": "x"}},
        {"role": "tool", "tool_call_id": "x", "content": "x"}],
    "tools": [{"type": "function", "function": {"name": "x", "description": "x", "parameters": {
        "type": "object", "properties": {"p": {"type": "string", "description": "x", "enum": ["x"]}}}}}],
    "functions": [{"name": "x", "description": "x", "parameters": {"type": "object"}}],
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "description": "x", "schema": {
        "type": "object", "properties": {"a": {"description": "x"}}}}},
    "prediction": {"type": "content", "content": "x"},
    "stop": ["x"], "user": "x", "metadata": {"k": "x"}, "a_field_from_tomorrow": {"nested": ["x"]},
}
COMPLETIONS = {"model": "mistral-7b", "prompt": ["x", "x"], "suffix": "x", "user": "x", "stop": "x"}
EMBEDDINGS = {"model": "mistral-7b", "input": ["x", "x"], "user": "x"}
MESSAGES = {
    "model": "mistral-7b", "max_tokens": 5,
    "system": [{"type": "text", "text": "x"}],
    "metadata": {"user_id": "x"}, "stop_sequences": ["x"],
    "tools": [{"name": "x", "description": "x", "input_schema": {
        "type": "object", "properties": {"q": {"type": "string", "description": "x"}}}}],
    "messages": [
        {"role": "user", "content": [
            {"type": "text", "text": "x"},
            {"type": "document", "title": "x", "context": "x",
             "source": {"type": "text", "media_type": "text/plain", "data": "x"}},
            {"type": "document", "source": {"type": "content", "content": [{"type": "text", "text": "x"}]}},
            {"type": "search_result", "source": "x", "title": "x", "content": [{"type": "text", "text": "x"}]},
            {"type": "image", "source": {"type": "url", "url": "https://img.example/x"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "x", "name": "x", "input": {"q": "x"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "x", "content": [
            {"type": "text", "text": "x"},
            {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}],
}


def slots(doc, path=()):
    """Paths of every string value and of every key."""
    if isinstance(doc, str):
        yield ("value", path)
    elif isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from slots(item, path + (i,))
    elif isinstance(doc, dict):
        for k, v in doc.items():
            yield ("key", path + (k,))
            yield from slots(v, path + (k,))


def planted(doc, slot, canary):
    doc = json.loads(json.dumps(doc))
    kind, path = slot
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    if kind == "value":
        parent[last] = f"{parent[last]} {canary}" if isinstance(parent[last], str) and parent[last] != "x" else canary
    else:
        parent[canary] = parent.pop(last)
    return doc


@pytest.mark.parametrize("path,template", [
    ("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETIONS),
    ("/v1/embeddings", EMBEDDINGS), ("/v1/messages", MESSAGES)])
def test_a_canary_in_any_string_field_never_reaches_the_upstream(echo, sidecars, path, template):
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    outcomes = {}
    leaks = []
    for slot in slots(template):
        before = echo.stats()["requests_total"]
        r = httpx.post(f"{s.base_url}{path}", json=planted(template, slot, CANARY),
                       headers={"anthropic-version": "2023-06-01"}, timeout=10)
        after = echo.stats()
        outcomes[r.status_code] = outcomes.get(r.status_code, 0) + 1
        if after["requests_total"] > before and leaked(CANARY, json.dumps(after["last_request"]["body"])):
            leaks.append(slot)
        if r.status_code >= 400 and r.status_code != 404:
            # Refused: in the API's own error format, naming no value.
            assert "error" in r.json() and "185057800608491" not in r.text.replace(" ", ""), r.text
    assert not leaks, f"reached the upstream from {leaks}"
    total = len(list(slots(template)))
    assert total > 5 and sum(outcomes.values()) == total
    # Not a pass by refusing everything: a canary in an ordinary field is redacted and
    # the request goes through (only structural fields and the model name refuse).
    assert outcomes.get(200, 0) > total // 2, outcomes


def test_headers_cookies_and_query_strings_stay_in_the_pod(echo, sidecars):
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    r = httpx.post(f"{s.base_url}/v1/chat/completions?nir=185057800608491",
                   json={"model": "mistral-7b", "messages": [{"role": "user", "content": "bonjour"}]},
                   headers={"x-ticket": CANARY, "cookie": "nir=185057800608491", "openai-beta": "assistants=v2"})
    assert r.status_code == 200
    seen = echo.stats()["last_request"]["headers"]
    assert not leaked(CANARY, json.dumps(seen)), seen
    assert seen.get("openai-beta") == "assistants=v2" and "cookie" not in seen and "x-ticket" not in seen


def test_token_id_prompts_are_refused_while_request_rules_apply(echo, sidecars):
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    before = echo.stats()["requests_total"]
    for path, body in [("/v1/completions", {"model": "mistral-7b", "prompt": [1, 2, 3]}),
                       ("/v1/embeddings", {"model": "mistral-7b", "input": [[1, 2], [3]]})]:
        r = httpx.post(f"{s.base_url}{path}", json=body)
        assert (r.status_code, r.json()["error"]["code"]) == (400, "token_prompt_not_inspectable"), r.text
    assert echo.stats()["requests_total"] == before


def test_compressed_request_bodies_are_decoded_and_scanned(echo, sidecars):
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    body = json.dumps({"model": "mistral-7b", "messages": [{"role": "user", "content": f"NIR {CANARY}"}]}).encode()
    for coding, data in [("gzip", gzip.compress(body)), ("deflate", zlib.compress(body))]:
        r = httpx.post(f"{s.base_url}/v1/chat/completions", content=data,
                       headers={"content-type": "application/json", "content-encoding": coding})
        assert r.status_code == 200, r.text
        assert not leaked(CANARY, upstream_body(echo)) and "[FR_NIR]" in upstream_body(echo)
    before = echo.stats()["requests_total"]
    r = httpx.post(f"{s.base_url}/v1/chat/completions", content=body,
                   headers={"content-type": "application/json", "content-encoding": "compress"})
    assert (r.status_code, r.json()["error"]["code"]) == (415, "unsupported_content_encoding")
    # A decompression bomb: 64 MiB of zeros in ~64 KiB, past the 8 MiB body limit.
    bomb = gzip.compress(b'{"model":"mistral-7b","prompt":"' + b"0" * (64 << 20) + b'"}')
    r = httpx.post(f"{s.base_url}/v1/completions", content=bomb,
                   headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large")
    assert echo.stats()["requests_total"] == before


def chat_answer(text: str, **choice) -> str:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "mistral-7b",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "logprobs": None, "finish_reason": "stop", **choice}],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})


def token_logprobs(text: str) -> dict:
    pieces = [text[i:i + 3] for i in range(0, len(text), 3)]
    return {"content": [{"token": p, "logprob": -0.1, "bytes": list(p.encode()),
                         "top_logprobs": [{"token": p, "logprob": -0.1, "bytes": list(p.encode())}]} for p in pieces]}


def chat_stream(text: str, step: int = 3) -> str:
    events = []
    for i in range(0, len(text), step):
        piece = text[i:i + step]
        events.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "mistral-7b",
                       "choices": [{"index": 0, "delta": {"content": piece},
                                    "logprobs": token_logprobs(piece), "finish_reason": None}]})
    events.append({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "mistral-7b",
                   "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]})
    return "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"


def ask(s, stream=False) -> httpx.Response:
    return httpx.post(f"{s.base_url}/v1/chat/completions", timeout=10, json={
        "model": "mistral-7b", "stream": stream, "logprobs": True,
        "messages": [{"role": "user", "content": "bonjour"}]})


def test_answer_side_every_transformation_streamed_and_not(mocks, sidecars):
    m = mocks("gpu")
    s = sidecars(with_rules(m, REDACT_ANSWERS))
    leaks = []
    for name, value in VALUES.items():
        for label, variant in variants(value):
            text = f"Voici : {variant}. Merci."
            m.set_behaviour(canned={"body": chat_answer(text, logprobs=token_logprobs(text))})
            r = ask(s)
            if r.status_code != 200 or leaked(variant, r.text):
                leaks.append(f"{name} / {label} / whole ({r.status_code})")
            m.set_behaviour(canned={"content_type": "text/event-stream", "body": chat_stream(text)})
            r = ask(s, stream=True)
            if r.status_code != 200 or leaked(variant, r.text):
                leaks.append(f"{name} / {label} / streamed ({r.status_code})")
    assert not leaks, f"{len(leaks)} reached the app: {leaks}"


def test_every_answer_field_and_encoding_goes_through_the_rules(mocks, sidecars):
    m = mocks("gpu")
    s = sidecars(with_rules(m, REDACT_ANSWERS))
    mail = VALUES["EMAIL_ADDRESS"]
    cases = {
        "refusal": {"body": chat_answer(None, message={"role": "assistant", "content": None, "refusal": f"non : {mail}"})},
        "audio transcript": {"body": chat_answer(None, message={"role": "assistant", "content": None,
                                                                "audio": {"id": "a", "data": "", "transcript": mail}})},
        "annotation title": {"body": chat_answer("ok", message={"role": "assistant", "content": "ok", "annotations": [
            {"type": "url_citation", "url_citation": {"title": mail, "url": "https://x.example"}}]})},
        "tool-call name": {"body": chat_answer(None, message={"role": "assistant", "content": None, "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": f"send_{mail}", "arguments": "{}"}}]})},
        "4xx JSON error": {"status": 400, "body": json.dumps({"error": {"message": f"bad input {mail}", "type": "x"}})},
        "5xx JSON error": {"status": 503, "body": json.dumps({"error": {"message": f"down for {mail}"}})},
        "text/plain answer": {"content_type": "text/plain", "body": f"contact {mail}"},
        "gzip answer": {"gzip": True, "body": chat_answer(f"contact {mail}")},
        "large answer (read on the blocking pool)": {"body": chat_answer("bla " * (64 << 10) + f"contact {mail}")},
        "SSE error event": {"content_type": "text/event-stream",
                            "body": f"event: error\ndata: {json.dumps({'error': {'message': mail}})}\n\n"},
        "SSE refusal delta": {"content_type": "text/event-stream", "body": "data: " + json.dumps({
            "id": "c", "object": "chat.completion.chunk", "model": "mistral-7b",
            "choices": [{"index": 0, "delta": {"refusal": mail}, "finish_reason": None}]}) + "\n\ndata: [DONE]\n\n"},
    }
    for label, canned in cases.items():
        m.set_behaviour(canned=canned)
        r = ask(s, stream=canned.get("content_type") == "text/event-stream")
        assert not leaked(mail, r.text), f"{label}: {r.status_code} {r.text}"
        assert "[EMAIL_ADDRESS]" in r.text, f"{label}: {r.status_code} {r.text}"


def test_logprobs_do_not_spell_what_content_redacted(mocks, sidecars):
    m = mocks("gpu")
    s = sidecars(with_rules(m, REDACT_ANSWERS))
    text = f"écrivez à {VALUES['EMAIL_ADDRESS']}"
    m.set_behaviour(canned={"body": chat_answer(text, logprobs=token_logprobs(text))})
    r = ask(s).json()
    assert r["choices"][0]["message"]["content"] == "écrivez à [EMAIL_ADDRESS]"
    assert r["choices"][0]["logprobs"] is None
    m.set_behaviour(canned={"content_type": "text/event-stream", "body": chat_stream(text)})
    events = [json.loads(line[6:]) for line in ask(s, stream=True).text.splitlines()
              if line.startswith("data: {")]
    assert all(e["choices"][0].get("logprobs") is None for e in events if e.get("choices"))
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e.get("choices")) == \
        "écrivez à [EMAIL_ADDRESS]"


def rss_peak_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_digit_run_stays_within_the_memory_bound_and_does_not_stall_others(echo, sidecars):
    """The original report: a 4 MB run of digits took the sidecar from 7.9 MB to 692 MB
    and stalled every other request for 6–9 s."""
    s = sidecars(with_rules(echo, REDACT_REQUESTS))
    pid = s.process.proc.pid
    c = client(s.base_url)
    c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "échauffement"}])
    before = rss_peak_kib(pid)
    digits = "1" * (7 << 20)
    heavy = {}

    def send_heavy():
        t = time.monotonic()
        heavy["status"] = httpx.post(f"{s.base_url}/v1/completions", timeout=120,
                                     json={"model": "mistral-7b", "prompt": digits, "max_tokens": 1}).status_code
        heavy["seconds"] = time.monotonic() - t

    t = threading.Thread(target=send_heavy)
    t.start()
    time.sleep(0.3)  # the heavy body is in, its scan under way
    light = []
    while t.is_alive() and len(light) < 20:
        t0 = time.monotonic()
        r = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=30,
                       json={"model": "mistral-7b", "messages": [{"role": "user", "content": "vite"}]})
        assert r.status_code == 200
        light.append(time.monotonic() - t0)
    t.join()
    assert heavy["status"] == 200, heavy
    growth_mib = (rss_peak_kib(pid) - before) / 1024
    print(f"7 MiB digit run: peak RSS +{growth_mib:.0f} MiB, heavy {heavy['seconds']:.2f} s, "
          f"{len(light)} light requests meanwhile, slowest {max(light, default=0) * 1000:.0f} ms")
    # The documented bound: DLP work within 4× the body plus a constant; the request as a
    # whole (raw bytes, tree, forwarded copy) within 8× (docs/dlp.md).
    assert growth_mib <= 8 * 7 + 32, f"peak RSS grew by {growth_mib:.0f} MiB for a 7 MiB body"
    # Loose: a light request is served while the heavy one is scanned (docs/BENCHMARKS.md
    # has the figures).
    if light:
        assert max(light) < max(1.0, heavy["seconds"] / 2), (light, heavy)
    else:
        assert heavy["seconds"] < 1.0, heavy


def test_what_the_attacker_review_found(mocks, echo, sidecars):
    """Each bypass the attacker review of this DLP found, kept as a test."""
    m = mocks("gpu-answers")
    s = sidecars(with_rules(m, REDACT_ANSWERS))
    escaped = "NIR \\u0031 \\u0038\\u0035 05 78 006 084 91"   # JSON escapes the app decodes
    # Answers serde_json will not parse but lenient parsers will: stopped, never read raw.
    for label, body in [("NaN", chat_answer("x")[:-1] + ', "x": NaN}'),
                        ("BOM", "\ufeff" + chat_answer("x")),
                        ("lone surrogate", chat_answer("x")[:-1] + ', "x": "\\ud800"}'),
                        ("deep nesting", chat_answer("x")[:-1] + ', "x": ' + "[" * 200 + "]" * 200 + "}")]:
        m.set_behaviour(canned={"body": body.replace('"x"', f'"{escaped}"', 1)})
        r = ask(s)
        assert "185057800608491" not in essence(r.text) and r.status_code == 451, (label, r.status_code, r.text)
    # An SSE stream under another content type, or with bare CRs, is still filtered.
    chunk = lambda field, text: "data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                                      "choices": [{"index": 0, "delta": {field: text}}]})
    for label, ctype, body in [
        ("capitalised type", "Text/Event-Stream", chunk("content", CANARY) + "\n\n"),
        ("text/plain", "text/plain", chunk("content", CANARY) + "\n\n"),
        ("bare CR before data", "text/event-stream", ": x\r" + chunk("content", CANARY) + "\n\n"),
        ("CR-only events", "text/event-stream", chunk("content", CANARY) + "\r\r"),
    ]:
        m.set_behaviour(canned={"content_type": ctype, "body": body + "data: [DONE]\n\n"})
        r = ask(s, stream=True)
        assert not leaked(CANARY, r.text.replace("\r", "\n")), (label, r.text)
    # Fields the SDKs join across events: a value split over four events.
    pieces = ["NIR 1 8", "5 05 7", "8 006 0", "84 91"]
    for field in ("refusal", "tool name", "audio transcript"):
        events = []
        for p in pieces + [""]:
            delta = {"refusal": {"refusal": p}, "tool name": {"tool_calls": [{"index": 0, "function": {"name": p}}]},
                     "audio transcript": {"audio": {"transcript": p}}}[field]
            events.append("data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "model": "m",
                                                 "choices": [{"index": 0, "delta": delta,
                                                              "finish_reason": None if p else "stop"}]}) + "\n\n")
        m.set_behaviour(canned={"content_type": "text/event-stream", "body": "".join(events) + "data: [DONE]\n\n"})
        text = ask(s, stream=True).text
        joined = "".join(json.dumps(json.loads(line[6:])["choices"][0]["delta"], ensure_ascii=False)
                         for line in text.splitlines() if line.startswith("data: {"))
        assert not leaked(CANARY, values_text(json.loads("[" + joined.replace("}{", "},{") + "]"))), (field, text)
    # An event that never ends is not held without bound.
    m.set_behaviour(canned={"content_type": "text/event-stream", "body": "data: " + "x" * (2 << 20)})
    r = ask(s, stream=True)
    assert "dlp_blocked_response" in r.text or r.status_code >= 400, r.text[:200]

    # Request side: numbers written as floats, and a gzip body of tiny values.
    s2 = sidecars(with_rules(echo, REDACT_REQUESTS))
    for number in ("185057800608491.0", "1.85057800608491e14", "4111111111111111.0"):
        body = '{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}], "metadata": {"n": %s}}' % number
        r = httpx.post(f"{s2.base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        value = "185057800608491" if "185" in number else "4111111111111111"
        seen = json.dumps(echo.stats()["last_request"]["body"])
        # Read as digits, redacted, forwarded: not refused, not passed.
        assert r.status_code == 200 and not leaked(value, seen) and "[" in seen, (number, seen)
    pid = s2.process.proc.pid
    peak = rss_peak_kib(pid)
    tiny = gzip.compress(b'{"model":"mistral-7b","prompt":"x","x":[' + b"1," * (4 << 20) + b'1]}')
    r = httpx.post(f"{s2.base_url}/v1/completions", content=tiny,
                   headers={"content-type": "application/json", "content-encoding": "gzip"}, timeout=60)
    assert (r.status_code, r.json()["error"]["code"]) == (413, "request_too_large"), r.text
    assert (rss_peak_kib(pid) - peak) / 1024 < 64, "tiny values cost more than the bound"


def sse_events(*events: dict) -> str:
    return "".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n" for e in events) + "data: [DONE]\n\n"


def chat_chunk(delta: dict, finish=None, index=0) -> dict:
    return {"id": "c", "object": "chat.completion.chunk", "model": "mistral-7b",
            "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}


def test_what_the_second_review_found(mocks, echo, sidecars):
    """Each bypass the second attacker review found, kept as a test."""
    m = mocks("gpu-answers")
    s = sidecars(with_rules(m, REDACT_ANSWERS))

    def streamed(body: str) -> str:
        m.set_behaviour(canned={"content_type": "text/event-stream", "body": body})
        return ask(s, stream=True).text

    def content(text: str) -> str:
        return "".join((json.loads(line[6:]).get("choices") or [{}])[0].get("delta", {}).get("content") or ""
                       for line in text.splitlines() if line.startswith("data: {"))

    # The text held at the last chunk goes after what that chunk released, not before.
    out = streamed(sse_events(chat_chunk({"content": "084 91 ok 1 85 05 78 006 "}, "stop")))
    assert not leaked(CANARY, content(out)), out
    assert content(streamed(sse_events(chat_chunk({"content": "Bonjour, à demain 06"}, "stop")))) == \
        "Bonjour, à demain 06"
    # Text after its choice (or Anthropic block) ended is not scanned afresh: stopped.
    out = streamed(sse_events(chat_chunk({"content": "NIR 1 85 05 78"}), chat_chunk({}, "stop"),
                              chat_chunk({"content": " 006 084 91"})))
    assert not leaked(CANARY, content(out)) and "dlp_blocked_response" in out, out
    anthropic = lambda *events: "".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in events)
    m.set_behaviour(canned={"content_type": "text/event-stream", "body": anthropic(
        {"type": "message_start", "message": {"id": "m", "type": "message", "role": "assistant", "content": [],
                                              "model": "mistral-7b", "usage": {"input_tokens": 1, "output_tokens": 1}}},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "NIR 1 85 05 78"}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " 006 084 91"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": " 006 084 91"}},
        {"type": "message_stop"})})
    r = httpx.post(f"{s.base_url}/v1/messages", timeout=10, headers={"anthropic-version": "2023-06-01"}, json={
        "model": "mistral-7b", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    texts = "".join(json.loads(line[6:]).get("delta", {}).get("text", "") +
                    (json.loads(line[6:]).get("content_block") or {}).get("text", "")
                    for line in r.text.splitlines() if line.startswith("data: {"))
    assert not leaked(CANARY, texts), r.text
    # Redirects are not relayed; answer headers carrying a value are dropped.
    m.set_behaviour(canned={"status": 307, "body": "", "headers": {"location": "http://127.0.0.1:9/collect"}})
    r = ask(s)
    assert (r.status_code, r.json()["error"]["code"]) == (502, "upstream_redirect") and "location" not in r.headers
    m.set_behaviour(canned={"body": chat_answer("ok"), "headers": {"x-note": CANARY, "x-request-id": "req-42"}})
    r = ask(s)
    assert r.status_code == 200 and "x-note" not in r.headers and r.headers.get("x-request-id") == "req-42"
    # One answer may not open streams without bound (each holds a scanner).
    pid = s.process.proc.pid
    peak = rss_peak_kib(pid)
    calls = [chat_chunk({"tool_calls": [{"index": k, "function": {"name": "f", "arguments": "{}"}}]})
             for k in range(5000)]
    out = streamed(sse_events(*calls))
    assert "dlp_blocked_response" in out and (rss_peak_kib(pid) - peak) / 1024 < 64, out[-300:]

    # Request side: a value behind a float's leading zeros; a system prompt and a message
    # that sort apart (Anthropic's `messages` before `system`).
    s2 = sidecars(with_rules(echo, REDACT_REQUESTS))
    body = '{"model": "mistral-7b", "messages": [{"role": "user", "content": "x"}], "metadata": {"n": 1.85057800608491e-5}}'
    httpx.post(f"{s2.base_url}/v1/chat/completions", content=body, headers={"content-type": "application/json"})
    assert not leaked("185057800608491", json.dumps(echo.stats()["last_request"]["body"]))
    httpx.post(f"{s2.base_url}/v1/messages", headers={"anthropic-version": "2023-06-01"}, json={
        "model": "mistral-7b", "max_tokens": 5, "system": "Le NIR est 1 85 05 78",
        "messages": [{"role": "user", "content": "006 084 91 merci"}]})
    seen = echo.stats()["last_request"]["body"]
    assert not leaked(CANARY, seen["system"] + values_text(seen["messages"])), seen


def test_what_the_third_review_found(mocks, echo, sidecars):
    """Each bypass the third attacker review found, kept as a test."""
    m = mocks("gpu-answers")
    s = sidecars(with_rules(m, REDACT_ANSWERS))
    escaped = "{\\\"nir\\\":\\\"\\\\u0031 \\\\u0038\\\\u0035 05 78 006 084 91\\\"}"  # JSON text inside a JSON string
    # Tool-call arguments written with escapes: read as the app will decode them.
    m.set_behaviour(canned={"body": chat_answer(None, message={"role": "assistant", "content": None, "tool_calls": [
        {"id": "t", "type": "function", "function": {"name": "f", "arguments": json.loads(f'"{escaped}"')}}]})})
    args = ask(s).json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert not leaked(CANARY, json.dumps(json.loads(args), ensure_ascii=False)), args
    pieces = [json.loads(f'"{escaped}"')[i:i + 5] for i in range(0, 60, 5)]
    out = "".join(f"data: {json.dumps(chat_chunk({'tool_calls': [{'index': 0, 'function': {'arguments': p}}]}))}\n\n"
                  for p in pieces) + f"data: {json.dumps(chat_chunk({}, 'stop'))}\n\ndata: [DONE]\n\n"
    m.set_behaviour(canned={"content_type": "text/event-stream", "body": out})
    text = ask(s, stream=True).text
    joined = "".join(json.loads(line[6:])["choices"][0]["delta"].get("tool_calls", [{}])[0].get("function", {})
                     .get("arguments", "") for line in text.splitlines() if line.startswith("data: {"))
    assert not leaked(CANARY, json.dumps(json.loads(joined), ensure_ascii=False)), joined
    # A choice index written `1.0` would file text under another stream: stopped.
    body = sse_events(chat_chunk({"content": "NIR 1 85 05 78"}, index=1), chat_chunk({}, "stop", index=1))
    body = body.replace("data: [DONE]", "data: " + json.dumps(chat_chunk({"content": " 006 084 91"})).replace(
        '"index": 0', '"index": 1.0') + "\n\ndata: [DONE]")
    m.set_behaviour(canned={"content_type": "text/event-stream", "body": body})
    assert "dlp_blocked_response" in ask(s, stream=True).text
    # An e-mail's local part that never ends: the hold-back search stays linear.
    m.set_behaviour(canned={"content_type": "text/event-stream",
                            "body": sse_events(chat_chunk({"content": "a." * (128 << 10) + "!"}, "stop"))})
    t = time.monotonic()
    assert ask(s, stream=True).status_code == 200
    assert time.monotonic() - t < 5, "hold-back search took too long on one 256 KiB event"
    # An alert rule does not hide a redact rule's finding inside its match.
    s2 = sidecars(with_rules(echo, [{"detector": "*", "action": "DLP_ACTION_REDACT"},
                                    {"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_ALERT"}]))
    client(s2.base_url).chat.completions.create(model="mistral-7b", messages=[
        {"role": "user", "content": "NIR 185057800608491@secu.fr"}])
    assert not leaked("185057800608491", upstream_body(echo)), upstream_body(echo)
    # Request tool results written with escapes (Python's json.dumps default) are read decoded.
    result = json.dumps({"nir": "1\u202f85\u202f05\u202f78\u202f006\u202f084\u202f91"})
    client(s2.base_url).chat.completions.create(model="mistral-7b", messages=[
        {"role": "user", "content": "x"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "t", "type": "function",
                                                               "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t", "content": result}])
    seen = echo.stats()["last_request"]["body"]["messages"][-1]["content"]
    assert not leaked(CANARY, json.dumps(json.loads(seen), ensure_ascii=False)), seen
