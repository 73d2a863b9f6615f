//! DLP on the request path: which texts to look at ([`text`]), what to do with each
//! finding (request side here, answer side in [`response`]), placeholders
//! ([`pseudonym`]). The engine itself is the `vigie-dlp` crate; nothing here depends on
//! Pingora.

pub mod escapes;
pub mod external;
pub mod pseudonym;
pub mod response;
pub mod text;

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
pub use vigie_dlp::Level;
use vigie_dlp::engine::{DlpError, Engine, Finding};
use vigie_dlp::policy::{Action, CompiledDlp, DetectorActions};
use vigie_dlp::stream::Transform;

use crate::api::request::LlmRequest;
use crate::api::{ApiError, Operation};
pub use pseudonym::Pseudonyms;
use text::Rewrite;

/// Most JSON items (values and keys) DLP inspects in one document: each costs ~200
/// bytes of scanning state, so a body of tiny values (`[1,1,1,…]`, 4 M items in 8 MiB)
/// would cost ~90× its size. Far above any real request (a chat of a thousand messages
/// with tools has a few thousand) and answer.
pub const MAX_INSPECTED_ITEMS: usize = 100_000;

/// Finding counts by (detector, action), for telemetry. Never values.
pub type Counts = BTreeMap<(String, &'static str), u64>;

pub fn action_name(a: Action) -> &'static str {
    match a {
        Action::Alert => "alert",
        Action::Redact => "redact",
        Action::Pseudonymize => "pseudonymize",
        Action::Block => "block",
    }
}

pub fn parse_level(s: &str) -> Option<Level> {
    match s.trim().to_ascii_lowercase().as_str() {
        "public" => Some(Level::Public),
        "internal" => Some(Level::Internal),
        "personal" => Some(Level::Personal),
        "restricted" => Some(Level::Restricted),
        _ => None,
    }
}

/// The result of scanning a request (the request itself is rewritten in place).
#[derive(Debug, Default)]
pub struct RequestScan {
    pub pseudonyms: Pseudonyms,
    /// Maximum of the declared level and the levels of what was found.
    pub level: Option<Level>,
    pub counts: Counts,
    /// Detector names whose action is `block`: the request must be refused.
    pub blocked: BTreeSet<String>,
}

struct RequestTransform<'a> {
    actions: &'a [DetectorActions],
    scan: &'a mut RequestScan,
    changed: bool,
}

impl Transform for RequestTransform<'_> {
    fn acts_on(&self, detector: usize) -> bool {
        self.actions
            .get(detector)
            .and_then(|a| a.request)
            .is_some_and(|a| a != Action::Alert)
    }

    fn finding(&mut self, _engine: &Engine, f: &Finding, value: &str, out: &mut String) {
        let Some(a) = self.actions.get(f.detector) else {
            out.push_str(value);
            return;
        };
        let Some(action) = a.request else {
            out.push_str(value);
            return;
        };
        *self
            .scan
            .counts
            .entry((a.name.clone(), action_name(action)))
            .or_default() += 1;
        self.scan.level = self.scan.level.max(Some(a.level));
        match action {
            Action::Alert => out.push_str(value),
            Action::Redact | Action::Block => {
                if action == Action::Block {
                    self.scan.blocked.insert(a.name.clone());
                }
                self.changed = true;
                out.push_str(&a.replacement);
            }
            Action::Pseudonymize => {
                self.changed = true;
                out.push_str(&self.scan.pseudonyms.placeholder(&a.name, value));
            }
        }
    }

    fn overflow(&mut self, out: &mut String) {
        // Block mode has no cap: unreachable for requests, and safe if ever reached.
        self.changed = true;
        out.push_str("[REDACTED]");
    }
}

/// Scans every text of a request (see [`text::collect`]) as one, in document order,
/// and applies the actions in place; the body is serialised again only if something
/// changed ([`LlmRequest::body_for`]).
pub fn scan_request(
    dlp: &CompiledDlp,
    request: &mut LlmRequest,
    declared: Option<Level>,
) -> Result<RequestScan, ApiError> {
    let mut scan = RequestScan {
        level: declared,
        ..RequestScan::default()
    };
    if !dlp.scans_requests() {
        return Ok(scan);
    }
    let op = request.op();
    if request.items() > MAX_INSPECTED_ITEMS {
        return Err(ApiError::too_many_items(MAX_INSPECTED_ITEMS));
    }
    request.edit_tree(|tree| {
        if let Some(param) = token_prompt(op, tree) {
            return Err(ApiError::token_prompt(param));
        }
        let mut t = RequestTransform {
            actions: &dlp.actions,
            scan: &mut scan,
            changed: false,
        };
        match text::transform_tree(&dlp.engine, tree, &mut t) {
            Ok(Rewrite::Unchanged) => Ok(false),
            // Alert-only findings leave the texts as they were.
            Ok(Rewrite::Changed) => Ok(t.changed),
            Ok(Rewrite::Structural) => Err(ApiError::dlp_structural_field()),
            Ok(Rewrite::Unreadable) => Err(ApiError::invalid_request(
                "A number has more digits than its value keeps (beyond 2^53, or beyond 64-bit integers); the data-loss check cannot read it.",
            )),
            Err(DlpError::TooComplex) => Err(ApiError::dlp_too_complex()),
            Err(e) => {
                tracing::error!(error = %e, "DLP scan failed; refusing the request");
                Err(ApiError::dlp_unavailable())
            }
        }
    })?;
    Ok(scan)
}

/// A prompt given as token ids (completions `prompt`, embeddings `input`): an integer
/// list or a list of them. Named by its parameter.
fn token_prompt(op: Operation, tree: &Value) -> Option<&'static str> {
    let param = match op {
        Operation::Completions => "prompt",
        Operation::Embeddings => "input",
        _ => return None,
    };
    let ids = |v: &Value| v.as_array().is_some_and(|a| a.iter().any(Value::is_number));
    let v = tree.get(param)?;
    (ids(v) || v.as_array().is_some_and(|a| a.iter().any(ids))).then_some(param)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlp(json: &str) -> CompiledDlp {
        vigie_dlp::policy::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    #[test]
    fn request_actions() {
        let d = dlp(
            r#"{"rules":[{"detector":"FR_NIR","action":"DLP_ACTION_PSEUDONYMIZE","direction":"DLP_DIRECTION_REQUEST"},
            {"detector":"EMAIL_ADDRESS","action":"DLP_ACTION_REDACT"},
            {"detector":"PHONE_NUMBER","action":"DLP_ACTION_ALERT"}]}"#,
        );
        let body = br#"{"model":"m","messages":[{"role":"user","content":"NIR 1 85 05 78 006 084 91, mail a.b@c.fr, tel 06 12 34 56 78, NIR 1 85 05 78 006 084 91"}]}"#;
        let mut r = LlmRequest::parse(Operation::ChatCompletions, body[..].into()).unwrap();
        let s = scan_request(&d, &mut r, Some(Level::Internal)).unwrap();
        assert!(r.rewritten());
        let out: Value = serde_json::from_slice(&r.body_for("m", false).unwrap()).unwrap();
        assert_eq!(
            out["messages"][0]["content"],
            "NIR <FR_NIR_1>, mail [EMAIL_ADDRESS], tel 06 12 34 56 78, NIR <FR_NIR_1>"
        );
        assert_eq!(s.level, Some(Level::Personal));
        assert_eq!(s.counts[&("FR_NIR".to_string(), "pseudonymize")], 2);
        assert_eq!(s.counts[&("PHONE_NUMBER".to_string(), "alert")], 1);
        assert!(s.blocked.is_empty());
        assert_eq!(
            s.pseudonyms.restore_all("voir <FR_NIR_1>"),
            "voir 1 85 05 78 006 084 91"
        );
    }

    #[test]
    fn block_names_detectors_only() {
        let d = dlp(r#"{"rules":[{"detector":"*","action":"DLP_ACTION_BLOCK"}]}"#);
        let body = br#"{"model":"m","prompt":"IBAN FR76 3000 6000 0112 3456 7890 189"}"#;
        let mut r = LlmRequest::parse(Operation::Completions, body[..].into()).unwrap();
        let s = scan_request(&d, &mut r, None).unwrap();
        assert_eq!(s.blocked.iter().collect::<Vec<_>>(), ["IBAN"]);
    }
}
