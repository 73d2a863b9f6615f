//! The request pipeline driven in process: the real `SidecarApp` behind Pingora's
//! HTTP/1 session on a loopback port, the mock pool as a library. One test (or more) per
//! stage: its decisions and its early exits. The black-box suite (real binaries,
//! official SDKs) is `tests/e2e`.

mod support;

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};
use support::{Behaviour, Failure, SecurityLog, Sidecar, mock, pool, send, user_message};
use vigie_proto::v1::{UsageOutcome, UsageSource};

const NIR: &str = "1 85 05 78 006 084 91";

fn policy(pools: Vec<Value>) -> Value {
    json!({"name": "p", "pools": pools})
}

fn with_dlp(mut p: Value, rules: Value) -> Value {
    p["dlp"] = json!({"rules": rules});
    p
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": user_message(text)})
}

fn echo() -> Behaviour {
    Behaviour {
        echo: true,
        ..Behaviour::default()
    }
}

fn error_code(a: &support::Answer) -> String {
    a.json()["error"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

// ---- intake ----

#[tokio::test]
async fn intake_refuses_unknown_urls_methods_bodies_and_models_in_the_apis_format() {
    let log = SecurityLog::default();
    let _guard = log.install();
    let (addr, m) = mock(&["m"], Behaviour::default()).await;
    let s = Sidecar::start(&policy(vec![pool("gpu", &[addr], &["m"])])).await;

    let a = send(s.addr, "GET", "/v1/nothing", &[], Bytes::new()).await;
    assert_eq!((a.status, error_code(&a).as_str()), (404, "unknown_url"));
    let a = send(s.addr, "GET", "/v1/chat/completions", &[], Bytes::new()).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (405, "method_not_allowed")
    );
    // Anthropic's error shape for the Messages API.
    let a = send(s.addr, "PUT", "/v1/messages", &[], Bytes::new()).await;
    assert_eq!(a.json()["type"], "error", "{}", a.text());

    let a = send(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Bytes::from_static(b"{\"model\": \"m\", SECRET"),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(
        !a.text().contains("SECRET"),
        "errors never echo the body: {}",
        a.text()
    );
    // Parsers disagree on which copy of a duplicated key wins: refused, never forwarded.
    let a = send(
        s.addr,
        "POST",
        "/v1/chat/completions",
        &[],
        Bytes::from_static(
            br#"{"model":"m","messages":[{"role":"user","content":"ok","content":"1 85 05 78 006 084 91"}]}"#,
        ),
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(a.text().contains("a key appears twice"), "{}", a.text());
    assert!(!a.text().contains("85 05"));
    assert!(
        log.lines()
            .iter()
            .any(|l| l.contains("vigie.request.blocked") && l.contains("ambiguous_key")),
        "the refusal is a security event: {:?}",
        log.lines()
    );
    let a = s.chat(json!({"model": 3, "messages": []})).await;
    assert_eq!(a.status, 400);
    assert_eq!(a.json()["error"]["param"], "model");
    let a = s.chat(chat("unknown", "bonjour")).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (404, "model_not_found")
    );
    let big = "x".repeat(2 << 20);
    let a = s.chat(chat("m", &big)).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (413, "request_too_large")
    );
    let a = s
        .post(
            "/v1/chat/completions",
            &chat("m", "hi"),
            &[("via", "1.1 vigie-sidecar")],
        )
        .await;
    assert_eq!((a.status, error_code(&a).as_str()), (508, "loop_detected"));

    assert_eq!(
        m.requests(),
        0,
        "nothing refused at intake reaches the upstream"
    );
    // Every refused request but the unroutable ones is one usage record.
    let records = s.records();
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r.outcome == UsageOutcome::Refused as i32)
    );
}

#[tokio::test]
async fn no_policy_means_503_and_a_refused_record() {
    let (addr, _m) = mock(&["m"], Behaviour::default()).await;
    let s = Sidecar::start(&policy(vec![pool("gpu", &[addr], &["m"])])).await;
    s.store.clear();
    let a = s.chat(chat("m", "hi")).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (503, "policy_unavailable")
    );
    let a = send(s.addr, "GET", "/v1/models", &[], Bytes::new()).await;
    assert_eq!(a.status, 503);
    let records = s.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].status, 503);
}

#[tokio::test]
async fn models_list_the_policys_client_facing_names() {
    let (addr, _m) = mock(&["m"], Behaviour::default()).await;
    let s = Sidecar::start(&policy(vec![pool("gpu", &[addr], &["m", "n"])])).await;
    let a = send(s.addr, "GET", "/v1/models", &[], Bytes::new()).await;
    let list = a.json();
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["m", "n"]);
}

// ---- guard ----

#[tokio::test]
async fn guard_rewrites_what_the_model_reads_and_blocks_before_anything_leaves() {
    let (addr, m) = mock(&["m"], echo()).await;
    let p = with_dlp(
        policy(vec![pool("gpu", &[addr], &["m"])]),
        json!([
            {"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_REDACT"},
            {"detector": "IBAN", "action": "DLP_ACTION_BLOCK"},
        ]),
    );
    let s = Sidecar::start(&p).await;
    let a = s.chat(chat("m", "écrire à jean.dupont@example.fr")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    let seen = m.last_request().unwrap();
    assert_eq!(
        seen["body"]["messages"][0]["content"],
        "écrire à [EMAIL_ADDRESS]"
    );
    assert!(!a.text().contains("jean.dupont"));

    let before = m.requests();
    let a = s
        .chat(chat("m", "IBAN FR76 3000 6000 0112 3456 7890 189"))
        .await;
    assert_eq!((a.status, error_code(&a).as_str()), (400, "dlp_blocked"));
    assert!(!a.text().contains("3000 6000"));
    assert_eq!(
        m.requests(),
        before,
        "a blocked request never reaches the upstream"
    );
    assert_eq!(
        s.counter(
            "vigie_sidecar_dlp_findings_total",
            &[("detector", "IBAN"), ("direction", "request")]
        ),
        1.0
    );

    // An unreadable sensitivity declaration is refused, never taken as public.
    let a = s
        .post(
            "/v1/chat/completions",
            &chat("m", "hi"),
            &[("x-vigie-sensitivity", "secret-ish")],
        )
        .await;
    assert_eq!(a.status, 400);
}

// ---- route ----

#[tokio::test]
async fn route_never_sends_personal_data_to_a_pool_not_cleared_for_it() {
    let (addr, m) = mock(&["m"], echo()).await;
    let mut cloud = pool("cloud", &[addr], &["m"]);
    cloud["clearance"] = json!("SENSITIVITY_LEVEL_INTERNAL");
    let p = with_dlp(
        policy(vec![cloud]),
        json!([{"detector": "FR_NIR", "action": "DLP_ACTION_ALERT"}]),
    );
    let s = Sidecar::start(&p).await;
    let a = s.chat(chat("m", &format!("mon NIR est {NIR}"))).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (403, "no_cleared_pool")
    );
    assert_eq!(m.requests(), 0);
    let a = s.chat(chat("m", "rien de personnel")).await;
    assert_eq!(a.status, 200);
}

// ---- budget ----

#[tokio::test]
async fn budget_refuses_over_the_limit_with_retry_after() {
    let (addr, m) = mock(&["m"], Behaviour::default()).await;
    let mut p = policy(vec![pool("gpu", &[addr], &["m"])]);
    p["budgets"] = json!({"budgets": [{"name": "two-per-minute", "unit": "BUDGET_UNIT_REQUESTS",
        "limit": 2, "window": "BUDGET_WINDOW_MINUTE"}]});
    let s = Sidecar::start(&p).await;
    for _ in 0..2 {
        assert_eq!(s.chat(chat("m", "hi")).await.status, 200);
    }
    let a = s.chat(chat("m", "hi")).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (429, "budget_exceeded")
    );
    let wait: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait));
    assert_eq!(m.requests(), 2);
}

// ---- attempts ----

#[tokio::test]
async fn attempts_move_past_5xx_and_429_then_relay_the_last_error() {
    let failing = |code| Behaviour {
        fail: Some(Failure::Status {
            code,
            retry_after_s: Some(30),
        }),
        ..Behaviour::default()
    };
    let (bad, bad_mock) = mock(&["m"], failing(503)).await;
    let (busy, busy_mock) = mock(&["m"], failing(429)).await;
    let (good, good_mock) = mock(&["m"], Behaviour::default()).await;
    let p = json!({"name": "p", "pools": [
        pool("a", &[bad], &["m"]), pool("b", &[busy], &["m"]), pool("c", &[good], &["m"])],
        "routes": [{"model": "m", "pools": ["a", "b", "c"]}]});
    let s = Sidecar::start(&p).await;
    let a = s.chat(chat("m", "hi")).await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(
        (
            bad_mock.requests(),
            busy_mock.requests(),
            good_mock.requests()
        ),
        (1, 1, 1)
    );
    let route = a.headers["x-vigie-route"].to_str().unwrap();
    assert!(
        route.contains("pool=c") && route.contains("attempts=3"),
        "{route}"
    );

    // Nothing healthy left: the last error answer is relayed as is.
    good_mock.set_behaviour(failing(500));
    let a = s.chat(chat("m", "hi")).await;
    assert_eq!(a.status, 500, "{}", a.text());
    let last = s.records().pop().unwrap();
    assert_eq!(last.outcome, UsageOutcome::UpstreamError as i32);
}

#[tokio::test]
async fn attempts_skip_an_endpoint_that_refuses_connections() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (good, good_mock) = mock(&["m"], Behaviour::default()).await;
    let p = json!({"name": "p", "pools": [pool("down", &[closed], &["m"]), pool("up", &[good], &["m"])],
        "routes": [{"model": "m", "pools": ["down", "up"]}]});
    let s = Sidecar::start(&p).await;
    let a = s.chat(chat("m", "hi")).await;
    assert_eq!(a.status, 200);
    assert_eq!(good_mock.requests(), 1);
    assert_eq!(
        s.counter(
            "vigie_sidecar_upstream_attempts_total",
            &[("pool", "down"), ("outcome", "connect_error")]
        ),
        1.0
    );
    // With one attempt allowed the refusal is the app's answer.
    let s1 = Sidecar::start_with(&p, |c| c.max_attempts = 1).await;
    let a = s1.chat(chat("m", "hi")).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (502, "upstream_unreachable")
    );
}

// ---- relay and account ----

#[tokio::test]
async fn relay_restores_pseudonyms_in_a_stream_and_strips_the_usage_it_asked_for() {
    let (addr, m) = mock(&["m"], echo()).await;
    let p = with_dlp(
        policy(vec![pool("gpu", &[addr], &["m"])]),
        json!([{"detector": "FR_NIR", "action": "DLP_ACTION_PSEUDONYMIZE"}]),
    );
    let s = Sidecar::start(&p).await;
    let a = s
        .chat(json!({"model": "m", "stream": true, "messages": user_message(&format!("NIR {NIR} ok"))}))
        .await;
    assert_eq!(a.status, 200);
    let seen = m.last_request().unwrap();
    assert_eq!(seen["body"]["messages"][0]["content"], "NIR <FR_NIR_1> ok");
    assert_eq!(seen["body"]["stream_options"]["include_usage"], true);
    assert_eq!(a.streamed_text(), format!("NIR {NIR} ok"));
    assert!(
        a.events()
            .iter()
            .all(|e| e.get("usage").is_none_or(Value::is_null)),
        "the usage chunk the app did not ask for is stripped"
    );
    let r = s.records().pop().unwrap();
    assert_eq!(r.outcome, UsageOutcome::Completed as i32);
    assert_eq!(r.source, UsageSource::Reported as i32);
    assert!(r.prompt_tokens > 0 && r.completion_tokens > 0);
    assert_eq!((r.pool.as_str(), r.model.as_str()), ("gpu", "m"));
}

#[tokio::test]
async fn relay_blocks_an_answer_and_accounts_for_it() {
    let log = SecurityLog::default();
    let _guard = log.install();
    let (addr, _m) = mock(&["m"], echo()).await;
    let p = with_dlp(
        policy(vec![pool("gpu", &[addr], &["m"])]),
        json!([{"detector": "PHONE_NUMBER", "action": "DLP_ACTION_BLOCK", "direction": "DLP_DIRECTION_RESPONSE"}]),
    );
    let s = Sidecar::start(&p).await;
    let a = s.chat(chat("m", "appelez le 06 12 34 56 78")).await;
    assert_eq!(
        (a.status, error_code(&a).as_str()),
        (451, "dlp_blocked_response")
    );
    assert!(!a.text().contains("34 56"));
    let a = s
        .chat(json!({"model": "m", "stream": true, "messages": user_message("appelez le 06 12 34 56 78")}))
        .await;
    assert_eq!(a.status, 200);
    assert!(!a.text().contains("34 56"), "{}", a.text());
    assert!(a.text().contains("dlp_blocked_response"));
    assert_eq!(
        s.counter(
            "vigie_sidecar_dlp_blocked_total",
            &[("direction", "response")]
        ),
        2.0
    );
    // A streamed block is accounted like a whole one: the finding counted, the event
    // naming the status the app really got (200, then an error event), the record BLOCKED.
    assert_eq!(
        s.counter(
            "vigie_sidecar_dlp_findings_total",
            &[
                ("direction", "response"),
                ("detector", "PHONE_NUMBER"),
                ("action", "block")
            ]
        ),
        2.0
    );
    let blocked: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("vigie.request.blocked"))
        .collect();
    assert_eq!(blocked.len(), 2, "{blocked:?}");
    let status = |l: &String| {
        l.split("http.response.status_code=")
            .nth(1)
            .map(|r| r[..3].to_string())
    };
    assert_eq!(status(&blocked[0]).as_deref(), Some("451"), "{blocked:?}");
    assert_eq!(status(&blocked[1]).as_deref(), Some("200"), "{blocked:?}");
    let mut records = Vec::new();
    for _ in 0..100 {
        records = s.records();
        if records.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(records.len(), 2);
    assert!(
        records
            .iter()
            .all(|r| r.outcome == UsageOutcome::Blocked as i32),
        "{records:?}"
    );
}

#[tokio::test]
async fn an_upstream_without_usage_is_estimated_and_flagged() {
    let (addr, _m) = mock(
        &["m"],
        Behaviour {
            omit_usage: true,
            ..Behaviour::default()
        },
    )
    .await;
    let mut p = policy(vec![pool("gpu", &[addr], &["m"])]);
    p["pools"][0]["kind"] = json!("POOL_KIND_OPENAI_COMPATIBLE");
    let s = Sidecar::start(&p).await;
    let a = s
        .chat(json!({"model": "m", "stream": true, "messages": user_message("Bonjour, combien de jetons ?")}))
        .await;
    assert_eq!(a.status, 200);
    // The estimate runs off the async workers: wait for the record.
    let mut record = None;
    for _ in 0..100 {
        record = s.records().pop();
        if record.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = record.expect("a record");
    assert_eq!(r.source, UsageSource::Estimated as i32);
    assert!(r.prompt_tokens > 5 && r.completion_tokens > 0, "{r:?}");
}

// ---- the request's own snapshot ----

/// A reload in the middle of a request changes nothing for it: the rules that decided
/// it go on deciding it, and its security events name the version that decided it.
#[tokio::test]
async fn a_reload_mid_request_does_not_change_the_requests_policy() {
    let log = SecurityLog::default();
    let _guard = log.install();
    let (addr, _m) = mock(
        &["m"],
        Behaviour {
            echo: true,
            ttft_ms: 300,
            ..Behaviour::default()
        },
    )
    .await;
    let first = with_dlp(
        policy(vec![pool("gpu", &[addr], &["m"])]),
        json!([{"detector": "EMAIL_ADDRESS", "action": "DLP_ACTION_REDACT", "direction": "DLP_DIRECTION_RESPONSE"}]),
    );
    let s = Sidecar::start(&first).await;
    let v1 = s.store.current().unwrap().version.clone();
    let mut second = first.clone();
    second["name"] = json!("p2");
    second["dlp"]["rules"][0]["action"] = json!("DLP_ACTION_ALERT");

    let request = s.chat(chat("m", "écrire à jean.dupont@example.fr"));
    let reload = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        s.install(&second).version.clone()
    };
    let (a, v2) = tokio::join!(request, reload);
    assert_ne!(v1, v2);
    assert_eq!(s.store.current().unwrap().version, v2);
    assert_eq!(a.status, 200);
    assert!(
        !a.text().contains("jean.dupont"),
        "the answer was filtered by the policy the request started with: {}",
        a.text()
    );
    let findings: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|l| l.contains("vigie.dlp.finding"))
        .collect();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert!(
        findings[0].contains(&format!("vigie.policy.version=\"{v1}\"")),
        "the event names the version that decided the request: {}",
        findings[0]
    );
}
