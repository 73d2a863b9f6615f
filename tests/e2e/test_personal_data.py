"""Personal data in free text (names after a civility or a role, postal addresses, dates
of birth) through the real sidecar, with the official OpenAI SDK and the echo mock:
hidden from the model, given back to the app, and routed like the identifiers."""

import openai
import pytest

from conftest import simple_policy
from test_dlp import received
from test_proxy import client
from test_routing import post, sensitivity_policy

PROMPT = ("Rédige un courrier pour Mme Sophie Lefèvre, née le 14/02/1987 à Lyon, "
          "demeurant 12 bis rue des Lilas, 75011 Paris.")
MODEL_SAW = ("Rédige un courrier pour Mme <PERSON_1>, née le <DATE_OF_BIRTH_1> à Lyon, "
             "demeurant <ADDRESS_1>.")
VALUES = ("Sophie Lefèvre", "14/02/1987", "12 bis rue des Lilas", "75011 Paris")

PSEUDONYMIZE = [{"detector": d, "action": "DLP_ACTION_PSEUDONYMIZE", "direction": "DLP_DIRECTION_REQUEST"}
                for d in ("PERSON", "ADDRESS", "DATE_OF_BIRTH")]


@pytest.fixture
def echo(mocks):
    return mocks("gpu", echo=True, tokens_per_sec=2000)


def test_hidden_from_the_model_given_back_to_the_app(echo, sidecars):
    p = simple_policy(echo)
    p["dlp"] = {"rules": PSEUDONYMIZE}
    s = sidecars(p)
    c = client(s.base_url)

    r = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROMPT}])
    assert received(echo) == MODEL_SAW
    assert r.choices[0].message.content == PROMPT

    # Streamed: the placeholders come back in pieces across chunks and are restored.
    chunks = list(c.chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROMPT}], stream=True))
    assert received(echo) == MODEL_SAW
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == PROMPT

    metrics = s.metrics()
    for d in ("PERSON", "ADDRESS", "DATE_OF_BIRTH"):
        assert f'vigie_sidecar_dlp_findings_total{{action="pseudonymize",detector="{d}",direction="request"}} 2' in metrics
    assert 'vigie_sidecar_request_sensitivity_total{level="personal"} 2' in metrics
    for value in VALUES:
        assert value not in s.process.log() and value not in metrics


def test_ordinary_prose_reaches_the_model_unchanged(echo, sidecars):
    p = simple_policy(echo)
    p["dlp"] = {"rules": [{"detector": "*", "action": "DLP_ACTION_REDACT"}]}
    s = sidecars(p)
    text = ("M. le Préfet recevra la délégation le 14/02/2025 à 10 h, salle Pierre, "
            "au lycée Victor-Hugo de Lyon.")
    r = client(s.base_url).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": text}])
    assert received(echo) == text and r.choices[0].message.content == text


def test_a_person_and_an_address_only_reach_a_pool_cleared_for_them(mocks, sidecars):
    onprem, external = mocks(), mocks()
    p = sensitivity_policy(onprem, external)
    p["dlp"] = {"rules": [{"detector": "PERSON", "action": "DLP_ACTION_PSEUDONYMIZE"},
                          {"detector": "ADDRESS", "action": "DLP_ACTION_PSEUDONYMIZE"}]}
    s = sidecars(p)
    # The route prefers the external pool: a prompt about a person goes on-prem.
    assert post(s, "chat", content="Écris à M. Karim Benali, 3 rue de la Paix, 75002 Paris.").status_code == 200
    assert (onprem.stats()["requests_total"], external.stats()["requests_total"]) == (1, 0)
    assert post(s, "chat", content="Quelle heure est-il ?").status_code == 200
    assert external.stats()["requests_total"] == 1
    # Only the external pool serves "big": refused, nothing sent anywhere.
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(s.base_url).chat.completions.create(
            model="big", messages=[{"role": "user", "content": "Convoquer Mme Durand demain."}])
    assert exc.value.body["code"] == "no_cleared_pool"
    assert (onprem.stats()["requests_total"], external.stats()["requests_total"]) == (1, 1)


# Names without civility (the given-name gazetteer) and special categories (GDPR art. 9
# and 10: a person earlier in the same sentence).
PROSE = ("Karim Benali, syndiqué à la CGT, a été placé en garde à vue. "
         "LEFÈVRE Sophie est diabétique et de confession musulmane.")
PROSE_SAW = ("<PERSON_1>, <UNION_MEMBERSHIP_1>, a été <CRIMINAL_RECORD_1>. "
             "<PERSON_2> est <HEALTH_1> et <RELIGION_1>.")
SPECIAL = ("HEALTH", "RELIGION", "POLITICAL_OPINION", "UNION_MEMBERSHIP", "SEXUAL_ORIENTATION",
           "ETHNIC_ORIGIN", "CRIMINAL_RECORD")


def test_bare_names_and_special_categories_are_hidden_and_given_back(echo, sidecars):
    p = simple_policy(echo)
    p["dlp"] = {"rules": [{"detector": d, "action": "DLP_ACTION_PSEUDONYMIZE", "direction": "DLP_DIRECTION_REQUEST"}
                          for d in ("PERSON", *SPECIAL)]}
    s = sidecars(p)
    c = client(s.base_url)

    r = c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": PROSE}])
    assert received(echo) == PROSE_SAW
    assert r.choices[0].message.content == PROSE
    chunks = list(c.chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": PROSE}], stream=True))
    assert received(echo) == PROSE_SAW
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == PROSE

    metrics = s.metrics()
    # Special categories raise the request to restricted.
    assert 'vigie_sidecar_request_sensitivity_total{level="restricted"} 2' in metrics
    for value in ("Benali", "diabétique", "musulmane", "garde à vue"):
        assert value not in s.process.log() and value not in metrics


def test_special_categories_without_a_person_and_public_bodies_pass_unchanged(echo, sidecars):
    p = simple_policy(echo)
    p["dlp"] = {"rules": [{"detector": "*", "action": "DLP_ACTION_REDACT"}]}
    s = sidecars(p)
    text = ("La politique de santé publique vise le diabète. Les organisations syndicales ont été reçues "
            "au lycée Victor Hugo, rue Jean Moulin, par le Préfet. Le casier judiciaire national est tenu à Nantes.")
    r = client(s.base_url).chat.completions.create(
        model="mistral-7b", messages=[{"role": "user", "content": text}])
    assert received(echo) == text and r.choices[0].message.content == text


def test_a_special_category_only_reaches_a_pool_cleared_for_restricted(mocks, sidecars):
    onprem, external = mocks(), mocks()
    p = sensitivity_policy(onprem, external)
    p["pools"][0]["clearance"] = "SENSITIVITY_LEVEL_PERSONAL"
    p["dlp"] = {"rules": [{"detector": "HEALTH", "action": "DLP_ACTION_ALERT"}]}
    s = sidecars(p)
    # Cleared for personal data, not for restricted: refused, nothing sent anywhere.
    with pytest.raises(openai.PermissionDeniedError) as exc:
        client(s.base_url).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "Mme Durand est séropositive, que lui répondre ?"}])
    assert exc.value.body["code"] == "no_cleared_pool"
    assert (onprem.stats()["requests_total"], external.stats()["requests_total"]) == (0, 0)
    assert post(s, "chat", content="Quelle heure est-il ?").status_code == 200
