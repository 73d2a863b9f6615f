"""The demo (`cargo xtask demo`) runs to completion and shows what it claims."""

import subprocess
import sys
from pathlib import Path

from harness import BIN_DIR, ROOT


def test_demo_runs_and_narrates():
    r = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "demo" / "demo.py")],
        capture_output=True, text=True, timeout=120, env={"VIGIE_BIN_DIR": str(BIN_DIR), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    for expected in [
        "models                 claude-sonnet, gpt-4o, gpt-4o-mini, mistral-small",
        "served model           mistral-small",
        "404 model_not_found",
        "400 We could not parse the JSON body",
        "(the sidecar's, not the app's)",
        "served by              cloud as gpt-4o",
        "with a NIR             served by gpu-",
        "same system prompt     10 requests → gpu-",
        "declared restricted    403 no_cleared_pool: No pool cleared for sensitivity level `restricted` serves the model `claude-sonnet`",
        'vigie_sidecar_route_refusals_total{level="restricted"} 1',
        'routes[0].pools[0]: unknown pool "gpu-b"',
        "revision 1: created (namespace=team-a): pools onprem-gpu, external; routes gpt-4o-mini",
        "team-a/chatbot-0",
        "policy.rollback",
        "the model received     Dossier de M. <PERSON_1>, né le <DATE_OF_BIRTH_1>, <ADDRESS_1>, NIR <FR_NIR_1>, IBAN [IBAN], écrire à [EMAIL_ADDRESS]",
        "the app got back       Dossier de M. Durand, né le 03/05/1985, 12 rue des Lilas, 75011 Paris, NIR 1 85 05 78 006 084 91, IBAN [IBAN], écrire à [EMAIL_ADDRESS]",
        "the model received     NIR <FR_NIR_2> | tool: Dossier du <FR_NIR_1>",
        "the model received     <PERSON_1>, <UNION_MEMBERSHIP_1>, est <HEALTH_1> : prépare sa convocation.",
        "the app got back       Karim Benali, syndiqué à la CGT, est diabétique : prépare sa convocation.",
        "400 dlp_blocked: The request was blocked by the data-loss policy: it contains CLASSIFICATION_MARKING.",
        'vigie_sidecar_dlp_findings_total{action="pseudonymize",detector="FR_NIR",direction="request"} 4',
        "ana's 4th request      429 budget_exceeded, Retry-After",
        "budgets-baseline/per-user-rpm key=['ana']: 3 of 3",
        "USAGE_OUTCOME_COMPLETED",
        "ana is stored as hmac:",
        "a filter on user=ana finds her 4 records",
        "4 records kept their figures and lost ana (audited)",
        'vigie_sidecar_budget_decisions_total{budget="per-user-rpm",decision="rejected"} 1',
        "app → its sidecar      200, served model mistral-small",
        "app → gpu-1 directly   connect() refused: EPERM",
        "app → the provider     connect() refused: EPERM",
        "app → raw frame        ",
        "dropped in the kernel: tc_egress socket_family (packet socket)",
        "app → source-routed    refused: skb_egress ip_options",
        "agent's security event egress.denied team-a/chatbot-0 container=app → 127.0.0.1:",
        "ListDenials            node node-1: team-a/chatbot-0 → 127.0.0.1:",
        "OTLP endpoint          http://127.0.0.1:",
        "findings=request:",
        "vigie.admin.action ×",
        "vigie.dlp.finding ×",
        "vigie.policy.applied ×",
        "vigie.request.blocked ×",
        "vigie.budget.exceeded ×",
        "350,000 empty pools    Message: message has more than 150000 fields",
        "300 pools              pools: 300 entries; at most 256 allowed",
        "explosive regex        dlp.customDetectors[0].regex: does not compile: too complex",
        "applied from Git       revision 1 by gitops: from Git commit 4f53ed1",
        'a grpcurl write        Message: policy "team-b" is managed from Git (file team-b.yaml)',
        "breakGlass write       revision 2: break-glass: INC-7 route needed now",
        "GetSyncStatus          commit 4f53ed1, drift: team-b",
        "Demo complete.",
    ]:
        assert expected in out, f"missing {expected!r} in:\n{out}"
    # The provider key is never printed in full.
    assert "sk-demo-provider-key-held-by-the-sidecar" not in out
    assert Path(BIN_DIR).exists()
