//! The policy's `dlp` section compiled into an [`Engine`] and per-detector actions.
//! Compilation is validation: every problem is reported with its field path, so the
//! control plane rejects at apply time what a sidecar could not load.

use std::collections::{HashMap, HashSet};

use vigie_proto::v1::{self, DlpAction, DlpDirection, SensitivityLevel, custom_detector};
use vigie_proto::validate::Violation;

use crate::detectors::{Detector, Level, Pattern, builtins, escape_literal};
use crate::engine::{DlpError, Engine};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Alert,
    Redact,
    Pseudonymize,
    Block,
}

/// What happens when one detector fires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DetectorActions {
    pub name: String,
    pub request: Option<Action>,
    pub response: Option<Action>,
    pub replacement: String,
    pub level: Level,
}

#[derive(Debug)]
pub struct CompiledDlp {
    pub engine: Engine,
    /// Indexed like `engine.detectors`.
    pub actions: Vec<DetectorActions>,
    pub hold_back_cap: usize,
    pub sensitivity_header: String,
    /// Services asked after the built-in detectors (`dlp.externalDetectors`).
    pub external: Vec<crate::external::ExternalDetector>,
}

impl CompiledDlp {
    pub fn scans_requests(&self) -> bool {
        self.actions.iter().any(|a| a.request.is_some())
    }
    pub fn scans_responses(&self) -> bool {
        self.actions.iter().any(|a| a.response.is_some())
    }
    /// Every replacement text DLP may write (`[IBAN]`, `[REDACTED]`, …): what an
    /// external detector's findings must not cut into.
    pub fn replacements(&self) -> Vec<String> {
        self.actions
            .iter()
            .map(|a| a.replacement.clone())
            .chain(
                self.external
                    .iter()
                    .flat_map(|x| x.entities.iter().map(|e| e.replacement.clone())),
            )
            .chain(["[REDACTED]".to_string()])
            .collect()
    }
    /// Whether an external detector also reads complete answers.
    pub fn external_answers(&self) -> bool {
        self.external.iter().any(|x| x.answers)
    }
}

pub const DEFAULT_HOLD_BACK_CAP: usize = 4096;
pub const DEFAULT_SENSITIVITY_HEADER: &str = "x-vigie-sensitivity";

pub fn level_of(l: SensitivityLevel) -> Option<Level> {
    match l {
        SensitivityLevel::Unspecified => None,
        SensitivityLevel::Public => Some(Level::Public),
        SensitivityLevel::Internal => Some(Level::Internal),
        SensitivityLevel::Personal => Some(Level::Personal),
        SensitivityLevel::Restricted => Some(Level::Restricted),
    }
}

fn action_of(a: DlpAction) -> Option<Action> {
    match a {
        DlpAction::Unspecified => None,
        DlpAction::Alert => Some(Action::Alert),
        DlpAction::Redact => Some(Action::Redact),
        DlpAction::Pseudonymize => Some(Action::Pseudonymize),
        DlpAction::Block => Some(Action::Block),
    }
}

fn valid_custom_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && n.as_bytes()[0].is_ascii_uppercase()
}

/// What the rules say about one detector name.
#[derive(Default)]
struct RuleEntry {
    request: Option<Action>,
    response: Option<Action>,
    replacement: String,
    level: Option<Level>,
}

struct Problems(Vec<Violation>);

impl Problems {
    fn add(&mut self, path: String, reason: impl Into<String>) {
        self.0.push(Violation {
            path,
            reason: reason.into(),
        });
    }
}

/// Compiles the `dlp` section (paths are prefixed with `dlp.`).
pub fn compile(dlp: &v1::Dlp) -> Result<CompiledDlp, Vec<Violation>> {
    let mut p = Problems(Vec::new());
    let builtin = builtins();
    let builtin_names: HashSet<&str> = builtin.iter().map(|d| d.name.as_str()).collect();

    // Custom detectors first: rules may name them.
    let mut customs: Vec<(usize, Detector)> = Vec::new();
    let mut custom_names = HashSet::new();
    // States all regex detectors unfold to, so far (compile time grows with it).
    let mut unfolded = 0u64;
    for (i, c) in dlp.custom_detectors.iter().enumerate() {
        let path = format!("dlp.customDetectors[{i}]");
        if !valid_custom_name(&c.name) {
            p.add(
                format!("{path}.name"),
                format!(
                    "{:?} must be upper-case letters, digits and '_', starting with a letter",
                    c.name
                ),
            );
        } else if builtin_names.contains(c.name.as_str()) {
            p.add(
                format!("{path}.name"),
                format!("{:?} is a built-in detector name", c.name),
            );
        } else if !custom_names.insert(c.name.as_str()) {
            p.add(
                format!("{path}.name"),
                format!("duplicate detector name {:?}", c.name),
            );
        }
        let patterns = match &c.kind {
            None => {
                p.add(path.clone(), "set either regex or keywords");
                continue;
            }
            Some(custom_detector::Kind::Regex(r)) if r.is_empty() => {
                p.add(format!("{path}.regex"), "must not be empty");
                continue;
            }
            Some(custom_detector::Kind::Regex(r)) => vec![Pattern::whole(r)],
            Some(custom_detector::Kind::Keywords(k)) => {
                let words: Vec<&String> = k.words.iter().filter(|w| !w.trim().is_empty()).collect();
                if words.is_empty() {
                    p.add(
                        format!("{path}.keywords.words"),
                        "at least one keyword is required",
                    );
                    continue;
                }
                vec![Pattern::whole(
                    &words
                        .iter()
                        // Texts are matched in folded form: so are keywords.
                        .map(|w| escape_literal(&crate::fold::Folded::of(w.trim()).text))
                        .collect::<Vec<_>>()
                        .join("|"),
                )]
            }
        };
        // Checked here too (not only when the engine is built) so that a broken
        // pattern is reported together with every other problem. A regex's complexity
        // is judged from its syntax before anything is compiled.
        let complexity = match c.kind {
            Some(custom_detector::Kind::Regex(_)) => {
                crate::engine::check_complexity(&patterns[0].full, c.case_insensitive).and_then(
                    |n| {
                        unfolded += n;
                        if unfolded > crate::engine::MAX_POLICY_UNFOLDED {
                            Err(crate::engine::PatternError(format!(
                                "too complex together: the policy's patterns up to this one unfold to {unfolded} states, at most {} allowed",
                                crate::engine::MAX_POLICY_UNFOLDED
                            )))
                        } else {
                            Ok(())
                        }
                    },
                )
            }
            _ => Ok(()),
        };
        if let Err(message) = complexity
            .and_then(|()| crate::engine::check_pattern(&patterns[0].full, c.case_insensitive))
        {
            let field = match c.kind {
                Some(custom_detector::Kind::Keywords(_)) => "keywords",
                _ => "regex",
            };
            p.add(
                format!("{path}.{field}"),
                format!("does not compile: {message}"),
            );
            continue;
        }
        customs.push((
            i,
            Detector {
                name: c.name.clone(),
                patterns,
                caseless: c.case_insensitive
                    || matches!(c.kind, Some(custom_detector::Kind::Keywords(_))),
                check: None,
                context: c.context.iter().map(|w| w.to_lowercase()).collect(),
                level: level_of(c.level()).unwrap_or(Level::Restricted),
                glue: false,
                lead: None,
                yields: false,
                sentence: false,
                not_after: None,
            },
        ));
    }

    // Rules: which detectors, which action in which direction.
    let mut by_name: HashMap<String, RuleEntry> = HashMap::new();
    let mut wildcard: Option<(Option<Action>, Option<Action>)> = None;
    for (i, r) in dlp.rules.iter().enumerate() {
        let path = format!("dlp.rules[{i}]");
        let action = match DlpAction::try_from(r.action) {
            Ok(a) => action_of(a),
            Err(_) => {
                p.add(
                    format!("{path}.action"),
                    format!("unknown action {}", r.action),
                );
                continue;
            }
        };
        let Some(action) = action else {
            p.add(
                format!("{path}.action"),
                "must be set (DLP_ACTION_ALERT, _REDACT, _PSEUDONYMIZE or _BLOCK)",
            );
            continue;
        };
        let (req, resp) = match DlpDirection::try_from(r.direction) {
            Ok(DlpDirection::Request) => (true, false),
            Ok(DlpDirection::Response) => (false, true),
            Ok(_) => (true, true),
            Err(_) => {
                p.add(
                    format!("{path}.direction"),
                    format!("unknown direction {}", r.direction),
                );
                continue;
            }
        };
        if action == Action::Pseudonymize && resp && !req {
            p.add(
                format!("{path}.action"),
                "pseudonymize applies to requests (answers get the values back)",
            );
        }
        if r.detector == "*" {
            let w = wildcard.get_or_insert((None, None));
            if req {
                w.0 = Some(action);
            }
            if resp {
                w.1 = Some(action);
            }
            continue;
        }
        if !builtin_names.contains(r.detector.as_str())
            && !custom_names.contains(r.detector.as_str())
        {
            let mut known: Vec<&str> = builtin_names.iter().copied().collect();
            known.sort_unstable();
            known.dedup();
            p.add(
                format!("{path}.detector"),
                format!(
                    "unknown detector {:?} (built-ins: {}; or a custom detector's name)",
                    r.detector,
                    known.join(", ")
                ),
            );
            continue;
        }
        let entry = by_name.entry(r.detector.clone()).or_default();
        if (req && entry.request.is_some()) || (resp && entry.response.is_some()) {
            p.add(
                format!("{path}.detector"),
                format!("{:?} already has a rule for this direction", r.detector),
            );
            continue;
        }
        if req {
            entry.request = Some(action);
        }
        if resp {
            entry.response = Some(action);
        }
        if !r.replacement.is_empty() {
            entry.replacement.clone_from(&r.replacement);
        }
        if let Ok(l) = SensitivityLevel::try_from(r.level)
            && let Some(l) = level_of(l)
        {
            entry.level = Some(l);
        }
    }

    // The engine's detector list: built-ins and customs that some rule turns on.
    let mut detectors = Vec::new();
    let mut actions = Vec::new();
    let mut origin = Vec::new(); // None: built-in; Some(i): custom detector i
    let all = builtin
        .into_iter()
        .map(|d| (None, d))
        .chain(customs.into_iter().map(|(i, d)| (Some(i), d)));
    for (from, d) in all {
        let named = by_name.get(&d.name);
        // A named rule overrides the wildcard only in the directions it names: the
        // other direction keeps the wildcard's action (built-ins only).
        let wild = if from.is_none() {
            wildcard.unwrap_or((None, None))
        } else {
            (None, None)
        };
        let (request, response) = match named {
            Some(n) => (n.request.or(wild.0), n.response.or(wild.1)),
            None => wild,
        };
        if request.is_none() && response.is_none() {
            continue;
        }
        let replacement = named
            .map(|n| n.replacement.clone())
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| format!("[{}]", d.name));
        let level = named.and_then(|n| n.level).unwrap_or(d.level);
        actions.push(DetectorActions {
            name: d.name.clone(),
            request,
            response,
            replacement,
            level,
        });
        origin.push(from);
        detectors.push(d);
    }
    let external = crate::external::compile(&dlp.external_detectors, &mut p.0);
    if !p.0.is_empty() {
        return Err(p.0);
    }
    let engine = Engine::new(detectors).map_err(|e| match e {
        DlpError::Pattern {
            detector, message, ..
        } => match origin.get(detector).copied().flatten() {
            Some(i) => {
                let field = match dlp.custom_detectors[i].kind {
                    Some(custom_detector::Kind::Keywords(_)) => "keywords",
                    _ => "regex",
                };
                vec![Violation {
                    path: format!("dlp.customDetectors[{i}].{field}"),
                    reason: format!("does not compile: {message}"),
                }]
            }
            None => vec![Violation {
                path: "dlp".into(),
                reason: format!("built-in detectors failed to compile: {message}"),
            }],
        },
        other => vec![Violation {
            path: "dlp".into(),
            reason: other.to_string(),
        }],
    })?;
    Ok(CompiledDlp {
        engine,
        actions,
        hold_back_cap: if dlp.hold_back_cap == 0 {
            DEFAULT_HOLD_BACK_CAP
        } else {
            dlp.hold_back_cap as usize
        },
        sensitivity_header: if dlp.sensitivity_header.is_empty() {
            DEFAULT_SENSITIVITY_HEADER.into()
        } else {
            dlp.sensitivity_header.to_ascii_lowercase()
        },
        external,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlp(json: &str) -> v1::Dlp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn every_keyword_of_the_largest_allowed_list_is_found() {
        let n = vigie_proto::validate::limits::KEYWORDS_PER_DETECTOR;
        let words: Vec<String> = (0..n).map(|i| format!("\"Projet{i:04}x\"")).collect();
        let c = compile(&dlp(&format!(
            r#"{{"rules":[{{"detector":"CODES","action":"DLP_ACTION_REDACT"}}],
              "customDetectors":[{{"name":"CODES","keywords":{{"words":[{}]}}}}]}}"#,
            words.join(",")
        )))
        .unwrap();
        for i in [0, 1, n / 2, n - 2, n - 1] {
            let text = format!("au sujet du projet{i:04}x demain");
            let found = c.engine.find(&text, "").unwrap();
            assert_eq!(found.len(), 1, "keyword {i} of {n}: {found:?}");
        }
    }

    #[test]
    fn a_regex_whose_repetitions_unfold_too_far_is_refused_by_its_syntax() {
        let err = compile(&dlp(
            r#"{"customDetectors":[{"name":"SLOW","regex":"((a|b){200}){200}"}]}"#,
        ))
        .unwrap_err();
        assert_eq!(err[0].path, "dlp.customDetectors[0].regex");
        assert!(err[0].reason.contains("too complex"), "{err:?}");
        // An ordinary identifier pattern is far below the limit.
        compile(&dlp(
            r#"{"customDetectors":[{"name":"DOSSIER","regex":"DOS-[0-9]{4}-[A-Z]{2}[0-9]{6,10}"}]}"#,
        ))
        .unwrap();
        // Each under the limit, too many together: the first past the total is named.
        let many: Vec<String> = (0..8)
            .map(|i| format!(r#"{{"name":"D{i}","regex":"(x[0-9]{{3}}y){{375}}"}}"#))
            .collect();
        let err = compile(&dlp(&format!(
            r#"{{"customDetectors":[{}]}}"#,
            many.join(",")
        )))
        .unwrap_err();
        // 1,875 states each: the sixth makes 11,250.
        assert_eq!(err.len(), 3, "{err:?}");
        assert_eq!(err[0].path, "dlp.customDetectors[5].regex");
        assert!(err[0].reason.contains("too complex together"), "{err:?}");
    }

    #[test]
    fn rules_and_customs_compile() {
        let c = compile(&dlp(
            r#"{"rules":[{"detector":"*","action":"DLP_ACTION_REDACT"},
                {"detector":"FR_NIR","action":"DLP_ACTION_PSEUDONYMIZE","direction":"DLP_DIRECTION_REQUEST"},
                {"detector":"PROJECT","action":"DLP_ACTION_BLOCK"}],
              "customDetectors":[{"name":"PROJECT","keywords":{"words":["Opération Hermès","NEPTUNE"]}}]}"#,
        ))
        .unwrap();
        // The named rule sets requests; answers keep the wildcard's action (a NIR the
        // model writes is still redacted).
        let nir = c.actions.iter().find(|a| a.name == "FR_NIR").unwrap();
        assert_eq!(
            (nir.request, nir.response),
            (Some(Action::Pseudonymize), Some(Action::Redact))
        );
        let iban = c.actions.iter().find(|a| a.name == "IBAN").unwrap();
        assert_eq!(
            (iban.request, iban.response),
            (Some(Action::Redact), Some(Action::Redact))
        );
        assert_eq!(iban.replacement, "[IBAN]");
        let found = c.engine.find("le projet neptune avance", "").unwrap();
        assert_eq!(c.actions[found[0].detector].name, "PROJECT");
    }

    #[test]
    fn every_problem_has_a_path() {
        let errors = compile(&dlp(
            r#"{"rules":[{"detector":"FR_NIRR","action":"DLP_ACTION_REDACT"},
                {"detector":"IBAN"},
                {"detector":"IBAN","action":"DLP_ACTION_REDACT"},
                {"detector":"IBAN","action":"DLP_ACTION_BLOCK"}],
              "customDetectors":[{"name":"bad name","regex":"x"},{"name":"IBAN","regex":"y"},
                {"name":"EMPTY","keywords":{"words":[]}}]}"#,
        ))
        .unwrap_err();
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert!(
            text[0].starts_with("dlp.customDetectors[0].name: \"bad name\" must be upper-case"),
            "{text:#?}"
        );
        assert_eq!(
            text[1],
            "dlp.customDetectors[1].name: \"IBAN\" is a built-in detector name"
        );
        assert_eq!(
            text[2],
            "dlp.customDetectors[2].keywords.words: at least one keyword is required"
        );
        assert!(text[3].starts_with("dlp.rules[0].detector: unknown detector \"FR_NIRR\""));
        assert!(text[4].starts_with("dlp.rules[1].action: must be set"));
        assert_eq!(
            text[5],
            "dlp.rules[3].detector: \"IBAN\" already has a rule for this direction"
        );
        assert_eq!(text.len(), 6);
    }

    #[test]
    fn documented_example_compiles() {
        let p: v1::Policy =
            serde_json::from_str(include_str!("../../../docs/examples/policy-dlp.json")).unwrap();
        let c = compile(p.dlp.as_ref().unwrap()).unwrap();
        assert!(c.scans_requests() && c.scans_responses());
    }

    #[test]
    fn regex_compile_errors_name_the_field() {
        let errors = compile(&dlp(
            r#"{"rules":[{"detector":"CODE","action":"DLP_ACTION_ALERT"}],
              "customDetectors":[{"name":"CODE","regex":"AB(["}]}"#,
        ))
        .unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0]
                .to_string()
                .starts_with("dlp.customDetectors[0].regex: does not compile:"),
            "{}",
            errors[0]
        );
    }
}
