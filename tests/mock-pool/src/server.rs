//! HTTP handlers of the mock pool.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};

use crate::behaviour::{Behaviour, Failure};
use crate::text;
use crate::wire::{self, Api, Ids};

#[derive(Debug, Default)]
pub struct Stats {
    pub requests_total: AtomicU64,
    pub running: AtomicI64,
    pub waiting: AtomicI64,
    pub completed: AtomicU64,
    pub aborted: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub by_path: Mutex<BTreeMap<String, u64>>,
    /// Last request body and the credential headers it carried (tests check what the model saw).
    pub last_request: Mutex<Option<Value>>,
    pub prefix_hits: AtomicU64,
    pub prefix_misses: AtomicU64,
}

pub struct Mock {
    pub name: String,
    pub models: Vec<String>,
    behaviour: Mutex<Behaviour>,
    queue: Mutex<Arc<Semaphore>>,
    pub stats: Stats,
    next_id: AtomicU64,
    /// Cached system prompts (hashes), most recent first.
    prefix_cache: Mutex<std::collections::VecDeque<u64>>,
}

impl Mock {
    pub fn new(name: String, models: Vec<String>, behaviour: Behaviour) -> Arc<Self> {
        let queue = Arc::new(Semaphore::new(behaviour.capacity.max(1) as usize));
        Arc::new(Self {
            name,
            models,
            behaviour: Mutex::new(behaviour),
            queue: Mutex::new(queue),
            stats: Stats::default(),
            next_id: AtomicU64::new(1),
            prefix_cache: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    /// Looks the request's system prompt up in the prefix cache (and caches it): a hit
    /// makes prefill short, as vLLM's automatic prefix caching does.
    fn prefix_hit(&self, body: &Value, entries: u32) -> bool {
        use std::hash::{Hash, Hasher};
        let Some(system) = body
            .pointer("/messages/0")
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("system"))
            .and_then(|m| m.get("content"))
        else {
            return false;
        };
        let mut h = std::collections::hash_map::DefaultHasher::new();
        system.to_string().hash(&mut h);
        let key = h.finish();
        let Ok(mut cache) = self.prefix_cache.lock() else {
            return false;
        };
        let hit = match cache.iter().position(|k| *k == key) {
            Some(i) => {
                cache.remove(i);
                true
            }
            None => false,
        };
        cache.push_front(key);
        cache.truncate(entries as usize);
        let counter = if hit {
            &self.stats.prefix_hits
        } else {
            &self.stats.prefix_misses
        };
        counter.fetch_add(1, Ordering::SeqCst);
        hit
    }

    pub fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().map(|b| b.clone()).unwrap_or_default()
    }

    pub fn set_behaviour(&self, b: Behaviour) {
        if let (Ok(mut cur), Ok(mut q)) = (self.behaviour.lock(), self.queue.lock()) {
            if cur.capacity != b.capacity {
                *q = Arc::new(Semaphore::new(b.capacity.max(1) as usize));
            }
            *cur = b;
        }
    }

    fn queue(&self) -> Arc<Semaphore> {
        self.queue
            .lock()
            .map(|q| q.clone())
            .unwrap_or_else(|_| Arc::new(Semaphore::new(1)))
    }
}

impl Mock {
    /// The last request body the mock received (what the model saw).
    pub fn last_request(&self) -> Option<Value> {
        self.stats.last_request.lock().ok().and_then(|l| l.clone())
    }

    pub fn requests(&self) -> u64 {
        self.stats.requests_total.load(Ordering::SeqCst)
    }
}

pub fn router(mock: Arc<Mock>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/messages", post(messages))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/mock/behaviour", put(put_behaviour).get(get_behaviour))
        .route("/mock/stats", get(stats))
        // Real servers take bodies as large as the sidecar forwards (8 MiB by default).
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(mock)
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn error_for(
    api: Api,
    status: StatusCode,
    message: &str,
    kind: &str,
    code: Option<&str>,
) -> Response {
    let body = if api == Api::Messages {
        wire::anthropic_error(message, kind)
    } else {
        wire::openai_error(message, kind, code)
    };
    json_response(status, &body)
}

/// Runs while a request holds a place in the mock's capacity.
struct Running {
    mock: Arc<Mock>,
    finished: bool,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.mock.stats.running.fetch_sub(1, Ordering::SeqCst);
        let counter = if self.finished {
            &self.mock.stats.completed
        } else {
            &self.mock.stats.aborted
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

struct Prepared {
    behaviour: Behaviour,
    body: Value,
    model: String,
}

#[expect(
    clippy::result_large_err,
    reason = "an error here is a ready-made response; boxing it would only add noise"
)]
/// Common front of every generating endpoint: stats, behaviour, parsing, injected status.
fn prepare(
    mock: &Mock,
    api: Api,
    path: &str,
    headers: &HeaderMap,
    raw: &Bytes,
) -> Result<Prepared, Response> {
    mock.stats.requests_total.fetch_add(1, Ordering::SeqCst);
    if let Ok(mut m) = mock.stats.by_path.lock() {
        *m.entry(path.to_string()).or_default() += 1;
    }
    let body: Value = serde_json::from_slice(raw).map_err(|e| {
        error_for(
            api,
            StatusCode::BAD_REQUEST,
            &format!("invalid JSON body: {e}"),
            "invalid_request_error",
            None,
        )
    })?;
    let header_str = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(String::from)
    };
    if let Ok(mut last) = mock.stats.last_request.lock() {
        *last = Some(json!({
            "path": path,
            "body": body,
            "authorization": header_str("authorization"),
            "x_api_key": header_str("x-api-key"),
            "traceparent": header_str("traceparent"),
            "headers": headers
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_str().unwrap_or("").to_string())))
                .collect::<serde_json::Map<_, _>>(),
        }));
    }
    let mut behaviour = mock.behaviour();
    if let Some(patch) = headers.get("x-mock-behaviour") {
        let patch: Value = serde_json::from_slice(patch.as_bytes()).map_err(|e| {
            error_for(
                api,
                StatusCode::BAD_REQUEST,
                &format!("bad x-mock-behaviour: {e}"),
                "invalid_request_error",
                None,
            )
        })?;
        behaviour = behaviour.merged(&patch).map_err(|e| {
            error_for(
                api,
                StatusCode::BAD_REQUEST,
                &format!("bad x-mock-behaviour: {e}"),
                "invalid_request_error",
                None,
            )
        })?;
    }
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if model.is_empty() {
        return Err(error_for(
            api,
            StatusCode::BAD_REQUEST,
            "model is required",
            "invalid_request_error",
            None,
        ));
    }
    if !mock.models.is_empty() && !mock.models.contains(&model) {
        return Err(error_for(
            api,
            StatusCode::NOT_FOUND,
            &format!("The model `{model}` does not exist."),
            "invalid_request_error",
            Some("model_not_found"),
        ));
    }
    if let Some(c) = &behaviour.canned {
        return Err(canned(c));
    }
    if let Some(Failure::Status {
        code,
        retry_after_s,
    }) = behaviour.fail
    {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let (kind, c) = if code == 429 {
            ("rate_limit_error", Some("rate_limit_exceeded"))
        } else {
            ("server_error", None)
        };
        let mut resp = error_for(
            api,
            status,
            &format!("mock {} injected failure {code}", mock.name),
            kind,
            c,
        );
        if let Some(s) = retry_after_s {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        return Err(resp);
    }
    Ok(Prepared {
        behaviour,
        body,
        model,
    })
}

async fn admit(mock: &Arc<Mock>) -> Running {
    mock.stats.waiting.fetch_add(1, Ordering::SeqCst);
    let permit = mock.queue().acquire_owned().await;
    mock.stats.waiting.fetch_sub(1, Ordering::SeqCst);
    mock.stats.running.fetch_add(1, Ordering::SeqCst);
    let permit = match permit {
        Ok(p) => p,
        // The semaphore is never closed; a fresh one keeps the type simple.
        Err(_) => match Arc::new(Semaphore::new(1)).acquire_owned().await {
            Ok(p) => p,
            Err(_) => unreachable_permit(),
        },
    };
    Running {
        mock: mock.clone(),
        finished: false,
        _permit: permit,
    }
}

#[expect(
    clippy::panic,
    reason = "unreachable: a fresh semaphore always grants a permit"
)]
fn unreachable_permit() -> ! {
    panic!("a fresh semaphore always grants a permit")
}

/// The canned answer, as the test wrote it (gzip-compressed if asked).
fn canned(c: &crate::behaviour::Canned) -> Response {
    let status = StatusCode::from_u16(c.status).unwrap_or(StatusCode::OK);
    let mut body = c.body.clone().into_bytes();
    if c.gzip {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        if e.write_all(&body).is_ok()
            && let Ok(z) = e.finish()
        {
            body = z;
        }
    }
    let mut resp = (status, body).into_response();
    if let Ok(v) = HeaderValue::from_str(&c.content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    if c.gzip {
        resp.headers_mut()
            .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    for (name, value) in &c.headers {
        if let (Ok(n), Ok(v)) = (
            axum::http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            resp.headers_mut().insert(n, v);
        }
    }
    resp
}

async fn chat(State(mock): State<Arc<Mock>>, headers: HeaderMap, raw: Bytes) -> Response {
    generate(mock, Api::Chat, "/v1/chat/completions", headers, raw).await
}

async fn completions(State(mock): State<Arc<Mock>>, headers: HeaderMap, raw: Bytes) -> Response {
    generate(mock, Api::Completions, "/v1/completions", headers, raw).await
}

async fn messages(State(mock): State<Arc<Mock>>, headers: HeaderMap, raw: Bytes) -> Response {
    generate(mock, Api::Messages, "/v1/messages", headers, raw).await
}

fn requested_tokens(body: &Value) -> Option<u32> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX).min(100_000))
}

async fn generate(
    mock: Arc<Mock>,
    api: Api,
    path: &str,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let Prepared {
        behaviour,
        body,
        model,
    } = match prepare(&mock, api, path, &headers, &raw) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let running = admit(&mock).await;
    let mut behaviour = behaviour;
    if behaviour.prefix_cache > 0 && mock.prefix_hit(&body, behaviour.prefix_cache) {
        behaviour.ttft_ms = behaviour.ttft_hit_ms;
    }
    let limit = requested_tokens(&body);
    let (answer, finish) = if behaviour.echo {
        (text::echo_text(&body), "stop")
    } else {
        match limit {
            Some(n) => (text::generated(n), "length"),
            None => (text::generated(behaviour.default_tokens), "stop"),
        }
    };
    let prompt_tokens = text::count(&text::prompt_text(&body));
    let id_num = mock.next_id.fetch_add(1, Ordering::SeqCst);
    let id = match api {
        Api::Chat => format!("chatcmpl-mock-{}-{id_num}", mock.name),
        Api::Completions => format!("cmpl-mock-{}-{id_num}", mock.name),
        Api::Messages => format!("msg_mock_{}_{id_num}", mock.name),
    };
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let generation = Generation {
        api,
        id,
        model,
        created: wire::unix_now(),
        answer,
        finish: finish.to_string(),
        prompt_tokens,
        include_usage: include_usage && !behaviour.omit_usage,
        behaviour,
    };
    if stream {
        stream_response(generation, running)
    } else {
        complete_response(generation, running).await
    }
}

struct Generation {
    api: Api,
    id: String,
    model: String,
    created: u64,
    answer: String,
    finish: String,
    prompt_tokens: u32,
    include_usage: bool,
    behaviour: Behaviour,
}

impl Generation {
    fn ids(&self) -> Ids<'_> {
        Ids {
            id: &self.id,
            model: &self.model,
            created: self.created,
        }
    }

    fn anthropic_stop(&self) -> &'static str {
        if self.finish == "length" {
            "max_tokens"
        } else {
            "end_turn"
        }
    }
}

async fn complete_response(generation: Generation, mut running: Running) -> Response {
    let tokens = text::tokens(&generation.answer);
    let completion = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
    let b = &generation.behaviour;
    tokio::time::sleep(Duration::from_millis(b.ttft_ms)).await;
    if let Some(iv) = b.token_interval() {
        tokio::time::sleep(iv * completion.saturating_sub(1)).await;
    }
    match b.fail {
        Some(Failure::Reset { .. }) => {
            let err = futures::stream::once(async {
                Err::<Bytes, _>(std::io::Error::other("mock reset"))
            });
            return Response::builder()
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from_stream(err))
                .unwrap_or_default();
        }
        Some(Failure::Stall { .. }) => std::future::pending::<()>().await,
        _ => {}
    }
    let stats = &running.mock.stats;
    stats
        .prompt_tokens
        .fetch_add(u64::from(generation.prompt_tokens), Ordering::SeqCst);
    stats
        .generation_tokens
        .fetch_add(u64::from(completion), Ordering::SeqCst);
    let usage = (!b.omit_usage).then(|| wire::usage(generation.prompt_tokens, completion));
    let ids = generation.ids();
    let v = match generation.api {
        Api::Chat => wire::chat_completion(&ids, &generation.answer, &generation.finish, usage),
        Api::Completions => {
            wire::text_completion(&ids, &generation.answer, &generation.finish, usage)
        }
        Api::Messages => wire::anthropic_message(
            &ids,
            &generation.answer,
            generation.anthropic_stop(),
            generation.prompt_tokens,
            completion,
        ),
    };
    running.finished = true;
    json_response(StatusCode::OK, &v)
}

type Frame = Result<Bytes, std::io::Error>;

fn stream_response(generation: Generation, running: Running) -> Response {
    let (tx, rx) = mpsc::channel::<Frame>(16);
    tokio::spawn(produce(generation, running, tx));
    let body =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .unwrap_or_default()
}

/// Writes the SSE frames of one generation; stops as soon as the client is gone.
async fn produce(generation: Generation, mut running: Running, tx: mpsc::Sender<Frame>) {
    let send = |s: String| {
        let tx = tx.clone();
        async move { tx.send(Ok(Bytes::from(s))).await.is_ok() }
    };
    let b = generation.behaviour.clone();
    let ids = generation.ids();
    let tokens = text::tokens(&generation.answer);
    let completion = u32::try_from(tokens.len()).unwrap_or(u32::MAX);
    running
        .mock
        .stats
        .prompt_tokens
        .fetch_add(u64::from(generation.prompt_tokens), Ordering::SeqCst);

    if generation.api == Api::Messages {
        let start = json!({"type": "message_start", "message": {
            "id": generation.id, "type": "message", "role": "assistant", "model": generation.model, "content": [],
            "stop_reason": null, "stop_sequence": null,
            "usage": {"input_tokens": generation.prompt_tokens, "output_tokens": 1}}});
        if !send(wire::sse_event("message_start", &start)).await {
            return;
        }
    }
    tokio::time::sleep(Duration::from_millis(b.ttft_ms)).await;
    let first = match generation.api {
        Api::Chat => Some(wire::sse_data(&wire::chat_chunk(
            &ids,
            json!({"role": "assistant", "content": ""}),
            None,
        ))),
        Api::Completions => None,
        Api::Messages => Some(
            wire::sse_event(
                "content_block_start",
                &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            ) + &wire::sse_event("ping", &json!({"type": "ping"})),
        ),
    };
    if let Some(f) = first
        && !send(f).await
    {
        return;
    }
    let cut = match b.fail {
        Some(Failure::Reset { after_tokens }) | Some(Failure::Stall { after_tokens }) => {
            Some(after_tokens as usize)
        }
        _ => None,
    };
    // Tokens on a fixed schedule from the first one (no drift from timer slack), as a
    // real server's steady decode rate.
    let first_token = tokio::time::Instant::now();
    for (i, tok) in tokens.iter().enumerate() {
        if cut == Some(i) {
            break;
        }
        if i > 0
            && let Some(iv) = b.token_interval()
        {
            tokio::time::sleep_until(first_token + iv * i as u32).await;
        }
        let frame = match generation.api {
            Api::Chat => wire::sse_data(&wire::chat_chunk(&ids, json!({"content": tok}), None)),
            Api::Completions => wire::sse_data(&wire::completion_chunk(&ids, tok, None)),
            Api::Messages => wire::sse_event(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": tok}}),
            ),
        };
        if !send(frame).await {
            return;
        }
        running
            .mock
            .stats
            .generation_tokens
            .fetch_add(1, Ordering::SeqCst);
    }
    match b.fail {
        Some(Failure::Reset { .. }) => {
            // Let the tokens already sent reach the wire first, as a real crash would.
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx
                .send(Err(std::io::Error::other("mock reset mid-stream")))
                .await;
            return;
        }
        Some(Failure::Stall { .. }) => {
            // Silent but open until the client goes away.
            tx.closed().await;
            return;
        }
        _ => {}
    }
    let tail = match generation.api {
        Api::Chat | Api::Completions => {
            let last = if generation.api == Api::Chat {
                wire::chat_chunk(&ids, json!({}), Some(&generation.finish))
            } else {
                wire::completion_chunk(&ids, "", Some(&generation.finish))
            };
            let mut s = wire::sse_data(&last);
            if generation.include_usage {
                s += &wire::sse_data(&wire::usage_chunk(
                    generation.api,
                    &ids,
                    wire::usage(generation.prompt_tokens, completion),
                ));
            }
            s + wire::SSE_DONE
        }
        Api::Messages => {
            let mut s = wire::sse_event(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": 0}),
            );
            let mut delta = json!({"type": "message_delta", "delta": {"stop_reason": generation.anthropic_stop(), "stop_sequence": null}});
            if !b.omit_usage {
                delta["usage"] = json!({"output_tokens": completion});
            }
            s += &wire::sse_event("message_delta", &delta);
            s + &wire::sse_event("message_stop", &json!({"type": "message_stop"}))
        }
    };
    if send(tail).await {
        running.finished = true;
    }
}

async fn embeddings(State(mock): State<Arc<Mock>>, headers: HeaderMap, raw: Bytes) -> Response {
    let Prepared { body, model, .. } =
        match prepare(&mock, Api::Chat, "/v1/embeddings", &headers, &raw) {
            Ok(p) => p,
            Err(resp) => return resp,
        };
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect(),
        _ => {
            return error_for(
                Api::Chat,
                StatusCode::BAD_REQUEST,
                "input is required",
                "invalid_request_error",
                None,
            );
        }
    };
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let mut prompt_tokens = 0u32;
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, text)| {
            prompt_tokens += text::count(text);
            let vector = embed(text);
            let embedding = if base64 {
                let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
                Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(vector)
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    mock.stats
        .prompt_tokens
        .fetch_add(u64::from(prompt_tokens), Ordering::SeqCst);
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}),
    )
}

/// A deterministic 8-dimensional unit vector derived from the text.
fn embed(text: &str) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut v = Vec::with_capacity(8);
    for b in text.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    for i in 0..8u64 {
        let x = h.rotate_left((i * 8) as u32) & 0xffff;
        v.push(x as f32 / 65535.0 - 0.5);
    }
    let norm = v
        .iter()
        .map(|x| x * x)
        .sum::<f32>()
        .sqrt()
        .max(f32::EPSILON);
    v.iter().map(|x| x / norm).collect()
}

async fn models(State(mock): State<Arc<Mock>>) -> Response {
    let data: Vec<Value> = mock
        .models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "vigie-mock"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

async fn health(State(mock): State<Arc<Mock>>) -> Response {
    if matches!(mock.behaviour().fail, Some(Failure::Unhealthy)) {
        StatusCode::SERVICE_UNAVAILABLE.into_response()
    } else {
        StatusCode::OK.into_response()
    }
}

/// vLLM-style Prometheus gauges and counters.
async fn metrics(State(mock): State<Arc<Mock>>) -> Response {
    let s = &mock.stats;
    let capacity = f64::from(mock.behaviour().capacity.max(1));
    let running = s.running.load(Ordering::SeqCst).max(0);
    let waiting = s.waiting.load(Ordering::SeqCst).max(0);
    let mut out = String::new();
    let models: Vec<&str> = if mock.models.is_empty() {
        vec!["mock"]
    } else {
        mock.models.iter().map(String::as_str).collect()
    };
    let metrics: [(&str, &str, &str, String); 5] = [
        (
            "vllm:num_requests_running",
            "gauge",
            "Number of requests currently running on GPU.",
            running.to_string(),
        ),
        (
            "vllm:num_requests_waiting",
            "gauge",
            "Number of requests waiting to be processed.",
            waiting.to_string(),
        ),
        (
            "vllm:gpu_cache_usage_perc",
            "gauge",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            format!("{:.4}", (running as f64 / capacity).min(1.0)),
        ),
        (
            "vllm:prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            s.prompt_tokens.load(Ordering::SeqCst).to_string(),
        ),
        (
            "vllm:generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            s.generation_tokens.load(Ordering::SeqCst).to_string(),
        ),
    ];
    for (name, kind, help, value) in metrics {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        // The first model carries the instance's figures; vLLM serves one model per process.
        out.push_str(&format!("{name}{{model_name=\"{}\"}} {value}\n", models[0]));
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

async fn put_behaviour(State(mock): State<Arc<Mock>>, raw: Bytes) -> Response {
    match serde_json::from_slice::<Behaviour>(&raw) {
        Ok(b) => {
            mock.set_behaviour(b.clone());
            json_response(StatusCode::OK, &json!(b))
        }
        Err(e) => json_response(
            StatusCode::BAD_REQUEST,
            &wire::openai_error(&e.to_string(), "invalid_request_error", None),
        ),
    }
}

async fn get_behaviour(State(mock): State<Arc<Mock>>) -> Response {
    json_response(StatusCode::OK, &json!(mock.behaviour()))
}

async fn stats(State(mock): State<Arc<Mock>>) -> Response {
    let s = &mock.stats;
    let by_path = s.by_path.lock().map(|m| json!(*m)).unwrap_or(Value::Null);
    let last = s
        .last_request
        .lock()
        .map(|l| l.clone().unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    json_response(
        StatusCode::OK,
        &json!({
            "name": mock.name,
            "requests_total": s.requests_total.load(Ordering::SeqCst),
            "running": s.running.load(Ordering::SeqCst),
            "waiting": s.waiting.load(Ordering::SeqCst),
            "completed": s.completed.load(Ordering::SeqCst),
            "aborted": s.aborted.load(Ordering::SeqCst),
            "prompt_tokens": s.prompt_tokens.load(Ordering::SeqCst),
            "generation_tokens": s.generation_tokens.load(Ordering::SeqCst),
            "prefix_hits": s.prefix_hits.load(Ordering::SeqCst),
            "prefix_misses": s.prefix_misses.load(Ordering::SeqCst),
            "by_path": by_path,
            "last_request": last,
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embeddings_are_unit_vectors_and_deterministic() {
        let a = embed("bonjour");
        assert_eq!(a, embed("bonjour"));
        assert_ne!(a, embed("bonsoir"));
        let norm: f32 = a.iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
    }

    #[test]
    fn requested_tokens_prefers_max_completion_tokens() {
        assert_eq!(requested_tokens(&json!({"max_tokens": 5})), Some(5));
        assert_eq!(
            requested_tokens(&json!({"max_completion_tokens": 3, "max_tokens": 5})),
            Some(3)
        );
        assert_eq!(requested_tokens(&json!({})), None);
    }
}
