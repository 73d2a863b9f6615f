"""OpenTelemetry traces and security events (issue: observability), checked with an
independent OTLP receiver (tests/e2e/otlp.py: the official opentelemetry-proto modules
and grpcio, none of Vigie's exporter code): GenAI span attributes, attempt spans and
W3C trace context, the documented security events, no sensitive value anywhere,
a collector that is down or slow, metrics names."""

import secrets
import statistics
import time

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import simple_policy
from harness import free_port, wait_until
from otlp import OtlpReceiver

NIR, IBAN, EMAIL = "1 85 05 78 006 084 91", "FR76 3000 6000 0112 3456 7890 189", "a.martin@exemple.fr"
USER = "ana.dupont@corp.example"
CANARY = "zebra-canary-5531"  # a prompt word that must never leave as telemetry
FAST = {"OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_BLRP_SCHEDULE_DELAY": "50"}


def otel_env(r: OtlpReceiver, **extra) -> dict:
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": r.endpoint, **FAST, **extra}
    if r.protocol == "http":
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
    return env


def session_policy(mock, **extra):
    p = simple_policy(mock)
    p["dlp"] = {"rules": [
        {"detector": "IBAN", "action": "DLP_ACTION_REDACT"},
        {"detector": "FR_NIR", "action": "DLP_ACTION_BLOCK", "direction": "DLP_DIRECTION_REQUEST"},
        {"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_ALERT"},
    ]}
    p["budgets"] = {"budgets": [{"name": "rpm-per-user", "unit": "BUDGET_UNIT_REQUESTS", "limit": 2,
                                 "window": "BUDGET_WINDOW_HOUR", "per": ["BUDGET_KEY_USER"]}]}
    return p | extra


def client(s, **headers):
    return openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0,
                         default_headers={"x-vigie-user": USER, **headers})


def traceparent():
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-01"


def request_spans(r):
    return [s for s in r.spans() if s["name"].startswith(("chat", "text_completion", "embeddings"))]


def events(r, name):
    return [lg for lg in r.logs() if lg["event_name"] == name]


def policy_version(s) -> str:
    for fam in text_string_to_metric_families(s.metrics()):
        if fam.name == "vigie_sidecar_policy_info":
            return next(x.labels["version"] for x in fam.samples if x.value == 1)
    raise AssertionError("no policy_info")


def test_scripted_session_spans_and_security_events(mocks, sidecars):
    m = mocks("gpu", echo=True, tokens_per_sec=2000)
    with OtlpReceiver("grpc") as r:
        exported = []  # every export body, kept across the clears below for the leak check

        def clear():
            exported.extend(r.raw())
            r.clear()

        s = sidecars(session_policy(m), env=otel_env(r), extra_args=["--namespace", "team-a", "--workload", "chatbot"])
        version = policy_version(s)
        applied = r.wait_for(lambda r: events(r, "vigie.policy.applied"), what="policy applied")
        assert applied[0]["attributes"]["vigie.policy.version"] == version
        assert applied[0]["resource"]["service.name"] == "vigie-sidecar"

        # 1. A chat continuing the app's trace.
        trace_id, parent_id, tp = traceparent()
        c = client(s, traceparent=tp)
        answer = c.chat.completions.create(model="gpt-4o-mini", temperature=0.3, max_tokens=40,
                                           messages=[{"role": "user", "content": f"Résume {CANARY}."}])
        seen = m.stats()["last_request"]["traceparent"]
        [span] = r.wait_for(lambda r: [x for x in request_spans(r) if x["trace_id"] == trace_id], what="chat span")
        a = span["attributes"]
        assert span["name"] == "chat gpt-4o-mini" and span["kind"] == "CLIENT"
        assert span["parent_span_id"] == parent_id
        host, port = m.url.split("//")[1].split(":")
        assert a["gen_ai.operation.name"] == "chat"
        assert a["gen_ai.provider.name"] == "vllm"
        assert a["gen_ai.request.model"] == "gpt-4o-mini"
        assert a["gen_ai.response.model"] == answer.model
        assert a["gen_ai.response.id"] == answer.id
        assert a["gen_ai.response.finish_reasons"] == [answer.choices[0].finish_reason]
        assert a["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
        assert a["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
        assert a["gen_ai.request.temperature"] == 0.3 and a["gen_ai.request.max_tokens"] == 40
        assert (a["server.address"], a["server.port"]) == (host, int(port))
        assert a["vigie.tenant"] == "team-a" and a["vigie.workload"] == "chatbot"
        assert a["vigie.pool"] == "gpu-a" and a["vigie.endpoint"].startswith(m.url)
        assert a["vigie.policy.version"] == version
        assert a["vigie.retries"] == 0 and a["vigie.budget.decision"] == "admitted"
        assert len(a["vigie.user"]) == 32 and USER not in a["vigie.user"]
        assert a["http.response.status_code"] == 200 and "error.type" not in a
        assert span["status"]["code"] == "UNSET"
        # The attempt is a child span, and the upstream's parent.
        [attempt] = [x for x in r.spans() if x["parent_span_id"] == span["span_id"]]
        assert attempt["name"] == "attempt gpu-a" and attempt["kind"] == "CLIENT"
        assert attempt["attributes"]["vigie.attempt"] == 1
        assert attempt["attributes"]["http.response.status_code"] == 200
        assert seen == f"00-{trace_id}-{attempt['span_id']}-01"

        # 2. A stream with an IBAN: redacted, a finding, time to first chunk.
        clear()
        chunks = list(client(s).chat.completions.create(
            model="mistral-7b", stream=True, messages=[{"role": "user", "content": f"IBAN {IBAN} {CANARY}"}]))
        assert IBAN not in "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        [span] = r.wait_for(lambda r: request_spans(r), what="stream span")
        assert span["parent_span_id"] == "", "no traceparent from the app: a new trace"
        assert span["attributes"]["vigie.dlp.findings"] == ["request:IBAN:redact=1"]
        assert span["attributes"]["vigie.sensitivity"] == "personal"
        assert span["attributes"]["gen_ai.usage.output_tokens"] > 0
        [first] = [e for e in span["events"] if e["name"] == "vigie.first_chunk"]
        assert span["start_ns"] < first["time_ns"] < span["end_ns"]
        [finding] = r.wait_for(lambda r: events(r, "vigie.dlp.finding"), what="DLP finding")
        fa = finding["attributes"]
        assert (fa["vigie.dlp.detector"], fa["vigie.dlp.action"], fa["vigie.dlp.direction"], fa["vigie.dlp.count"]) \
            == ("IBAN", "redact", "request", 1)
        assert fa["event.name"] == "vigie.dlp.finding" and fa["vigie.event.category"] == "dlp"
        assert fa["vigie.schema.version"] == 1
        assert fa["k8s.namespace.name"] == "team-a" and fa["vigie.policy.version"] == version
        assert (finding["trace_id"], finding["span_id"]) == (span["trace_id"], span["span_id"])
        assert finding["severity_text"] == "INFO"

        # 3. A NIR: blocked before the model.
        clear()
        with pytest.raises(openai.BadRequestError):
            client(s).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": f"NIR {NIR}"}])
        [blocked] = r.wait_for(lambda r: events(r, "vigie.request.blocked"), what="request blocked")
        assert blocked["attributes"]["vigie.block.reason"] == "dlp_request"
        assert blocked["attributes"]["http.response.status_code"] == 400
        assert blocked["severity_text"] == "WARN"
        [finding] = r.wait_for(lambda r: events(r, "vigie.dlp.finding"), what="block finding")
        assert finding["attributes"]["vigie.dlp.action"] == "block"
        [span] = r.wait_for(lambda r: request_spans(r), what="blocked span")
        assert span["attributes"]["error.type"] == "400" and span["status"]["code"] == "ERROR"

        # 4. The user's third admitted request of the hour: refused by the budget.
        clear()
        with pytest.raises(openai.RateLimitError):
            client(s).chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "hello"}])
        [over] = r.wait_for(lambda r: events(r, "vigie.budget.exceeded"), what="budget exceeded")
        assert over["attributes"]["vigie.budget.name"] == "rpm-per-user"
        assert over["attributes"]["vigie.budget.decision"] == "rejected"
        [span] = r.wait_for(lambda r: request_spans(r), what="refused span")
        assert span["attributes"]["vigie.budget.decision"] == "rejected"
        assert span["attributes"]["error.type"] == "429"
        assert (over["trace_id"], over["span_id"]) == (span["trace_id"], span["span_id"])

        # 5. Policy changes: applied, then a broken one rejected.
        clear()
        s.write_policy(session_policy(m, name="e2e-v2"))
        wait_until(lambda: policy_version(s) != version, what="policy reload")
        [applied] = r.wait_for(lambda r: events(r, "vigie.policy.applied"), what="new policy applied")
        assert applied["attributes"]["vigie.policy.name"] == "e2e-v2"
        assert applied["attributes"]["vigie.policy.source"] == "file"
        s.write_policy({"name": "e2e-v3", "pools": []})
        [rejected] = r.wait_for(lambda r: events(r, "vigie.policy.rejected"), what="policy rejected")
        assert rejected["attributes"]["vigie.policy.fields"] == "pools"

        # Leak check: no sensitive value, prompt word or user name in anything exported,
        # logged or scraped.
        clear()
        everything = b"".join(exported)
        assert len(exported) >= 10, "the leak check reads what was exported all along"
        exposed = {"OTLP": everything.decode("latin-1"), "log": s.process.log(), "metrics": s.metrics()}
        for value in (NIR, IBAN, EMAIL, USER, CANARY, "FR7630006000011234567890189", "185057800608491"):
            for where, text in exposed.items():
                assert value not in text, f"{value!r} found in {where}"


def test_otlp_http_parent_based_sampling_and_policy_endpoint(mocks, sidecars):
    m = mocks("gpu")
    with OtlpReceiver("http") as env_r, OtlpReceiver("grpc") as policy_r:
        p = simple_policy(m) | {"telemetry": {"traceSampleRatio": 0, "userAttribute": "omitted"}}
        s = sidecars(p, env=otel_env(env_r))
        c = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0,
                          default_headers={"x-vigie-user": USER})
        env_r.wait_for(lambda r: events(r, "vigie.policy.applied"), what="policy event over OTLP/HTTP")
        c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "a"}])
        # A caller that did not sample: not recorded, but the context still propagates.
        unsampled = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-00"
        c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "c"}],
                                  extra_headers={"traceparent": unsampled})
        sent = m.stats()["last_request"]["traceparent"]
        assert sent.startswith(unsampled[:36]) and sent.endswith("-00") and sent != unsampled
        # A caller that sampled its trace wins over the ratio (parent-based); sent last,
        # so once it is in, the two before it would have been too.
        trace_id, _, tp = traceparent()
        c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "b"}],
                                  extra_headers={"traceparent": tp})
        [span] = env_r.wait_for(lambda r: [x for x in request_spans(r) if x["trace_id"] == trace_id],
                                what="the sampled span")
        assert {x["trace_id"] for x in request_spans(env_r)} == {trace_id}
        assert "vigie.user" not in span["attributes"], "userAttribute omitted"

        # The policy points export elsewhere (gRPC): everything follows at once.
        s.write_policy(p | {"telemetry": {"otlpEndpoint": policy_r.endpoint, "otlpProtocol": "grpc",
                                          "traceSampleRatio": 1, "userAttribute": "plain"}})
        policy_r.wait_for(lambda r: events(r, "vigie.policy.applied"), what="events at the policy's collector")
        env_r.clear()
        c.chat.completions.create(model="mistral-7b", messages=[{"role": "user", "content": "d"}])
        [moved] = policy_r.wait_for(lambda r: request_spans(r), what="spans at the policy's collector")
        assert moved["attributes"]["vigie.user"] == USER, "userAttribute plain"
        time.sleep(0.3)
        assert env_r.requests() == 0, "nothing goes to the old collector any more"


def test_collector_credentials_never_follow_a_policy_endpoint(mocks, sidecars):
    m = mocks("gpu")
    with OtlpReceiver("grpc") as soc, OtlpReceiver("grpc") as other:
        env = otel_env(soc, OTEL_EXPORTER_OTLP_HEADERS="x-soc-key=soc-collector-secret")
        p = simple_policy(m) | {"telemetry": {"otlpEndpoint": other.endpoint}}
        s = sidecars(p, env=env)
        openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x", max_retries=0).chat.completions.create(
            model="mistral-7b", messages=[{"role": "user", "content": "a"}])
        soc.wait_for(lambda r: request_spans(r), what="spans at the environment's collector")
        time.sleep(0.3)
        assert other.requests() == 0
        assert "otlpEndpoint is not used" in s.process.log()


def chat_latency(h: httpx.Client, i: int) -> float:
    t = time.perf_counter()
    resp = h.post("/v1/chat/completions", json={"model": "mistral-7b", "max_tokens": 2,
                                                "messages": [{"role": "user", "content": f"q{i}"}]})
    elapsed = time.perf_counter() - t
    assert resp.status_code == 200
    return elapsed


def latencies(s, n: int) -> list[float]:
    with httpx.Client(base_url=s.base_url, timeout=10) as h:
        return [chat_latency(h, i) for i in range(n)]


def paired_medians(off, on, n: int) -> tuple[float, float]:
    """Requests alternate between the two sidecars, so that load on the machine
    affects both alike; medians of each."""
    with httpx.Client(base_url=off.base_url, timeout=10) as a, httpx.Client(base_url=on.base_url, timeout=10) as b:
        pairs = [(chat_latency(a, i), chat_latency(b, i)) for i in range(n)]
    return statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)


def dropped(s, signal: str, reason: str) -> float:
    for fam in text_string_to_metric_families(s.metrics()):
        if fam.name == "vigie_telemetry_dropped":
            return sum(x.value for x in fam.samples
                       if x.labels.get("signal") == signal and x.labels.get("reason") == reason)
    return 0.0


def test_collector_down_then_slow_does_not_slow_requests(mocks, sidecars):
    m = mocks("gpu", tokens_per_sec=5000)
    r = OtlpReceiver("grpc")  # not started: the collector is down
    small = {"OTEL_BSP_MAX_QUEUE_SIZE": "32", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
             "OTEL_EXPORTER_OTLP_TIMEOUT": "3000"}
    off = sidecars(simple_policy(m))
    on = sidecars(simple_policy(m), env=otel_env(r, **small))
    paired_medians(off, on, 20)  # warm both
    base, down = paired_medians(off, on, 150)
    wait_until(lambda: dropped(on, "traces", "export_failed") > 0, what="drops counted while down")
    try:
        r.start()
        r.set_delay(2.0)  # slow: each export holds the export thread for 2 s
        base_slow, slow = paired_medians(off, on, 150)
        wait_until(lambda: dropped(on, "traces", "queue_full") > 0, what="queue-full drops while slow")
        print(f"median request latency: collector down {down * 1e3:.2f} ms (telemetry off {base * 1e3:.2f} ms), "
              f"slow {slow * 1e3:.2f} ms (off {base_slow * 1e3:.2f} ms)")
        # Unaffected: within noise of the sidecar without telemetry, measured alongside
        # (a blocked exporter would add seconds).
        assert down < base * 1.5 + 0.003, (base, down)
        assert slow < base_slow * 1.5 + 0.003, (base_slow, slow)
        # Recovery: the collector answers again, spans arrive.
        r.set_delay(0)
        time.sleep(2.5)  # the export in progress ends
        r.clear()
        latencies(on, 5)
        r.wait_for(lambda r: len(request_spans(r)) >= 5, timeout=15, what="spans after recovery")
    finally:
        r.stop()


def test_retried_attempts_and_a_client_abort_on_spans(mocks, sidecars):
    a, b = mocks("gpu-a"), mocks("gpu-b")
    slow = mocks("gpu-slow", models=("slow-7b",), tokens_per_sec=5)
    for m in (a, b):
        m.set_behaviour(fail={"kind": "status", "code": 503})
    policy = {"name": "e2e", "pools": [
        {"name": "gpu", "kind": "POOL_KIND_VLLM", "endpoints": [{"url": a.url}, {"url": b.url}],
         "models": [{"name": "mistral-7b"}]},
        {"name": "slow", "kind": "POOL_KIND_VLLM", "endpoints": [{"url": slow.url}], "models": [{"name": "slow-7b"}]}]}
    with OtlpReceiver("grpc") as r:
        s = sidecars(policy, env=otel_env(r))
        resp = httpx.post(f"{s.base_url}/v1/chat/completions", timeout=10,
                          json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]})
        assert resp.status_code == 503
        [span] = r.wait_for(lambda r: request_spans(r), what="the retried request's span")
        assert span["attributes"]["vigie.retries"] == 1
        assert span["attributes"]["error.type"] == "503" and span["status"]["code"] == "ERROR"
        attempts = r.wait_for(lambda r: [x for x in r.spans() if x["parent_span_id"] == span["span_id"]]
                              if len([x for x in r.spans() if x["parent_span_id"] == span["span_id"]]) == 2 else None,
                              what="two attempt spans")
        assert sorted(x["attributes"]["vigie.attempt"] for x in attempts) == [1, 2]
        assert {x["attributes"]["error.type"] for x in attempts} == {"503"}
        assert {x["attributes"]["server.port"] for x in attempts} == {a.port, b.port}
        for x in attempts:
            assert span["start_ns"] <= x["start_ns"] <= x["end_ns"] <= span["end_ns"]

        # The app leaves in the middle of a slow stream.
        r.clear()
        with httpx.stream("POST", f"{s.base_url}/v1/chat/completions", timeout=10,
                          json={"model": "slow-7b", "stream": True, "max_tokens": 50,
                                "messages": [{"role": "user", "content": "hi"}]}) as st:
            next(st.iter_bytes())
        [aborted] = r.wait_for(lambda r: request_spans(r), timeout=15, what="the aborted request's span")
        assert aborted["attributes"]["error.type"] == "client_aborted"
        assert aborted["attributes"]["http.response.status_code"] == 499
        assert any(e["name"] == "vigie.first_chunk" for e in aborted["events"])


def test_without_telemetry_the_apps_trace_context_goes_upstream_untouched(mocks, sidecars):
    m = mocks("gpu")
    s = sidecars(simple_policy(m))
    _, _, tp = traceparent()
    httpx.post(f"{s.base_url}/v1/chat/completions", timeout=10, headers={"traceparent": tp, "tracestate": "app=1"},
               json={"model": "mistral-7b", "messages": [{"role": "user", "content": "hi"}]}).raise_for_status()
    assert m.stats()["last_request"]["traceparent"] == tp


def test_control_plane_admin_actions_and_refused_calls(control_planes):
    with OtlpReceiver("grpc") as r:
        metrics_port = free_port()
        cp = control_planes(env=otel_env(r), extra_args=["--metrics-listen", f"127.0.0.1:{metrics_port}"])
        admin, auditor = cp.token("alice", "admin"), cp.token("audrey", "auditor")
        cp.call("PolicyService/ApplyPolicy", {"policy": {"name": "team-a", "pools": [
            {"name": "gpu", "kind": "POOL_KIND_VLLM", "endpoints": [{"url": "http://10.0.0.1:8000"}],
             "models": [{"name": "m"}]}]}}, token=admin)
        [done] = r.wait_for(lambda r: events(r, "vigie.admin.action"), what="admin action")
        a = done["attributes"]
        assert (a["vigie.admin.principal"], a["vigie.admin.role"], a["vigie.policy.name"]) == ("alice", "admin", "team-a")
        assert a["vigie.event.outcome"] == "success" and a["vigie.policy.revision"] == 1
        assert done["resource"]["service.name"] == "vigie-control-plane"
        with pytest.raises(Exception):
            cp.call("PolicyService/ApplyPolicy", {"policy": {"name": "bad", "pools": [{"name": "gpu"}]}}, token=admin)
        [rej] = r.wait_for(lambda r: events(r, "vigie.policy.rejected"), what="policy rejected")
        assert "pools[0]" in rej["attributes"]["vigie.policy.fields"]
        with pytest.raises(Exception):
            cp.call("PolicyService/DeletePolicy", {"name": "team-a"}, token=auditor)
        with pytest.raises(Exception):
            cp.call("PolicyService/ListPolicies", {}, token="vigie_not-a-token")
        failures = r.wait_for(lambda r: [e for e in events(r, "vigie.admin.action")
                                         if e["attributes"]["vigie.event.outcome"] == "failure"] if len(
            [e for e in events(r, "vigie.admin.action") if e["attributes"]["vigie.event.outcome"] == "failure"]) >= 2
            else None, what="refused calls")
        by_reason = {e["attributes"]["vigie.admin.denied_reason"]: e["attributes"] for e in failures}
        assert by_reason["role"]["vigie.admin.principal"] == "audrey"
        assert by_reason["role"]["vigie.admin.method"] == "vigie.v1.PolicyService/DeletePolicy"
        assert by_reason["unauthenticated"]["vigie.admin.method"] == "vigie.v1.PolicyService/ListPolicies"
        assert "vigie.admin.principal" not in by_reason["unauthenticated"]
        # Tokens never leave in telemetry.
        assert admin.encode() not in b"".join(r.raw()) and b"vigie_not-a-token" not in b"".join(r.raw())
        text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
        names = {f.name for f in text_string_to_metric_families(text)}
        assert {"vigie_telemetry_exported", "vigie_telemetry_dropped", "vigie_telemetry_queue_length"} <= names


def test_sidecar_metrics_names_and_labels(mocks, sidecars):
    m = mocks("gpu")
    with OtlpReceiver("grpc") as r:
        s = sidecars(simple_policy(m), env=otel_env(r))
        latencies(s, 3)
        r.wait_for(lambda r: len(request_spans(r)) == 3, what="three spans")
        # Three request spans and their three attempt spans.
        wait_until(lambda: 'vigie_telemetry_exported_total{signal="traces"} 6' in s.metrics(), what="export counted")
    fams = {f.name: f for f in text_string_to_metric_families(s.metrics())}
    expected = {
        "gen_ai_client_token_usage": {"gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model",
                                      "gen_ai_response_model", "server_address", "gen_ai_token_type"},
        "gen_ai_client_operation_duration_seconds": {"gen_ai_operation_name", "gen_ai_provider_name",
                                                     "gen_ai_request_model", "gen_ai_response_model",
                                                     "server_address", "error_type"},
        "vigie_sidecar_time_to_first_chunk_seconds": {"gen_ai_operation_name", "gen_ai_provider_name",
                                                      "gen_ai_request_model"},
        "vigie_sidecar_requests": {"operation", "status"},
        "vigie_sidecar_route_picks": {"pool", "reason"},
        "vigie_sidecar_upstream_attempts": {"pool", "outcome"},
        "vigie_sidecar_policy_info": {"name", "version"},
        "vigie_telemetry_exported": {"signal"},
        "vigie_telemetry_queue_length": {"signal"},
    }
    for name, labels in expected.items():
        assert name in fams, name
        got = {k for x in fams[name].samples for k in x.labels} - {"le"}
        assert labels <= got, (name, got)
    assert fams["vigie_telemetry_exported"].type == "counter"


@pytest.mark.parametrize("telemetry, path, reason", [
    ({"otlpEndpoint": "collector:4317"}, "telemetry.otlpEndpoint", "http:// or https://"),
    ({"otlpEndpoint": "http://user:secret@collector:4317"}, "telemetry.otlpEndpoint", "must not carry credentials"),
    ({"otlpEndpoint": "https://c:4318", "otlpProtocol": "http/protobuf"}, "telemetry.otlpEndpoint", "grpc only"),
    ({"otlpProtocol": "http/json"}, "telemetry.otlpProtocol", "grpc or http/protobuf"),
    ({"otlpProtocol": "grpc"}, "telemetry.otlpProtocol", "only with otlpEndpoint"),
    ({"traceSampleRatio": 1.5}, "telemetry.traceSampleRatio", "between 0 and 1"),
    ({"userAttribute": "email"}, "telemetry.userAttribute", "hashed, plain or omitted"),
])
def test_bad_telemetry_sections_are_refused_with_field_paths(control_planes, telemetry, path, reason):
    from harness import GrpcError
    cp = control_planes()
    with pytest.raises(GrpcError) as e:
        cp.call("PolicyService/ApplyPolicy", {"policy": {"name": "bad", "telemetry": telemetry}},
                token=cp.token("alice", "admin"))
    assert e.value.code == "InvalidArgument"
    assert path in e.value.text and reason in e.value.text, e.value.text
    assert "secret" not in e.value.text


def test_bad_otel_environment_stops_the_sidecar_with_the_variable_name(mocks, tmp_path):
    import json
    import subprocess
    from harness import binary
    policy = tmp_path / "p.json"
    policy.write_text(json.dumps(simple_policy(mocks("gpu"))))
    for env, var in [({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4317"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
                     ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG"),
                     ({"OTEL_EXPORTER_OTLP_COMPRESSION": "gzip"}, "OTEL_EXPORTER_OTLP_COMPRESSION")]:
        out = subprocess.run([binary("vigie-sidecar"), "--policy-file", policy, "--listen", f"127.0.0.1:{free_port()}",
                              "--admin-listen", f"127.0.0.1:{free_port()}"], env={"PATH": "/usr/bin:/bin", **env},
                             capture_output=True, text=True, timeout=20)
        assert out.returncode != 0 and var in out.stderr, out.stderr
