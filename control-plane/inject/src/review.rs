//! One AdmissionReview in, one out. Never fails with a server error: a body that is
//! not an AdmissionReview is a [`ReviewError`] (HTTP 400 with the reason); anything
//! that is not a pod being created is allowed untouched.

use base64::Engine as _;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde_json::Value;
use tracing::{info, warn};

use crate::decide::{Decision, Trigger, decide};
use crate::{InjectConfig, isolation, mutate, overrides};

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Says where the body is malformed, never what it contains (pods carry secrets
    /// in environment variables).
    #[error("not an admission.k8s.io/v1 AdmissionReview: {0}")]
    Malformed(String),
}

fn describe(e: &serde_json::Error) -> String {
    let what = match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "invalid JSON",
        serde_json::error::Category::Data => "unexpected field type or missing field",
        serde_json::error::Category::Eof => "truncated JSON",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// The AdmissionReview to answer with, as JSON.
pub fn review(body: &[u8], trigger: Trigger, cfg: &InjectConfig) -> Result<Value, ReviewError> {
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(describe(&e)))?;
    let request: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| ReviewError::Malformed("no `request`".into()))?;
    let mut out = serde_json::to_value(respond(&request, trigger, cfg).into_review())
        .map_err(|e| ReviewError::Malformed(describe(&e)))?;
    // kube-core writes the patch bytes as an array of numbers (kube-rs issue 1781);
    // the API documents base64, which is what Go's encoding of []byte expects.
    if let Some(patch) = out.pointer_mut("/response/patch")
        && let Ok(bytes) = serde_json::from_value::<Vec<u8>>(patch.clone())
    {
        *patch = Value::String(base64::engine::general_purpose::STANDARD.encode(bytes));
    }
    Ok(out)
}

fn respond(
    req: &AdmissionRequest<DynamicObject>,
    trigger: Trigger,
    cfg: &InjectConfig,
) -> AdmissionResponse {
    let mut resp = AdmissionResponse::from(req);
    // Only pods being created are mutated; the webhook's rules say so too.
    if !req.kind.group.is_empty() || req.kind.kind != "Pod" || req.operation != Operation::Create {
        return resp;
    }
    let Some(object) = &req.object else {
        return deny(resp, "the request has no `object`");
    };
    let namespace = req
        .namespace
        .clone()
        .or_else(|| object.metadata.namespace.clone())
        .unwrap_or_default();
    let name = object
        .metadata
        .name
        .clone()
        .or_else(|| object.metadata.generate_name.clone())
        .unwrap_or_default();
    let pod = match serde_json::to_value(object) {
        Ok(v) => v,
        Err(e) => return deny(resp, &format!("the pod cannot be read: {}", describe(&e))),
    };
    // A pod that already carries a container named like the sidecar is refused by
    // `isolation::check`: reinvocation is off, so it is not the webhook's own output.
    if let Decision::Skip(reason) = decide(cfg, &namespace, &pod, trigger) {
        info!(target: "vigie::inject", namespace, pod = name, %reason, "not injected");
        resp.audit_annotations
            .insert("injection".into(), format!("skipped: {reason}"));
        return resp;
    }
    let annotations = object.metadata.annotations.clone().unwrap_or_default();
    let settings = match overrides::resolve(cfg, &annotations) {
        Ok(s) => s,
        Err(errors) => {
            warn!(target: "vigie::inject", namespace, pod = name, errors = errors.join("; "), "refused: invalid annotations");
            return deny(
                resp,
                &format!(
                    "vigie sidecar injection: invalid annotations: {} (fix them, or label the pod vigie.io/inject=disabled)",
                    errors.join("; ")
                ),
            );
        }
    };
    // An app container that could go around the egress enforcement: refused, unless
    // an annotation accepts it (then injected, flagged not enforceable). The reasons
    // name fields, never the pod's values.
    let enforceability = match isolation::check(cfg, &settings, &pod) {
        Ok(e) => e,
        Err(refused) => {
            warn!(target: "vigie::inject", namespace, pod = name, reasons = %refused, "refused: the app could go around the egress enforcement");
            return deny(resp, &format!("vigie sidecar injection: {refused}"));
        }
    };
    let mut mutated = pod.clone();
    if let Err(e) = mutate::inject(cfg, &settings, &enforceability, &mut mutated) {
        warn!(target: "vigie::inject", namespace, pod = name, error = %e, "refused");
        return deny(resp, &format!("vigie sidecar injection: {e}"));
    }
    let patch = json_patch::diff(&pod, &mutated);
    info!(
        target: "vigie::inject",
        namespace,
        pod = name,
        mode = if settings.native_sidecar { "native" } else { "classic" },
        enforceable = enforceability.enforceable(),
        operations = patch.0.len(),
        "injected"
    );
    if !settings.native_sidecar {
        resp.warnings = Some(vec![
            "vigie: classic sidecar container: the application may start before the sidecar is ready, and Jobs do not complete while it runs".into(),
        ]);
    }
    if !enforceability.enforceable() {
        let reason = enforceability.reason();
        let warning = format!("vigie: egress not enforceable: {reason}");
        resp.warnings.get_or_insert_default().push(warning);
        resp.audit_annotations
            .insert("egress-not-enforceable".into(), reason);
    }
    resp.audit_annotations
        .insert("injection".into(), "injected".into());
    match resp.clone().with_patch(patch) {
        Ok(r) => r,
        Err(e) => deny(resp, &format!("vigie sidecar injection: {e}")),
    }
}

fn deny(resp: AdmissionResponse, reason: &str) -> AdmissionResponse {
    let mut resp = resp.deny(reason);
    resp.result.code = 400;
    resp.result.reason = "Invalid".into();
    resp
}
