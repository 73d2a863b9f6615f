//! External detectors on a request: which texts a service reads, and its findings
//! applied to them like the built-in ones (same pseudonym table, counts and level).
//! The call itself is the sidecar's; nothing here does I/O.

use serde_json::Value;
use vigie_dlp::external::{Batch, ExternalDetector, Located, resolve};
use vigie_dlp::policy::Action;

use std::collections::BTreeSet;

use vigie_dlp::Level;

use super::pseudonym::Pseudonyms;
use super::text::{self, Kind};
use super::{Counts, RequestScan, action_name};
use crate::api::ApiError;
use crate::api::request::LlmRequest;

/// The texts of a request, in reading order, as one batch: values and object keys
/// (a tool's property names reach the model too); structural values (`role`, `type`,
/// `model`) are not sent, they are never rewritten.
pub fn request_batch(request: &mut LlmRequest) -> Result<Batch, ApiError> {
    let tree = request.tree()?;
    Ok(batch_of(tree))
}

/// The texts of a JSON document (a request or a complete answer) as one batch.
pub fn batch_of(tree: &Value) -> Batch {
    let mut texts = Vec::new();
    // Unreadable numbers were refused by the built-in scan already.
    let _ = text::collect(tree, &mut texts);
    Batch::of(
        texts
            .iter()
            .filter(|t| t.kind != Kind::Structural)
            .map(|t| t.text.as_ref()),
    )
}

/// Spans of `text` DLP wrote for this request (`<PERSON_1>`, `[IBAN]`): an external
/// finding is cut around them ([`resolve`]), so a value is never hidden twice and a
/// placeholder stays restorable. Text that only looks like one (`<DUPONT>` typed by
/// the caller) is not protected: `written` says which tokens DLP really wrote.
fn written_by_dlp(text: &str, written: &dyn Fn(&str) -> bool) -> Vec<(usize, usize)> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let close = match b[i] {
            b'<' => b'>',
            b'[' => b']',
            _ => {
                i += 1;
                continue;
            }
        };
        let end = b[i + 1..]
            .iter()
            .position(|&c| c == close)
            .map(|p| i + 1 + p);
        match end {
            Some(end) if end - i <= 82 && text.get(i..=end).is_some_and(written) => {
                out.push((i, end + 1));
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Where the effects of findings go: counts, level, blocking detector names, and the
/// request's placeholders (`None` on answers: what is pseudonymized in a request is
/// redacted in an answer).
pub struct Effects<'a> {
    pub counts: &'a mut Counts,
    pub level: &'a mut Option<Level>,
    pub blocked: &'a mut BTreeSet<String>,
    pub pseudonyms: Option<&'a mut Pseudonyms>,
    /// On answers: the request's placeholders (not yet restored there).
    pub issued: Option<&'a Pseudonyms>,
    /// Replacement texts DLP may have written ([`vigie_dlp::policy::CompiledDlp::replacements`]).
    pub replacements: &'a [String],
}

impl Effects<'_> {
    fn wrote(&self, token: &str) -> bool {
        self.pseudonyms.as_deref().is_some_and(|p| p.issued(token))
            || self.issued.is_some_and(|p| p.issued(token))
            || self.replacements.iter().any(|r| r == token)
    }
}

/// Applies one service's findings (`located`, from [`Batch::locate`] on the batch of
/// this same tree) to `tree`, actions as the policy's entities say. Returns whether a
/// text changed.
pub fn apply(
    tree: &mut Value,
    detector: &ExternalDetector,
    located: Vec<Located>,
    fx: &mut Effects<'_>,
) -> bool {
    if located.is_empty() {
        return false;
    }
    let mut texts = Vec::new();
    let _ = text::collect(tree, &mut texts);
    // Index of each text sent among all texts (what `rewrite` walks).
    let values: Vec<usize> = texts
        .iter()
        .enumerate()
        .filter(|(_, t)| t.kind != Kind::Structural)
        .map(|(i, _)| i)
        .collect();
    let mut by_part: Vec<Vec<Located>> = vec![Vec::new(); values.len()];
    for l in located {
        if let Some(v) = by_part.get_mut(l.part) {
            v.push(l);
        }
    }
    let mut new: Vec<Option<String>> = vec![None; texts.len()];
    let mut changed = false;
    for (part, found) in by_part.into_iter().enumerate() {
        if found.is_empty() {
            continue;
        }
        let Some(&index) = values.get(part) else {
            continue;
        };
        let Some(original) = texts.get(index).map(|t| t.text.as_ref()) else {
            continue;
        };
        let protected = written_by_dlp(original, &|t| fx.wrote(t));
        let found = resolve(original, found, &protected);
        let mut out = String::with_capacity(original.len());
        let mut at = 0;
        let mut rewritten = false;
        for f in found {
            let (Some(before), Some(value), Some(entity)) = (
                original.get(at..f.start),
                original.get(f.start..f.end),
                detector.entities.get(f.entity),
            ) else {
                continue;
            };
            out.push_str(before);
            at = f.end;
            let action = match (&fx.pseudonyms, entity.request) {
                (Some(_), a) => a,
                (None, _) => entity.response,
            };
            *fx.counts
                .entry((entity.detector.clone(), action_name(action)))
                .or_default() += 1;
            *fx.level = (*fx.level).max(Some(entity.level));
            match (action, fx.pseudonyms.as_deref_mut()) {
                (Action::Alert, _) => out.push_str(value),
                (Action::Pseudonymize, Some(names)) => {
                    rewritten = true;
                    out.push_str(&names.placeholder(&entity.detector, value));
                }
                (Action::Block, _) => {
                    rewritten = true;
                    fx.blocked.insert(entity.detector.clone());
                    out.push_str(&entity.replacement);
                }
                (Action::Redact | Action::Pseudonymize, _) => {
                    rewritten = true;
                    out.push_str(&entity.replacement);
                }
            }
        }
        if rewritten {
            out.push_str(original.get(at..).unwrap_or(""));
            if let Some(slot) = new.get_mut(index) {
                *slot = Some(out);
            }
            changed = true;
        }
    }
    drop(texts);
    if changed {
        let mut new = new.into_iter();
        text::rewrite(tree, &mut || new.next().flatten());
    }
    changed
}

/// [`apply`] on a request: placeholders in the request's table, effects in `scan`.
pub fn apply_to_request(
    request: &mut LlmRequest,
    detector: &ExternalDetector,
    located: Vec<Located>,
    scan: &mut RequestScan,
    replacements: &[String],
) -> Result<bool, ApiError> {
    let mut changed = false;
    request.edit_tree(|tree| {
        changed = apply(
            tree,
            detector,
            located,
            &mut Effects {
                counts: &mut scan.counts,
                level: &mut scan.level,
                blocked: &mut scan.blocked,
                pseudonyms: Some(&mut scan.pseudonyms),
                issued: None,
                replacements,
            },
        );
        Ok::<bool, ApiError>(changed)
    })?;
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Operation;
    use vigie_dlp::external::Found;

    fn detector() -> ExternalDetector {
        let d = vigie_dlp::policy::compile(
            &serde_json::from_str(
                r#"{"externalDetectors":[{"name":"ner","url":"http://127.0.0.1:9/analyze",
               "entities":[{"type":"PERSON","detector":"PERSON"},
                           {"type":"LOCATION","detector":"LOCATION","action":"DLP_ACTION_ALERT"},
                           {"type":"NRP","detector":"NRP","action":"DLP_ACTION_BLOCK","level":"SENSITIVITY_LEVEL_RESTRICTED"}]}]}"#,
            )
            .unwrap(),
        )
        .unwrap();
        d.external.into_iter().next().unwrap()
    }

    fn found(batch: &Batch, kind: &str, needle: &str) -> Found {
        let at = batch.text.find(needle).unwrap();
        Found {
            entity_type: kind.into(),
            start: batch.text[..at].chars().count(),
            end: batch.text[..at + needle.len()].chars().count(),
            score: 0.85,
        }
    }

    #[test]
    fn findings_are_pseudonymised_in_place_and_counted() {
        let d = detector();
        let body = r#"{"model":"m","messages":[{"role":"system","content":"Tu réponds à Éric Dupré."},
            {"role":"user","content":"Écris à Sophie Lefèvre (<FR_NIR_1>) à Besançon, puis à Éric Dupré."}]}"#;
        let mut r = LlmRequest::parse(Operation::ChatCompletions, body.as_bytes().into()).unwrap();
        let batch = request_batch(&mut r).unwrap();
        // Keys are sent (a tool's property names reach the model), structural values
        // (`role`, `model`) are not.
        assert!(
            batch.text.contains("content") && !batch.text.contains("user"),
            "{:?}",
            batch.text
        );
        let findings = vec![
            found(&batch, "PERSON", "Éric Dupré."),
            found(&batch, "PERSON", "Sophie Lefèvre"),
            found(&batch, "LOCATION", "Besançon"),
            // Inside what the built-in detectors wrote: left alone.
            found(&batch, "PERSON", "FR_NIR_1"),
        ];
        let located = batch.locate(&findings, &d.entities);
        let mut scan = RequestScan::default();
        // As if the built-in NIR rule had issued the placeholder in the prompt.
        scan.pseudonyms
            .placeholder("FR_NIR", "1 85 05 78 006 084 91");
        assert!(apply_to_request(&mut r, &d, located, &mut scan, &[]).unwrap());
        let out: Value = serde_json::from_slice(&r.body_for("m", false).unwrap()).unwrap();
        // The service's span ran over the period: trimmed to the name.
        assert_eq!(out["messages"][0]["content"], "Tu réponds à <PERSON_1>.");
        assert_eq!(
            out["messages"][1]["content"],
            "Écris à <PERSON_2> (<FR_NIR_1>) à Besançon, puis à Éric Dupré."
        );
        assert_eq!(scan.counts[&("PERSON".to_string(), "pseudonymize")], 2);
        assert_eq!(scan.counts[&("LOCATION".to_string(), "alert")], 1);
        assert_eq!(scan.level, Some(vigie_dlp::Level::Personal));
        assert_eq!(scan.pseudonyms.restore_all("<PERSON_1>"), "Éric Dupré");
        assert!(scan.blocked.is_empty());
    }

    #[test]
    fn a_block_entity_blocks() {
        let d = detector();
        let body = r#"{"model":"m","messages":[{"role":"user","content":"Il est breton."}]}"#;
        let mut r = LlmRequest::parse(Operation::ChatCompletions, body.as_bytes().into()).unwrap();
        let batch = request_batch(&mut r).unwrap();
        let located = batch.locate(&[found(&batch, "NRP", "breton")], &d.entities);
        let mut scan = RequestScan::default();
        apply_to_request(&mut r, &d, located, &mut scan, &[]).unwrap();
        assert!(scan.blocked.contains("NRP"));
        assert_eq!(scan.level, Some(vigie_dlp::Level::Restricted));
    }

    #[test]
    fn what_dlp_wrote_is_protected_and_look_alikes_are_not() {
        let t = "à <PERSON_1> et [IBAN], pas <DUPONT> ni [x] ni <PERSON_2>";
        let wrote = |w: &str| ["<PERSON_1>", "[IBAN]"].contains(&w);
        let spans: Vec<&str> = written_by_dlp(t, &wrote)
            .iter()
            .map(|&(s, e)| &t[s..e])
            .collect();
        assert_eq!(spans, ["<PERSON_1>", "[IBAN]"]);
    }
}
