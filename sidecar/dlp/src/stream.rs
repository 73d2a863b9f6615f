//! Exact streaming: text arrives in arbitrary chunks; everything that cannot be part of
//! a match is released at once, and only a trailing candidate is held back.
//!
//! After each chunk the pending text is scanned whole. The hold point `h` is the
//! earliest position (at a word boundary) from which the rest of the pending text is
//! still a viable prefix of some pattern — it may become, or grow into, a match. Text
//! before `h` is final: its findings are transformed and it is released; a finding that
//! straddles `h` moves the release point back to its start. Deadness of a prefix is
//! monotonic (more text never revives it), so the result equals scanning the whole text
//! at once, whatever the chunking. See docs/adr/0004-exact-streaming-dlp.md.

use regex_automata::hybrid::LazyStateID;
use regex_automata::hybrid::dfa::Cache;

use crate::engine::{DlpError, Engine, Finding, floor_boundary};
use crate::fold::Folded;

/// Longest text kept from before the pending part (boundaries and context words).
const HISTORY: usize = 128;

/// What to write for each finding: the callback appends to `out` (a replacement, a
/// placeholder, or the original text for alert-only detectors).
pub trait Transform {
    /// Whether this detector's findings change the text (redact, pseudonymize, block);
    /// findings of detectors that only alert never hide those ([`Engine::find_for`]).
    fn acts_on(&self, _detector: usize) -> bool {
        true
    }

    fn finding(&mut self, engine: &Engine, finding: &Finding, value: &str, out: &mut String);
    /// A candidate grew past the hold-back cap: it is dropped, never released.
    fn overflow(&mut self, out: &mut String);
}

pub struct StreamScanner<'e> {
    engine: &'e Engine,
    /// Taken from the engine's pool while a chunk is scanned, given back after it
    /// (kept only while a candidate is suppressed).
    cache: Option<Cache>,
    pending: String,
    history: String,
    cap: usize,
    /// After an overflow: the candidate's automaton state; input is dropped until the
    /// candidate can no longer continue.
    suppress: Option<Option<LazyStateID>>,
}

impl std::fmt::Debug for StreamScanner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print pending text: it may hold a sensitive value.
        f.debug_struct("StreamScanner")
            .field("pending_bytes", &self.pending.len())
            .finish_non_exhaustive()
    }
}

impl<'e> StreamScanner<'e> {
    /// `cap`: most bytes held back for one candidate.
    pub fn new(engine: &'e Engine, cap: usize) -> Self {
        Self {
            engine,
            cache: None,
            pending: String::new(),
            history: String::new(),
            cap: cap.max(64),
            suppress: None,
        }
    }

    /// Bytes currently held back.
    pub fn held(&self) -> usize {
        self.pending.len()
    }

    pub fn push(
        &mut self,
        chunk: &str,
        t: &mut dyn Transform,
        out: &mut String,
    ) -> Result<(), DlpError> {
        let mut chunk = chunk;
        if let Some(state) = self.suppress {
            let engine = self.engine;
            let cache = self.cache.get_or_insert_with(|| engine.take_cache());
            let view = Folded::of(chunk);
            let (next, died) = engine.advance(cache, state, view.text.as_bytes());
            // The automaton reports death one byte late after a complete match: give
            // back the previous byte when it cannot carry a secret (a separator), never
            // an alphanumeric. Offsets go back to the chunk's own.
            let died = died.map(|i| match view.text.as_bytes().get(i.wrapping_sub(1)) {
                Some(b) if !b.is_ascii_alphanumeric() => view.original(i - 1),
                _ => view.original(i),
            });
            match died {
                None if next.is_some() => {
                    self.suppress = Some(next);
                    return Ok(());
                }
                // Unknown automaton state: stop at the next whitespace, to be safe.
                None => match chunk.find(char::is_whitespace) {
                    None => return Ok(()),
                    Some(i) => chunk = &chunk[i..],
                },
                Some(i) => chunk = &chunk[floor_boundary(chunk, i)..],
            }
            self.suppress = None;
            // The killing character starts fresh text: no word boundary to inherit.
            self.history.clear();
        }
        self.pending.push_str(chunk);
        let released = self.release(false, t, out);
        self.park_cache();
        released
    }

    /// End of text: everything pending is final.
    pub fn finish(&mut self, t: &mut dyn Transform, out: &mut String) -> Result<(), DlpError> {
        let released = self.release(true, t, out);
        self.park_cache();
        released
    }

    /// Gives the automaton's cache back to the engine between chunks: an answer may
    /// hold hundreds of scanners (one per text stream) and a cache costs in proportion
    /// to the patterns (hundreds of KiB with every detector), so only the scanners at
    /// work hold one. A suppressed candidate keeps its cache: its state lives there.
    fn park_cache(&mut self) {
        if self.suppress.is_none()
            && let Some(cache) = self.cache.take()
        {
            self.engine.give_cache(cache);
        }
    }

    /// Earliest position from which the pending text may still become a match. The
    /// automaton reads the folded view, as the detectors do; the position returned is
    /// in the pending text itself.
    fn hold_point(&mut self) -> usize {
        let view = Folded::of(&self.pending);
        let folded: &str = &view.text;
        let bytes = folded.as_bytes();
        let engine = self.engine;
        let cache = self.cache.get_or_insert_with(|| engine.take_cache());
        let mut budget = crate::engine::work_budget(bytes.len());
        for p in 0..folded.len() {
            if !folded.is_char_boundary(p) {
                continue;
            }
            let prev = if p == 0 {
                self.history.chars().next_back()
            } else {
                folded[..p].chars().next_back()
            };
            // Inside a word no match starts — except where letters meet digits:
            // checksum-validated numbers may be glued to letters; and an IBAN glued
            // after a letter (`xFR76…`) starts between two letters: two letters then a
            // digit, as far as the text goes (the next bytes may not have come yet).
            let next = folded[p..].chars().next();
            let glued_iban_like = engine.starts_inside_words() && {
                let b = &bytes[p..];
                b.first().is_some_and(u8::is_ascii_alphabetic)
                    && b.get(1).is_none_or(u8::is_ascii_alphabetic)
                    && b.get(2).is_none_or(u8::is_ascii_digit)
            };
            if let (Some(n), Some(b)) = (next, prev)
                && n.is_alphanumeric()
                && b.is_alphanumeric()
                && n.is_ascii_digit() == b.is_ascii_digit()
                && !glued_iban_like
            {
                continue;
            }
            // Each start runs the automaton until it dies: on crafted text (`a.a.a.…`,
            // an e-mail's local part that never ends) that is quadratic. Past the work
            // budget the search stops and holds from here (fail closed: the hold-back
            // cap then drops what cannot be judged).
            let Some(end) = p.checked_add(budget).map(|e| e.min(bytes.len())) else {
                return view.original(p);
            };
            // Alive to the end (or to the budget's end): a candidate starts here.
            let Some(at) = engine.advance(cache, None, &bytes[p..end]).1 else {
                return view.original(p);
            };
            budget = budget.saturating_sub(at + 1);
            if budget == 0 {
                return view.original(p);
            }
        }
        self.pending.len()
    }

    fn release(
        &mut self,
        at_end: bool,
        t: &mut dyn Transform,
        out: &mut String,
    ) -> Result<(), DlpError> {
        let len = self.pending.len();
        let findings = self
            .engine
            .find_for(&self.pending, &self.history, &|d| t.acts_on(d))?;
        let h = if at_end { len } else { self.hold_point() };
        let mut r = h;
        // A final finding must be released whole, or not at all.
        loop {
            let straddling = findings
                .iter()
                .find(|f| f.matched_from < r && f.end > r)
                .map(|f| f.matched_from);
            match straddling {
                Some(s) => r = s,
                None => break,
            }
        }
        let mut overflow = false;
        if !at_end && len - r > self.cap {
            // The candidate is too long to keep waiting for: fail closed.
            overflow = true;
        }
        emit(self.engine, &self.pending[..r], &findings, t, out);
        if overflow {
            // Drop the held candidate and whatever continues it.
            t.overflow(out);
            let engine = self.engine;
            let cache = self.cache.get_or_insert_with(|| engine.take_cache());
            let (state, _) =
                engine.advance(cache, None, Folded::of(&self.pending[h..]).text.as_bytes());
            self.suppress = Some(state);
            self.pending.clear();
            self.history.clear();
            return Ok(());
        }
        // Only the last HISTORY bytes are kept: copy no more than that.
        let keep = floor_boundary(&self.pending, r.saturating_sub(HISTORY));
        if keep > 0 {
            self.history.clear();
        }
        self.history.push_str(&self.pending[keep..r]);
        if self.history.len() > HISTORY {
            let cut = floor_boundary(&self.history, self.history.len() - HISTORY);
            self.history.drain(..cut);
        }
        self.pending.drain(..r);
        Ok(())
    }
}

/// Writes `text` to `out` with the findings that lie wholly inside it transformed.
fn emit(
    engine: &Engine,
    text: &str,
    findings: &[Finding],
    t: &mut dyn Transform,
    out: &mut String,
) {
    let mut cursor = 0;
    for f in findings.iter().filter(|f| f.end <= text.len()) {
        out.push_str(&text[cursor..f.start]);
        t.finding(engine, f, &text[f.start..f.end], out);
        cursor = f.end;
    }
    out.push_str(&text[cursor..]);
}

/// Block mode: the whole text at once — what streaming does at the end of a text, with
/// nothing held and nothing before it.
pub fn transform_block(
    engine: &Engine,
    text: &str,
    t: &mut dyn Transform,
) -> Result<String, DlpError> {
    let findings = engine.find_for(text, "", &|d| t.acts_on(d))?;
    let mut out = String::with_capacity(text.len());
    emit(engine, text, &findings, t, &mut out);
    Ok(out)
}

/// Replaces every finding with `[NAME]` and counts them per detector.
#[derive(Debug, Default)]
pub struct Redact {
    pub counts: std::collections::BTreeMap<String, usize>,
}

impl Transform for Redact {
    fn finding(&mut self, engine: &Engine, f: &Finding, _value: &str, out: &mut String) {
        let name = engine
            .detectors
            .get(f.detector)
            .map_or("REDACTED", |d| d.name.as_str());
        *self.counts.entry(name.to_string()).or_default() += 1;
        out.push('[');
        out.push_str(name);
        out.push(']');
    }

    fn overflow(&mut self, out: &mut String) {
        *self.counts.entry("OVERSIZED_CANDIDATE".into()).or_default() += 1;
        out.push_str("[REDACTED]");
    }
}
