//! DLP on answers: complete JSON bodies, and SSE streams event by event.
//!
//! Each text stream of an answer (a choice's content, a tool call's arguments, an
//! Anthropic content block) gets its own [`StreamScanner`] (response rules) followed by
//! a [`Restorer`] (placeholders back to values). Held text is flushed into the event
//! that ends its stream (`finish_reason`, `content_block_stop`, `[DONE]`), so nothing is
//! lost and nothing sensitive is released early.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};
use vigie_dlp::engine::{Engine, Finding};
use vigie_dlp::policy::{Action, CompiledDlp, DetectorActions};
use vigie_dlp::stream::{StreamScanner, Transform};

use super::escapes::Unescaper;
use super::pseudonym::{Pseudonyms, Restorer};
use super::text::{self, Rewrite};
use super::{Counts, MAX_INSPECTED_ITEMS, action_name};
use crate::api::Operation;

/// Detector names whose answer-side action is `block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked(pub BTreeSet<String>);

impl Blocked {
    /// An answer DLP cannot read (binary, or too complex to inspect in bounded time):
    /// stopped like a block rather than passed unchecked.
    pub fn uninspectable() -> Self {
        Self(BTreeSet::from(["UNINSPECTABLE".to_string()]))
    }
}

/// Whether a text would be read as JSON by a lenient parser: its first character that
/// is not whitespace or a BOM opens an object or an array.
fn looks_like_json(text: &str) -> bool {
    text.trim_start_matches(|c: char| c.is_whitespace() || c == '\u{feff}')
        .starts_with(['{', '['])
}

/// Sets every `logprobs` to null (chat and completions put them per choice).
fn drop_logprobs(v: &mut Value) {
    match v {
        Value::Array(items) => items.iter_mut().for_each(drop_logprobs),
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if k == "logprobs" {
                    *v = Value::Null;
                } else {
                    drop_logprobs(v);
                }
            }
        }
        _ => {}
    }
}

#[derive(Debug, Default)]
struct ResponseTransform<'a> {
    actions: &'a [DetectorActions],
    counts: Counts,
    blocked: BTreeSet<String>,
}

impl Transform for ResponseTransform<'_> {
    fn acts_on(&self, detector: usize) -> bool {
        self.actions
            .get(detector)
            .and_then(|a| a.response)
            .is_some_and(|a| a != Action::Alert)
    }

    fn finding(&mut self, _engine: &Engine, f: &Finding, value: &str, out: &mut String) {
        let Some(a) = self.actions.get(f.detector) else {
            out.push_str(value);
            return;
        };
        let Some(action) = a.response else {
            out.push_str(value);
            return;
        };
        *self
            .counts
            .entry((a.name.clone(), action_name(action)))
            .or_default() += 1;
        match action {
            Action::Alert => out.push_str(value),
            // A value the model wrote itself has no placeholder to restore: redact it.
            Action::Redact | Action::Pseudonymize => out.push_str(&a.replacement),
            Action::Block => {
                self.blocked.insert(a.name.clone());
                out.push_str(&a.replacement);
            }
        }
    }

    fn overflow(&mut self, out: &mut String) {
        *self
            .counts
            .entry(("OVERSIZED_CANDIDATE".into(), "redact"))
            .or_default() += 1;
        out.push_str("[REDACTED]");
    }
}

/// What the answer side does for one request.
pub struct ResponseDlp<'a> {
    dlp: Option<&'a CompiledDlp>,
    pseudonyms: &'a Pseudonyms,
    pub counts: Counts,
}

impl std::fmt::Debug for ResponseDlp<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseDlp").finish_non_exhaustive()
    }
}

impl<'a> ResponseDlp<'a> {
    /// `None` when there is nothing to do on the answer.
    pub fn new(dlp: Option<&'a CompiledDlp>, pseudonyms: &'a Pseudonyms) -> Option<Self> {
        let dlp = dlp.filter(|d| d.scans_responses() || d.external_answers());
        if dlp.is_none() && pseudonyms.is_empty() {
            return None;
        }
        Some(Self {
            dlp,
            pseudonyms,
            counts: Counts::new(),
        })
    }

    fn merge(&mut self, counts: Counts) {
        for (k, v) in counts {
            *self.counts.entry(k).or_default() += v;
        }
    }

    /// A complete answer: every text of a JSON body (any status: error bodies too),
    /// or the whole body as text when it is not JSON. A body that is not text either
    /// (binary) cannot be inspected: refused while answer rules apply.
    pub fn filter_body(&mut self, body: &[u8]) -> Result<Vec<u8>, Blocked> {
        if self.dlp.is_some() && crate::api::request::json_items(body) > MAX_INSPECTED_ITEMS {
            return Err(Blocked::uninspectable());
        }
        if let Ok(mut json) = serde_json::from_slice::<Value>(body) {
            if !self.filter_value(&mut json)? {
                return Ok(body.to_vec());
            }
            return serde_json::to_vec(&json).map_err(|_| Blocked::uninspectable());
        }
        // Not JSON to serde, yet maybe to the app's parser (NaN, a BOM, a lone
        // surrogate, deep nesting: JSON escapes DLP would read undecoded), or not text:
        // stopped while answer rules apply.
        let text = std::str::from_utf8(body)
            .ok()
            .filter(|t| !looks_like_json(t));
        let Some(text) = text else {
            return match self.dlp {
                Some(_) => Err(Blocked::uninspectable()),
                None => Ok(body.to_vec()),
            };
        };
        let mut v = Value::String(text.to_string());
        self.filter_value(&mut v)?;
        match v {
            Value::String(s) => Ok(s.into_bytes()),
            _ => Err(Blocked::uninspectable()),
        }
    }

    /// Answer rules, then placeholders back, on every text of `json` (what the app
    /// receives: [`text::collect`]). Once DLP changed anything, `logprobs` are dropped:
    /// their tokens and bytes spell out the text that was redacted. Returns whether
    /// `json` changed.
    fn filter_value(&mut self, json: &mut Value) -> Result<bool, Blocked> {
        let changed = self.apply_rules(json)?;
        Ok(self.restore(json) || changed)
    }

    /// A complete JSON answer that external detectors will read too: answer rules
    /// applied, placeholders not yet restored (the detectors must not hide what the
    /// app is entitled to get back). `None` when the body is not JSON: then
    /// [`ResponseDlp::filter_body`] alone applies.
    pub fn begin_json(&mut self, body: &[u8]) -> Option<Result<(Value, bool), Blocked>> {
        if self.dlp.is_some() && crate::api::request::json_items(body) > MAX_INSPECTED_ITEMS {
            return Some(Err(Blocked::uninspectable()));
        }
        let mut json = serde_json::from_slice::<Value>(body).ok()?;
        Some(self.apply_rules(&mut json).map(|changed| (json, changed)))
    }

    /// An external detector's findings (`located`, from the batch of this same
    /// `json`) applied with the answer-side actions. Returns whether `json` changed.
    pub fn apply_external(
        &mut self,
        json: &mut Value,
        detector: &vigie_dlp::external::ExternalDetector,
        located: Vec<vigie_dlp::external::Located>,
    ) -> Result<bool, Blocked> {
        let mut blocked = BTreeSet::new();
        let mut level = None;
        let replacements = self.dlp.map(CompiledDlp::replacements).unwrap_or_default();
        let changed = super::external::apply(
            json,
            detector,
            located,
            &mut super::external::Effects {
                counts: &mut self.counts,
                level: &mut level,
                blocked: &mut blocked,
                pseudonyms: None,
                issued: Some(self.pseudonyms),
                replacements: &replacements,
            },
        );
        if !blocked.is_empty() {
            return Err(Blocked(blocked));
        }
        if changed {
            drop_logprobs(json);
        }
        Ok(changed)
    }

    /// The end of [`ResponseDlp::begin_json`]: placeholders restored, the answer
    /// written again if anything changed.
    pub fn finish_json(
        &mut self,
        mut json: Value,
        changed: bool,
        body: &[u8],
    ) -> Result<Vec<u8>, Blocked> {
        if !(self.restore(&mut json) || changed) {
            return Ok(body.to_vec());
        }
        serde_json::to_vec(&json).map_err(|_| Blocked::uninspectable())
    }

    /// Answer rules on every text of `json`; returns whether it changed.
    fn apply_rules(&mut self, json: &mut Value) -> Result<bool, Blocked> {
        let mut changed = false;
        if let Some(d) = self.dlp {
            let mut t = ResponseTransform {
                actions: &d.actions,
                ..ResponseTransform::default()
            };
            let rewrite = text::transform_tree(&d.engine, json, &mut t);
            self.merge(std::mem::take(&mut t.counts));
            if !t.blocked.is_empty() {
                return Err(Blocked(t.blocked));
            }
            match rewrite {
                Ok(Rewrite::Unchanged) => {}
                Ok(Rewrite::Changed) => {
                    drop_logprobs(json);
                    changed = true;
                }
                // Too complex to inspect in bounded time, data in a structural field, a
                // number DLP cannot read: stopped, not passed.
                Ok(Rewrite::Structural | Rewrite::Unreadable) | Err(_) => {
                    return Err(Blocked::uninspectable());
                }
            }
        }
        Ok(changed)
    }

    /// Placeholders back to values in every string; returns whether any was.
    fn restore(&self, json: &mut Value) -> bool {
        let mut changed = false;
        if !self.pseudonyms.is_empty() {
            let names = self.pseudonyms;
            text::visit_strings_mut(json, &mut |s| {
                let restored = names.restore_all(s);
                if restored != *s {
                    *s = restored;
                    changed = true;
                }
            });
        }
        changed
    }

    /// The request's placeholders (to filter a copy of the answer elsewhere).
    pub fn pseudonyms(&self) -> &Pseudonyms {
        self.pseudonyms
    }

    /// Whether an answer header's value holds something an answer rule applies to
    /// (the relay drops such headers: a header is text the app receives).
    pub fn header_carries_data(&self, value: &str) -> bool {
        let Some(d) = self.dlp else {
            return false;
        };
        d.engine.find(value, "").map_or(true, |found| {
            found.iter().any(|f| {
                d.actions
                    .get(f.detector)
                    .is_some_and(|a| a.response.is_some())
            })
        })
    }

    pub fn sse(self, op: Operation) -> SseFilter<'a> {
        SseFilter {
            op,
            dlp: self,
            buf: Vec::new(),
            scanned: 0,
            cr: false,
            streams: BTreeMap::new(),
            finished: BTreeSet::new(),
            template: None,
        }
    }
}

/// One text stream of an answer.
struct TextStream<'a> {
    /// JSON text (tool arguments, `partial_json`): escapes decoded before scanning.
    unescaper: Option<Unescaper>,
    scanner: Option<StreamScanner<'a>>,
    transform: ResponseTransform<'a>,
    restorer: Restorer,
}

/// Which text of the answer a stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Field {
    Content,
    ToolArguments(u64),
    /// Legacy `function_call.arguments`.
    FunctionCall,
    /// `reasoning_content` (vLLM and DeepSeek-style reasoning models).
    Reasoning,
    /// `refusal`: the SDKs join its deltas like content's.
    Refusal,
    /// A tool call's `function.name` (joined across deltas by the SDKs).
    ToolName(u64),
    /// `audio.transcript` of an audio answer.
    AudioTranscript,
    AnthropicText,
    AnthropicJson,
    AnthropicThinking,
}

/// Rewrites an SSE answer event by event.
pub struct SseFilter<'a> {
    op: Operation,
    dlp: ResponseDlp<'a>,
    /// Received bytes not yet making a whole event, line ends normalised to `\n`.
    buf: Vec<u8>,
    /// How far `buf` is known to hold no event end (each byte is searched once).
    scanned: usize,
    /// The last byte received was a CR: a LF right after it belongs to the same line end.
    cr: bool,
    streams: BTreeMap<(u64, Field), TextStream<'a>>,
    /// Choices (OpenAI) or content blocks (Anthropic) already ended: more text for one
    /// would start a scanner with no memory of what came before.
    finished: BTreeSet<u64>,
    /// Identifying fields of the stream's chunks, to build a chunk for text flushed at
    /// `[DONE]`.
    template: Option<Value>,
}

impl std::fmt::Debug for SseFilter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseFilter")
            .field("op", &self.op)
            .finish_non_exhaustive()
    }
}

/// Most text streams one answer may open (choices × fields, tool calls, content
/// blocks): each holds a scanner with its automaton cache. Real answers open a few.
const MAX_STREAMS: usize = 256;

/// Longest event the filter waits for: a stream that never ends an event is not held
/// (nor searched) without bound.
const MAX_EVENT_BYTES: usize = 1 << 20;

/// Names an event may have when passed on (OpenAI and Anthropic use a few lower-case
/// words); any other name could carry text, and is dropped.
fn plain_event_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl<'a> SseFilter<'a> {
    pub fn counts(&self) -> &Counts {
        &self.dlp.counts
    }

    fn stream(&mut self, key: (u64, Field)) -> &mut TextStream<'a> {
        let dlp = self.dlp.dlp;
        let json = matches!(
            key.1,
            Field::ToolArguments(_) | Field::FunctionCall | Field::AnthropicJson
        );
        self.streams.entry(key).or_insert_with(|| TextStream {
            unescaper: (json && dlp.is_some()).then(Unescaper::default),
            scanner: dlp.map(|d| StreamScanner::new(&d.engine, d.hold_back_cap)),
            transform: ResponseTransform {
                actions: dlp.map_or(&[], |d| d.actions.as_slice()),
                ..ResponseTransform::default()
            },
            restorer: Restorer::default(),
        })
    }

    /// Feeds text into a stream; returns what may be released now.
    fn feed(&mut self, key: (u64, Field), text: &str) -> Result<String, Blocked> {
        if self.finished.contains(&key.0)
            || (!self.streams.contains_key(&key) && self.streams.len() >= MAX_STREAMS)
        {
            // Text after its choice or block ended, or more streams than any real
            // answer opens: stopped, not scanned apart from what came before.
            return if text.is_empty() {
                Ok(String::new())
            } else {
                Err(Blocked::uninspectable())
            };
        }
        let names = self.dlp.pseudonyms;
        let s = self.stream(key);
        let decoded;
        let text = match &mut s.unescaper {
            Some(u) => {
                decoded = u.push(text);
                decoded.as_str()
            }
            None => text,
        };
        let mut scanned = String::new();
        match &mut s.scanner {
            Some(scanner) => {
                if scanner.push(text, &mut s.transform, &mut scanned).is_err() {
                    scanned = "[REDACTED]".into();
                }
            }
            None => scanned.push_str(text),
        }
        if !s.transform.blocked.is_empty() {
            // Counted like any finding: the block is reported, not only enforced.
            let counts = std::mem::take(&mut s.transform.counts);
            let blocked = s.transform.blocked.clone();
            self.dlp.merge(counts);
            return Err(Blocked(blocked));
        }
        Ok(s.restorer.push(names, &scanned))
    }

    /// Ends a stream; returns its held text.
    fn flush(&mut self, key: (u64, Field)) -> Result<String, Blocked> {
        let names = self.dlp.pseudonyms;
        let Some(mut s) = self.streams.remove(&key) else {
            return Ok(String::new());
        };
        let mut scanned = String::new();
        let carried = s.unescaper.as_mut().map(Unescaper::finish);
        if let Some(scanner) = &mut s.scanner {
            let pushed = match carried.as_deref() {
                Some(rest) => scanner.push(rest, &mut s.transform, &mut scanned),
                None => Ok(()),
            };
            if pushed
                .and_then(|()| scanner.finish(&mut s.transform, &mut scanned))
                .is_err()
            {
                scanned = "[REDACTED]".into();
            }
        }
        let counts = std::mem::take(&mut s.transform.counts);
        self.dlp.merge(counts);
        if !s.transform.blocked.is_empty() {
            return Err(Blocked(s.transform.blocked));
        }
        let mut out = s.restorer.push(names, &scanned);
        out.push_str(&s.restorer.finish());
        Ok(out)
    }

    fn flush_choice(&mut self, index: u64) -> Result<Vec<(Field, String)>, Blocked> {
        self.finished.insert(index);
        let keys: Vec<(u64, Field)> = self
            .streams
            .keys()
            .filter(|(i, _)| *i == index)
            .copied()
            .collect();
        let mut out = Vec::new();
        for k in keys {
            let text = self.flush(k)?;
            if !text.is_empty() {
                out.push((k.1, text));
            }
        }
        Ok(out)
    }

    /// Bytes from upstream in; bytes for the client out. `Err`: stop the answer.
    ///
    /// Line ends are read as the SSE specification (and the SDKs) read them — CRLF, LF or
    /// a lone CR — and normalised to LF, so an event cannot hide from the filter behind
    /// a line end the filter does not split on.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<u8>, Blocked> {
        self.buf.reserve(bytes.len());
        for &b in bytes {
            if std::mem::take(&mut self.cr) {
                self.buf.push(b'\n');
                if b == b'\n' {
                    continue;
                }
            }
            if b == b'\r' {
                self.cr = true;
            } else {
                self.buf.push(b);
            }
        }
        let mut out = Vec::new();
        loop {
            let from = self.scanned.saturating_sub(1);
            let Some(at) = self
                .buf
                .get(from..)
                .and_then(|b| b.windows(2).position(|w| w == b"\n\n"))
            else {
                self.scanned = self.buf.len();
                break;
            };
            let end = from + at;
            let event: Vec<u8> = self.buf.drain(..end + 2).collect();
            self.scanned = 0;
            self.event(&event[..end], &mut out)?;
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(Blocked::uninspectable());
        }
        Ok(out)
    }

    /// End of the upstream body: whatever is still held goes out.
    pub fn finish(&mut self) -> Result<Vec<u8>, Blocked> {
        let mut out = Vec::new();
        if std::mem::take(&mut self.cr) {
            self.buf.push(b'\n');
        }
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            self.scanned = 0;
            self.event(&rest, &mut out)?;
        }
        self.flush_all(&mut out)?;
        Ok(out)
    }

    fn flush_all(&mut self, out: &mut Vec<u8>) -> Result<(), Blocked> {
        let indexes: BTreeSet<u64> = self.streams.keys().map(|(i, _)| *i).collect();
        for i in indexes {
            let texts = self.flush_choice(i)?;
            if texts.is_empty() {
                continue;
            }
            match self.op {
                Operation::Messages => {
                    for (field, t) in texts {
                        write_event(
                            out,
                            Some("content_block_delta"),
                            &anthropic_delta(i, field, &t),
                        );
                    }
                }
                _ => {
                    let mut chunk = self.template.clone().unwrap_or_else(|| json!({}));
                    chunk["choices"] = json!([{"index": i, "delta": {}, "finish_reason": null}]);
                    if let Some(c) = chunk["choices"].get_mut(0) {
                        apply_openai_flush(self.op, c, texts);
                    }
                    write_event(out, None, &chunk);
                }
            }
        }
        Ok(())
    }

    fn event(&mut self, raw: &[u8], out: &mut Vec<u8>) -> Result<(), Blocked> {
        let Ok(text) = std::str::from_utf8(raw) else {
            // Not text: not something DLP can read, and not SSE we understand. Drop it
            // rather than let unchecked bytes through.
            return Ok(());
        };
        let mut event_name = None;
        let mut data = String::new();
        // Lines other than `event:`, `data:` and comments (`id:`, `retry:`, unknown
        // fields) are not passed on: their text would go out unread.
        let mut comments_only = true;
        for line in text.split('\n') {
            if let Some(v) = line.strip_prefix("event:") {
                let name = v.trim();
                event_name = plain_event_name(name).then(|| name.to_string());
            } else if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            } else if !line.is_empty() && !line.starts_with(':') {
                comments_only = false;
            }
        }
        if data.trim() == "[DONE]" {
            self.flush_all(out)?;
            out.extend_from_slice(b"data: [DONE]\n\n");
            return Ok(());
        }
        let Ok(mut json) = serde_json::from_str::<Value>(&data) else {
            // A keep-alive stays a keep-alive, emptied (a comment's text is not read);
            // non-JSON events carry no model text the SDKs read, and are dropped.
            if data.is_empty() && comments_only {
                out.extend_from_slice(b":\n\n");
            }
            return Ok(());
        };
        match self.op {
            Operation::Messages => self.anthropic_event(&mut json, event_name.as_deref(), out)?,
            _ => {
                self.openai_chunk(&mut json)?;
                self.scan_rest(&mut json)?;
                write_event(out, event_name.as_deref(), &json);
            }
        }
        Ok(())
    }

    fn openai_chunk(&mut self, json: &mut Value) -> Result<(), Blocked> {
        let Some(Value::Array(choices)) = json.get_mut("choices") else {
            return Ok(());
        };
        let mut choices = std::mem::take(choices);
        for c in &mut choices {
            let index = index_of(c)?;
            if self.op == Operation::Completions {
                if let Some(Value::String(t)) = c.get_mut("text") {
                    *t = self.feed((index, Field::Content), t)?;
                }
            } else if let Some(delta) = c.get_mut("delta") {
                if let Some(Value::String(t)) = delta.get_mut("content") {
                    *t = self.feed((index, Field::Content), t)?;
                }
                if let Some(Value::String(t)) = delta.get_mut("reasoning_content") {
                    *t = self.feed((index, Field::Reasoning), t)?;
                }
                if let Some(Value::String(t)) = delta.get_mut("refusal") {
                    *t = self.feed((index, Field::Refusal), t)?;
                }
                if let Some(Value::String(t)) = delta.pointer_mut("/audio/transcript") {
                    *t = self.feed((index, Field::AudioTranscript), t)?;
                }
                if let Some(Value::String(a)) = delta.pointer_mut("/function_call/arguments") {
                    *a = self.feed((index, Field::FunctionCall), a)?;
                }
                if let Some(Value::Array(calls)) = delta.get_mut("tool_calls") {
                    for call in calls {
                        let k = index_of(call)?;
                        if let Some(Value::String(n)) = call.pointer_mut("/function/name") {
                            *n = self.feed((index, Field::ToolName(k)), n)?;
                        }
                        if let Some(Value::String(a)) = call.pointer_mut("/function/arguments") {
                            *a = self.feed((index, Field::ToolArguments(k)), a)?;
                        }
                    }
                }
            }
            if c.get("finish_reason").is_some_and(|f| !f.is_null()) {
                let texts = self.flush_choice(index)?;
                apply_openai_flush(self.op, c, texts);
            }
        }
        json["choices"] = Value::Array(choices);
        if self.template.is_none() {
            // The fields that identify the stream are the same in every chunk: keep
            // them once, for a chunk the filter may have to write itself at `[DONE]`.
            let ident: serde_json::Map<String, Value> =
                ["id", "object", "created", "model", "system_fingerprint"]
                    .iter()
                    .filter_map(|k| json.get(*k).map(|v| ((*k).to_string(), v.clone())))
                    .collect();
            self.template = Some(Value::Object(ident));
        }
        Ok(())
    }

    fn anthropic_event(
        &mut self,
        json: &mut Value,
        name: Option<&str>,
        out: &mut Vec<u8>,
    ) -> Result<(), Blocked> {
        let index = index_of(json)?;
        match json.get("type").and_then(Value::as_str) {
            // A block may start with text: it is the head of the block's stream.
            Some("content_block_start") => {
                if let Some(block) = json.get_mut("content_block") {
                    for (field, key) in [
                        (Field::AnthropicText, "text"),
                        (Field::AnthropicThinking, "thinking"),
                    ] {
                        if let Some(Value::String(t)) = block.get_mut(key) {
                            *t = self.feed((index, field), t)?;
                        }
                    }
                }
            }
            // The message starts empty; content there would bypass the blocks' streams.
            Some("message_start")
                if json
                    .pointer("/message/content")
                    .and_then(Value::as_array)
                    .is_some_and(|c| !c.is_empty()) =>
            {
                return Err(Blocked::uninspectable());
            }
            Some("content_block_delta") => {
                if let Some(delta) = json.get_mut("delta") {
                    let (field, key) = match delta.get("type").and_then(Value::as_str) {
                        Some("text_delta") => (Field::AnthropicText, "text"),
                        Some("input_json_delta") => (Field::AnthropicJson, "partial_json"),
                        // The block's signature no longer matches a rewritten thinking
                        // text; a leak to the user is worse than a rejected replay.
                        Some("thinking_delta") => (Field::AnthropicThinking, "thinking"),
                        _ => {
                            self.scan_rest(json)?;
                            write_event(out, name, json);
                            return Ok(());
                        }
                    };
                    if let Some(Value::String(t)) = delta.get_mut(key) {
                        *t = self.feed((index, field), t)?;
                    }
                }
            }
            Some("content_block_stop") => {
                for (field, t) in self.flush_choice(index)? {
                    write_event(
                        out,
                        Some("content_block_delta"),
                        &anthropic_delta(index, field, &t),
                    );
                }
            }
            Some("message_stop") => self.flush_all(out)?,
            _ => {}
        }
        self.scan_rest(json)?;
        write_event(out, name, json);
        Ok(())
    }

    /// Every other text of an event (refusals, tool names, annotations, transcripts,
    /// error messages, fields not known yet) through the answer rules, block-wise: the
    /// streamed texts were already judged by their scanners and are left out while
    /// the rest is read. With answer rules on, `logprobs` are dropped from every chunk:
    /// they go out before the text they spell is judged.
    fn scan_rest(&mut self, json: &mut Value) -> Result<(), Blocked> {
        if self.dlp.dlp.is_some()
            && let Some(Value::Array(choices)) = json.get_mut("choices")
        {
            for c in choices {
                if let Some(l) = c.get_mut("logprobs") {
                    *l = Value::Null;
                }
            }
        }
        let fed = take_streamed(self.op, json);
        let result = self.dlp.filter_value(json);
        for (pointer, v) in fed {
            if let Some(slot) = json.pointer_mut(&pointer) {
                *slot = v;
            }
        }
        result.map(|_| ())
    }
}

/// A choice's, tool call's or content block's `index`: absent is 0; anything but a
/// plain integer (`1.0`, `"1"`) stops the answer — the SDKs would file the text under
/// another stream than the filter did.
fn index_of(v: &Value) -> Result<u64, Blocked> {
    match v.get("index") {
        None => Ok(0),
        Some(i) => i.as_u64().ok_or_else(Blocked::uninspectable),
    }
}

/// Takes the texts the stream scanners handle out of an event (leaving nulls), with
/// where they were.
fn take_streamed(op: Operation, json: &mut Value) -> Vec<(String, Value)> {
    let mut pointers = Vec::new();
    if op == Operation::Messages {
        pointers.extend(
            [
                "/delta/text",
                "/delta/partial_json",
                "/delta/thinking",
                "/content_block/text",
                "/content_block/thinking",
            ]
            .map(String::from),
        );
    } else if let Some(Value::Array(choices)) = json.get("choices") {
        for (i, c) in choices.iter().enumerate() {
            for p in [
                "text",
                "delta/content",
                "delta/reasoning_content",
                "delta/refusal",
                "delta/audio/transcript",
                "delta/function_call/arguments",
            ] {
                pointers.push(format!("/choices/{i}/{p}"));
            }
            let calls = c.pointer("/delta/tool_calls").and_then(Value::as_array);
            for k in 0..calls.map_or(0, Vec::len) {
                for p in ["name", "arguments"] {
                    pointers.push(format!("/choices/{i}/delta/tool_calls/{k}/function/{p}"));
                }
            }
        }
    }
    pointers
        .into_iter()
        .filter_map(|p| {
            let v = json
                .pointer_mut(&p)
                .filter(|v| v.is_string())
                .map(Value::take)?;
            Some((p, v))
        })
        .collect()
}

fn anthropic_delta(index: u64, field: Field, text: &str) -> Value {
    let delta = match field {
        Field::AnthropicJson => json!({"type": "input_json_delta", "partial_json": text}),
        Field::AnthropicThinking => json!({"type": "thinking_delta", "thinking": text}),
        _ => json!({"type": "text_delta", "text": text}),
    };
    json!({"type": "content_block_delta", "index": index, "delta": delta})
}

/// Puts flushed text into the chunk that ends a choice.
fn apply_openai_flush(op: Operation, choice: &mut Value, texts: Vec<(Field, String)>) {
    for (field, t) in texts {
        match (op, field) {
            (Operation::Completions, _) => {
                let prev = choice.get("text").and_then(Value::as_str).unwrap_or("");
                choice["text"] = Value::String(format!("{prev}{t}"));
            }
            (_, Field::FunctionCall) => {
                let delta = &mut choice["delta"];
                let prev = delta
                    .pointer("/function_call/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                delta["function_call"]["arguments"] = Value::String(format!("{prev}{t}"));
            }
            (_, Field::ToolArguments(k) | Field::ToolName(k)) => {
                let key = if matches!(field, Field::ToolName(_)) {
                    "name"
                } else {
                    "arguments"
                };
                let delta = &mut choice["delta"];
                if !delta.get("tool_calls").is_some_and(Value::is_array) {
                    delta["tool_calls"] = json!([]);
                }
                if let Some(calls) = delta["tool_calls"].as_array_mut() {
                    calls.push(json!({"index": k, "function": {key: t}}));
                }
            }
            (_, Field::AudioTranscript) => {
                let delta = &mut choice["delta"];
                let prev = delta
                    .pointer("/audio/transcript")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                delta["audio"]["transcript"] = Value::String(format!("{prev}{t}"));
            }
            (_, field) => {
                let key = match field {
                    Field::Reasoning => "reasoning_content",
                    Field::Refusal => "refusal",
                    _ => "content",
                };
                let delta = &mut choice["delta"];
                let prev = delta.get(key).and_then(Value::as_str).unwrap_or("");
                delta[key] = Value::String(format!("{prev}{t}"));
            }
        }
    }
}

fn write_event(out: &mut Vec<u8>, name: Option<&str>, json: &Value) {
    if let Some(n) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(n.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(json.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dlp(json: &str) -> CompiledDlp {
        vigie_dlp::policy::compile(&serde_json::from_str(json).unwrap()).unwrap()
    }

    fn chunk(content: &str, finish: Option<&str>) -> String {
        format!(
            "data: {}\n\n",
            json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                   "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]})
        )
    }

    fn contents(sse: &[u8]) -> String {
        let text = String::from_utf8(sse.to_vec()).unwrap();
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| {
                let v: Value = serde_json::from_str(d).unwrap();
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn streamed_answer_is_redacted_and_restored_across_any_split() {
        let d = dlp(
            r#"{"rules":[{"detector":"PHONE_NUMBER","action":"DLP_ACTION_REDACT","direction":"DLP_DIRECTION_RESPONSE"}]}"#,
        );
        let mut names = Pseudonyms::default();
        let ph = names.placeholder("FR_NIR", "1 85 05 78 006 084 91");
        let answer = format!("Le dossier {ph} : appelez le 06 12 34 56 78 demain.");
        let expected = "Le dossier 1 85 05 78 006 084 91 : appelez le [PHONE_NUMBER] demain.";
        let mut stream = String::new();
        let words: Vec<&str> = answer.split_inclusive(' ').collect();
        for w in &words {
            stream.push_str(&chunk(w, None));
        }
        stream.push_str(&chunk("", Some("stop")));
        stream.push_str("data: [DONE]\n\n");
        // Cut the raw SSE bytes everywhere: events and values split across reads.
        for step in [1usize, 3, 7, 64] {
            let mut f = ResponseDlp::new(Some(&d), &names)
                .unwrap()
                .sse(Operation::ChatCompletions);
            let mut out = Vec::new();
            for piece in stream.as_bytes().chunks(step) {
                out.extend(f.push(piece).unwrap());
            }
            out.extend(f.finish().unwrap());
            assert_eq!(contents(&out), expected, "step {step}");
            assert!(
                String::from_utf8(out)
                    .unwrap()
                    .ends_with("data: [DONE]\n\n")
            );
        }
    }

    #[test]
    fn tool_and_function_call_arguments_are_filtered() {
        let d = dlp(r#"{"rules":[{"detector":"EMAIL_ADDRESS","action":"DLP_ACTION_REDACT"}]}"#);
        let names = Pseudonyms::default();
        let mut f = ResponseDlp::new(Some(&d), &names)
            .unwrap()
            .sse(Operation::ChatCompletions);
        let ev = |delta: Value, finish: Option<&str>| {
            format!(
                "data: {}\n\n",
                json!({"id": "c", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            )
        };
        let mut out = Vec::new();
        for part in ["{\"to\": \"jean.du", "pont@exemple.fr\"}"] {
            out.extend(
                f.push(ev(json!({"function_call": {"arguments": part}}), None).as_bytes())
                    .unwrap(),
            );
            out.extend(
                f.push(
                    ev(
                        json!({"tool_calls": [{"index": 0, "function": {"arguments": part}}]}),
                        None,
                    )
                    .as_bytes(),
                )
                .unwrap(),
            );
        }
        out.extend(
            f.push(ev(json!({}), Some("tool_calls")).as_bytes())
                .unwrap(),
        );
        out.extend(f.finish().unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("pont@exemple"), "{text}");
        let (mut func, mut tool) = (String::new(), String::new());
        for e in text.split("\n\n").filter_map(|e| e.strip_prefix("data: ")) {
            let v: Value = serde_json::from_str(e).unwrap();
            let delta = &v["choices"][0]["delta"];
            func.push_str(
                delta
                    .pointer("/function_call/arguments")
                    .and_then(Value::as_str)
                    .unwrap_or(""),
            );
            if let Some(calls) = delta["tool_calls"].as_array() {
                for c in calls {
                    tool.push_str(
                        c.pointer("/function/arguments")
                            .and_then(Value::as_str)
                            .unwrap_or(""),
                    );
                }
            }
        }
        assert_eq!(func, "{\"to\": \"[EMAIL_ADDRESS]\"}");
        assert_eq!(tool, "{\"to\": \"[EMAIL_ADDRESS]\"}");
    }

    #[test]
    fn text_held_at_done_goes_out_in_a_chunk_of_the_same_stream() {
        let d = dlp(r#"{"rules":[{"detector":"PHONE_NUMBER","action":"DLP_ACTION_REDACT"}]}"#);
        let names = Pseudonyms::default();
        let mut f = ResponseDlp::new(Some(&d), &names)
            .unwrap()
            .sse(Operation::ChatCompletions);
        // No finish_reason: the held number only ends with the stream.
        let mut out = f
            .push(chunk("appelez le 06 12 34 56 78", None).as_bytes())
            .unwrap();
        out.extend(f.push(b"data: [DONE]\n\n").unwrap());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(contents(text.as_bytes()), "appelez le [PHONE_NUMBER]");
        let flushed = text
            .split("\n\n")
            .find(|e| e.contains("[PHONE_NUMBER]"))
            .unwrap();
        let v: Value = serde_json::from_str(flushed.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(
            (v["id"].as_str(), v["model"].as_str()),
            (Some("c1"), Some("m"))
        );
        assert!(text.ends_with("data: [DONE]\n\n"));
    }

    #[test]
    fn block_in_answer_stops_the_stream() {
        let d = dlp(
            r#"{"rules":[{"detector":"IBAN","action":"DLP_ACTION_BLOCK","direction":"DLP_DIRECTION_RESPONSE"}]}"#,
        );
        let names = Pseudonyms::default();
        let mut f = ResponseDlp::new(Some(&d), &names)
            .unwrap()
            .sse(Operation::ChatCompletions);
        let first = f
            .push(chunk("Voici: FR76 3000 6000 0112 3456 7890 189", None).as_bytes())
            .unwrap();
        assert!(!String::from_utf8(first).unwrap().contains("FR76"));
        let err = f.push(chunk(" fin", None).as_bytes()).unwrap_err();
        assert_eq!(err.0.iter().collect::<Vec<_>>(), ["IBAN"]);
    }

    #[test]
    fn json_answers() {
        let d = dlp(r#"{"rules":[{"detector":"EMAIL_ADDRESS","action":"DLP_ACTION_REDACT"}]}"#);
        let mut names = Pseudonyms::default();
        let ph = names.placeholder("FR_NIR", "185057800608491");
        let body = json!({"choices": [{"index": 0, "message": {"role": "assistant",
            "content": format!("NIR {ph}, écrire à x.y@z.fr")}}]});
        let mut r = ResponseDlp::new(Some(&d), &names).unwrap();
        let out: Value =
            serde_json::from_slice(&r.filter_body(body.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out["choices"][0]["message"]["content"],
            "NIR 185057800608491, écrire à [EMAIL_ADDRESS]"
        );
        assert_eq!(r.counts[&("EMAIL_ADDRESS".to_string(), "redact")], 1);
    }

    #[test]
    fn reasoning_and_thinking_are_model_text_too() {
        let d = dlp(r#"{"rules":[{"detector":"EMAIL_ADDRESS","action":"DLP_ACTION_REDACT"}]}"#);
        let names = Pseudonyms::default();
        // vLLM / DeepSeek-style `reasoning_content`, split mid-address, flushed at finish.
        let mut f = ResponseDlp::new(Some(&d), &names)
            .unwrap()
            .sse(Operation::ChatCompletions);
        let reasoning = |t: &str, finish: Option<&str>| {
            format!(
                "data: {}\n\n",
                json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                       "choices": [{"index": 0, "delta": {"reasoning_content": t}, "finish_reason": finish}]})
            )
        };
        let mut out = f
            .push(reasoning("écrire à jean.du", None).as_bytes())
            .unwrap();
        out.extend(f.push(reasoning("pont@x.fr", None).as_bytes()).unwrap());
        out.extend(f.push(reasoning("", Some("stop")).as_bytes()).unwrap());
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("jean") && !text.contains("x.fr"), "{text}");
        assert!(text.contains("[EMAIL_ADDRESS]"), "{text}");
        // Anthropic extended thinking.
        let mut f = ResponseDlp::new(Some(&d), &names)
            .unwrap()
            .sse(Operation::Messages);
        let thinking = |t: &str| {
            format!(
                "event: content_block_delta\ndata: {}\n\n",
                json!({"type": "content_block_delta", "index": 0,
                       "delta": {"type": "thinking_delta", "thinking": t}})
            )
        };
        let mut out = f.push(thinking("l'adresse jean.du").as_bytes()).unwrap();
        out.extend(f.push(thinking("pont@x.fr est").as_bytes()).unwrap());
        out.extend(
            f.push(b"event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n")
                .unwrap(),
        );
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("jean") && !text.contains("x.fr"), "{text}");
        assert!(text.contains("[EMAIL_ADDRESS]") && text.contains("thinking_delta"));
        // Non-streamed: both block types.
        let mut r = ResponseDlp::new(Some(&d), &names).unwrap();
        let body = json!({"content": [{"type": "thinking", "thinking": "a@b.fr", "signature": "s"},
                                      {"type": "text", "text": "ok"}]});
        let out: Value =
            serde_json::from_slice(&r.filter_body(body.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(out["content"][0]["thinking"], "[EMAIL_ADDRESS]");
    }
}
