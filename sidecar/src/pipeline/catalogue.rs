//! Catalogue: what the sidecar answers from its policy, without an upstream — the
//! model list and one model (`GET /v1/models`, `GET /v1/models/{id}`) in the OpenAI
//! shape, or Anthropic's when the client sends `anthropic-version`, each model with
//! what the policy says of it (`vigie`: the pools that may serve it, their hosting,
//! clearance and price); and Anthropic's `POST /v1/messages/count_tokens`, answered
//! with the sidecar's own estimate (nothing is sent upstream; `x-vigie-estimate`).

use std::collections::HashSet;

use pingora::protocols::http::ServerSession;
use serde_json::{Value, json};

use super::bounds::BodyReservation;
use super::respond::{error, json_with};
use super::{Outcome, SidecarApp, intake};
use crate::api::request::LlmRequest;
use crate::api::{ApiError, Flavour, Operation, model_id};
use crate::policy::{CompiledRoute, Snapshot};

/// Anthropic's clients send their API version with every call.
fn anthropic(session: &ServerSession) -> bool {
    session
        .req_header()
        .headers
        .contains_key("anthropic-version")
}

/// `GET /v1/models` and `GET /v1/models/{id}`.
pub async fn models(
    app: &SidecarApp,
    session: &mut ServerSession,
    snapshot: Option<&Snapshot>,
    op: Operation,
) -> Outcome {
    let here = Workload {
        namespace: &app.settings.namespace,
        labels: &app.settings.labels,
    };
    let anthropic = anthropic(session);
    let flavour = if anthropic {
        Flavour::Anthropic
    } else {
        Flavour::OpenAi
    };
    let Some(snapshot) = snapshot else {
        return error(session, &ApiError::no_policy().with_flavour(flavour)).await;
    };
    if op == Operation::RetrieveModel {
        let id = model_id(session.req_header().uri.path()).unwrap_or_default();
        if snapshot.models.binary_search(&id).is_err() {
            let e = ApiError::model_not_found(&id).with_flavour(flavour);
            return error(session, &e).await;
        }
        let body = model(snapshot, &id, anthropic, &here);
        return json_with(session, 200, &body, &[]).await;
    }
    let data: Vec<Value> = snapshot
        .models
        .iter()
        .map(|m| model(snapshot, m, anthropic, &here))
        .collect();
    let body = if anthropic {
        json!({
            "data": data,
            "has_more": false,
            "first_id": snapshot.models.first(),
            "last_id": snapshot.models.last(),
        })
    } else {
        json!({"object": "list", "data": data})
    };
    json_with(session, 200, &body, &[]).await
}

/// One model object: OpenAI's (`id`, `object`, `created`, `owned_by`) or Anthropic's
/// (`type`, `id`, `display_name`, `created_at`), and the policy's view of it.
fn model(snapshot: &Snapshot, id: &str, anthropic: bool, here: &Workload<'_>) -> Value {
    let vigie = policy_view(snapshot, id, here);
    if anthropic {
        json!({
            "type": "model",
            "id": id,
            "display_name": id,
            "created_at": "1970-01-01T00:00:00Z",
            "vigie": vigie,
        })
    } else {
        json!({"id": id, "object": "model", "created": 0, "owned_by": "vigie", "vigie": vigie})
    }
}

/// The pools the policy may send the model to from this workload: its routes whose
/// namespace and label conditions hold here (a route limited to other workloads is
/// neither used nor shown), then their fallback chains; a pool reachable only under a
/// header or sensitivity condition is marked `conditional`, one reached through a
/// fallback names it. Each with its hosting, clearance and prices — never endpoints.
/// `clearance`: the highest among them.
fn policy_view(snapshot: &Snapshot, id: &str, here: &Workload<'_>) -> Value {
    let mut seen = HashSet::new();
    let mut pools = Vec::new();
    let mut highest = None;
    let mut models = vec![(id.to_string(), None::<String>)];
    let mut visited = HashSet::new();
    while let Some((model, via)) = models.pop() {
        if !visited.insert(model.clone()) || visited.len() > MAX_CHAIN {
            continue;
        }
        let routes = snapshot.routes.get(&model).into_iter().flatten();
        for route in routes.filter(|r| here.may_use(r)) {
            let conditional = route.min_level.is_some() || !route.headers.is_empty();
            if let Some(next) = &route.fallback {
                models.push((next.clone(), Some(next.clone())));
            }
            for target in &route.targets {
                let Some(pool) = snapshot.pools.get(target.pool) else {
                    continue;
                };
                if !seen.insert((target.pool, target.upstream_model.clone())) {
                    continue;
                }
                highest = highest.max(Some(pool.clearance));
                let hosting = pool.hosting.as_str_name();
                let mut p = json!({
                    "pool": pool.name,
                    "model": target.upstream_model,
                    "hosting": hosting.strip_prefix("HOSTING_").unwrap_or(hosting).to_lowercase(),
                    "clearance": pool.clearance.as_str(),
                });
                if conditional {
                    p["conditional"] = json!(true);
                }
                if let Some(via) = &via {
                    p["fallback"] = json!(via);
                }
                if let Some(c) = pool.cost_of(&target.upstream_model) {
                    p["price"] = json!({
                        "currency": c.currency,
                        "inputPer1k": c.input_per_1k,
                        "outputPer1k": c.output_per_1k,
                    });
                }
                pools.push(p);
            }
        }
    }
    json!({"pools": pools, "clearance": highest.map(|l| l.as_str())})
}

/// Longest fallback chain shown (validation rejects cycles; this bounds the rest).
const MAX_CHAIN: usize = 8;

/// The workload this sidecar serves, as route conditions read it.
struct Workload<'a> {
    namespace: &'a str,
    labels: &'a std::collections::BTreeMap<String, String>,
}

impl Workload<'_> {
    fn may_use(&self, route: &CompiledRoute) -> bool {
        (route.namespaces.is_empty() || route.namespaces.iter().any(|n| n == self.namespace))
            && route
                .labels
                .iter()
                .all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// `POST /v1/messages/count_tokens`: the body read like any request (bounded, decoded,
/// parsed once), its model known to the policy, its tokens counted by the sidecar's
/// tokenizer — nothing leaves the pod, so nothing is scanned or metered.
pub async fn count_tokens(
    app: &SidecarApp,
    session: &mut ServerSession,
    snapshot: Option<&Snapshot>,
) -> Outcome {
    let mut held = BodyReservation::default();
    let body = match intake::read_decoded(app, session, &mut held).await {
        Ok(body) => body,
        Err(e) => {
            let e = e.with_flavour(Flavour::Anthropic);
            return error(session, &e).await.not_reusable();
        }
    };
    let Some(snapshot) = snapshot else {
        return error(
            session,
            &ApiError::no_policy().with_flavour(Flavour::Anthropic),
        )
        .await;
    };
    let request = match LlmRequest::parse(Operation::Messages, body) {
        Ok(r) => r,
        Err(e) => return error(session, &e.with_flavour(Flavour::Anthropic)).await,
    };
    if snapshot.routes_for(request.model()).is_none() {
        let e = ApiError::model_not_found(request.model()).with_flavour(Flavour::Anthropic);
        return error(session, &e).await;
    }
    let tree = request.into_tree();
    if !tree.get("messages").is_some_and(Value::is_array) {
        let e = ApiError::invalid_request("`messages` must be a list of messages.")
            .with_flavour(Flavour::Anthropic);
        return error(session, &e).await;
    }
    // Counting is CPU work: a large body is counted off the worker (as DLP scans are).
    let tokens = if held.bytes() <= super::guard::OFF_WORKER_BYTES {
        vigie_metering::estimate::prompt_tokens(&tree)
    } else {
        match tokio::task::spawn_blocking(move || vigie_metering::estimate::prompt_tokens(&tree))
            .await
        {
            Ok(n) => n,
            Err(_) => {
                let e = ApiError::bodies_in_flight().with_flavour(Flavour::Anthropic);
                return error(session, &e).await;
            }
        }
    };
    json_with(
        session,
        200,
        &json!({"input_tokens": tokens}),
        &[("x-vigie-estimate", "o200k_base")],
    )
    .await
}
