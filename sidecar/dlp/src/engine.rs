//! The compiled detector set: a multi-pattern [`Matcher`] for full matches (Hyperscan),
//! an anchored lazy DFA over the same patterns for "could this tail still become a
//! match?" (streaming hold-back), and the validation that turns candidates into
//! [`Finding`]s. Compiled once per policy version; shared by all requests.

use std::sync::Mutex;

use hyperscan::prelude::{BlockDatabase, Builder as _, Matching, Pattern, Patterns, Scratch};
use hyperscan::{CompileFlags, Error as HsError};
use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};

use crate::detectors::Detector;

#[derive(Debug, thiserror::Error)]
pub enum DlpError {
    /// A pattern does not compile; `detector` and `pattern` index the input lists.
    #[error("detector {detector} pattern {pattern}: {message}")]
    Pattern {
        detector: usize,
        pattern: usize,
        message: String,
    },
    #[error("matcher: {0}")]
    Matcher(String),
}

/// Multi-pattern scanning; Hyperscan here, replaceable (e.g. Vectorscan).
///
/// Only match *ends* are asked for: start-of-match tracking slows Hyperscan down by
/// half on patterns that may start at any word; the engine recovers the start of the
/// few reported ends with a reverse automaton instead.
pub trait Matcher: Send + Sync + std::fmt::Debug {
    /// Calls `on(pattern, end)` for every offset where a match of `pattern` ends.
    fn scan(&self, text: &[u8], on: &mut dyn FnMut(usize, usize)) -> Result<(), DlpError>;
}

pub struct HyperscanMatcher {
    db: BlockDatabase,
    /// Scratch space is per scan in flight; a small pool avoids allocating per request.
    scratch: Mutex<Vec<Scratch>>,
}

impl std::fmt::Debug for HyperscanMatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HyperscanMatcher")
    }
}

impl HyperscanMatcher {
    /// `patterns[i] = (expression, caseless)`; ids are the indexes.
    pub fn compile(patterns: &[(String, bool)]) -> Result<Self, HsError> {
        let list: Patterns = patterns
            .iter()
            .enumerate()
            .map(|(i, (expr, caseless))| {
                let mut flags = CompileFlags::empty();
                if *caseless {
                    flags |= CompileFlags::CASELESS;
                }
                Pattern {
                    expression: expr.clone(),
                    flags,
                    id: Some(i),
                    ext: Default::default(),
                    som: None,
                }
            })
            .collect();
        let db: BlockDatabase = list.build()?;
        Ok(Self {
            db,
            scratch: Mutex::new(Vec::new()),
        })
    }
}

impl Matcher for HyperscanMatcher {
    fn scan(&self, text: &[u8], on: &mut dyn FnMut(usize, usize)) -> Result<(), DlpError> {
        let pooled = self.scratch.lock().ok().and_then(|mut p| p.pop());
        let scratch = match pooled {
            Some(s) => s,
            None => self
                .db
                .alloc_scratch()
                .map_err(|e| DlpError::Matcher(e.to_string()))?,
        };
        let result = self.db.scan(text, &scratch, |id, _from, to, _| {
            on(id as usize, to as usize);
            Matching::Continue
        });
        if let Ok(mut p) = self.scratch.lock() {
            p.push(scratch);
        }
        result.map_err(|e| DlpError::Matcher(e.to_string()))
    }
}

/// For a policy whose rules turn no detector on.
#[derive(Debug)]
struct NoMatcher;

impl Matcher for NoMatcher {
    fn scan(&self, _text: &[u8], _on: &mut dyn FnMut(usize, usize)) -> Result<(), DlpError> {
        Ok(())
    }
}

/// A validated detection in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finding {
    pub detector: usize,
    pub start: usize,
    pub end: usize,
}

/// How far back context words are looked for.
pub const CONTEXT_WINDOW: usize = 100;

/// A matcher over some of the patterns; local pattern ids map to global indexes.
#[derive(Debug)]
struct Group {
    matcher: Box<dyn Matcher>,
    patterns: Vec<usize>,
}

#[derive(Debug)]
pub struct Engine {
    pub detectors: Vec<Detector>,
    /// Detectors that need no context words, plus the context words themselves as
    /// literals (local ids past `main.patterns`): cheap to scan.
    main: Group,
    /// Detectors that need context words: scanned only when one of the words occurs in
    /// the text or just before it (most prose has none, and these patterns — bare digit
    /// or alphanumeric runs — are the expensive ones).
    contextual: Option<Group>,
    /// Pattern index → detector index.
    owner: Vec<usize>,
    /// Per pattern: reverse automaton that finds the leftmost start of a match ending
    /// at a given offset.
    reverse: Vec<DFA>,
    reverse_caches: Mutex<Vec<Vec<Cache>>>,
    prefix: DFA,
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric()
}

impl Engine {
    pub fn new(detectors: Vec<Detector>) -> Result<Engine, DlpError> {
        let mut patterns = Vec::new();
        let mut owner = Vec::new();
        let mut dfa_patterns = Vec::new();
        for (di, d) in detectors.iter().enumerate() {
            for (pi, p) in d.patterns.iter().enumerate() {
                // Each pattern alone first: so a broken custom pattern is reported with
                // its own position, not as a failure of the whole set.
                HyperscanMatcher::compile(&[(p.clone(), d.caseless)]).map_err(|e| {
                    DlpError::Pattern {
                        detector: di,
                        pattern: pi,
                        message: hs_message(&e),
                    }
                })?;
                let dfa_expr = if d.caseless {
                    format!("(?i:{p})")
                } else {
                    p.clone()
                };
                syntax::parse_with(&dfa_expr, &dfa_syntax()).map_err(|e| DlpError::Pattern {
                    detector: di,
                    pattern: pi,
                    message: e.to_string(),
                })?;
                patterns.push((p.clone(), d.caseless));
                owner.push(di);
                dfa_patterns.push(dfa_expr);
            }
        }
        let (main, contextual) = build_groups(&detectors, &patterns, &owner)?;
        let reverse = dfa_patterns
            .iter()
            .map(|p| {
                DFA::builder()
                    .syntax(dfa_syntax())
                    .thompson(regex_automata::nfa::thompson::Config::new().reverse(true))
                    .configure(
                        DFA::config()
                            .match_kind(MatchKind::All)
                            .cache_capacity(1 << 20),
                    )
                    .build(p)
                    .map_err(|e| DlpError::Matcher(e.to_string()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefix = DFA::builder()
            .syntax(dfa_syntax())
            .configure(
                DFA::config()
                    .match_kind(MatchKind::All)
                    .cache_capacity(8 << 20),
            )
            .build_many(&dfa_patterns)
            .map_err(|e| DlpError::Matcher(e.to_string()))?;
        Ok(Engine {
            detectors,
            main,
            contextual,
            owner,
            reverse,
            reverse_caches: Mutex::new(Vec::new()),
            prefix,
        })
    }

    pub fn new_cache(&self) -> Cache {
        self.prefix.create_cache()
    }

    /// Whether `tail` is the beginning of a possible match of some pattern (or a
    /// complete one that might still grow). Anchored at the first byte.
    pub fn viable_prefix(&self, cache: &mut Cache, tail: &[u8]) -> bool {
        self.advance(cache, None, tail).1.is_none()
    }

    /// Runs the anchored prefix automaton over `bytes`, from `state` (or the start).
    /// Returns the state reached and, if the automaton died, the offset of the byte
    /// that killed it. Errors of the lazy DFA count as "still alive" (fail safe).
    pub fn advance(
        &self,
        cache: &mut Cache,
        state: Option<LazyStateID>,
        bytes: &[u8],
    ) -> (Option<LazyStateID>, Option<usize>) {
        let mut state = match state {
            Some(s) => s,
            None => {
                let input = Input::new(bytes).anchored(Anchored::Yes);
                match self.prefix.start_state_forward(cache, &input) {
                    Ok(s) => s,
                    Err(_) => return (None, None),
                }
            }
        };
        for (i, &b) in bytes.iter().enumerate() {
            match self.prefix.next_state(cache, state, b) {
                Ok(s) => state = s,
                Err(_) => return (None, None),
            }
            if state.is_dead() {
                return (Some(state), Some(i));
            }
        }
        (Some(state), None)
    }

    /// Validated, non-overlapping findings in `text`, leftmost first (longest on ties).
    /// `before` is the text that preceded it (for boundaries and context words).
    pub fn find(&self, text: &str, before: &str) -> Result<Vec<Finding>, DlpError> {
        let mut ends = Vec::new();
        let mut gate_open = false;
        let main = &self.main.patterns;
        self.main
            .matcher
            .scan(text.as_bytes(), &mut |local, end| match main.get(local) {
                Some(&pattern) => ends.push((pattern, end)),
                None => gate_open = true,
            })?;
        if let Some(ctx) = &self.contextual {
            // A context word may lie in the text before this one, or straddle the two.
            let gate_in_before = !before.is_empty() && !gate_open && {
                let tail =
                    &before[floor_boundary(before, before.len().saturating_sub(CONTEXT_WINDOW))..];
                let head = &text[..floor_boundary(text, CONTEXT_WINDOW)];
                let joined = [tail.as_bytes(), head.as_bytes()].concat();
                // The gate literals are in the main set, case-insensitive: one short scan.
                let mut found = false;
                self.main.matcher.scan(&joined, &mut |local, _| {
                    found |= local >= main.len();
                })?;
                found
            };
            if gate_open || gate_in_before {
                ctx.matcher.scan(text.as_bytes(), &mut |local, end| {
                    if let Some(&pattern) = ctx.patterns.get(local) {
                        ends.push((pattern, end));
                    }
                })?;
            }
        }
        let mut candidates = Vec::with_capacity(ends.len());
        if !ends.is_empty() {
            let pooled = self.reverse_caches.lock().ok().and_then(|mut p| p.pop());
            let mut caches =
                pooled.unwrap_or_else(|| self.reverse.iter().map(DFA::create_cache).collect());
            let mut starts = Vec::new();
            for (pattern, end) in ends {
                let (Some(dfa), Some(cache)) = (self.reverse.get(pattern), caches.get_mut(pattern))
                else {
                    continue;
                };
                let detector = self.owner.get(pattern).copied().unwrap_or(usize::MAX);
                // Every start from which the pattern matches up to `end`; the longest
                // one that passes validation wins (the leftmost alone may begin inside
                // a neighbouring token and fail its boundary or checksum).
                match_starts(dfa, cache, text.as_bytes(), end, &mut starts);
                if let Some(f) = starts
                    .iter()
                    .rev()
                    .map(|&start| Finding {
                        detector,
                        start,
                        end,
                    })
                    .find(|f| self.accept(text, before, f))
                {
                    candidates.push(f);
                }
            }
            if let Ok(mut p) = self.reverse_caches.lock() {
                p.push(caches);
            }
        }
        let mut valid = candidates;
        // Leftmost, then longest; on the same span, a detector that needed (and found)
        // context words is the more specific reading (a SIRET is Luhn-valid, so it is
        // also a card-shaped number).
        let contextual = |f: &Finding| {
            self.detectors
                .get(f.detector)
                .is_some_and(|d| !d.context.is_empty())
        };
        valid.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(b.end.cmp(&a.end))
                .then(contextual(b).cmp(&contextual(a)))
        });
        let mut chosen: Vec<Finding> = Vec::with_capacity(valid.len());
        for f in valid {
            if chosen.last().is_none_or(|last| f.start >= last.end) {
                chosen.push(f);
            }
        }
        Ok(chosen)
    }

    fn accept(&self, text: &str, before: &str, f: &Finding) -> bool {
        let Some(d) = self.detectors.get(f.detector) else {
            return false;
        };
        if f.end <= f.start || !text.is_char_boundary(f.start) || !text.is_char_boundary(f.end) {
            return false;
        }
        let prev = if f.start == 0 {
            before.chars().next_back()
        } else {
            text[..f.start].chars().next_back()
        };
        let next = text[f.end..].chars().next();
        let value = &text[f.start..f.end];
        // Word boundaries, as `\b` would: only where the match's own edge is a word char.
        let first = value.chars().next().is_some_and(is_word);
        let last = value.chars().next_back().is_some_and(is_word);
        if (first && prev.is_some_and(is_word)) || (last && next.is_some_and(is_word)) {
            return false;
        }
        if d.check.is_some_and(|check| !check(value)) {
            return false;
        }
        if !d.context.is_empty() {
            let mut window = String::new();
            let from_text =
                &text[floor_boundary(text, f.start.saturating_sub(CONTEXT_WINDOW))..f.start];
            if from_text.len() < CONTEXT_WINDOW {
                let need = CONTEXT_WINDOW - from_text.len();
                window
                    .push_str(&before[floor_boundary(before, before.len().saturating_sub(need))..]);
            }
            window.push_str(from_text);
            let window = window.to_lowercase();
            if !d.context.iter().any(|w| window.contains(w.as_str())) {
                return false;
            }
        }
        true
    }
}

/// Starts of the matches of a reverse automaton that end at `end`, nearest first.
fn match_starts(dfa: &DFA, cache: &mut Cache, text: &[u8], end: usize, out: &mut Vec<usize>) {
    out.clear();
    let input = Input::new(text).range(..end).anchored(Anchored::Yes);
    let Ok(mut sid) = dfa.start_state_reverse(cache, &input) else {
        return;
    };
    let mut at = end;
    while at > 0 {
        at -= 1;
        let Ok(next) = dfa.next_state(cache, sid, text[at]) else {
            return;
        };
        sid = next;
        // Match states are entered one byte late: this one says a match starts at at+1.
        if sid.is_match() {
            out.push(at + 1);
        }
        if sid.is_dead() || sid.is_quit() {
            return;
        }
    }
    if let Ok(eoi) = dfa.next_eoi_state(cache, sid)
        && eoi.is_match()
    {
        out.push(0);
    }
}

/// The longest run of ASCII characters of a context word (lower case): a literal both
/// engines match case-insensitively. `None` if too short to be a useful gate.
fn gate_literal(word: &str) -> Option<String> {
    let best = word
        .split(|c: char| !c.is_ascii())
        .max_by_key(|s| s.len())
        .unwrap_or("");
    (best.trim().len() >= 3).then(|| best.to_lowercase())
}

type Groups = (Group, Option<Group>);

fn build_groups(
    detectors: &[Detector],
    patterns: &[(String, bool)],
    owner: &[usize],
) -> Result<Groups, DlpError> {
    let needs_context = |i: usize| {
        owner
            .get(i)
            .and_then(|d| detectors.get(*d))
            .is_some_and(|d| !d.context.is_empty())
    };
    let mut gates: Vec<String> = Vec::new();
    let mut ungated = false;
    for d in detectors.iter().filter(|d| !d.context.is_empty()) {
        for w in &d.context {
            match gate_literal(w) {
                Some(g) if !gates.contains(&g) => gates.push(g),
                Some(_) => {}
                // A word with no usable ASCII part: its detector cannot be gated.
                None => ungated = true,
            }
        }
    }
    let (ctx_ids, main_ids): (Vec<usize>, Vec<usize>) =
        (0..patterns.len()).partition(|&i| needs_context(i) && !ungated);
    let compile = |ids: &[usize], extra: &[String]| -> Result<Box<dyn Matcher>, DlpError> {
        let mut set: Vec<(String, bool)> = ids.iter().map(|&i| patterns[i].clone()).collect();
        set.extend(
            extra
                .iter()
                .map(|g| (crate::detectors::escape_literal(g), true)),
        );
        if set.is_empty() {
            return Ok(Box::new(NoMatcher));
        }
        Ok(Box::new(
            HyperscanMatcher::compile(&set).map_err(|e| DlpError::Matcher(hs_message(&e)))?,
        ))
    };
    let gate_literals: &[String] = if ctx_ids.is_empty() { &[] } else { &gates };
    let main = Group {
        matcher: compile(&main_ids, gate_literals)?,
        patterns: main_ids,
    };
    let contextual = if ctx_ids.is_empty() {
        None
    } else {
        Some(Group {
            matcher: compile(&ctx_ids, &[])?,
            patterns: ctx_ids,
        })
    };
    Ok((main, contextual))
}

/// Whether one pattern compiles in both engines; the error is the engine's message.
pub fn check_pattern(pattern: &str, caseless: bool) -> Result<(), String> {
    HyperscanMatcher::compile(&[(pattern.to_string(), caseless)]).map_err(|e| hs_message(&e))?;
    let expr = if caseless {
        format!("(?i:{pattern})")
    } else {
        pattern.to_string()
    };
    syntax::parse_with(&expr, &dfa_syntax()).map_err(|e| e.to_string())?;
    Ok(())
}

/// The largest char boundary ≤ i.
pub fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn dfa_syntax() -> syntax::Config {
    // Bytes, not Unicode: the same semantics as Hyperscan without its UTF8 flag.
    syntax::Config::new().unicode(false).utf8(false)
}

fn hs_message(e: &HsError) -> String {
    match e {
        HsError::Hyperscan(hyperscan::HsError::CompileError(c)) => c.message().to_string(),
        other => other.to_string(),
    }
}
