"""DLP through the sidecar, with the mock in echo mode (the answer repeats the prompt):
what the model received, what the client received, and the documented errors."""

import anthropic
import httpx
import openai
import pytest

from conftest import simple_policy
from test_proxy import client

NIR, IBAN, EMAIL, PHONE = "1 85 05 78 006 084 91", "FR76 3000 6000 0112 3456 7890 189", "a.martin@exemple.fr", "06 12 34 56 78"
PROMPT = f"Dossier de Mme Martin : NIR {NIR}, IBAN {IBAN}, courriel {EMAIL}, merci."

RULES = [
    {"detector": "FR_NIR", "action": "DLP_ACTION_PSEUDONYMIZE", "direction": "DLP_DIRECTION_REQUEST"},
    {"detector": "IBAN", "action": "DLP_ACTION_REDACT"},
    {"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_ALERT"},
]


def policy_with(mock, rules, **dlp):
    p = simple_policy(mock)
    p["dlp"] = {"rules": rules, **dlp}
    return p


def received(mock) -> str:
    body = mock.stats()["last_request"]["body"]
    msgs = body.get("messages")
    if msgs:
        content = msgs[-1]["content"]
        return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)
    return body.get("prompt")


@pytest.fixture
def echo(mocks):
    return mocks("gpu", echo=True, tokens_per_sec=2000)


def test_pseudonymized_for_the_model_restored_for_the_client(echo, sidecars):
    s = sidecars(policy_with(echo, RULES))
    c = client(s.base_url)
    model_saw = f"Dossier de Mme Martin : NIR <FR_NIR_1>, IBAN [IBAN], courriel {EMAIL}, merci."
    client_sees = f"Dossier de Mme Martin : NIR {NIR}, IBAN [IBAN], courriel {EMAIL}, merci."

    r = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert received(echo) == model_saw
    assert r.choices[0].message.content == client_sees

    chunks = list(c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], stream=True))
    assert received(echo) == model_saw
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == client_sees

    metrics = s.metrics()
    assert 'vigie_sidecar_dlp_findings_total{action="pseudonymize",detector="FR_NIR",direction="request"} 2' in metrics
    assert 'vigie_sidecar_dlp_findings_total{action="redact",detector="IBAN",direction="request"} 2' in metrics
    assert 'vigie_sidecar_dlp_findings_total{action="alert",detector="EMAIL_ADDRESS",direction="request"} 2' in metrics
    assert 'vigie_sidecar_request_sensitivity_total{level="personal"} 2' in metrics
    # Values never reach logs or metrics.
    for value in (NIR, IBAN, EMAIL, "185057800608491"):
        assert value not in s.process.log() and value not in metrics


def test_array_parts_and_completions(echo, sidecars):
    s = sidecars(policy_with(echo, RULES))
    c = client(s.base_url)
    r = c.chat.completions.create(model="mistral-7b", messages=[
        {"role": "user", "content": [{"type": "text", "text": f"IBAN {IBAN}"}, {"type": "text", "text": f" NIR {NIR}"}]}])
    assert received(echo) == "IBAN [IBAN] NIR <FR_NIR_1>"
    assert r.choices[0].message.content == f"IBAN [IBAN] NIR {NIR}"
    r = c.completions.create(model="mistral-7b", prompt=f"NIR {NIR} fin")
    assert received(echo) == "NIR <FR_NIR_1> fin"
    assert r.choices[0].text == f"NIR {NIR} fin"


def test_anthropic_messages_streamed(echo, sidecars):
    s = sidecars(policy_with(echo, RULES))
    a = anthropic.Anthropic(base_url=s.base_url, api_key="placeholder", max_retries=0)
    with a.messages.stream(model="mistral-7b", max_tokens=100, messages=[{"role": "user", "content": PROMPT}]) as st:
        text = "".join(st.text_stream)
    assert received(echo) == f"Dossier de Mme Martin : NIR <FR_NIR_1>, IBAN [IBAN], courriel {EMAIL}, merci."
    assert text == f"Dossier de Mme Martin : NIR {NIR}, IBAN [IBAN], courriel {EMAIL}, merci."


def test_block_request_names_detectors_never_values(echo, sidecars):
    s = sidecars(policy_with(echo, [{"detector": "IBAN", "action": "DLP_ACTION_BLOCK", "direction": "DLP_DIRECTION_REQUEST"},
                                    {"detector": "FR_NIR", "action": "DLP_ACTION_BLOCK", "direction": "DLP_DIRECTION_REQUEST"}]))
    before = echo.stats()["requests_total"]
    with pytest.raises(openai.BadRequestError) as e:
        client(s.base_url).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert e.value.code == "dlp_blocked"
    assert e.value.body["message"] == "The request was blocked by the data-loss policy: it contains FR_NIR, IBAN."
    assert IBAN not in str(e.value.body) and NIR not in str(e.value.body)
    assert echo.stats()["requests_total"] == before, "a blocked request must not reach the model"
    assert 'vigie_sidecar_dlp_blocked_total{direction="request"} 1' in s.metrics()


def test_answers_are_checked_too(echo, sidecars):
    # Nothing on the way in for phones; on the way out the answer is cut.
    s = sidecars(policy_with(echo, [
        {"detector": "PHONE_NUMBER", "action": "DLP_ACTION_BLOCK", "direction": "DLP_DIRECTION_RESPONSE"},
        {"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_REDACT", "direction": "DLP_DIRECTION_RESPONSE"}]))
    c = client(s.base_url)
    # Redacted in the answer only: the model received the e-mail unchanged.
    r = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": f"écrire à {EMAIL} svp"}])
    assert received(echo) == f"écrire à {EMAIL} svp"
    assert r.choices[0].message.content == "écrire à [EMAIL_ADDRESS] svp"
    # Streamed answer with a phone number: text before it arrives, then an error event.
    stream = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": f"Appelez le {PHONE} demain matin"}], stream=True)
    seen = ""
    with pytest.raises(openai.APIError) as e:
        for ch in stream:
            if ch.choices:
                seen += ch.choices[0].delta.content or ""
    assert "data-loss policy" in str(e.value) and "PHONE_NUMBER" in str(e.value)
    assert seen.startswith("Appelez le") and "06" not in seen
    # Not streamed: a 451 in OpenAI's format.
    with pytest.raises(openai.APIStatusError) as e:
        c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": f"tel {PHONE}"}])
    assert e.value.status_code == 451 and e.value.body["code"] == "dlp_blocked_response"


def test_declared_sensitivity_and_custom_detectors(echo, sidecars):
    s = sidecars(policy_with(echo, [{"detector": "PROJECT", "action": "DLP_ACTION_REDACT", "direction": "DLP_DIRECTION_REQUEST"}],
                             customDetectors=[{"name": "PROJECT", "keywords": {"words": ["Opération Hermès", "NEPTUNE"]},
                                               "level": "SENSITIVITY_LEVEL_RESTRICTED"},
                                              {"name": "TICKET", "regex": "INC-[0-9]{6}"}]))
    r = httpx.post(s.base_url + "/v1/chat/completions", headers={"x-vigie-sensitivity": "internal"}, json={
        "model": "mistral-7b", "messages": [{"role": "user", "content": "Point sur le projet neptune et opération hermès"}]}, timeout=10)
    assert r.status_code == 200
    assert received(echo) == "Point sur le projet [PROJECT] et [PROJECT]"
    r = httpx.post(s.base_url + "/v1/chat/completions", headers={"x-vigie-sensitivity": "internal"}, json={
        "model": "mistral-7b", "messages": [{"role": "user", "content": "rien"}]}, timeout=10)
    metrics = s.metrics()
    assert 'vigie_sidecar_request_sensitivity_total{level="restricted"} 1' in metrics
    assert 'vigie_sidecar_request_sensitivity_total{level="internal"} 1' in metrics


def test_invalid_dlp_section_is_rejected_with_field_paths(echo, tmp_path):
    import json
    import subprocess

    from harness import binary

    p = policy_with(echo, [{"detector": "FR_NIRR", "action": "DLP_ACTION_REDACT"}],
                    customDetectors=[{"name": "CODE", "regex": "AB(["}])
    f = tmp_path / "p.json"
    f.write_text(json.dumps(p))
    r = subprocess.run([str(binary("vigie-sidecar")), "--policy-file", str(f), "--check"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "dlp.rules[0].detector: unknown detector \"FR_NIRR\"" in r.stderr
    assert "dlp.customDetectors[0].regex: does not compile:" in r.stderr
