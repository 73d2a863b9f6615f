//! External detectors (policy `dlp.externalDetectors`): services of the cluster (NER
//! such as Presidio, an LLM judge) that find what patterns cannot, asked with the
//! request's texts after the built-in detectors ran. This module is the plain part:
//! the section compiled and validated with field paths, the service's answer read
//! (Presidio analyzer's shape, offsets in code points) and turned into byte ranges
//! of the texts that were sent. The call itself is the sidecar's.

use std::time::Duration;

use vigie_proto::v1::{self, DlpAction, ExternalFailureMode, SensitivityLevel};
use vigie_proto::validate::Violation;

use crate::detectors::Level;
use crate::policy::{Action, level_of};

/// Bounds of the section: a policy cannot make a request wait long or send much.
pub const MAX_DETECTORS: usize = 4;
pub const MAX_ENTITIES: usize = 32;
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(1000);
pub const MAX_TIMEOUT_MS: u32 = 10_000;
pub const DEFAULT_MAX_BYTES: usize = 64 * 1024;
pub const MAX_MAX_BYTES: u32 = 1024 * 1024;
/// Most bytes of a service's answer read, and findings taken from it.
pub const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;
pub const MAX_FINDINGS: usize = 10_000;
/// What is put between two texts sent together: a paragraph break, so NER does not
/// read two messages as one sentence. Findings never span it.
pub const SEPARATOR: &str = "\n\n";

/// One entity type the policy keeps, and what it becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    pub kind: String,
    pub detector: String,
    /// In requests (pseudonymize unless the policy says otherwise).
    pub request: Action,
    /// In answers: pseudonymizing an answer means nothing, so it is redacted.
    pub response: Action,
    pub replacement: String,
    pub level: Level,
    pub min_score: f64,
}

/// One external detector, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalDetector {
    pub name: String,
    /// `http://host:port/path`: plain http inside the cluster.
    pub url: url::Url,
    pub language: String,
    pub timeout: Duration,
    pub max_bytes: usize,
    pub fail_open: bool,
    pub answers: bool,
    pub entities: Vec<Entity>,
}

/// Inside the cluster, strictly: loopback, a private address, a `.svc` or
/// `.cluster.local` name. Not a single-label or absolute (`ai.`) name, which DNS
/// search lists or public DNS may resolve outside the cluster: the service receives
/// texts in clear.
fn in_cluster(u: &url::Url) -> bool {
    match u.host() {
        Some(url::Host::Domain(d)) => {
            let d = d.to_ascii_lowercase();
            !d.ends_with('.')
                && (d == "localhost" || d.ends_with(".svc") || d.ends_with(".cluster.local"))
        }
        _ => vigie_proto::validate::is_in_cluster(u),
    }
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 63
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn valid_detector(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
        && n.as_bytes()[0].is_ascii_uppercase()
}

/// Compiles `dlp.externalDetectors`; problems are added to `problems` with their paths.
pub fn compile(
    section: &[v1::ExternalDetector],
    problems: &mut Vec<Violation>,
) -> Vec<ExternalDetector> {
    let mut add = |path: String, reason: &str| {
        problems.push(Violation {
            path,
            reason: reason.to_string(),
        });
    };
    if section.len() > MAX_DETECTORS {
        add(
            "dlp.externalDetectors".into(),
            &format!("at most {MAX_DETECTORS} external detectors (each one is a call per request)"),
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut names = std::collections::HashSet::new();
    for (i, x) in section.iter().enumerate() {
        let path = format!("dlp.externalDetectors[{i}]");
        let mut ok = true;
        if !valid_name(&x.name) {
            add(
                format!("{path}.name"),
                "must be 1 to 63 lower-case letters, digits and '-'",
            );
            ok = false;
        } else if !names.insert(x.name.as_str()) {
            add(format!("{path}.name"), "duplicate external detector name");
            ok = false;
        }
        let url = match url::Url::parse(&x.url) {
            Err(_) => {
                add(format!("{path}.url"), "must be an http:// URL");
                None
            }
            Ok(u) if u.scheme() != "http" || u.host_str().is_none() => {
                add(
                    format!("{path}.url"),
                    "must be an http:// URL with a host (the sidecar speaks plain HTTP/1.1 to a service of the cluster)",
                );
                None
            }
            Ok(u) if !in_cluster(&u) => {
                add(
                    format!("{path}.url"),
                    "must name a host inside the cluster (loopback, a private address, a .svc or .cluster.local name; not a single-label or absolute name): the service receives texts before DLP hides them",
                );
                None
            }
            Ok(u) if !u.username().is_empty() || u.password().is_some() => {
                add(format!("{path}.url"), "must not carry credentials");
                None
            }
            Ok(u) => Some(u),
        };
        if x.timeout_ms > MAX_TIMEOUT_MS {
            add(
                format!("{path}.timeoutMs"),
                &format!("at most {MAX_TIMEOUT_MS} ms"),
            );
            ok = false;
        }
        if x.max_bytes > MAX_MAX_BYTES {
            add(
                format!("{path}.maxBytes"),
                &format!("at most {MAX_MAX_BYTES} bytes"),
            );
            ok = false;
        }
        let language = if x.language.is_empty() {
            "fr".to_string()
        } else if x.language.len() <= 16
            && x.language
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            x.language.clone()
        } else {
            add(
                format!("{path}.language"),
                "must be a language code such as \"fr\"",
            );
            ok = false;
            String::new()
        };
        let fail_open = match ExternalFailureMode::try_from(x.on_failure) {
            Ok(ExternalFailureMode::Open) => true,
            Ok(_) => false,
            Err(_) => {
                add(
                    format!("{path}.onFailure"),
                    &format!("unknown failure mode {}", x.on_failure),
                );
                ok = false;
                false
            }
        };
        if x.entities.is_empty() {
            add(
                format!("{path}.entities"),
                "at least one entity type is required (which of the service's findings to keep)",
            );
            ok = false;
        } else if x.entities.len() > MAX_ENTITIES {
            add(
                format!("{path}.entities"),
                &format!("at most {MAX_ENTITIES} entity types"),
            );
            ok = false;
        }
        let mut entities = Vec::new();
        let mut kinds = std::collections::HashSet::new();
        for (j, e) in x.entities.iter().enumerate().take(MAX_ENTITIES) {
            let epath = format!("{path}.entities[{j}]");
            if e.r#type.is_empty() || e.r#type.len() > 64 || e.r#type.chars().any(char::is_control)
            {
                add(
                    format!("{epath}.type"),
                    "must be 1 to 64 printable characters",
                );
                ok = false;
            } else if !kinds.insert(e.r#type.as_str()) {
                add(format!("{epath}.type"), "named twice");
                ok = false;
            }
            if !valid_detector(&e.detector) {
                add(
                    format!("{epath}.detector"),
                    "must be upper-case letters, digits and '_', starting with a letter",
                );
                ok = false;
            }
            let action = match DlpAction::try_from(e.action) {
                Ok(DlpAction::Unspecified) => None,
                Ok(DlpAction::Alert) => Some(Action::Alert),
                Ok(DlpAction::Redact) => Some(Action::Redact),
                Ok(DlpAction::Pseudonymize) => Some(Action::Pseudonymize),
                Ok(DlpAction::Block) => Some(Action::Block),
                Err(_) => {
                    add(
                        format!("{epath}.action"),
                        &format!("unknown action {}", e.action),
                    );
                    ok = false;
                    None
                }
            };
            if !(0.0..=1.0).contains(&e.min_score) || e.min_score.is_nan() {
                add(format!("{epath}.minScore"), "must be between 0 and 1");
                ok = false;
            }
            let level = match SensitivityLevel::try_from(e.level) {
                Ok(l) => level_of(l).unwrap_or(Level::Personal),
                Err(_) => {
                    add(
                        format!("{epath}.level"),
                        &format!("unknown level {}", e.level),
                    );
                    ok = false;
                    Level::Personal
                }
            };
            let request = action.unwrap_or(Action::Pseudonymize);
            entities.push(Entity {
                kind: e.r#type.clone(),
                detector: e.detector.clone(),
                request,
                response: match request {
                    Action::Pseudonymize => Action::Redact,
                    a => a,
                },
                replacement: format!("[{}]", e.detector),
                level,
                min_score: if e.min_score == 0.0 {
                    0.5
                } else {
                    f64::from(e.min_score)
                },
            });
        }
        if let (true, Some(url)) = (ok, url) {
            out.push(ExternalDetector {
                name: x.name.clone(),
                url,
                language,
                timeout: if x.timeout_ms == 0 {
                    DEFAULT_TIMEOUT
                } else {
                    Duration::from_millis(u64::from(x.timeout_ms))
                },
                max_bytes: if x.max_bytes == 0 {
                    DEFAULT_MAX_BYTES
                } else {
                    x.max_bytes as usize
                },
                fail_open,
                answers: x.answers,
                entities,
            });
        }
    }
    out
}

/// Texts sent together in one call: joined with [`SEPARATOR`], each one's start kept.
#[derive(Debug, Default)]
pub struct Batch {
    pub text: String,
    starts: Vec<usize>,
}

impl Batch {
    pub fn of<'a>(texts: impl IntoIterator<Item = &'a str>) -> Self {
        let mut b = Batch::default();
        for t in texts {
            if !b.starts.is_empty() {
                b.text.push_str(SEPARATOR);
            }
            b.starts.push(b.text.len());
            b.text.push_str(t);
        }
        b
    }

    pub fn is_empty(&self) -> bool {
        self.text.trim().is_empty()
    }

    /// The service's findings as byte ranges of each text sent: offsets converted from
    /// code points, findings of types the policy does not keep or scored too low
    /// dropped, a finding that runs over a separator cut at it.
    pub fn locate(&self, found: &[Found], entities: &[Entity]) -> Vec<Located> {
        // Code point index → byte offset, for every offset the service may name.
        let mut bytes_at: Vec<usize> = self.text.char_indices().map(|(b, _)| b).collect();
        bytes_at.push(self.text.len());
        let mut out = Vec::new();
        for f in found.iter().take(MAX_FINDINGS) {
            let Some(entity) = entities
                .iter()
                .position(|e| e.kind == f.entity_type && f.score >= e.min_score)
            else {
                continue;
            };
            let (Some(&start), Some(&end)) = (bytes_at.get(f.start), bytes_at.get(f.end)) else {
                continue;
            };
            if start >= end {
                continue;
            }
            // The texts it touches: from the one it starts in, while they start before
            // it ends (a binary search, not a walk over every text per finding).
            let first = self
                .starts
                .partition_point(|&s| s <= start)
                .saturating_sub(1);
            for (part, &from) in self.starts.iter().enumerate().skip(first) {
                if from >= end {
                    break;
                }
                let to = self
                    .starts
                    .get(part + 1)
                    .map_or(self.text.len(), |&next| next - SEPARATOR.len());
                let (s, e) = (start.max(from), end.min(to));
                if s < e {
                    out.push(Located {
                        part,
                        start: s - from,
                        end: e - from,
                        entity,
                    });
                }
            }
        }
        out
    }
}

/// One finding of a service, as its answer gives it (Presidio's `RecognizerResult`).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Found {
    pub entity_type: String,
    pub start: usize,
    pub end: usize,
    #[serde(default = "one")]
    pub score: f64,
}

fn one() -> f64 {
    1.0
}

/// A finding placed in one text: byte range of that text, index of its entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    pub part: usize,
    pub start: usize,
    pub end: usize,
    pub entity: usize,
}

/// Why a service's answer was not used.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    #[error("answer larger than {MAX_ANSWER_BYTES} bytes")]
    TooLarge,
    #[error("answer is not a JSON list of findings: {0}")]
    Shape(#[from] serde_json::Error),
}

/// Reads a service's answer: a JSON list of findings.
pub fn parse_answer(body: &[u8]) -> Result<Vec<Found>, AnswerError> {
    if body.len() > MAX_ANSWER_BYTES {
        return Err(AnswerError::TooLarge);
    }
    Ok(serde_json::from_slice(body)?)
}

/// The request a service receives (Presidio analyzer's `/analyze`).
pub fn request_body(text: &str, language: &str) -> Vec<u8> {
    serde_json::json!({"text": text, "language": language})
        .to_string()
        .into_bytes()
}

/// Non-overlapping findings of one text, leftmost first, the longest on ties, with
/// the spans `keep` protects (what DLP wrote: placeholders, replacements) cut out of
/// them: a service's span that runs over `<FR_NIR_1>` hides the words around it and
/// leaves the placeholder restorable. Pieces are trimmed to their letters and digits.
pub fn resolve(text: &str, found: Vec<Located>, keep: &[(usize, usize)]) -> Vec<Located> {
    let mut keep = keep.to_vec();
    keep.sort_unstable();
    let mut pieces: Vec<Located> = Vec::with_capacity(found.len());
    let mut push = |f: Located, start: usize, end: usize| {
        let Some(piece) = text.get(start..end) else {
            return;
        };
        let trimmed = piece.trim_start_matches(|c: char| !c.is_alphanumeric());
        let start = start + (piece.len() - trimmed.len());
        let trimmed = trimmed.trim_end_matches(|c: char| !c.is_alphanumeric());
        if !trimmed.is_empty() {
            pieces.push(Located {
                start,
                end: start + trimmed.len(),
                ..f
            });
        }
    };
    for f in found {
        let mut at = f.start;
        for &(s, e) in &keep {
            if e <= at || s >= f.end {
                continue;
            }
            if s > at {
                push(f, at, s);
            }
            at = at.max(e);
        }
        if at < f.end {
            push(f, at, f.end);
        }
    }
    pieces.sort_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)));
    let mut out: Vec<Located> = Vec::with_capacity(pieces.len());
    for f in pieces {
        if out.last().is_none_or(|l| l.end <= f.start) {
            out.push(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(json: &str) -> Result<Vec<ExternalDetector>, Vec<Violation>> {
        let d: v1::Dlp = serde_json::from_str(json).unwrap();
        let mut p = Vec::new();
        let out = compile(&d.external_detectors, &mut p);
        if p.is_empty() { Ok(out) } else { Err(p) }
    }

    #[test]
    fn a_valid_section_gets_its_defaults() {
        let x = section(
            r#"{"externalDetectors":[{"name":"presidio","url":"http://presidio.dlp.svc:3000/analyze",
               "entities":[{"type":"PERSON","detector":"PERSON"},{"type":"LOCATION","detector":"LOCATION","action":"DLP_ACTION_ALERT","minScore":0.8}]}]}"#,
        )
        .unwrap();
        assert_eq!(x[0].language, "fr");
        assert_eq!(x[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(x[0].max_bytes, DEFAULT_MAX_BYTES);
        assert!(!x[0].fail_open, "fail closed unless the policy says open");
        assert_eq!(x[0].entities[0].request, Action::Pseudonymize);
        assert_eq!(x[0].entities[0].response, Action::Redact);
        assert_eq!(x[0].entities[0].level, Level::Personal);
        assert!((x[0].entities[1].min_score - 0.8).abs() < 1e-6);
    }

    #[test]
    fn every_problem_has_a_path() {
        let e = section(
            r#"{"externalDetectors":[
                {"name":"Bad Name","url":"https://presidio.example.com/analyze","entities":[]},
                {"name":"ok","url":"http://api.example.com/analyze","timeoutMs":60000,"maxBytes":99999999,
                 "entities":[{"type":"PERSON","detector":"person","minScore":2}]},
                {"name":"ok","url":"http://user:pw@10.0.0.1/analyze","language":"fr fr",
                 "entities":[{"type":"PERSON","detector":"PERSON"},{"type":"PERSON","detector":"X"}]}]}"#,
        )
        .unwrap_err();
        let text: Vec<String> = e.iter().map(ToString::to_string).collect();
        let paths: Vec<&str> = e.iter().map(|v| v.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "dlp.externalDetectors[0].name",
                "dlp.externalDetectors[0].url",
                "dlp.externalDetectors[0].entities",
                "dlp.externalDetectors[1].url",
                "dlp.externalDetectors[1].timeoutMs",
                "dlp.externalDetectors[1].maxBytes",
                "dlp.externalDetectors[1].entities[0].detector",
                "dlp.externalDetectors[1].entities[0].minScore",
                "dlp.externalDetectors[2].name",
                "dlp.externalDetectors[2].url",
                "dlp.externalDetectors[2].language",
                "dlp.externalDetectors[2].entities[1].type",
            ],
            "{text:#?}"
        );
        assert!(text[3].contains("inside the cluster"), "{}", text[3]);
        for url in [
            "http://ai./analyze",
            "http://presidio/analyze",
            "http://x.svc./a",
        ] {
            let e = section(&format!(
                r#"{{"externalDetectors":[{{"name":"n","url":"{url}","entities":[{{"type":"PERSON","detector":"PERSON"}}]}}]}}"#
            ))
            .unwrap_err();
            assert_eq!(e[0].path, "dlp.externalDetectors[0].url", "{url}");
        }
        for url in [
            "http://[::1]:3000/analyze",
            "http://presidio.dlp.svc:3000/analyze",
            "http://10.1.2.3/a",
        ] {
            assert!(section(&format!(
                r#"{{"externalDetectors":[{{"name":"n","url":"{url}","entities":[{{"type":"PERSON","detector":"PERSON"}}]}}]}}"#
            )).is_ok(), "{url}");
        }
        // Nothing of the URL (credentials) is echoed back.
        assert!(!text.iter().any(|t| t.contains("pw")), "{text:#?}");
    }

    #[test]
    fn code_point_offsets_become_byte_ranges_of_each_text() {
        let b = Batch::of(["Mme Sophie Lefèvre", "né à Besançon : Éric Dupré"]);
        let entities = vec![Entity {
            kind: "PERSON".into(),
            detector: "PERSON".into(),
            request: Action::Pseudonymize,
            response: Action::Redact,
            replacement: "[PERSON]".into(),
            level: Level::Personal,
            min_score: 0.5,
        }];
        let cp = |s: &str| s.chars().count();
        let second = cp("Mme Sophie Lefèvre") + 2;
        let found = vec![
            Found {
                entity_type: "PERSON".into(),
                start: 4,
                end: cp("Mme Sophie Lefèvre"),
                score: 0.85,
            },
            Found {
                entity_type: "PERSON".into(),
                start: second + cp("né à Besançon : "),
                end: second + cp("né à Besançon : Éric Dupré"),
                score: 0.85,
            },
            // Too low a score, an unknown type, out of range, empty: dropped.
            Found {
                entity_type: "PERSON".into(),
                start: 0,
                end: 3,
                score: 0.2,
            },
            Found {
                entity_type: "NRP".into(),
                start: 0,
                end: 3,
                score: 1.0,
            },
            Found {
                entity_type: "PERSON".into(),
                start: 5,
                end: 10_000,
                score: 1.0,
            },
            Found {
                entity_type: "PERSON".into(),
                start: 7,
                end: 7,
                score: 1.0,
            },
        ];
        let l = b.locate(&found, &entities);
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!(
            &"Mme Sophie Lefèvre"[l[0].start..l[0].end],
            "Sophie Lefèvre"
        );
        assert_eq!(l[1].part, 1);
        assert_eq!(
            &"né à Besançon : Éric Dupré"[l[1].start..l[1].end],
            "Éric Dupré"
        );
        // Across the separator: cut into each text.
        let across = vec![Found {
            entity_type: "PERSON".into(),
            start: 11,
            end: second + 2,
            score: 1.0,
        }];
        let l = b.locate(&across, &entities);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].part, l[1].part), (0, 1));
        assert_eq!((l[1].start, l[1].end), (0, "né".len()));
    }

    #[test]
    fn overlaps_resolve_to_the_longest_leftmost_and_protected_spans_stay() {
        let f = |start, end| Located {
            part: 0,
            start,
            end,
            entity: 0,
        };
        let text = "Zyrgon Kwapisz et Sophie (<FR_NIR_1>) et <PERSON_1> lu";
        let at = |s: &str| text.find(s).unwrap();
        let nir = (at("<FR_NIR_1>"), at("<FR_NIR_1>") + "<FR_NIR_1>".len());
        let p1 = (at("<PERSON_1>"), at("<PERSON_1>") + "<PERSON_1>".len());
        let r = resolve(
            text,
            vec![
                f(0, 6),
                f(0, at(" et Sophie")),
                f(at("Sophie"), nir.1 + 1),
                f(p1.0, p1.1),
            ],
            &[nir, p1],
        );
        let spans: Vec<&str> = r.iter().map(|l| &text[l.start..l.end]).collect();
        // The longest of two overlapping; a span over a placeholder cut around it and
        // trimmed; a span inside one dropped.
        assert_eq!(spans, ["Zyrgon Kwapisz", "Sophie"]);
    }

    #[test]
    fn answers_are_read_within_bounds() {
        let ok = parse_answer(
            br#"[{"entity_type":"PERSON","start":0,"end":3,"score":0.85,"analysis_explanation":null,"recognition_metadata":{}}]"#,
        )
        .unwrap();
        assert_eq!(ok.len(), 1);
        assert!(parse_answer(b"{\"error\":1}").is_err());
        assert!(parse_answer(&vec![b' '; MAX_ANSWER_BYTES + 1]).is_err());
    }
}
