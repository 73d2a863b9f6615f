"""Vigie demo: a control plane (embedded store), mock GPU pools, a sidecar, a sample
policy pushed with grpcurl, and an unchanged app.

Run by `cargo xtask demo`. The "app" below is plain OpenAI / Anthropic SDK code; only
its base URL points at the sidecar, as the injection webhook does in a cluster.
"""

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))

import anthropic  # noqa: E402
import httpx  # noqa: E402
import openai  # noqa: E402

from egress import EgressAgent, Node  # noqa: E402
from harness import ControlPlane, MockPool, Process, Sidecar, pool, wait_until  # noqa: E402
from otlp import OtlpReceiver  # noqa: E402

BOLD, DIM, RESET = "\033[1m", "\033[2m", "\033[0m"


def title(text):
    print(f"\n{BOLD}== {text}{RESET}")


def show(label, value):
    print(f"   {label:<22} {value}")


def served_by(response) -> str:
    """The mock instance that answered (its name is in the response id)."""
    return "-".join(response.id.split("-")[2:-1])


class Cleanup:
    def __init__(self, fn):
        self.stop = fn


SDK_CALL = (
    "import sys, openai\n"
    "c = openai.OpenAI(base_url=sys.argv[1], api_key='placeholder', max_retries=0)\n"
    "r = c.chat.completions.create(model='gpt-4o-mini', max_tokens=5, messages=[{'role': 'user', 'content': 'hi'}])\n"
    "print(r.model)\n"
)


def egress_demo(cp, admin, sidecar, gpu1, cloud, started, otel):
    """A pod of namespace team-a, enrolled: its app runs in its own cgroup, as on a node."""
    node = Node("node-1")
    started.append(Cleanup(node.cleanup))
    pod = node.add_pod("team-a", "chatbot-0", containers=("app",))
    app = pod["containers"]["app"]
    # The pod's long-lived process (what the pause container is on a node): the agent
    # finds the pod's network namespace through it.
    started.append(Process(["sleep", "600"], cgroup=app))
    agent = EgressAgent(node, cp, cp.token("node-1-agent", "agent"), dns=["127.0.0.53"], sidecar_port=sidecar.port,
                        env=otel)
    started.append(agent)
    show("vigie-egress", "cgroup programs attached (connect4/6, sendmsg4/6, cgroup_skb, setsockopt), tc on the "
                         "pod's devices; team-a/chatbot-0 enrolled")
    out = subprocess.run(["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(app), sys.executable, "-c",
                          SDK_CALL, sidecar.base_url + "/v1"], capture_output=True, text=True, timeout=60)
    show("app → its sidecar", f"200, served model {out.stdout.strip()}" if out.returncode == 0 else out.stderr[-200:])
    for label, port in [("app → gpu-1 directly", gpu1.port), ("app → the provider", cloud.port)]:
        r = node.probe(app, "tcp", "127.0.0.1", port)
        show(label, "connect() refused: EPERM" if r.get("errno") == "EPERM" else r)
    # Below the IP stack: a whole frame from a packet socket (the app is root here, with
    # CAP_NET_RAW; the webhook drops it in a real pod) and a source-routed connect.
    wait_until(lambda: "vigie_egress_guarded_devices 0" not in agent.metrics(), what="tc backstop attached")
    frame = node.probe(app, "frame", "127.0.0.1", 9, "lo", "00:00:00:00:00:00", "demo", "127.0.0.1")
    raw = wait_until(lambda: [e for e in agent.events() if e["hook"] == "tc_egress"], what="frame dropped")[0]
    show("app → raw frame", f"{'sent' if frame.get('ok') else frame.get('errno')}, dropped in the kernel: "
                            f"{raw['hook']} {raw['reason']} ({raw['protocol']} socket)")
    lsrr = node.probe(app, "lsrr", "127.0.0.1", sidecar.port, "127.0.0.2")
    routed = wait_until(lambda: [e for e in agent.events() if e.get("reason") == "ip_options"], what="options")[0]
    show("app → source-routed", f"{'refused' if not lsrr.get('ok') else lsrr}: {routed['hook']} {routed['reason']}")
    ev = wait_until(lambda: [e for e in agent.events() if e["port"] == gpu1.port], what="denial event")[0]
    show("agent's security event", f"egress.denied {ev['namespace']}/{ev['pod']} container={ev['container']} → "
                                   f"{ev['destination']}:{ev['port']}/{ev['protocol']} ({ev['hook']}, {ev['command']})")
    rows = wait_until(lambda: cp.call("EgressService/ListDenials", {"namespace": "team-a"}, token=admin).get("denials"),
                      timeout=15, what="denials at the control plane")
    for r in sorted(rows, key=lambda r: r.get("port", 0)):
        show("ListDenials", f"node {r['node']}: {r['namespace']}/{r['pod']} → {r['destination']}:{r.get('port', 0)} "
                            f"×{r['count']} ({r.get('hook')}, {r.get('reason')})")


def main():
    started = []
    try:
        title("Starting two mock vLLM endpoints (on-prem pool) and one mock external provider")
        gpu1 = MockPool("gpu-1", ["mistral-small"], tokens_per_sec=40, ttft_ms=80)
        gpu2 = MockPool("gpu-2", ["mistral-small"], tokens_per_sec=40, ttft_ms=80)
        cloud = MockPool("cloud", ["gpt-4o", "claude-sonnet"], tokens_per_sec=80, ttft_ms=150)
        started += [gpu1, gpu2, cloud]
        for m in (gpu1, gpu2, cloud):
            show(m.name, m.url)

        policy = {
            "name": "demo",
            "pools": [
                pool("onprem-gpu", [gpu1.url, gpu2.url], [{"name": "mistral-small", "aliases": ["gpt-4o-mini"]}]),
                pool("external", [cloud.url], [{"name": "gpt-4o"}, {"name": "claude-sonnet"}], kind="POOL_KIND_OPENAI",
                     credentials={"env": "DEMO_PROVIDER_KEY"}),
            ],
            "routes": [{"model": "gpt-4o-mini", "pools": ["onprem-gpu"]}],
        }
        title("Starting an OpenTelemetry collector (stand-in for the SOC's: OTLP over gRPC)")
        collector = OtlpReceiver("grpc").start()
        started.append(collector)
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100",
                "OTEL_BLRP_SCHEDULE_DELAY": "100"}
        show("OTLP endpoint", collector.endpoint + " (every Vigie binary exports traces and security events there)")

        title("Starting the control plane (embedded SQLite store) and creating API tokens")
        cp = ControlPlane(replica="demo", env=otel)
        started.append(cp)
        show("gRPC address", cp.address + " (reflection on: grpcurl needs no .proto files)")
        admin = cp.token("secops-alice", "admin")
        workload = cp.token("team-a-chatbot", "workload", namespace="team-a", service_account="chatbot")
        show("tokens", "secops-alice (admin), team-a-chatbot (workload, team-a/chatbot); stored hashed")

        title("Security team: validate a broken policy, refuse hostile ones, apply the sample policy with grpcurl")
        broken = {**policy, "routes": [{"model": "gpt-4o-mini", "pools": ["gpu-b"]}]}
        try:
            cp.call("PolicyService/ValidatePolicy", {"policy": broken}, token=admin)
        except Exception as e:  # GrpcError: the field path is the point of the demo
            show("ValidatePolicy", next(line.strip() for line in e.text.splitlines() if "routes[0]" in line))
        # A read-only auditor cannot exhaust the control plane: sizes and pattern
        # complexity are judged before any work.
        auditor = cp.token("audit-bob", "auditor")
        for label, hostile, field in [
            ("350,000 empty pools", {"name": "x", "pools": [{}] * 350_000}, "Message:"),
            ("300 pools", {"name": "x", "pools": [{"name": f"p{i}"} for i in range(300)]}, "pools:"),
            ("explosive regex", {"name": "x", "dlp": {"customDetectors": [
                {"name": "SLOW", "regex": "((a|b){200}){200}"}]}}, "dlp.customDetectors[0].regex"),
        ]:
            try:
                cp.call("PolicyService/ValidatePolicy", {"policy": hostile}, token=auditor)
            except Exception as e:  # GrpcError
                show(label, next(line.strip() for line in e.text.splitlines() if line.strip().startswith(field)))
        policy["scope"] = {"namespace": "team-a"}
        r = cp.call("PolicyService/ApplyPolicy", {"policy": policy, "comment": "CHG-001 initial rollout"}, token=admin)
        r1 = r["revision"]["revision"]
        show("ApplyPolicy", f"revision {r1}: {r['revision']['summary']}")

        title("Starting the sidecar: it watches the control plane as team-a/chatbot-0")
        sidecar = Sidecar(control_plane=cp, token=workload,
                          identity={"namespace": "team-a", "pod": "chatbot-0", "service_account": "chatbot"},
                          env={"VIGIE_CREDENTIAL_DEMO_PROVIDER_KEY": "sk-demo-provider-key-held-by-the-sidecar", **otel})
        started.append(sidecar)
        show("app-facing URL", sidecar.base_url + "/v1")
        show("admin URL", sidecar.admin_url + " (/healthz /readyz /metrics)")
        show("policy version", sidecar.policy_version())

        app = openai.OpenAI(base_url=sidecar.base_url + "/v1", api_key="placeholder-the-app-has-no-real-key", max_retries=0)

        title("GET /v1/models (from the policy)")
        show("models", ", ".join(m.id for m in app.models.list()))

        title("Chat, not streamed: the app asks for gpt-4o-mini; the policy routes it on-prem")
        r = app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Présente Vigie en une phrase."}], max_tokens=12)
        show("answer", r.choices[0].message.content)
        show("served model", r.model)
        show("usage", f"{r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens")

        title("Chat, streamed: tokens are relayed as they are generated")
        t0 = time.monotonic()
        first = None
        print("   ", end="")
        for ch in app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Stream please"}], max_tokens=15, stream=True):
            if ch.choices and ch.choices[0].delta.content:
                first = first or time.monotonic() - t0
                print(ch.choices[0].delta.content, end="", flush=True)
        print()
        show("time to first token", f"{first * 1000:.0f} ms (mock prefill is 80 ms)")
        show("total", f"{(time.monotonic() - t0) * 1000:.0f} ms for 15 tokens at 40 tokens/s")

        title("Anthropic Messages API through the same sidecar")
        a = anthropic.Anthropic(base_url=sidecar.base_url, api_key="placeholder", max_retries=0)
        m = a.messages.create(model="claude-sonnet", max_tokens=8, messages=[{"role": "user", "content": "Bonjour"}])
        show("answer", m.content[0].text)
        show("credential upstream saw", cloud.stats()["last_request"]["authorization"][:16] + "… (the sidecar's, not the app's)")

        title("Balancing across the two on-prem endpoints: prefix affinity, then load")
        before = (gpu1.stats()["requests_total"], gpu2.stats()["requests_total"])
        shared = {"role": "system", "content": "Tu es l'assistant du bureau des titres."}
        for i in range(10):
            app.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                        messages=[shared, {"role": "user", "content": f"Question {i}"}])
        mid = (gpu1.stats()["requests_total"], gpu2.stats()["requests_total"])
        show("same system prompt", f"10 requests → gpu-1 +{mid[0] - before[0]}, gpu-2 +{mid[1] - before[1]} (kept where its KV cache is)")
        for i in range(20):
            app.chat.completions.create(model="gpt-4o-mini", max_tokens=2,
                                        messages=[{"role": "system", "content": f"Assistant n°{i}"}, {"role": "user", "content": "x"}])
        end = (gpu1.stats()["requests_total"], gpu2.stats()["requests_total"])
        show("20 other prompts", f"gpu-1 +{end[0] - mid[0]}, gpu-2 +{end[1] - mid[1]}")

        title("DLP: a cluster-wide baseline policy, pushed like any other")
        baseline = {"name": "dlp-baseline", "dlp": {"rules": [
            {"detector": "FR_NIR", "action": "DLP_ACTION_PSEUDONYMIZE", "direction": "DLP_DIRECTION_REQUEST"},
            *({"detector": d, "action": "DLP_ACTION_PSEUDONYMIZE", "direction": "DLP_DIRECTION_REQUEST"}
              for d in ("PERSON", "DATE_OF_BIRTH", "ADDRESS", "HEALTH", "UNION_MEMBERSHIP")),
            {"detector": "IBAN", "action": "DLP_ACTION_REDACT"},
            {"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_REDACT"},
            {"detector": "CLASSIFICATION_MARKING", "action": "DLP_ACTION_BLOCK"}]}}
        before = sidecar.policy_version()
        r = cp.call("PolicyService/ApplyPolicy", {"policy": baseline, "comment": "CHG-003 DLP baseline"}, token=admin)
        wait_until(lambda: sidecar.policy_version() != before, what="DLP policy push")
        show("ApplyPolicy", f"revision {r['revision']['revision']}: {r['revision']['summary']}")
        prompt = ("Dossier de M. Durand, né le 03/05/1985, 12 rue des Lilas, 75011 Paris, NIR 1 85 05 78 006 084 91, "
                  "IBAN FR76 3000 6000 0112 3456 7890 189, écrire à p.durand@exemple.fr")
        # The mocks repeat the prompt (echo), so the answer shows what comes back to the app.
        for m in (gpu1, gpu2):
            m.set_behaviour(**{**m.behaviour(), "echo": True})
        stream = app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prompt}],
                                             stream=True)
        answer = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
        for m in (gpu1, gpu2):
            m.set_behaviour(**{**m.behaviour(), "echo": False})
        seen = [m.stats()["last_request"] for m in (gpu1, gpu2)]
        model_saw = next(r["body"]["messages"][-1]["content"] for r in seen if r and "FR_NIR_1" in str(r["body"]))
        show("the app sent", prompt)
        show("the model received", model_saw)
        show("the app got back", answer + "   (streamed; placeholder restored)")
        # The same NIR as fr-FR software writes it (narrow no-break spaces) with a
        # zero-width space inside, and another in a tool's description: DLP reads what a
        # person reads, in every field the model reads.
        disguised = "NIR 1\u202f85\u202f05\u202f78\u202f006\u202f084\u200b\u202f91"
        tool = {"type": "function", "function": {"name": "dossier", "description": "Dossier du 2 69 05 2A 006 084 90",
                                                 "parameters": {"type": "object", "properties": {}}}}
        app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": disguised}], tools=[tool])
        body = next(r["body"] for r in (m.stats()["last_request"] for m in (gpu1, gpu2)) if r and "tools" in r["body"])
        show("disguised NIRs", "U+202F and U+200B inside one; another in a tool description")
        show("the model received", f"{body['messages'][-1]['content']} | tool: {body['tools'][0]['function']['description']}")
        # A name without civility (given-name gazetteer) and GDPR special categories
        # (a person earlier in the same sentence).
        prose = "Karim Benali, syndiqué à la CGT, est diabétique : prépare sa convocation."
        for m in (gpu1, gpu2):
            m.set_behaviour(**{**m.behaviour(), "echo": True})
        r = app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": prose}])
        for m in (gpu1, gpu2):
            m.set_behaviour(**{**m.behaviour(), "echo": False})
        saw = next(x["body"]["messages"][-1]["content"] for x in (m.stats()["last_request"] for m in (gpu1, gpu2))
                   if x and "UNION_MEMBERSHIP" in str(x["body"]))
        show("bare name, health", prose)
        show("the model received", saw)
        show("the app got back", r.choices[0].message.content)
        try:
            app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "Note DIFFUSION RESTREINTE : plan de crise"}])
        except openai.BadRequestError as e:
            show("classified note", f"{e.status_code} {e.code}: {e.body['message']}")

        title("Errors in OpenAI's format")
        try:
            app.chat.completions.create(model="llama-unknown", messages=[{"role": "user", "content": "x"}])
        except openai.NotFoundError as e:
            show("unknown model", f"{e.status_code} {e.code}: {e.body['message']}")
        r = httpx.post(sidecar.base_url + "/v1/chat/completions", content=b'{"model": "gpt-4o-mini", "messages": [')
        show("malformed JSON", f"{r.status_code} {r.json()['error']['message']}")

        title("Live policy change pushed by the control plane: gpt-4o-mini now goes to the external pool")
        v1 = sidecar.policy_version()
        policy["pools"][1]["models"][0]["aliases"] = ["gpt-4o-mini"]
        policy["routes"] = [{"model": "gpt-4o-mini", "pools": ["external", "onprem-gpu"]}]
        t0 = time.monotonic()
        r = cp.call("PolicyService/ApplyPolicy", {"policy": policy, "comment": "CHG-002 burst to cloud"}, token=admin)
        wait_until(lambda: sidecar.policy_version() != v1, interval=0.005, what="policy push")
        show("ApplyPolicy", f"revision {r['revision']['revision']}: {r['revision']['summary']}")
        show("in force after", f"{(time.monotonic() - t0) * 1000:.0f} ms (grpcurl call included)")
        r = app.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "encore"}], max_tokens=4)
        show("new policy version", sidecar.policy_version())
        show("served by", f"{served_by(r)} as {r.model} (mock instance name is in the response id)")

        title("Sensitivity routing: personal data never leaves for the external provider")
        r = app.chat.completions.create(model="gpt-4o-mini", max_tokens=4,
                                        messages=[{"role": "user", "content": "Le NIR 1 85 05 78 006 084 91 est-il valide ?"}])
        show("with a NIR", f"served by {served_by(r)} as {r.model} (DLP found personal data; the external pool is cleared for internal only)")
        try:
            app.chat.completions.create(model="claude-sonnet", messages=[{"role": "user", "content": "Synthèse du dossier"}],
                                        extra_headers={"x-vigie-sensitivity": "restricted"})
        except openai.PermissionDeniedError as e:
            show("declared restricted", f"{e.status_code} {e.code}: {e.body['message']}")

        title("Status: which sidecar runs which version (StatusService)")
        wait_until(lambda: cp.call("StatusService/ListClients", {}, token=admin)["clients"][0].get("ackedVersion")
                   == sidecar.policy_version(), what="ACK")
        for c in cp.call("StatusService/ListClients", {}, token=admin)["clients"]:
            show(c["clientId"], f"acked {c['ackedVersion']} via replica {c['replica']}")

        title("Rollback to the first revision, then the audit trail (AuditService)")
        cp.call("PolicyService/Rollback", {"name": "demo", "revision": r1, "comment": "cost review"}, token=admin)
        wait_until(lambda: sidecar.policy_version() == v1, what="rollback push")
        show("sidecar back on", v1)
        for e in reversed(cp.call("AuditService/ListAuditEvents", {"policy": "demo"}, token=admin)["events"]):
            show(e["action"], f"rev {e['revision']} by {e['actor']}: {e['summary']} [{e.get('comment', '')}]")

        title("Budgets: a per-user rate limit pushed as its own policy, enforced by the sidecar")
        limits = {"name": "budgets-baseline", "budgets": {"budgets": [
            {"name": "per-user-rpm", "per": ["BUDGET_KEY_USER"], "unit": "BUDGET_UNIT_REQUESTS", "limit": 3,
             "window": "BUDGET_WINDOW_MINUTE"},
            {"name": "team-a-daily-eur", "match": {"namespace": "team-a"}, "unit": "BUDGET_UNIT_COST", "currency": "EUR",
             "limit": 50, "window": "BUDGET_WINDOW_DAY"}]}}
        before = sidecar.policy_version()
        r = cp.call("PolicyService/ApplyPolicy", {"policy": limits, "comment": "CHG-004 fair use"}, token=admin)
        wait_until(lambda: sidecar.policy_version() != before, what="budget policy push")
        show("ApplyPolicy", f"revision {r['revision']['revision']}: {r['revision']['summary']}")
        ana = openai.OpenAI(base_url=sidecar.base_url + "/v1", api_key="placeholder", max_retries=0,
                            default_headers={"x-vigie-user": "ana"})
        # The limit is per calendar minute: start well inside one, so the status read
        # below is of the same window (near the end of a minute it would see the next).
        if time.time() % 60 > 45:
            time.sleep(60 - time.time() % 60 + 0.5)
        for i in range(3):
            ana.chat.completions.create(model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": f"q{i}"}])
        try:
            ana.chat.completions.create(model="gpt-4o-mini", max_tokens=3, messages=[{"role": "user", "content": "q3"}])
        except openai.RateLimitError as e:
            show("ana's 4th request", f"{e.status_code} {e.code}, Retry-After {e.response.headers['retry-after']} s")
        counters = cp.call("UsageService/GetBudgetStatus", {"budget": "per-user-rpm"}, token=admin)["counters"]
        for c in counters:
            show("GetBudgetStatus", f"{c['budget']} key={c['key']}: {c.get('charged', 0):g} of {c['limit']:g}")

        title("Metering: every request's record reached the control plane's ledger (UsageService)")
        def ledger(event):
            return sum(float(line.rsplit(" ", 1)[1]) for line in sidecar.metrics().splitlines()
                       if line.startswith(f'vigie_sidecar_usage_ledger_total{{event="{event}"}}'))
        wait_until(lambda: ledger("written") > 0 and ledger("shipped") + ledger("duplicate") == ledger("written"),
                   what="ledger shipped")
        show("sidecar ledger", f"{ledger('written'):.0f} records written, {ledger('shipped'):.0f} stored by the control plane")
        rows = cp.call("UsageService/QueryUsage", {"groupBy": ["USAGE_DIMENSION_SERVED_MODEL", "USAGE_DIMENSION_OUTCOME"]},
                       token=admin)["rows"]
        for row in rows:
            t = row["totals"]
            key = " / ".join(k or "-" for k in row["key"])
            show("QueryUsage", f"{key}: {t['requests']} requests, {t.get('promptTokens', 0)} prompt + "
                               f"{t.get('completionTokens', 0)} completion tokens")
        anas = cp.stream("UsageService/ExportUsage", {"filter": {"user": "ana"}}, admin)
        show("ledger users", f"ana is stored as {anas[0]['user']} (keyed pseudonym); "
                             f"a filter on user=ana finds her {len(anas)} records")
        erased = cp.call("UsageService/EraseUser", {"user": "ana", "comment": "RGPD art. 17, ticket 117"}, token=admin)
        show("EraseUser", f"{erased.get('records', 0)} records kept their figures and lost ana (audited)")

        title("Zero-trust egress (eBPF): the app cannot go around its sidecar")
        if os.geteuid() != 0:
            show("not shown", "loading eBPF programs needs root: run `sudo cargo xtask demo`")
        else:
            egress_demo(cp, admin, sidecar, gpu1, cloud, started, otel)

        title("Policies from Git: a control plane that reconciles a policy directory (as ArgoCD mounts it)")
        repo = Path(tempfile.mkdtemp(prefix="vigie-policies-"))
        team_b = {"name": "team-b", "scope": {"namespace": "team-b"},
                  "pools": [pool("onprem-gpu", [gpu1.url], [{"name": "mistral-small"}])]}
        (repo / "team-b.yaml").write_text(f"# team-b's chat policy, reviewed in a pull request\n{team_b}\n"
                                          .replace("'", '"'))
        (repo / "git-commit").write_text("4f53ed1c0ffee0000000000000000000000000aa")
        gcp = ControlPlane(replica="gitops", extra_args=["--policy-dir", str(repo), "--policy-sync-interval-s", "1"])
        started.append(gcp)
        gadmin = gcp.token("secops-alice", "admin")
        h = gcp.call("PolicyService/GetPolicy", {"name": "team-b"}, token=gadmin)
        show("applied from Git", f"revision {h['revision']} by {h['author']}: {h['comment']}")
        changed = {**team_b, "routes": [{"model": "mistral-small", "pools": ["onprem-gpu"]}]}
        try:
            gcp.call("PolicyService/ApplyPolicy", {"policy": changed}, token=gadmin)
        except Exception as e:  # GrpcError
            show("a grpcurl write", e.text.splitlines()[-1].strip().split(": change it")[0])
        r = gcp.call("PolicyService/ApplyPolicy", {"policy": changed, "breakGlass": True,
                                                   "comment": "INC-7 route needed now"}, token=gadmin)
        show("breakGlass write", f"revision {r['revision']['revision']}: {r['revision']['comment']}")
        st = gcp.call("PolicyService/GetSyncStatus", {}, token=gadmin)
        drifted = [p["name"] for p in st["policies"] if p.get("drift")]
        show("GetSyncStatus", f"commit {st['commit'][:7]}, drift: {', '.join(drifted)} (until Git changes the file)")

        title("OpenTelemetry: what the SOC's collector received")
        time.sleep(0.5)
        spans = [x for x in collector.spans() if x["name"].startswith("chat ")]
        show("request spans", f"{len(spans)} (GenAI conventions), {len(collector.spans()) - len(spans)} attempt spans")
        streamed = next(x for x in spans if x["attributes"].get("vigie.dlp.findings"))
        a = streamed["attributes"]
        show("a span", f"{streamed['name']}: provider={a['gen_ai.provider.name']} "
                       f"response.model={a.get('gen_ai.response.model')} "
                       f"tokens={a.get('gen_ai.usage.input_tokens')}+{a.get('gen_ai.usage.output_tokens')} "
                       f"pool={a.get('vigie.pool')} findings={','.join(a['vigie.dlp.findings'])}")
        counts = {}
        for lg in collector.logs():
            counts[lg["event_name"]] = counts.get(lg["event_name"], 0) + 1
        show("security events", ", ".join(f"{k} ×{v}" for k, v in sorted(counts.items())))

        title("Sidecar metrics (excerpt)")
        for line in sidecar.metrics().splitlines():
            if line.startswith(("vigie_sidecar_requests_total", "vigie_sidecar_upstream_attempts_total", "vigie_sidecar_policy_info",
                                "vigie_sidecar_dlp_findings_total", "vigie_sidecar_route_picks_total",
                                "vigie_sidecar_route_refusals_total", "vigie_sidecar_tokens_total",
                                "vigie_sidecar_budget_decisions_total")):
                print(f"   {DIM}{line}{RESET}")
        print(f"\n{BOLD}Demo complete.{RESET}")
    finally:
        for p in reversed(started):
            p.stop()


if __name__ == "__main__":
    main()
