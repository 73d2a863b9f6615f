//! Detector definitions: built-ins with stable names, and custom ones from policies.
//!
//! Patterns use the subset of syntax both Hyperscan and `regex-automata` accept
//! identically (ASCII classes, alternation, counted repetition, `(?i)`), because the
//! same patterns drive the full-match scan and the streaming hold-back decision.
//! Word boundaries are checked in Rust (an alphanumeric may not touch a match), since
//! `\b` differs between the two engines.
//!
//! A built-in pattern written `lead«rest` is scanned for as `rest` only: patterns that
//! start with letters (IBAN, SIV plates) or hex digits (IPv6) would otherwise make the
//! scan stop at every word; their start is recovered by a reverse automaton.

use crate::checks;

/// Sensitivity levels, ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Public,
    Internal,
    Personal,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Public => "public",
            Level::Internal => "internal",
            Level::Personal => "personal",
            Level::Restricted => "restricted",
        }
    }
}

/// One pattern of a detector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The whole pattern: what the streaming hold-back and the start recovery use.
    pub full: String,
    /// What the multi-pattern scan looks for: `full` itself, or a suffix of it that
    /// begins on rarer bytes (digits rather than letters). Every match of `full` ends
    /// where a match of `scan` ends, so no end is lost; the reverse automaton of `full`
    /// then finds the real start or rejects the candidate.
    pub scan: String,
}

impl Pattern {
    pub fn whole(p: &str) -> Self {
        Self {
            full: p.to_string(),
            scan: p.to_string(),
        }
    }

    /// `lead«rest` scans for `rest` only; the whole pattern is `(?:lead)rest`.
    pub(crate) fn parse(spec: &str) -> Self {
        match spec.split_once('«') {
            Some((lead, rest)) => Self {
                full: format!("(?:{lead}){rest}"),
                scan: rest.to_string(),
            },
            None => Self::whole(spec),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Detector {
    /// Stable name, e.g. `FR_NIR`.
    pub name: String,
    pub patterns: Vec<Pattern>,
    pub caseless: bool,
    /// Removes format matches that are not the real thing (checksums, ranges).
    pub check: Option<fn(&str) -> bool>,
    /// When not empty, one of these words (lower case) must appear shortly before.
    pub context: Vec<String>,
    pub level: Level,
    /// Letters may touch the match (`ref185057800608491x`); only a digit against a
    /// digit edge breaks it: for numbers whose checksum makes a chance match rare.
    pub glue: bool,
    /// How many leading bytes of a match are the context that made it (a civility
    /// before a name): left in the text, the finding starts after them.
    pub lead: Option<fn(&str) -> usize>,
    /// A match in free prose (a name, an address, a date): it gives way to the other
    /// detectors' matches it overlaps.
    pub yields: bool,
    /// The context words must be in the match's own sentence, before it, as whole words
    /// (`il` is not in `ville`; each starts with a letter or a digit): the window of
    /// [`crate::engine::CONTEXT_WINDOW`] bytes is cut at the last sentence end before
    /// the match. Such a detector is not gated on its context words (they are common:
    /// pronouns, civilities): its patterns are scanned everywhere and must be specific
    /// phrases.
    pub sentence: bool,
    /// Refuses a match from the text right before it (up to [`crate::engine::NOT_AFTER_WINDOW`]
    /// bytes): a name after `lycée` or `rue` is a place named after someone.
    pub not_after: Option<fn(&str) -> bool>,
}

fn d<P: AsRef<str>>(
    name: &str,
    patterns: &[P],
    check: Option<fn(&str) -> bool>,
    context: &[&str],
    level: Level,
) -> Detector {
    Detector {
        name: name.to_string(),
        patterns: patterns
            .iter()
            .map(|p| Pattern::parse(p.as_ref()))
            .collect(),
        caseless: false,
        check,
        context: context.iter().map(|c| (*c).to_string()).collect(),
        level,
        glue: false,
        lead: None,
        yields: false,
        sentence: false,
        not_after: None,
    }
}

/// One separator people or software put between digit groups (space — every space
/// folds to it —, tab, dot, dash, slash, underscore, a line end of any kind), or none.
/// Patterns follow the groupings people write; checks refuse mixed separators.
const SEP: &str = "(\\r\\n|[ ._/\\t\\r\\n\\x0b\\x0c-])?";

fn not_anthropic(s: &str) -> bool {
    !s.starts_with("sk-ant-")
}

fn letters_and_digits(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_digit()) && s.bytes().any(|b| b.is_ascii_alphabetic())
}

fn caseless(mut d: Detector) -> Detector {
    d.caseless = true;
    d
}

fn glued(mut d: Detector) -> Detector {
    d.glue = true;
    d
}

/// Every built-in detector. Names are part of the policy API: never rename one.
pub fn builtins() -> Vec<Detector> {
    use Level::{Personal, Restricted};
    const CNI: &[&str] = &[
        "carte d'identité",
        "carte d'identite",
        "carte nationale",
        "cni",
        "pièce d'identité",
    ];
    let mut v = vec![
        glued(d(
            "FR_NIR",
            &[format!(
                "[1-478]{SEP}[0-9]{{2}}{SEP}[0-9]{{2}}{SEP}(2[ABab]|[0-9]{{2}}){SEP}«[0-9]{{3}}{SEP}[0-9]{{3}}{SEP}[0-9]{{2}}"
            )],
            Some(checks::fr_nir),
            &[],
            Personal,
        )),
        caseless(glued(d(
            "IBAN",
            &[&format!(
                "[A-Z]{{2}}«[0-9]{{2}}({SEP}[A-Z0-9]{{4}}){{2,7}}({SEP}[A-Z0-9]{{1,3}})?"
            )],
            Some(checks::iban),
            &[],
            Personal,
        ))),
        glued(d(
            "CREDIT_CARD",
            &[
                format!("[0-9]{{4}}{SEP}«[0-9]{{4}}{SEP}[0-9]{{4}}{SEP}[0-9]{{1,7}}"),
                format!("3[47][0-9]{{2}}{SEP}«[0-9]{{6}}{SEP}[0-9]{{5}}"),
            ],
            Some(checks::credit_card),
            &[],
            Personal,
        )),
        d(
            "FR_SIREN",
            &[format!("[0-9]{{3}}{SEP}[0-9]{{3}}{SEP}[0-9]{{3}}")],
            Some(checks::fr_siren),
            &[
                "siren",
                "rcs",
                "société",
                "societe",
                "entreprise",
                "immatriculée",
            ],
            Level::Internal,
        ),
        d(
            "FR_SIRET",
            &[format!(
                "[0-9]{{3}}{SEP}[0-9]{{3}}{SEP}[0-9]{{3}}{SEP}[0-9]{{5}}"
            )],
            Some(checks::fr_siret),
            &["siret", "établissement", "etablissement"],
            Level::Internal,
        ),
        caseless(d(
            "FR_TVA",
            &[format!(
                "FR{SEP}[0-9]{{2}}{SEP}[0-9]{{3}}{SEP}[0-9]{{3}}{SEP}[0-9]{{3}}"
            )],
            Some(checks::fr_tva),
            &[],
            Level::Internal,
        )),
        d(
            "FR_NIF",
            &[format!(
                "[0-3][0-9]{SEP}[0-9]{{2}}{SEP}[0-9]{{3}}{SEP}[0-9]{{3}}{SEP}[0-9]{{3}}"
            )],
            Some(checks::fr_nif),
            &["fiscal", "nif", "spi", "impôt", "impot", "imposition"],
            Personal,
        ),
        d(
            "PHONE_NUMBER",
            &[
                format!("\\(?0[1-9]\\)?{SEP}«[0-9]{{2}}({SEP}[0-9]{{2}}){{3}}"),
                format!("0[1-9][0-9]{SEP}«[0-9]{{3}}{SEP}[0-9]{{4}}"),
                format!("(\\+33|0033){SEP}(\\(0\\){SEP})?[1-9]({SEP}[0-9]{{2}}){{4}}"),
            ],
            Some(checks::fr_phone),
            &[],
            Personal,
        ),
        caseless(d(
            "EMAIL_ADDRESS",
            // Non-ASCII bytes: accented (IDN) local parts and domains. `%40`, `[at]`,
            // `(at)`: the at sign as people hide it (full-width `＠` folds to `@`).
            &[
                "[A-Z0-9._%+\\x80-\\xff-]+(@|%40|\\[at\\]|\\(at\\)|\\[@\\])[A-Z0-9\\x80-\\xff-]+(\\.[A-Z0-9\\x80-\\xff-]+)*\\.[A-Z]{2,}",
            ],
            None,
            &[],
            Personal,
        )),
        d(
            "IP_ADDRESS",
            &[
                "[0-9]{1,3}\\.«[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
                "[0-9A-Fa-f]{0,4}«(:[0-9A-Fa-f]{0,4}){2,7}",
            ],
            Some(|s| checks::ipv4(s) || checks::ipv6(s)),
            &[],
            Level::Internal,
        ),
        d(
            "FR_PASSPORT",
            &["[0-9]{2}[A-Z]{2}[0-9]{5}"],
            None,
            &["passeport", "passport"],
            Personal,
        ),
        d("FR_CNI", &["[0-9]{12}"], None, CNI, Personal),
        d(
            "FR_CNI",
            &["[A-Z0-9]{9}"],
            Some(letters_and_digits),
            CNI,
            Personal,
        ),
        d(
            "FR_LICENSE_PLATE",
            &["[A-Z]{2}-?«[0-9]{3}-?[A-Z]{2}"],
            Some(checks::fr_plate_siv),
            &[],
            Personal,
        ),
        d(
            "FR_LICENSE_PLATE",
            &["[0-9]{1,4} ?[A-Z]{1,3} ?(0[1-9]|[1-8][0-9]|9[0-5]|2A|2B)"],
            None,
            &["immatricul", "plaque", "véhicule", "vehicule", "voiture"],
            Personal,
        ),
        d(
            "AWS_ACCESS_KEY",
            &["(AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}"],
            None,
            &[],
            Restricted,
        ),
        d(
            "GITHUB_TOKEN",
            &["gh[pousr]_[A-Za-z0-9]{36}", "github_pat_[A-Za-z0-9_]{82}"],
            None,
            &[],
            Restricted,
        ),
        d(
            "OPENAI_API_KEY",
            &["sk-[A-Za-z0-9_-]{20,}"],
            Some(not_anthropic),
            &[],
            Restricted,
        ),
        d(
            "ANTHROPIC_API_KEY",
            &["sk-ant-[a-z0-9]{2,10}-[A-Za-z0-9_-]{32,}"],
            None,
            &[],
            Restricted,
        ),
        d(
            "MISTRAL_API_KEY",
            &["[A-Za-z0-9]{32}"],
            Some(letters_and_digits),
            &["mistral"],
            Restricted,
        ),
        d(
            "SLACK_TOKEN",
            &["xox[abposr]-[A-Za-z0-9-]{10,}"],
            None,
            &[],
            Restricted,
        ),
        d(
            "GOOGLE_API_KEY",
            &["AIza[0-9A-Za-z_-]{35}"],
            None,
            &[],
            Restricted,
        ),
        d(
            "PRIVATE_KEY",
            // The END line is optional so that a truncated key is still caught.
            &[
                "-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----[A-Za-z0-9+/=\r\n]*(-----END [A-Z ]{0,40}PRIVATE KEY-----)?",
            ],
            None,
            &[],
            Restricted,
        ),
        d(
            "JWT",
            &["eyJ[A-Za-z0-9_-]{5,}\\.eyJ[A-Za-z0-9_-]{5,}\\.[A-Za-z0-9_-]{10,}"],
            None,
            &[],
            Restricted,
        ),
        d(
            "URL_PASSWORD",
            &["[A-Za-z][A-Za-z0-9+.-]{1,20}://[^ \t\r\n:/@\"'<>]+:[^ \t\r\n/@\"'<>]+@"],
            None,
            &[],
            Restricted,
        ),
    ];
    let mut marking = d(
        "CLASSIFICATION_MARKING",
        &[
            "diffusion restreinte",
            "(confidentiel|secret|tr(è|È|e)s secret) d(é|É|e)fense",
            "secret sp(é|É|e)cial france",
            "sp(é|É|e)cial france",
        ],
        None,
        &[],
        Restricted,
    );
    marking.caseless = true;
    v.push(marking);
    v.extend(crate::personal::detectors());
    v.extend(crate::special::detectors());
    v
}

/// Escapes a literal for both engines' regex syntax.
pub fn escape_literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == ' ' || !c.is_ascii() {
            out.push(c);
        } else {
            out.push('\\');
            out.push(c);
        }
    }
    out
}
