//! A request body as the sidecar sees it ([`LlmRequest`]): checked once (a JSON object,
//! no key named twice or in two cases, bounded nesting), its head fields read without
//! building a tree, and the tree built at most once, when something needs it (DLP,
//! prefix affinity, the usage option, a model alias, an estimate).

use bytes::Bytes;
use serde_json::Value;

use super::{ApiError, Operation};

#[derive(Debug, Clone, PartialEq)]
pub struct RequestHead {
    pub model: String,
    pub stream: bool,
    /// `stream_options.include_usage` is `true`.
    pub stream_usage: bool,
    /// `max_completion_tokens` or `max_tokens` (Anthropic: `max_tokens`), when set.
    pub max_tokens: Option<u64>,
    /// Sampling parameters, for telemetry (`gen_ai.request.*`); not checked here.
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
}

/// Largest output a request may ask for: beyond any model's context, so a bigger value
/// is a mistake (or an attempt to reserve an absurd budget), refused up front.
pub const MAX_OUTPUT_TOKENS: u64 = 10_000_000;

/// A request body read once: the head fields the sidecar decides on, and the JSON tree
/// that DLP, prefix affinity, usage and estimates read and rewrite — built on first
/// need, at most once. The app's bytes are forwarded as they came unless something
/// changed; then the body is serialised once per (upstream model, usage request)
/// variant and reused by retries.
#[derive(Debug)]
pub struct LlmRequest {
    op: Operation,
    head: RequestHead,
    raw: Bytes,
    /// About how many values and keys `raw` holds.
    items: usize,
    /// `raw`'s length, kept once the bytes are released.
    received: usize,
    tree: Option<Value>,
    /// A text was rewritten (DLP): `raw` no longer says what `tree` says.
    rewritten: bool,
    /// The last body built for an upstream: (model, usage asked, bytes).
    built: Option<(String, bool, Bytes)>,
}

impl LlmRequest {
    /// Parses and checks the body: a JSON object, valid UTF-8, nesting within
    /// [`MAX_DEPTH`], a `model`, sane `stream` and output limits. Errors never quote
    /// the body.
    pub fn parse(op: Operation, raw: Bytes) -> Result<Self, ApiError> {
        let (head, items) = parse_checked(&raw)?;
        Ok(Self {
            op,
            head,
            items,
            received: raw.len(),
            raw,
            tree: None,
            rewritten: false,
            built: None,
        })
    }

    pub fn op(&self) -> Operation {
        self.op
    }

    pub fn head(&self) -> &RequestHead {
        &self.head
    }

    /// The model the app asked for.
    pub fn model(&self) -> &str {
        &self.head.model
    }

    /// About how many values and keys the body holds ([`json_items`]), counted by
    /// the same pass that checked its nesting.
    pub fn items(&self) -> usize {
        self.items
    }

    /// Size of the body as the app sent it.
    pub fn len(&self) -> usize {
        self.received
    }

    pub fn is_empty(&self) -> bool {
        self.received == 0
    }

    /// The JSON tree, built from the body on first use.
    pub fn tree(&mut self) -> Result<&mut Value, ApiError> {
        match &mut self.tree {
            Some(tree) => Ok(tree),
            slot => Ok(slot.insert(parse_tree(&self.raw)?)),
        }
    }

    /// Lets `f` read and rewrite the tree; `f` returns whether it changed it (then the
    /// body is serialised again for the upstream).
    pub fn edit_tree<E>(&mut self, f: impl FnOnce(&mut Value) -> Result<bool, E>) -> Result<(), E>
    where
        E: From<ApiError>,
    {
        if f(self.tree()?)? {
            self.rewritten = true;
            self.built = None;
        }
        Ok(())
    }

    /// Whether a text was rewritten since the body was received.
    pub fn rewritten(&self) -> bool {
        self.rewritten
    }

    /// The request was sent: what was kept for retries goes. If a tree was built it
    /// stays (for a usage estimate) and the app's bytes go; otherwise the bytes stay
    /// (an estimate would parse them) and no tree is built for nothing.
    pub fn forwarded(&mut self) {
        if self.tree.is_some() {
            self.raw = Bytes::new();
            self.rewritten = true;
        }
        self.built = None;
    }

    /// The tree, for a last read (token estimates) once the request is over; `Null` if
    /// the body cannot give one.
    pub fn into_tree(mut self) -> Value {
        match self.tree() {
            Ok(_) => self.tree.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// A streaming OpenAI chat or completions request that does not ask for the usage
    /// chunk: the sidecar asks on its behalf (where the pool accepts the field) so the
    /// upstream reports exact figures, and strips the extra chunk from the answer.
    pub fn lacks_stream_usage(&self) -> bool {
        matches!(self.op, Operation::ChatCompletions | Operation::Completions)
            && self.head.stream
            && !self.head.stream_usage
    }

    /// The bytes to send to an upstream that knows the model as `upstream_model`, with
    /// `stream_options.include_usage` added when `ask_usage`: the app's own bytes when
    /// nothing changes, else one serialisation per variant.
    pub fn body_for(&mut self, upstream_model: &str, ask_usage: bool) -> Result<Bytes, ApiError> {
        if !self.rewritten && !ask_usage && upstream_model == self.head.model {
            return Ok(self.raw.clone());
        }
        if let Some((m, u, b)) = &self.built
            && m == upstream_model
            && *u == ask_usage
        {
            return Ok(b.clone());
        }
        let Value::Object(map) = self.tree()? else {
            return Err(ApiError::invalid_request(
                "The request body must be a JSON object.",
            ));
        };
        let variant = Variant {
            map,
            model: upstream_model,
            usage: ask_usage,
        };
        let bytes =
            Bytes::from(serde_json::to_vec(&variant).map_err(|_| {
                ApiError::invalid_request("The request body could not be re-encoded.")
            })?);
        self.built = Some((upstream_model.to_string(), ask_usage, bytes.clone()));
        Ok(bytes)
    }

    /// The stable head of the prompt, for KV-cache affinity (see [`prefix_key`]).
    pub fn prefix_key(&mut self) -> Option<String> {
        let op = self.op;
        prefix_key(op, self.tree().ok()?)
    }
}

/// The request tree serialised with another model name and, optionally, the usage
/// chunk asked for; nothing is cloned.
struct Variant<'a> {
    map: &'a serde_json::Map<String, Value>,
    model: &'a str,
    usage: bool,
}

impl serde::Serialize for Variant<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut out = s.serialize_map(None)?;
        let mut options_seen = false;
        for (k, v) in self.map {
            match k.as_str() {
                "model" => out.serialize_entry(k, self.model)?,
                "stream_options" if self.usage => {
                    options_seen = true;
                    out.serialize_entry(k, &WithUsage(v))?;
                }
                _ => out.serialize_entry(k, v)?,
            }
        }
        if self.usage && !options_seen {
            out.serialize_entry("stream_options", &WithUsage(&Value::Null))?;
        }
        out.end()
    }
}

/// `stream_options` with `include_usage: true` (other options kept).
struct WithUsage<'a>(&'a Value);

impl serde::Serialize for WithUsage<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        let mut out = s.serialize_map(None)?;
        if let Value::Object(o) = self.0 {
            for (k, v) in o.iter().filter(|(k, _)| *k != "include_usage") {
                out.serialize_entry(k, v)?;
            }
        }
        out.serialize_entry("include_usage", &true)?;
        out.end()
    }
}

/// Checks a body and reads its head fields; the whole body must be a JSON object with no
/// key named twice (or in two cases) at any depth. Builds no tree.
pub fn parse_head(body: &[u8]) -> Result<RequestHead, ApiError> {
    parse_checked(body).map(|(head, _)| head)
}

/// [`parse_head`], with the body's item count ([`json_items`]).
fn parse_checked(body: &[u8]) -> Result<(RequestHead, usize), ApiError> {
    let items = precheck(body)?;
    let mut de = serde_json::Deserializer::from_slice(body);
    serde::de::DeserializeSeed::deserialize(Validate, &mut de)
        .and_then(|()| de.end())
        .map_err(json_error)?;
    let head: Head = serde_json::from_slice(body).map_err(json_error)?;
    Ok((head_of(head)?, items))
}

/// What can be refused before parsing: empty, not UTF-8, not an object, too deep.
/// Returns the item count the same pass found.
fn precheck(body: &[u8]) -> Result<usize, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid_request(
            "The request body is empty; a JSON object is expected.",
        ));
    }
    if std::str::from_utf8(body).is_err() {
        return Err(ApiError::invalid_request(
            "The request body is not valid UTF-8.",
        ));
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::invalid_request(
            "The request body must be a JSON object.",
        ));
    }
    let shape = shape(body, MAX_DEPTH);
    if shape.too_deep {
        return Err(ApiError::invalid_request(format!(
            "The JSON body is nested more than {MAX_DEPTH} levels deep."
        )));
    }
    Ok(shape.items)
}

/// serde_json's message gives line and column and the expected token, not content; a
/// duplicate key is named by position only (keys are the app's).
fn json_error(e: serde_json::Error) -> ApiError {
    if e.to_string().starts_with(DUPLICATE_KEY) {
        return ApiError::ambiguous_key(format!(
            "We could not parse the JSON body of your request: {DUPLICATE_KEY} at line {} column {}",
            e.line(),
            e.column()
        ));
    }
    ApiError::invalid_request(format!(
        "We could not parse the JSON body of your request: {}",
        describe(&e)
    ))
}

/// The tree of a body [`parse_head`] accepted (so no key is named twice).
fn parse_tree(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(json_error)
}

/// The head fields (serde refuses a field named twice).
#[derive(serde::Deserialize)]
struct Head {
    #[serde(default)]
    model: Option<Value>,
    #[serde(default)]
    stream: Option<Value>,
    #[serde(default)]
    stream_options: Option<Value>,
    #[serde(default)]
    max_tokens: Option<Value>,
    #[serde(default)]
    max_completion_tokens: Option<Value>,
    #[serde(default)]
    temperature: Option<Value>,
    #[serde(default)]
    top_p: Option<Value>,
}

fn wrong_type(param: &'static str, expected: &str) -> ApiError {
    ApiError::invalid_request(format!(
        "We could not parse the JSON body of your request: a field has the wrong type (`{param}` must be {expected})."
    ))
    .with_param(param)
}

fn head_of(head: Head) -> Result<RequestHead, ApiError> {
    let model = match head.model {
        Some(Value::String(m)) if !m.is_empty() => m,
        Some(Value::String(_) | Value::Null) | None => {
            return Err(
                ApiError::invalid_request("You must provide a model parameter.")
                    .with_param("model"),
            );
        }
        Some(_) => return Err(wrong_type("model", "a string")),
    };
    let stream = match head.stream {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(_) => return Err(wrong_type("stream", "a boolean")),
    };
    let mut max_tokens = None;
    for (param, v) in [
        ("max_completion_tokens", &head.max_completion_tokens),
        ("max_tokens", &head.max_tokens),
    ] {
        match v {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=MAX_OUTPUT_TOKENS).contains(&n) => {
                    max_tokens = max_tokens.or(Some(n));
                }
                _ => {
                    return Err(ApiError::invalid_request(format!(
                        "`{param}` must be an integer from 1 to {MAX_OUTPUT_TOKENS}."
                    ))
                    .with_param(param));
                }
            },
        }
    }
    Ok(RequestHead {
        model,
        stream,
        stream_usage: head
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true),
        max_tokens,
        temperature: head.temperature.as_ref().and_then(Value::as_f64),
        top_p: head.top_p.as_ref().and_then(Value::as_f64),
    })
}

/// Walks a JSON document without building it, refusing an object that names a key
/// twice — also in two cases (`content` / `Content`, `ſ` for `s`, the Kelvin sign for
/// `k`): parsers disagree on which copy wins, and some match keys without regard to case
/// (Go's `encoding/json`), so what DLP reads and what the upstream reads could differ.
/// Refused at any depth (fail closed). Keys are compared decoded (escapes resolved),
/// borrowed from the body when they have none; small objects are checked without
/// allocating.
struct Validate;

impl<'de> serde::de::DeserializeSeed<'de> for Validate {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

/// An object key, borrowed when it can be.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Objects up to this many keys are checked by comparing each pair (no allocation).
const SMALL_OBJECT: usize = 16;

impl<'de> serde::de::Visitor<'de> for Validate {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Validate)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use unicase::UniCase;
        let mut small: [Option<Key<'de>>; SMALL_OBJECT] = Default::default();
        let mut n = 0;
        let mut large: std::collections::HashSet<UniCase<String>> =
            std::collections::HashSet::new();
        while let Some(key) = map.next_key::<Key<'de>>()? {
            map.next_value_seed(Validate)?;
            let folded = UniCase::unicode(key.0.as_ref());
            let seen = if n < SMALL_OBJECT {
                let dup = small[..n]
                    .iter()
                    .flatten()
                    .any(|k| UniCase::unicode(k.0.as_ref()) == folded);
                small[n] = Some(key);
                dup
            } else {
                if n == SMALL_OBJECT {
                    large.extend(
                        small
                            .iter()
                            .flatten()
                            .map(|k| UniCase::unicode(k.0.to_string())),
                    );
                }
                !large.insert(UniCase::unicode(key.0.into_owned()))
            };
            if seen {
                return Err(serde::de::Error::custom(DUPLICATE_KEY));
            }
            n += 1;
        }
        Ok(())
    }
}

const DUPLICATE_KEY: &str = "a key appears twice in one object";

/// Deepest JSON nesting accepted: one level under serde_json's recursion limit (128),
/// so the tree parse never meets it and the app gets this clear message instead.
pub const MAX_DEPTH: usize = 127;

/// The bytes of a JSON text that lie outside its strings (strings and the escapes
/// inside them skipped), one pass, no parsing.
fn structure(body: &[u8]) -> impl Iterator<Item = u8> + '_ {
    let (mut in_string, mut escaped) = (false, false);
    body.iter().copied().filter(move |&b| {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            return false;
        }
        if b == b'"' {
            in_string = true;
            return false;
        }
        true
    })
}

/// About how many values and keys a JSON text holds (separators outside strings, plus
/// one): what inspecting it will cost is known before a tree is built.
pub fn json_items(body: &[u8]) -> usize {
    shape(body, usize::MAX).items
}

struct Shape {
    /// Arrays/objects nest deeper than the limit. Skipping unknown fields would accept
    /// any depth, and whatever parses the body later (DLP, the upstream) should not
    /// have to.
    too_deep: bool,
    items: usize,
}

/// Nesting and item count of a JSON text, in one pass over its structure.
fn shape(body: &[u8], max_depth: usize) -> Shape {
    let (mut depth, mut items) = (0usize, 1usize);
    for b in structure(body) {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return Shape {
                        too_deep: true,
                        items,
                    };
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' | b':' => items += 1,
            _ => {}
        }
    }
    Shape {
        too_deep: false,
        items,
    }
}

fn describe(e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    let what = match e.classify() {
        Category::Syntax => "syntax error",
        Category::Eof => "unexpected end of input",
        Category::Data => "a field has the wrong type",
        Category::Io => "read error",
    };
    format!("{what} at line {} column {}", e.line(), e.column())
}

/// Longest completions prompt prefix used for affinity.
const PROMPT_PREFIX_BYTES: usize = 2048;

/// The stable head of a prompt, for KV-cache affinity: requests that share it share the
/// server's cached prefix blocks. Chat: the messages before the first user message (the
/// system prompt most apps share), or the first message when there are none (so a
/// conversation stays where its history is cached); Anthropic: `system`, else the first
/// message; completions: the first 2 KiB of the prompt. `None` when there is none.
pub fn prefix_key(op: Operation, v: &Value) -> Option<String> {
    let key = match op {
        Operation::ChatCompletions => {
            let messages = v.get("messages")?.as_array()?;
            let head = messages
                .iter()
                .position(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .unwrap_or(messages.len())
                .clamp(1, 4);
            serde_json::to_string(messages.get(..head)?).ok()?
        }
        Operation::Messages => match v.get("system") {
            Some(system) => serde_json::to_string(system).ok()?,
            None => serde_json::to_string(v.get("messages")?.as_array()?.first()?).ok()?,
        },
        Operation::Completions => {
            let prompt = match v.get("prompt")? {
                Value::String(p) => p.as_str(),
                Value::Array(items) => items.first()?.as_str()?,
                _ => return None,
            };
            let mut end = prompt.len().min(PROMPT_PREFIX_BYTES);
            while !prompt.is_char_boundary(end) {
                end -= 1;
            }
            prompt[..end].to_string()
        }
        Operation::Embeddings
        | Operation::ListModels
        | Operation::RetrieveModel
        | Operation::CountTokens => return None,
    };
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_model_and_stream() {
        let h = parse_head(
            br#"{"messages":[{"role":"user","content":"hi"}],"model":"m","stream":true,"temperature":0.2,"top_p":"x"}"#,
        )
        .unwrap();
        assert_eq!(
            h,
            RequestHead {
                model: "m".into(),
                stream: true,
                stream_usage: false,
                max_tokens: None,
                temperature: Some(0.2),
                top_p: None,
            }
        );
        assert!(!parse_head(br#"{"model":"m"}"#).unwrap().stream);
        assert_eq!(
            parse_head(br#"{"model":"m","max_tokens":64}"#)
                .unwrap()
                .max_tokens,
            Some(64)
        );
        for bad in [
            r#"{"model":"m","max_tokens":-1}"#,
            r#"{"model":"m","max_tokens":0}"#,
            r#"{"model":"m","max_tokens":1.5}"#,
            r#"{"model":"m","max_tokens":"10"}"#,
            r#"{"model":"m","max_completion_tokens":99999999999}"#,
        ] {
            let e = parse_head(bad.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{bad}");
            assert!(
                e.body()["error"]["param"]
                    .as_str()
                    .unwrap()
                    .starts_with("max_"),
                "{bad}"
            );
        }
        // Escaped model names are decoded.
        assert_eq!(parse_head(br#"{"model":"a\"b"}"#).unwrap().model, "a\"b");
    }

    #[test]
    fn rejects_bad_bodies_clearly() {
        let cases: [(&[u8], &str); 7] = [
            (b"", "empty"),
            (b"[1,2]", "must be a JSON object"),
            (b"{\"model\": ", "unexpected end of input at line 1"),
            (b"{\"model\": 3}", "wrong type"),
            (b"{\"messages\": []}", "You must provide a model parameter."),
            (b"{\"model\": \"\"}", "You must provide a model parameter."),
            (b"{\"model\": \"m\xff\"}", "not valid UTF-8"),
        ];
        for (body, expected) in cases {
            let e = parse_head(body).unwrap_err();
            assert_eq!(e.status, 400);
            assert!(
                e.message.contains(expected),
                "{:?}: {}",
                String::from_utf8_lossy(body),
                e.message
            );
        }
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"model":"m","model":"n"}"#,
            r#"{"model":"m","messages":[{"role":"user","content":"a","content":"NIR"}]}"#,
            r#"{"model":"m","messages":[],"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"m","x":{"a":{"b":1,"b":2}}}"#,
            // Parsers that match keys regardless of case (Go's encoding/json) read these.
            r#"{"model":"m","messages":[{"role":"user","content":"hi","Content":"NIR"}]}"#,
            r#"{"model":"m","messages":[],"meſſages":[{"role":"user","content":"NIR"}]}"#,
            "{\"model\":\"m\",\"ma\u{212A}e\":1,\"make\":2}",
            // The same key spelled with a JSON escape.
            r#"{"model":"m","messages":[{"role":"user","content":"a","con\u0074ent":"NIR"}]}"#,
        ] {
            let e = parse_head(body.as_bytes()).unwrap_err();
            assert_eq!(e.status, 400, "{body}");
            assert!(e.message.contains("a key appears twice"), "{}", e.message);
            assert_eq!(e.code, Some("ambiguous_key"));
            assert!(!e.message.contains("NIR") && !e.message.contains("content"));
        }
        // Objects beyond the small-object fast path too.
        let many: String = (0..40).map(|i| format!("\"k{i}\":{i},")).collect();
        for dup in ["k3", "K39"] {
            let body = format!("{{{many}\"{dup}\":0,\"model\":\"m\"}}");
            assert!(parse_head(body.as_bytes()).is_err(), "{dup}");
        }
        assert!(parse_head(format!("{{{many}\"model\":\"m\"}}").as_bytes()).is_ok());
        // The same key in two objects is fine.
        assert!(parse_head(br#"{"model":"m","a":{"k":1},"b":{"k":2}}"#).is_ok());
    }

    #[test]
    fn error_messages_do_not_echo_content() {
        let e = parse_head(br#"{"model":"m","messages":[{"content":"SECRET-123"}] trailing"#)
            .unwrap_err();
        assert!(!e.message.contains("SECRET"), "{}", e.message);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let body = format!(
            "{{\"model\":\"m\",\"x\":{}{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = parse_head(body.as_bytes()).unwrap_err();
        assert_eq!(e.status, 400);
        assert!(e.message.contains("nested more than 127"), "{}", e.message);
        // Brackets inside strings do not count; 127 real levels are fine.
        let ok = format!(
            "{{\"model\":\"m\",\"s\":\"{}\\\"[[\",\"x\":{}{}}}",
            "[".repeat(500),
            "[".repeat(126),
            "]".repeat(126)
        );
        assert_eq!(parse_head(ok.as_bytes()).unwrap().model, "m");
    }

    fn req(op: Operation, body: &str) -> LlmRequest {
        LlmRequest::parse(op, Bytes::from(body.to_string())).unwrap()
    }

    #[test]
    fn forwards_the_apps_bytes_unless_something_changed() {
        let body = r#"{"model":"alias", "n":1}"#;
        let mut r = req(Operation::ChatCompletions, body);
        assert_eq!(&r.body_for("alias", false).unwrap()[..], body.as_bytes());
        let out = r.body_for("real", false).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, serde_json::json!({"model": "real", "n": 1}));
        // The same variant again is the same bytes (retries serialise nothing).
        assert_eq!(r.body_for("real", false).unwrap().as_ptr(), out.as_ptr());
    }

    #[test]
    fn a_plain_request_never_builds_a_tree() {
        let mut r = req(
            Operation::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        );
        assert_eq!(r.body_for("m", false).unwrap().len(), r.len());
        r.forwarded();
        assert!(r.tree.is_none(), "nothing needed a tree");
        // An estimate still can read the texts.
        assert_eq!(r.into_tree()["messages"][0]["content"], "hi");
    }

    #[test]
    fn asks_for_usage_only_when_a_stream_lacks_it() {
        let mut r = req(
            Operation::ChatCompletions,
            r#"{"model":"m","stream":true,"stream_options":{"x":1},"messages":[]}"#,
        );
        assert!(r.lacks_stream_usage());
        let v: Value = serde_json::from_slice(&r.body_for("m", true).unwrap()).unwrap();
        assert_eq!(
            v["stream_options"],
            serde_json::json!({"x": 1, "include_usage": true})
        );
        let mut r = req(Operation::Completions, r#"{"model":"m","stream":true}"#);
        let v: Value = serde_json::from_slice(&r.body_for("n", true).unwrap()).unwrap();
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "n");
        for (op, body) in [
            (
                Operation::ChatCompletions,
                r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#,
            ),
            (Operation::ChatCompletions, r#"{"model":"m"}"#),
            (Operation::Messages, r#"{"model":"m","stream":true}"#),
        ] {
            assert!(!req(op, body).lacks_stream_usage(), "{body}");
        }
    }

    #[test]
    fn items_are_counted_outside_strings() {
        assert_eq!(json_items(br#"{"a":[1,2,3],"b":"x,y:z\",:"}"#), 6);
        assert_eq!(json_items(b"[]"), 1);
    }

    #[test]
    fn rewritten_texts_are_what_is_sent() {
        let mut r = req(
            Operation::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"secret"}]}"#,
        );
        r.edit_tree(|tree| {
            tree["messages"][0]["content"] = "[X]".into();
            Ok::<_, ApiError>(true)
        })
        .unwrap();
        assert!(r.rewritten());
        let v: Value = serde_json::from_slice(&r.body_for("m", false).unwrap()).unwrap();
        assert_eq!(v["messages"][0]["content"], "[X]");
    }

    #[test]
    fn prefix_key_is_the_stable_head_of_the_prompt() {
        let key = |op, body: &str| req(op, body).prefix_key();
        let chat = |q: &str| {
            format!(
                r#"{{"model":"m","temperature":0.{},"messages":[{{"role":"system","content":"Tu es un assistant."}},{{"role":"user","content":"{q}"}},{{"role":"assistant","content":"x"}}]}}"#,
                q.len()
            )
        };
        let a = key(Operation::ChatCompletions, &chat("Bonjour")).unwrap();
        let b = key(Operation::ChatCompletions, &chat("Autre question")).unwrap();
        assert_eq!(
            a, b,
            "same system prompt, other question and parameters: same key"
        );
        assert!(a.contains("Tu es un assistant") && !a.contains("Bonjour"));
        // Without a system prompt, the first message keys the conversation.
        let c = key(
            Operation::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":"Bonjour"},{"role":"assistant","content":"x"}]}"#,
        )
        .unwrap();
        assert!(c.contains("Bonjour"));
        assert!(key(Operation::Embeddings, r#"{"model":"m","input":"x"}"#).is_none());
        assert_eq!(
            key(
                Operation::Completions,
                r#"{"model":"m","prompt":["abc","d"]}"#
            )
            .as_deref(),
            Some("abc")
        );
    }
}
