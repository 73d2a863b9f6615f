//! Watches an answer go by: reads the upstream's usage, keeps the generated text for an
//! estimate, and strips the usage chunk the sidecar asked for on the app's behalf.

use serde_json::Value;
use vigie_wire::api::Operation;

use crate::estimate;
use crate::usage::{self, Usage, UsageSource};

/// Largest non-streamed body kept whole; past it only its tail is kept (usage comes
/// last in every server's answers), so memory stays bounded.
const MAX_JSON: usize = 4 << 20;
const JSON_TAIL: usize = 64 << 10;
/// Generated text kept for an estimate.
const MAX_TEXT: usize = 1 << 20;
/// Longest event held while looking for its end.
const MAX_EVENT: usize = 1 << 20;
/// Event payloads kept unparsed before being reduced to their text.
const EVENTS_BATCH: usize = 64 << 10;

#[derive(Debug)]
pub struct UsageTap {
    op: Operation,
    sse: bool,
    /// The app did not ask for the usage chunk: remove it.
    strip: bool,
    buf: Vec<u8>,
    too_big: bool,
    usage: Option<Usage>,
    /// Generated text (non-streamed answers without usage).
    generated: String,
    /// `data:` payloads of streamed events without usage, one per line: parsed only if
    /// an estimate is needed (most upstreams report usage; parsing every chunk would
    /// cost more than the rest of metering).
    events: String,
    /// The answer ended normally (`[DONE]`, `message_stop`, a whole JSON body).
    complete: bool,
    response: Response,
}

/// What the answer says about itself (`gen_ai.response.*`): id, model, finish reasons.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Response {
    pub id: Option<String>,
    pub model: Option<String>,
    pub finish_reasons: Vec<String>,
}

/// Longest id or model name kept; a few finish reasons at most (one per choice).
const MAX_RESPONSE_FIELD: usize = 256;
const MAX_FINISH_REASONS: usize = 16;

impl Response {
    fn note(&mut self, op: Operation, v: &Value) {
        let text = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= MAX_RESPONSE_FIELD)
                .map(str::to_string)
        };
        let (id, model) = match (op, v.get("type").and_then(Value::as_str)) {
            (Operation::Messages, Some("message_start")) => {
                (text("/message/id"), text("/message/model"))
            }
            _ => (text("/id"), text("/model")),
        };
        if id.is_some() {
            self.id = id;
        }
        if model.is_some() {
            self.model = model;
        }
        let mut reasons = Vec::new();
        match op {
            Operation::Messages => {
                reasons.extend(text("/stop_reason"));
                reasons.extend(text("/delta/stop_reason"));
            }
            _ => {
                for c in v
                    .get("choices")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    if let Some(r) = c.get("finish_reason").and_then(Value::as_str) {
                        reasons.push(r.to_string());
                    }
                }
            }
        }
        for r in reasons {
            if self.finish_reasons.len() < MAX_FINISH_REASONS && r.len() <= MAX_RESPONSE_FIELD {
                self.finish_reasons.push(r);
            }
        }
    }
}

/// Whether an OpenAI-style chunk ends a choice (`"finish_reason"` with a string value):
/// only those are parsed, the others stay unparsed.
fn ends_a_choice(data: &str) -> bool {
    let key = "\"finish_reason\"";
    data.match_indices(key).any(|(at, _)| {
        data[at + key.len()..]
            .trim_start()
            .strip_prefix(':')
            .is_some_and(|rest| rest.trim_start().starts_with('"'))
    })
}

impl UsageTap {
    pub fn new(op: Operation, sse: bool, strip: bool) -> Self {
        Self {
            op,
            sse,
            strip,
            buf: Vec::new(),
            too_big: false,
            usage: None,
            generated: String::new(),
            events: String::new(),
            complete: false,
            response: Response::default(),
        }
    }

    /// What the answer said about itself so far.
    pub fn response(&self) -> &Response {
        &self.response
    }

    /// Sees a chunk of the answer. `None`: forward it unchanged; `Some(bytes)`: forward
    /// these instead (whole events, without the stripped usage chunk).
    pub fn observe(&mut self, data: &[u8]) -> Option<Vec<u8>> {
        if !self.sse {
            self.buf.extend_from_slice(data);
            if self.buf.len() > MAX_JSON || (self.too_big && self.buf.len() > 2 * JSON_TAIL) {
                self.too_big = true;
                let cut = self.buf.len().saturating_sub(JSON_TAIL);
                self.buf.drain(..cut);
            }
            return None;
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > MAX_EVENT {
            // Not SSE as we know it: stop rewriting, forward what was held.
            let held = std::mem::take(&mut self.buf);
            let stripping = std::mem::replace(&mut self.strip, false);
            return stripping.then_some(held);
        }
        let mut out = self.strip.then(|| Vec::with_capacity(data.len()));
        while let Some(end) = event_end(&self.buf) {
            let event: Vec<u8> = self.buf.drain(..end).collect();
            let keep = self.event(&event);
            if let Some(o) = out.as_mut()
                && keep
            {
                o.extend_from_slice(&event);
            }
        }
        out
    }

    /// End of the answer: what is left to forward (an unterminated last event).
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        if !self.sse {
            if self.too_big {
                // Only the tail was kept: read the `usage` object found there.
                self.usage = usage_in_tail(&self.buf).and_then(|u| match self.op {
                    Operation::Messages => usage::anthropic(&u),
                    _ => usage::openai(&u),
                });
                self.complete = self.usage.is_some();
            } else if let Ok(v) = serde_json::from_slice::<Value>(&self.buf) {
                self.complete = true;
                self.response.note(self.op, &v);
                self.usage = match self.op {
                    Operation::Messages => v.get("usage").and_then(usage::anthropic),
                    _ => v.get("usage").and_then(usage::openai),
                };
                if self.usage.is_none() {
                    let mut v = v;
                    let mut text = String::new();
                    vigie_wire::dlp::text::response_texts(self.op, &mut v, &mut |s| {
                        text.push_str(s)
                    });
                    self.generated = text;
                }
            }
            self.buf = Vec::new();
            return None;
        }
        let rest = std::mem::take(&mut self.buf);
        if !rest.is_empty() {
            let keep = self.event(&rest);
            if self.strip && keep {
                return Some(rest);
            }
        }
        self.strip.then(Vec::new)
    }

    /// Whether [`UsageTap::result`] will have to count tokens (CPU work).
    pub fn needs_estimate(&self) -> bool {
        !(self.usage.is_some() && self.complete)
    }

    /// The figures for this request: the upstream's when it gave them for a complete
    /// answer; otherwise counted (`prompt` is asked for only then).
    pub fn result(&self, prompt: impl FnOnce() -> u64) -> (Usage, UsageSource) {
        match self.usage {
            Some(u) if self.complete => (u, UsageSource::Upstream),
            partial => {
                let completion = estimate::tokens(&self.generated_text());
                // Anthropic reports input tokens at the start: keep them if we have them.
                let prompt = partial.map_or_else(prompt, |u| u.prompt);
                (
                    Usage {
                        prompt,
                        completion: partial.map_or(completion, |u| u.completion.max(completion)),
                        ..Usage::default()
                    },
                    UsageSource::Estimated,
                )
            }
        }
    }

    /// Keeps an event's payload for a possible estimate; past `EVENTS_BATCH` bytes the
    /// batch is reduced to its text, so memory stays bounded on long answers.
    fn keep_event(&mut self, data: &str) {
        // Multi-line data: the line breaks are between JSON tokens.
        self.events.push_str(&data.replace('\n', " "));
        self.events.push('\n');
        if self.events.len() > EVENTS_BATCH {
            let text = self.events_text();
            self.events.clear();
            if self.generated.len() + text.len() <= MAX_TEXT {
                self.generated.push_str(&text);
            }
        }
    }

    /// The text the model generated, from the kept events (streams) or the body.
    fn generated_text(&self) -> String {
        let mut text = self.generated.clone();
        text.push_str(&self.events_text());
        text
    }

    /// The generated text in the kept event payloads.
    fn events_text(&self) -> String {
        let mut text = String::new();
        for line in self.events.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                vigie_wire::dlp::text::stream_event_texts(self.op, &v, &mut |s| text.push_str(s));
            }
        }
        text
    }

    /// One SSE event: records what it says; `false` if it must not be forwarded.
    fn event(&mut self, raw: &[u8]) -> bool {
        let text = String::from_utf8_lossy(raw);
        let mut data = String::new();
        for line in text.lines() {
            if let Some(v) = line.strip_prefix("data:") {
                if !data.is_empty() {
                    data.push('\n');
                }
                data.push_str(v.strip_prefix(' ').unwrap_or(v));
            }
        }
        let data = data.trim();
        if data == "[DONE]" {
            self.complete = true;
            return true;
        }
        // Only events that carry usage, end a choice or end the answer are parsed now.
        if !data.contains("\"usage\"") {
            if self.op == Operation::Messages && data.contains("\"message_stop\"") {
                self.complete = true;
            } else {
                if self.op != Operation::Messages
                    && ends_a_choice(data)
                    && let Ok(v) = serde_json::from_str::<Value>(data)
                {
                    self.response.note(self.op, &v);
                }
                self.keep_event(data);
            }
            return true;
        }
        let Ok(v) = serde_json::from_str::<Value>(data) else {
            return true;
        };
        self.response.note(self.op, &v);
        match self.op {
            Operation::Messages => {
                match v.get("type").and_then(Value::as_str) {
                    Some("message_start") => {
                        self.usage = v.pointer("/message/usage").and_then(usage::anthropic);
                    }
                    Some("message_delta") => {
                        if let Some(out) = v.pointer("/usage/output_tokens").and_then(Value::as_u64)
                        {
                            let mut u = self.usage.unwrap_or_default();
                            u.completion = out;
                            self.usage = Some(u);
                        }
                    }
                    _ => {}
                }
                true
            }
            _ => {
                if let Some(u) = v.get("usage").and_then(usage::openai) {
                    self.usage = Some(u);
                }
                let choices = v.get("choices").and_then(Value::as_array);
                if choices.is_some_and(|c| !c.is_empty()) {
                    // Usage on a chunk that also carries text (some servers do).
                    self.keep_event(data);
                }
                // The usage-only chunk (no choices) the app did not ask for.
                let usage_only = v.get("usage").is_some_and(|u| !u.is_null())
                    && choices.is_none_or(Vec::is_empty);
                !(self.strip && usage_only)
            }
        }
    }
}

/// The value of the last `"usage":` key in a fragment of a JSON document.
fn usage_in_tail(tail: &[u8]) -> Option<Value> {
    let key = b"\"usage\"";
    let at = tail.windows(key.len()).rposition(|w| w == key)?;
    let rest = &tail[at + key.len()..];
    let colon = rest.iter().position(|b| *b == b':')?;
    let mut values = serde_json::Deserializer::from_slice(&rest[colon + 1..]).into_iter::<Value>();
    values.next()?.ok()
}

/// End (exclusive) of the first complete event in `buf`: a blank line, whatever the
/// line ends (LF, CRLF or a lone CR, as the SSE format allows).
fn event_end(buf: &[u8]) -> Option<usize> {
    [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
        .iter()
        .filter_map(|sep| {
            buf.windows(sep.len())
                .position(|w| w == *sep)
                .map(|i| i + sep.len())
        })
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(content: &str) -> String {
        format!(
            "data: {}\n\n",
            serde_json::json!({"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":content}}]})
        )
    }
    const USAGE: &str = "data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2}}\n\n";

    #[test]
    fn reads_response_id_model_and_finish_reasons() {
        let mut tap = UsageTap::new(Operation::ChatCompletions, true, true);
        let finish = "data: {\"id\":\"chatcmpl-1\",\"model\":\"llama-3\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\" : \"stop\"}]}\n\n";
        for part in [
            chunk("Hi"),
            finish.to_string(),
            USAGE.to_string(),
            "data: [DONE]\n\n".into(),
        ] {
            tap.observe(part.as_bytes());
        }
        tap.finish();
        let r = tap.response();
        // The usage chunk's id ("c") is the last one seen.
        assert_eq!(r.id.as_deref(), Some("c"));
        assert_eq!(r.model.as_deref(), Some("llama-3"));
        assert_eq!(r.finish_reasons, ["stop"]);
        assert!(!ends_a_choice(&chunk("\"finish_reason\": \"x\"")));
        assert!(!ends_a_choice(r#"{"finish_reason":null}"#));

        let mut tap = UsageTap::new(Operation::Messages, true, false);
        tap.observe(b"data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"model\":\"claude\",\"usage\":{\"input_tokens\":3}}}\n\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"},\"usage\":{\"output_tokens\":2}}\n\n");
        tap.finish();
        assert_eq!(tap.response().id.as_deref(), Some("msg_1"));
        assert_eq!(tap.response().model.as_deref(), Some("claude"));
        assert_eq!(tap.response().finish_reasons, ["end_turn"]);

        let mut tap = UsageTap::new(Operation::ChatCompletions, false, false);
        tap.observe(br#"{"id":"x1","model":"m","choices":[{"finish_reason":"length"},{"finish_reason":"stop"}]}"#);
        tap.finish();
        assert_eq!(tap.response().finish_reasons, ["length", "stop"]);
    }

    #[test]
    fn strips_the_injected_usage_chunk_whatever_the_cuts() {
        let stream = format!("{}{}{USAGE}data: [DONE]\n\n", chunk("Bon"), chunk("jour"));
        for cut in 1..stream.len() {
            let mut tap = UsageTap::new(Operation::ChatCompletions, true, true);
            let mut out = Vec::new();
            for part in [&stream.as_bytes()[..cut], &stream.as_bytes()[cut..]] {
                out.extend(tap.observe(part).unwrap());
            }
            out.extend(tap.finish().unwrap());
            let out = String::from_utf8(out).unwrap();
            assert_eq!(
                out,
                format!("{}{}data: [DONE]\n\n", chunk("Bon"), chunk("jour"))
            );
            let (u, src) = tap.result(|| unreachable!());
            assert_eq!((u.prompt, u.completion, src), (9, 2, UsageSource::Upstream));
        }
    }

    #[test]
    fn passes_through_when_the_app_asked_and_estimates_a_cut_stream() {
        let mut tap = UsageTap::new(Operation::ChatCompletions, true, false);
        assert_eq!(tap.observe(chunk("Hello").as_bytes()), None);
        assert_eq!(tap.observe(chunk(" world").as_bytes()), None);
        // No usage, no [DONE]: the stream was cut.
        let (u, src) = tap.result(|| 7);
        assert_eq!(
            (u.prompt, u.completion, src),
            (7, 2, UsageSource::Estimated)
        );
    }

    #[test]
    fn anthropic_stream_and_json_bodies() {
        let mut tap = UsageTap::new(Operation::Messages, true, false);
        let events = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":11,\"output_tokens\":1}}}\n\n\
            event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Salut\"}}\n\n\
            event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":5}}\n\n\
            event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
        tap.observe(events.as_bytes());
        tap.finish();
        assert_eq!(tap.result(|| 0).0.completion, 5);
        assert_eq!(tap.result(|| 0).1, UsageSource::Upstream);

        let mut tap = UsageTap::new(Operation::Embeddings, false, false);
        tap.observe(br#"{"object":"list","data":[],"usage":{"prompt_tokens":4,"total_tokens":4}}"#);
        tap.finish();
        assert_eq!(
            tap.result(|| 0),
            (
                Usage {
                    prompt: 4,
                    ..Usage::default()
                },
                UsageSource::Upstream
            )
        );

        // A JSON answer without usage: counted from its text.
        let mut tap = UsageTap::new(Operation::ChatCompletions, false, false);
        tap.observe(br#"{"choices":[{"message":{"role":"assistant","content":"Hello world"}}]}"#);
        tap.finish();
        assert_eq!(
            tap.result(|| 3),
            (
                Usage {
                    prompt: 3,
                    completion: 2,
                    ..Usage::default()
                },
                UsageSource::Estimated
            )
        );
    }

    #[test]
    fn long_cut_streams_are_estimated_from_all_their_text() {
        let mut tap = UsageTap::new(Operation::ChatCompletions, true, true);
        // ~250 kB of events: several batches reduced to text on the way.
        for _ in 0..2000 {
            tap.observe(chunk(" mot").as_bytes());
        }
        let (u, src) = tap.result(|| 1);
        assert_eq!(src, UsageSource::Estimated);
        assert!((1900..=2100).contains(&u.completion), "{}", u.completion);
    }

    #[test]
    fn usage_chunk_without_choices_and_cr_line_ends() {
        let stream = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\r\r\
            data: {\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}\r\rdata: [DONE]\r\r";
        let mut tap = UsageTap::new(Operation::ChatCompletions, true, true);
        let mut out = tap.observe(stream.as_bytes()).unwrap();
        out.extend(tap.finish().unwrap());
        let out = String::from_utf8(out).unwrap();
        assert!(!out.contains("usage") && out.contains("[DONE]"), "{out}");
        assert_eq!(tap.result(|| 0).1, UsageSource::Upstream);
    }

    #[test]
    fn huge_json_answers_keep_only_their_tail() {
        let mut tap = UsageTap::new(Operation::Embeddings, false, false);
        tap.observe(b"{\"object\":\"list\",\"data\":[{\"embedding\":[");
        let chunk = "0.125,".repeat(100_000);
        for _ in 0..10 {
            tap.observe(chunk.as_bytes());
        }
        tap.observe(
            b"0.5]}],\"model\":\"e\",\"usage\":{\"prompt_tokens\":12,\"total_tokens\":12}}",
        );
        assert!(tap.buf.len() <= 2 * JSON_TAIL + 100_000 * 6);
        tap.finish();
        assert_eq!(
            tap.result(|| 0),
            (
                Usage {
                    prompt: 12,
                    ..Usage::default()
                },
                UsageSource::Upstream
            )
        );
    }
}
