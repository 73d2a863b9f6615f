//! The compiled detector set: a multi-pattern [`Matcher`] for full matches (Hyperscan),
//! an anchored lazy DFA over the same patterns for "could this tail still become a
//! match?" (streaming hold-back), and the validation that turns candidates into
//! [`Finding`]s. Compiled once per policy version; shared by all requests.

use std::collections::HashMap;
use std::sync::Mutex;

use hyperscan::prelude::{BlockDatabase, Builder as _, Matching, Pattern, Patterns, Scratch};
use hyperscan::{CompileFlags, Error as HsError};
use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind};

use crate::detectors::Detector;
use crate::fold::Folded;

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
    /// The text needed more work than [`work_budget`] allows (a pathological input:
    /// millions of candidate ends inside one long token). Callers fail closed.
    #[error("text too complex to inspect")]
    TooComplex,
}

/// Most bytes the start-recovery automata may read for one text: far above what any
/// real text needs (candidates are sparse and short), far below the quadratic cost of
/// a crafted one (a private-key header followed by megabytes of `+/` runs).
pub fn work_budget(len: usize) -> usize {
    32 * len + (1 << 20)
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
    /// Where the whole match starts: before `start` when the detector keeps context
    /// in the text (the civility before a name). Streaming holds from here: released
    /// alone, the context could not be matched again.
    pub matched_from: usize,
}

/// How far back context words are looked for. For a detector whose context words must
/// be in the match's sentence ([`Detector::sentence`]), the window is also cut at the
/// last sentence end before the match (`sentence_start`).
pub const CONTEXT_WINDOW: usize = 100;

/// Candidates always kept whole before the density rule of `find_folded` applies: a
/// short text (a streamed chunk) never reaches it, so streaming and block agree there.
const MIN_DENSE_CANDIDATES: usize = 64;

/// Most idle hold-back caches an engine keeps for streams (more are dropped).
const MAX_POOLED_CACHES: usize = 32;

/// How much text before a match [`Detector::not_after`] reads.
pub const NOT_AFTER_WINDOW: usize = 32;

/// A matcher over some of the patterns; local pattern ids map to global indexes.
#[derive(Debug)]
struct Group {
    matcher: Box<dyn Matcher>,
    patterns: Vec<usize>,
    /// Which texts the group scans, by length.
    texts: Texts,
}

/// Texts a [`Group`] scans: sets split for speed over long texts cost one scan call
/// each, which dominates on the short texts of streaming; a short text is scanned by
/// one set of the same patterns instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Texts {
    All,
    Short,
    Long,
}

/// From this length on, a text is scanned by the split sets ([`Texts`]).
const SPLIT_SCAN_FROM: usize = 1024;

impl Texts {
    fn scans(self, len: usize) -> bool {
        match self {
            Texts::All => true,
            Texts::Short => len < SPLIT_SCAN_FROM,
            Texts::Long => len >= SPLIT_SCAN_FROM,
        }
    }
}

#[derive(Debug)]
pub struct Engine {
    pub detectors: Vec<Detector>,
    /// Detectors that need no context words, in sets scanned one after the other
    /// (together they scan at half the speed of the sets in sequence): the rest with
    /// the context words themselves as literals (local ids past `patterns`;
    /// `free[0]`), patterns with no literal to look for (names without civility), and
    /// those that start on digits or punctuation.
    free: Vec<Group>,
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
    /// Hold-back automaton caches of streams between chunks.
    hold_caches: Mutex<Vec<Cache>>,
    prefix: DFA,
    /// Farthest a match that needs a context word can end after the word ends (`None`:
    /// unbounded pattern, the rest of the text).
    context_reach: Option<usize>,
    /// Context words gated whole where a word starts (`né le`, lower case): their gate
    /// pattern needs a non-letter before it, which a part boundary is not (parts are
    /// joined with nothing in between), so they are also looked for at each seam.
    seam_gates: Vec<String>,
    /// A detector whose matches may touch letters can also start with one (IBAN): a
    /// match may then start between two letters (`xFR76…`).
    glued_letter_start: bool,
    /// Per detector: the context words of a detector whose words must be in the match's
    /// sentence, by first word (empty for the others).
    cues: Vec<Cues>,
}

/// Context words by their first word (the letters and digits they start with): a
/// sentence is read once, word by word, not searched once per context word — such a
/// detector has hundreds of them (spellings, roles, relatives), and crafted text may
/// offer it a candidate every few bytes.
#[derive(Debug, Default)]
struct Cues(HashMap<String, Vec<String>>);

/// The letters and digits `s` starts with.
fn first_word(s: &str) -> &str {
    let end = s
        .char_indices()
        .find(|(_, c)| !c.is_alphanumeric())
        .map_or(s.len(), |(i, _)| i);
    &s[..end]
}

impl Cues {
    fn new(words: &[String]) -> Self {
        let mut by_first: HashMap<String, Vec<String>> = HashMap::new();
        for w in words {
            let w = w.trim().to_lowercase();
            let entry = by_first.entry(first_word(&w).to_string()).or_default();
            if !entry.contains(&w) {
                entry.push(w);
            }
        }
        Self(by_first)
    }

    /// Whether one of the words is in `window` (lower case) at or after `from`, as a
    /// whole word: neither glued to a letter or digit before it nor after it (a part
    /// boundary separates words; `outside` is the character before the window, `None`
    /// when nothing precedes it). `il` is not in `ville`, `elle` not in `nouvelle`.
    fn found(
        &self,
        window: &str,
        from: usize,
        outside: Option<char>,
        seam: &dyn Fn(usize) -> bool,
    ) -> bool {
        let Some(tail) = window.get(from..) else {
            return false;
        };
        let mut prev = if from == 0 {
            outside
        } else {
            window[..from].chars().next_back()
        };
        for (i, c) in tail.char_indices() {
            let at = from + i;
            let starts =
                c.is_alphanumeric() && (seam(at) || prev.is_none_or(|p| !p.is_alphanumeric()));
            prev = Some(c);
            if !starts {
                continue;
            }
            let rest = &window[at..];
            let Some(words) = self.0.get(first_word(rest)) else {
                continue;
            };
            let whole = |w: &String| {
                let end = at + w.len();
                rest.starts_with(w.as_str())
                    && (!w.ends_with(char::is_alphanumeric)
                        || seam(end)
                        || window[end..]
                            .chars()
                            .next()
                            .is_none_or(|n| !n.is_alphanumeric()))
            };
            if words.iter().any(whole) {
                return true;
            }
        }
        false
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric()
}

/// Whether a detector is scanned only near its context words (the contextual group).
/// A detector whose context words must be in the match's sentence is not: its words
/// are common (pronouns, civilities — `il`, `M.`, too short to gate on), its patterns
/// specific phrases, cheap to scan everywhere; its context is checked in
/// [`Engine::accept`] only.
fn gated(d: &Detector) -> bool {
    !d.context.is_empty() && !d.sentence
}

/// How many part boundaries a finding runs across.
fn crossings(seams: &[usize], f: &Finding) -> usize {
    seams.partition_point(|&s| s < f.end) - seams.partition_point(|&s| s <= f.start)
}

/// Whether a glued match lies inside a hex digest (32 hex characters or more): hashes
/// hold Luhn-valid digit runs by chance, an identifier glued to a word does not look
/// like one.
fn in_digest(text: &str, f: &Finding) -> bool {
    let bytes = text.as_bytes();
    let from = bytes[..f.start]
        .iter()
        .rposition(|b| !b.is_ascii_alphanumeric())
        .map_or(0, |i| i + 1);
    let to = bytes[f.end..]
        .iter()
        .position(|b| !b.is_ascii_alphanumeric())
        .map_or(bytes.len(), |i| f.end + i);
    to - from >= 32 && bytes[from..to].iter().all(u8::is_ascii_hexdigit)
}

/// Whether a match ending between bytes `last` and `next` is inside a longer word (the
/// cheap, byte-level part of [`Engine::accept`]'s boundary rule).
fn glued(detector: Option<&Detector>, last: u8, next: u8) -> bool {
    last.is_ascii_alphanumeric()
        && next.is_ascii_alphanumeric()
        && !(detector.is_some_and(|d| d.glue) && !(last.is_ascii_digit() && next.is_ascii_digit()))
}

impl Engine {
    pub fn new(detectors: Vec<Detector>) -> Result<Engine, DlpError> {
        crate::fold::warm_up();
        let mut patterns = Vec::new();
        let mut owner = Vec::new();
        let mut dfa_patterns = Vec::new();
        for (di, d) in detectors.iter().enumerate() {
            for p in &d.patterns {
                patterns.push((p.scan.clone(), d.caseless));
                owner.push(di);
                dfa_patterns.push(dfa_expr(&p.full, d.caseless));
            }
        }
        // Compiled together; only when that fails is each pattern compiled alone, so a
        // broken custom pattern is reported with its own position (compiling each one
        // first doubled the build time of the built-in set).
        let (free, contextual) =
            build_groups(&detectors, &patterns, &owner).map_err(|e| locate(&detectors, e))?;
        let context_reach = detectors
            .iter()
            .filter(|d| gated(d))
            .flat_map(|d| d.patterns.iter().map(|p| max_len(&p.full, d.caseless)))
            .try_fold(0, |acc, l| l.map(|l| acc.max(l)))
            .map(|l| CONTEXT_WINDOW + l);
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
        let mut seam_gates: Vec<String> = Vec::new();
        for w in detectors
            .iter()
            .filter(|d| gated(d))
            .flat_map(|d| &d.context)
        {
            let w = w.trim().to_lowercase();
            if whole_word_gate(&w) && !seam_gates.contains(&w) {
                seam_gates.push(w);
            }
        }
        let cues: Vec<Cues> = detectors
            .iter()
            .map(|d| {
                if d.sentence {
                    Cues::new(&d.context)
                } else {
                    Cues::default()
                }
            })
            .collect();
        let glued_letter_start = detectors.iter().filter(|d| d.glue).any(|d| {
            d.patterns.iter().any(|p| {
                first_bytes(&p.full, d.caseless)
                    .is_none_or(|b| b.iter().any(u8::is_ascii_alphabetic))
            })
        });
        Ok(Engine {
            detectors,
            free,
            contextual,
            owner,
            reverse,
            reverse_caches: Mutex::new(Vec::new()),
            hold_caches: Mutex::new(Vec::new()),
            prefix,
            context_reach,
            seam_gates,
            glued_letter_start,
            cues,
        })
    }

    /// Whether a match may start between two letters (see `glued_letter_start`).
    pub fn starts_inside_words(&self) -> bool {
        self.glued_letter_start
    }

    pub fn new_cache(&self) -> Cache {
        self.prefix.create_cache()
    }

    /// A cache for the hold-back automaton, from the pool if one is free.
    pub fn take_cache(&self) -> Cache {
        self.hold_caches
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_else(|| self.new_cache())
    }

    /// Returns a cache to the pool (at most [`MAX_POOLED_CACHES`] are kept: one per
    /// scanner at work at once).
    pub fn give_cache(&self, cache: Cache) {
        if let Ok(mut p) = self.hold_caches.lock()
            && p.len() < MAX_POOLED_CACHES
        {
            p.push(cache);
        }
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

    /// Validated, non-overlapping findings in `text`, leftmost first (longest on ties),
    /// as byte ranges of `text` itself. Detectors read the folded view ([`Folded`]);
    /// a finding covers the original characters that folded into it, invisible ones
    /// included. `before` is the text that preceded it (boundaries and context words).
    pub fn find(&self, text: &str, before: &str) -> Result<Vec<Finding>, DlpError> {
        self.find_for(text, before, &|_| true)
    }

    /// [`Engine::find`] where only the detectors `acts` says yes to may hide another
    /// finding: a finding of a detector that only alerts never shadows an overlapping
    /// one that redacts or blocks (it is kept only where it overlaps none of them).
    pub fn find_for(
        &self,
        text: &str,
        before: &str,
        acts: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Finding>, DlpError> {
        let view = Folded::of(text);
        let before = Folded::of(before);
        let mut found = self.find_folded(&view.text, &before.text, &[], acts)?;
        if !view.is_identity() {
            for f in &mut found {
                f.start = view.original(f.start);
                f.end = view.original(f.end);
                f.matched_from = view.original(f.matched_from);
            }
        }
        Ok(found)
    }

    /// Findings in texts read together, already folded and joined (see
    /// [`crate::parts`]): `seams` are the offsets where each part begins. A seam is a
    /// word boundary (a value may end where a part ends), and a value that crosses one
    /// is validated with its separators dropped too (a split falls anywhere in a
    /// grouping). Offsets are in `joined`.
    pub fn find_joined(
        &self,
        joined: &str,
        seams: &[usize],
        acts: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Finding>, DlpError> {
        self.find_folded(joined, "", seams, acts)
    }

    /// [`Engine::find`] on text already folded.
    fn find_folded(
        &self,
        text: &str,
        before: &str,
        seams: &[usize],
        acts: &dyn Fn(usize) -> bool,
    ) -> Result<Vec<Finding>, DlpError> {
        let at_seam = |i: usize| seams.binary_search(&i).is_ok();
        // Candidates are validated as the matcher reports them, never collected: a
        // run of digits ends a match of several patterns at every byte, and keeping
        // those ends cost dozens of bytes per input byte.
        let pooled = self.reverse_caches.lock().ok().and_then(|mut p| p.pop());
        let mut caches =
            pooled.unwrap_or_else(|| self.reverse.iter().map(DFA::create_cache).collect());
        let mut starts = Vec::new();
        let mut candidates: Vec<Finding> = Vec::new();
        let bytes = text.as_bytes();
        let mut budget = work_budget(text.len());
        let mut consider = |pattern: usize, end: usize| {
            let detector = self.owner.get(pattern).copied().unwrap_or(usize::MAX);
            // Most candidates end inside a longer run of letters or digits: the
            // boundary check of `accept`, done before looking for starts.
            if end > 0
                && let (Some(&next), Some(&last)) = (bytes.get(end), bytes.get(end - 1))
                && glued(self.detectors.get(detector), last, next)
                && !at_seam(end)
            {
                return;
            }
            let (Some(dfa), Some(cache)) = (self.reverse.get(pattern), caches.get_mut(pattern))
            else {
                return;
            };
            // Every start from which the pattern matches up to `end`; the longest one
            // that passes validation wins (the leftmost alone may begin inside a
            // neighbouring token and fail its boundary or checksum) — among those that
            // cross the fewest part boundaries (a key before an e-mail is not part of it).
            match_starts(dfa, cache, bytes, end, &mut starts, &mut budget);
            let mut best: Option<(usize, Finding)> = None;
            for &start in starts.iter().rev() {
                let f = Finding {
                    detector,
                    start,
                    end,
                    matched_from: start,
                };
                let crossed = crossings(seams, &f);
                if best.as_ref().is_some_and(|(c, _)| *c <= crossed) {
                    continue;
                }
                if self.accept(text, before, seams, &f) {
                    best = Some((crossed, f));
                    if crossed == 0 {
                        break;
                    }
                }
            }
            if let Some((_, f)) = best {
                // A run of capitalised words offers a name ending at each word. Every
                // reading is kept (a shorter one may be all that does not overlap an
                // identifier), unless candidates grow denser than one per 16 bytes —
                // crafted text (`M. Aaaa Bbbb de La Cccc ` repeated): then a name keeps
                // only its longest reading, and memory stays a small multiple of the text.
                let yields = self.detectors.get(detector).is_some_and(|d| d.yields);
                if yields
                    && candidates.len() > (bytes.len() / 16).max(MIN_DENSE_CANDIDATES)
                    && let Some(last) = candidates.last_mut()
                    && last.detector == f.detector
                    && last.start == f.start
                    && last.end < f.end
                {
                    *last = f;
                } else {
                    candidates.push(f);
                }
            }
        };
        // Where context words (their gate literals) end in `text`.
        let mut gates = Vec::new();
        for group in self.free.iter().filter(|g| g.texts.scans(bytes.len())) {
            let ids = &group.patterns;
            group
                .matcher
                .scan(bytes, &mut |local, end| match ids.get(local) {
                    Some(&pattern) => consider(pattern, end),
                    None => gates.push(end),
                })?;
        }
        if self.contextual.is_some() && !self.seam_gates.is_empty() {
            for &seam in seams.iter().filter(|&&s| s > 0 && s < text.len()) {
                let head = text
                    .get(seam..floor_boundary(text, seam + 32))
                    .unwrap_or("")
                    .to_lowercase();
                for w in self
                    .seam_gates
                    .iter()
                    .filter(|w| head.starts_with(w.as_str()))
                {
                    gates.push(seam + w.len());
                }
            }
            gates.sort_unstable();
        }

        if let Some(ctx) = &self.contextual {
            // A context word may also lie in the text before this one, or straddle the
            // two: it then opens a window at the start of `text`.
            let head = floor_boundary(text, CONTEXT_WINDOW);
            if !before.is_empty() && gates.first().is_none_or(|&g| g > 1) {
                let tail =
                    &before[floor_boundary(before, before.len().saturating_sub(CONTEXT_WINDOW))..];
                let joined = [tail.as_bytes(), &bytes[..head]].concat();
                // The gate literals are in the main set, case-insensitive: one short scan.
                let mut found = false;
                if let Some(first) = self.free.first() {
                    first.matcher.scan(&joined, &mut |local, _| {
                        found |= local >= first.patterns.len();
                    })?;
                }
                if found {
                    gates.insert(0, 0);
                }
            }
            // Matches that need a context word start at most CONTEXT_WINDOW bytes after
            // one ends: only those windows are scanned (one byte of margin each side, so
            // the matcher sees the same neighbours as in the whole text).
            let len = text.len();
            let mut window: Option<(usize, usize)> = None;
            let mut scan = |(from, to): (usize, usize)| {
                let Some(slice) = bytes.get(from..to) else {
                    return Ok(());
                };
                ctx.matcher.scan(slice, &mut |local, end| {
                    if let Some(&pattern) = ctx.patterns.get(local) {
                        consider(pattern, from + end);
                    }
                })
            };
            for g in gates {
                let from = g.saturating_sub(1);
                let to = self
                    .context_reach
                    .map_or(len, |r| g.saturating_add(r + 1).min(len));
                window = match window {
                    Some((wf, wt)) if from <= wt => Some((wf, wt.max(to))),
                    Some(w) => {
                        scan(w)?;
                        Some((from, to))
                    }
                    None => Some((from, to)),
                };
            }
            if let Some(w) = window {
                scan(w)?;
            }
        }
        if let Ok(mut p) = self.reverse_caches.lock() {
            p.push(caches);
        }
        if budget == 0 {
            return Err(DlpError::TooComplex);
        }
        let mut valid = candidates;
        // Leftmost, then crossing the fewest part boundaries (an e-mail at the end of
        // one part does not run on into the next part's letters; a number split across
        // parts has no shorter reading), then longest; on the same span, a detector that
        // needed (and found) context words is the more specific reading (a SIRET is
        // Luhn-valid, so it is also a card-shaped number).
        let contextual = |f: &Finding| {
            self.detectors
                .get(f.detector)
                .is_some_and(|d| !d.context.is_empty())
        };
        valid.sort_by(|a, b| {
            a.start
                .cmp(&b.start)
                .then(crossings(seams, a).cmp(&crossings(seams, b)))
                .then(b.end.cmp(&a.end))
                .then(contextual(b).cmp(&contextual(a)))
        });
        // Precedence, each class placed leftmost-longest where it overlaps nothing
        // already placed: identifiers that act; identifiers that only alert (an alert
        // on an e-mail must not hide the NIR it contains, and is still counted where
        // nothing acting covers it); then matches in free prose (names, addresses,
        // dates), acting before alerting — a run of capitalised words must hide
        // neither `DIFFUSION RESTREINTE` from its rule nor its alert (and the level it
        // raises). Passes over the one sorted list, not copies of it: a crafted text can
        // hold a million candidates.
        let yields = |f: &Finding| self.detectors.get(f.detector).is_some_and(|d| d.yields);
        let mut chosen: Vec<Finding> = Vec::new();
        for (prose, acting) in [(false, true), (false, false), (true, true), (true, false)] {
            let mut placed: Vec<Finding> = Vec::new();
            for f in valid
                .iter()
                .filter(|f| yields(f) == prose && acts(f.detector) == acting)
            {
                let next = chosen.partition_point(|c| c.end <= f.start);
                let clear = chosen.get(next).is_none_or(|c| c.start >= f.end);
                if clear && placed.last().is_none_or(|last| f.start >= last.end) {
                    placed.push(*f);
                }
            }
            if chosen.is_empty() {
                chosen = placed;
            } else if !placed.is_empty() {
                chosen.extend(placed);
                chosen.sort_by_key(|f| f.start);
            }
        }
        drop(valid);
        Ok(self.without_leads(text, chosen))
    }

    /// Findings start after the context their detector keeps in the text (a civility
    /// before a name); overlaps were resolved on the whole matches.
    fn without_leads(&self, text: &str, mut findings: Vec<Finding>) -> Vec<Finding> {
        for f in &mut findings {
            let lead = self.detectors.get(f.detector).and_then(|d| d.lead);
            if let (Some(lead), Some(value)) = (lead, text.get(f.start..f.end)) {
                let n = lead(value);
                if n < value.len() && value.is_char_boundary(n) {
                    f.start += n;
                }
            }
        }
        findings
    }

    fn accept(&self, text: &str, before: &str, seams: &[usize], f: &Finding) -> bool {
        let Some(d) = self.detectors.get(f.detector) else {
            return false;
        };
        if f.end <= f.start || !text.is_char_boundary(f.start) || !text.is_char_boundary(f.end) {
            return false;
        }
        let at_seam = |i: usize| seams.binary_search(&i).is_ok();
        let prev = if at_seam(f.start) {
            None
        } else if f.start == 0 {
            before.chars().next_back()
        } else {
            text[..f.start].chars().next_back()
        };
        let next = if at_seam(f.end) {
            None
        } else {
            text[f.end..].chars().next()
        };
        let value = &text[f.start..f.end];
        // Word boundaries, as `\b` would: only where the match's own edge is a word char
        // (for checksum-validated numbers, only a digit against a digit: letters may be glued).
        let touches = |edge: Option<char>, neighbour: Option<char>| match (edge, neighbour) {
            (Some(e), Some(n)) if is_word(e) && is_word(n) => {
                !(d.glue && !(e.is_ascii_digit() && n.is_ascii_digit()))
            }
            _ => false,
        };
        if touches(value.chars().next(), prev) || touches(value.chars().next_back(), next) {
            return false;
        }
        if let Some(refuse) = d.not_after
            && !at_seam(f.start)
        {
            let from = floor_boundary(text, f.start.saturating_sub(NOT_AFTER_WINDOW));
            let near = &text[from..f.start];
            let refused = if from == 0 && near.len() < NOT_AFTER_WINDOW {
                let need = NOT_AFTER_WINDOW - near.len();
                let tail = &before[floor_boundary(before, before.len().saturating_sub(need))..];
                refuse(&format!("{tail}{near}"))
            } else {
                refuse(near)
            };
            if refused {
                return false;
            }
        }
        if d.glue && (prev.is_some_and(is_word) || next.is_some_and(is_word)) && in_digest(text, f)
        {
            return false;
        }
        if let Some(check) = d.check {
            let next_seam = seams.partition_point(|&s| s <= f.start);
            let crosses = seams.get(next_seam).is_some_and(|&s| s < f.end);
            let compact = || -> String { value.chars().filter(|c| c.is_alphanumeric()).collect() };
            if !(check(value) || crosses && check(&compact())) {
                return false;
            }
        }
        if !d.context.is_empty() {
            let mut window = String::new();
            let from = floor_boundary(text, f.start.saturating_sub(CONTEXT_WINDOW));
            let from_text = &text[from..f.start];
            // The character just before the window, if any: whether a word at the
            // window's start is whole.
            let mut outside = if from > 0 {
                text[..from].chars().next_back()
            } else {
                before.chars().next_back()
            };
            if from_text.len() < CONTEXT_WINDOW {
                let need = CONTEXT_WINDOW - from_text.len();
                let cut = floor_boundary(before, before.len().saturating_sub(need));
                outside = before[..cut].chars().next_back();
                window.push_str(&before[cut..]);
            }
            let head = window.len();
            window.push_str(from_text);
            let lower = window.to_lowercase();
            // A part boundary is where a word starts (parts are joined with nothing in
            // between: `assistant` + `Née le …`). Offsets hold when lower-casing kept
            // the byte length, as it does for French.
            let same = lower.len() == window.len();
            let seam = |i: usize| same && i >= head && at_seam(from + i - head);
            let found = if d.sentence {
                let start = sentence_start(&lower, &seam);
                self.cues
                    .get(f.detector)
                    .is_some_and(|c| c.found(&lower, start, outside, &seam))
                    // A name written without civility is a person too (`Karim
                    // Benali, syndiqué à la CGT`).
                    || (same && window.get(start..).is_some_and(crate::names::names_a_person))
            } else {
                d.context.iter().any(|w| context_found(&lower, w, &seam))
            };
            if !found {
                return false;
            }
        }
        true
    }
}

/// Starts of the matches of a reverse automaton that end at `end`, nearest first.
fn match_starts(
    dfa: &DFA,
    cache: &mut Cache,
    text: &[u8],
    end: usize,
    out: &mut Vec<usize>,
    budget: &mut usize,
) {
    out.clear();
    let input = Input::new(text).range(..end).anchored(Anchored::Yes);
    let Ok(mut sid) = dfa.start_state_reverse(cache, &input) else {
        return;
    };
    let mut at = end;
    while at > 0 {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
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

/// What gates a context word, as Hyperscan patterns (matched case-insensitively): its
/// longest run of ASCII characters when that run holds three letters in a row (`soci`
/// of `société`); otherwise (`né le`, whose ASCII run `e le` is in every other
/// sentence) the whole word in lower and upper case (non-ASCII letters match exactly)
/// where a word starts — `né à` is also the end of `donné à`; part boundaries are
/// handled with the seams (`Engine::seam_gates`). `None` if too short to be a useful
/// gate.
fn gate_patterns(word: &str) -> Option<Vec<String>> {
    use crate::detectors::escape_literal;
    let best = word
        .split(|c: char| !c.is_ascii())
        .max_by_key(|s| s.len())
        .unwrap_or("");
    if best.trim().len() >= 3 && !whole_word_gate(best) {
        return Some(vec![escape_literal(&best.to_lowercase())]);
    }
    let whole = word.trim();
    if whole.chars().count() < 3 {
        return None;
    }
    let mut forms = vec![whole.to_lowercase()];
    let upper = whole.to_uppercase();
    if upper != forms[0] {
        forms.push(upper);
    }
    Some(
        forms
            .iter()
            .map(|f| format!("(^|[^a-z0-9\\x80-\\xff]){}", escape_literal(f)))
            .collect(),
    )
}

type Groups = (Vec<Group>, Option<Group>);

fn build_groups(
    detectors: &[Detector],
    patterns: &[(String, bool)],
    owner: &[usize],
) -> Result<Groups, DlpError> {
    let needs_context = |i: usize| {
        owner
            .get(i)
            .and_then(|d| detectors.get(*d))
            .is_some_and(gated)
    };
    let mut gates: Vec<String> = Vec::new();
    let mut ungated = false;
    for d in detectors.iter().filter(|d| gated(d)) {
        for w in &d.context {
            match gate_patterns(w) {
                Some(literals) => {
                    for g in literals {
                        if !gates.contains(&g) {
                            gates.push(g);
                        }
                    }
                }
                // A word with no usable ASCII part: its detector cannot be gated.
                None => ungated = true,
            }
        }
    }
    let (ctx_ids, free_ids): (Vec<usize>, Vec<usize>) =
        (0..patterns.len()).partition(|&i| needs_context(i) && !ungated);
    // Patterns with no literal to look for (names without civility: capitalised words)
    // make Hyperscan run a full automaton over every byte: in sets of their own, the
    // literal-led set keeps its fast literal search (one pass each: 260 → 330 MB/s).
    // One set per pattern: a detector splits such a pattern by the bytes it starts
    // with (ASCII capitals, lists of Latin-1 capitals), each found fast alone, slowly
    // together (`personal::UP_SETS`).
    let (unled, others): (Vec<usize>, Vec<usize>) = free_ids.into_iter().partition(|&i| {
        owner
            .get(i)
            .and_then(|&d| detectors.get(d))
            .is_some_and(|d| d.not_after.is_some())
    });
    let (digit_led, other): (Vec<usize>, Vec<usize>) = others.into_iter().partition(|&i| {
        patterns
            .get(i)
            .and_then(|(p, caseless)| first_bytes(p, *caseless))
            .is_some_and(|b| !b.is_empty() && !b.iter().any(u8::is_ascii_alphabetic))
    });
    let compile = |ids: &[usize], extra: &[String]| -> Result<Box<dyn Matcher>, DlpError> {
        let mut set: Vec<(String, bool)> = ids.iter().map(|&i| patterns[i].clone()).collect();
        set.extend(extra.iter().map(|g| (g.clone(), true)));
        if set.is_empty() {
            return Ok(Box::new(NoMatcher));
        }
        Ok(Box::new(
            HyperscanMatcher::compile(&set).map_err(|e| DlpError::Matcher(hs_message(&e)))?,
        ))
    };
    let gate_literals: &[String] = if ctx_ids.is_empty() { &[] } else { &gates };
    let mut free = vec![Group {
        matcher: compile(&other, gate_literals)?,
        patterns: other,
        texts: Texts::All,
    }];
    if unled.len() > 1 {
        free.push(Group {
            matcher: compile(&unled, &[])?,
            patterns: unled.clone(),
            texts: Texts::Short,
        });
    }
    let split = if unled.len() > 1 {
        Texts::Long
    } else {
        Texts::All
    };
    for id in unled {
        free.push(Group {
            matcher: compile(&[id], &[])?,
            patterns: vec![id],
            texts: split,
        });
    }
    if !digit_led.is_empty() {
        free.push(Group {
            matcher: compile(&digit_led, &[])?,
            patterns: digit_led,
            texts: Texts::All,
        });
    }
    let contextual = if ctx_ids.is_empty() {
        None
    } else {
        Some(Group {
            matcher: compile(&ctx_ids, &[])?,
            patterns: ctx_ids,
            texts: Texts::All,
        })
    };
    Ok((free, contextual))
}

/// The bytes a match of `pattern` can start with, when there are few of them.
fn first_bytes(pattern: &str, caseless: bool) -> Option<Vec<u8>> {
    use regex_syntax::hir::literal::{ExtractKind, Extractor};
    let hir = syntax::parse_with(&dfa_expr(pattern, caseless), &dfa_syntax()).ok()?;
    let seq = Extractor::new()
        .kind(ExtractKind::Prefix)
        .limit_literal_len(1)
        .limit_class(16)
        .extract(&hir);
    let mut bytes = Vec::new();
    for lit in seq.literals()? {
        bytes.push(*lit.as_bytes().first()?);
    }
    Some(bytes)
}

/// The first pattern that does not compile alone, else `e` itself.
fn locate(detectors: &[Detector], e: DlpError) -> DlpError {
    for (di, d) in detectors.iter().enumerate() {
        for (pi, p) in d.patterns.iter().enumerate() {
            let mut checked = check_pattern(&p.scan, d.caseless);
            if checked.is_ok() && p.full != p.scan {
                checked = check_pattern(&p.full, d.caseless);
            }
            if let Err(PatternError(message)) = checked {
                return DlpError::Pattern {
                    detector: di,
                    pattern: pi,
                    message,
                };
            }
        }
    }
    e
}

/// A pattern one of the engines refuses: the engine's message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(pub String);

/// Whether one pattern compiles in both engines.
pub fn check_pattern(pattern: &str, caseless: bool) -> Result<(), PatternError> {
    HyperscanMatcher::compile(&[(pattern.to_string(), caseless)])
        .map_err(|e| PatternError(hs_message(&e)))?;
    syntax::parse_with(&dfa_expr(pattern, caseless), &dfa_syntax())
        .map_err(|e| PatternError(e.to_string()))?;
    Ok(())
}

/// Most states a custom pattern may unfold to (literals, classes, each repetition
/// counted as many times as it may repeat). Hyperscan's compile time grows with it
/// (~0.5 ms per state): `((a|b){200}){200}` unfolds to 80,000 and took 22 s; real
/// patterns stay in the tens.
pub const MAX_PATTERN_UNFOLDED: u64 = 2_000;

/// Most states all the custom patterns of a policy may unfold to together (~5 s of
/// compile at worst).
pub const MAX_POLICY_UNFOLDED: u64 = 10_000;

/// The states a pattern unfolds to; refuses one whose nested counted repetitions make
/// it expensive to compile, from its syntax alone (no compile is attempted).
pub fn check_complexity(pattern: &str, caseless: bool) -> Result<u64, PatternError> {
    use regex_syntax::hir::{Hir, HirKind};
    fn unfolded(h: &Hir) -> u64 {
        match h.kind() {
            HirKind::Empty | HirKind::Look(_) => 0,
            HirKind::Literal(l) => l.0.len() as u64,
            HirKind::Class(_) => 1,
            HirKind::Repetition(r) => {
                let times = u64::from(r.max.unwrap_or(r.min.saturating_add(1)).max(1));
                unfolded(&r.sub).saturating_mul(times)
            }
            HirKind::Capture(c) => unfolded(&c.sub),
            HirKind::Concat(hs) | HirKind::Alternation(hs) => {
                hs.iter().fold(0u64, |n, h| n.saturating_add(unfolded(h)))
            }
        }
    }
    let hir = syntax::parse_with(&dfa_expr(pattern, caseless), &dfa_syntax())
        .map_err(|e| PatternError(e.to_string()))?;
    let n = unfolded(&hir);
    if n > MAX_PATTERN_UNFOLDED {
        return Err(PatternError(format!(
            "too complex: its repetitions unfold to {n} states, at most {MAX_PATTERN_UNFOLDED} allowed"
        )));
    }
    Ok(n)
}

fn dfa_expr(pattern: &str, caseless: bool) -> String {
    if caseless {
        format!("(?i:{pattern})")
    } else {
        pattern.to_string()
    }
}

/// Longest match of a pattern in bytes, if bounded.
fn max_len(pattern: &str, caseless: bool) -> Option<usize> {
    syntax::parse_with(&dfa_expr(pattern, caseless), &dfa_syntax())
        .ok()?
        .properties()
        .maximum_len()
}

/// The largest char boundary ≤ i.
pub fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Whether a context word is in `window` (lower case). Words with a run of three ASCII
/// letters are looked for anywhere, as always (`numSiret`, `noPasseport`: field names
/// glue them); the others (`né le`) only where a word starts — after a character that
/// is not a letter or digit, at a part boundary (`seam`), or at the window's start —
/// since `donné le` ends with them.
fn context_found(window: &str, word: &str, seam: &dyn Fn(usize) -> bool) -> bool {
    if !whole_word_gate(word) {
        return window.contains(word);
    }
    window.match_indices(word).any(|(i, _)| {
        seam(i)
            || window[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_alphanumeric())
    })
}

/// Where the sentence that ends `window` (lower case) begins: just after its last
/// sentence end, or 0. A sentence ends at a line break, and at `!`, `?`, `;` or `.`
/// followed by whitespace (or a part boundary) — a `.` only after a number or a word of
/// four letters or more that is not a known abbreviation: `M.`, `Mme.`, `Dr.`, `Me.`,
/// `art.`, `n°.` and initials (`J.`) end nothing, nor do `Mlle.` or `janv.`.
fn sentence_start(window: &str, seam: &dyn Fn(usize) -> bool) -> usize {
    let bytes = window.as_bytes();
    // Bytes, backwards: the marks are ASCII, never inside a multi-byte character.
    for (i, &b) in bytes.iter().enumerate().rev() {
        let ends = match b {
            // A blank line ends a sentence; a single line break does not: forms and
            // records put the person on the line before (`Patient : M. Dupont` then
            // `Antécédents : diabétique.`).
            b'\n' => bytes[..i]
                .iter()
                .rev()
                .find(|c| !matches!(c, b'\r' | b' ' | b'\t'))
                .is_some_and(|&c| c == b'\n'),
            mark @ (b'!' | b'?' | b';' | b'.') => {
                let spaced = bytes.get(i + 1).is_some_and(u8::is_ascii_whitespace) || seam(i + 1);
                spaced && (mark != b'.' || ends_with_sentence_word(&window[..i]))
            }
            _ => false,
        };
        if ends {
            return i + 1;
        }
    }
    0
}

/// Abbreviations of four letters or more written with a period inside sentences.
const ABBREVIATIONS: &[&str] = &[
    "mlle", "mlles", "mmes", "melle", "janv", "févr", "fevr", "juil", "sept", "cass", "crim",
    "préc", "prec", "suiv",
];

/// Whether the text before a `.` (periods of an ellipsis skipped) ends with a word
/// whose period ends a sentence: a number, or four letters or more and not one of the
/// [`ABBREVIATIONS`].
fn ends_with_sentence_word(head: &str) -> bool {
    let head = head.trim_end_matches('.');
    let (mut letters, mut digits_only, mut bytes) = (0usize, true, 0usize);
    for c in head.chars().rev().take_while(|c| c.is_alphanumeric()) {
        bytes += c.len_utf8();
        if c.is_alphabetic() {
            letters += 1;
        }
        digits_only &= c.is_ascii_digit();
    }
    let word = &head[head.len() - bytes..];
    (bytes > 0 && digits_only) || (letters >= 4 && !ABBREVIATIONS.contains(&word))
}

/// A context word without three ASCII letters in a row: gated whole (see
/// [`gate_patterns`]) and matched where a word starts.
fn whole_word_gate(word: &str) -> bool {
    !word
        .split(|c: char| !c.is_ascii_alphabetic())
        .any(|piece| piece.len() >= 3)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_built_in_context_word_gates() {
        // One word that cannot gate sends every context-led detector to the scan of
        // all text (throughput 420 → 150 MB/s when `né ` was added).
        for d in crate::detectors::builtins().iter().filter(|d| gated(d)) {
            for w in &d.context {
                assert!(gate_patterns(w).is_some(), "{}: {w:?}", d.name);
            }
        }
    }

    #[test]
    fn sentences_end_after_words_and_numbers_not_abbreviations() {
        let no_seam = |_: usize| false;
        let start = |w: &str| sentence_start(w, &no_seam);
        assert_eq!(start("il est venu en 2019. "), "il est venu en 2019.".len());
        assert_eq!(start("fin de phrase. elle "), "fin de phrase.".len());
        assert_eq!(start("quoi ? il "), "quoi ?".len());
        assert_eq!(start("voir ci-dessus... il "), "voir ci-dessus...".len());
        assert_eq!(start("hier\n\nil "), "hier\n\n".len());
        assert_eq!(start("hier\r\n \r\nil "), "hier\r\n \r\n".len());
        // One line break does not end it: a form puts the person on the line before.
        assert_eq!(start("patient : m. dupont\nantécédents : "), 0);
        assert_eq!(start("patient : m. dupont\r\nantécédents : "), 0);
        for w in [
            "m. martin, cf. art. 3, ",
            "vu mme. durand, ",
            "mlle. petit, ",
            "le 12 janv. 2021, ",
            "dr. nguyen et j. dupont, ",
            "le n°. 5, ",
            "version 2.3, ",
        ] {
            assert_eq!(start(w), 0, "{w}");
        }
        // A part boundary after a period ends it too.
        let seam_at_5 = |i: usize| i == 5;
        assert_eq!(sentence_start("fini.il ", &seam_at_5), 5);
    }

    #[test]
    fn context_words_of_a_sentence_are_whole_words() {
        let cues = Cues::new(&[
            "il".to_string(),
            "l'intéressé".to_string(),
            "M.".to_string(),
        ]);
        let no_seam = |_: usize| false;
        let found = |w: &str| cues.found(w, 0, None, &no_seam);
        assert!(found("il est "));
        assert!(found("qu'il est "));
        assert!(found("selon l'intéressé, "));
        assert!(found("vu m. "));
        assert!(!found("la ville est "));
        assert!(!found("illustre "));
        assert!(!found("l'intéressée "));
        assert!(!found("10 m2 "));
        // Only from the sentence's start on.
        assert!(!cues.found("il dit. puis ", "il dit. ".len(), None, &no_seam));
        // At the window's start, the character before it decides.
        assert!(!cues.found("il est ", 0, Some('v'), &no_seam));
        assert!(cues.found("il est ", 0, Some(' '), &no_seam));
    }
}
