//! JSON text inside strings — tool-call arguments, Anthropic `partial_json`, tool
//! results — is decoded a second time by the app or the model, so `\u0031` is a `1` to
//! them. DLP reads such text with its `\uXXXX` escapes decoded (the same JSON: only
//! characters that need no escape are written as themselves).

use serde_json::Value;

/// Whether a code point may be written raw inside a JSON string.
fn raw_ok(c: char) -> bool {
    !(c == '"' || c == '\\' || (c as u32) < 0x20)
}

fn hex4(s: &str) -> Option<u32> {
    let h = s.get(..4)?;
    if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(h, 16).ok()
}

/// Decodes the `\uXXXX` escapes of a stream of JSON text that need not be escaped.
/// Escapes cut across chunks are carried to the next one.
#[derive(Debug, Default)]
pub struct Unescaper {
    carry: String,
}

impl Unescaper {
    /// The decoded text of `chunk` that is complete so far.
    pub fn push(&mut self, chunk: &str) -> String {
        self.carry.push_str(chunk);
        let text = std::mem::take(&mut self.carry);
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find('\\') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            let Some(kind) = rest.as_bytes().get(1) else {
                break; // a lone backslash at the end: wait for what follows
            };
            if *kind != b'u' {
                // Another escape (`\\`, `\"`, `\n`…): kept as it is, whole.
                out.push_str(&rest[..2]);
                rest = &rest[2..];
                continue;
            }
            let Some(hi) = hex4(&rest[2..]) else {
                if rest.len() < 6 {
                    break; // cut inside the escape
                }
                out.push_str(&rest[..2]);
                rest = &rest[2..];
                continue;
            };
            let (code, used) = if (0xD800..0xDC00).contains(&hi) {
                if rest.len() < 12 {
                    break; // a surrogate pair may follow
                }
                match (rest.get(6..8), hex4(&rest[8..])) {
                    (Some("\\u"), Some(lo)) if (0xDC00..0xE000).contains(&lo) => {
                        (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), 12)
                    }
                    _ => (hi, 6),
                }
            } else {
                (hi, 6)
            };
            match char::from_u32(code).filter(|c| raw_ok(*c)) {
                Some(c) => out.push(c),
                None => out.push_str(&rest[..used]),
            }
            rest = &rest[used..];
        }
        if rest.starts_with('\\') {
            self.carry.push_str(rest);
        } else {
            out.push_str(rest);
        }
        out
    }

    /// The end of the text: whatever was carried, as it was.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.carry)
    }
}

/// A string holding a JSON object or array written with escapes, in its canonical form
/// (same value, only the escapes JSON requires); `None` if it is not such a string.
pub fn canonical_json(s: &str) -> Option<String> {
    if !s.contains('\\') || !s.trim_start().starts_with(['{', '[']) {
        return None;
    }
    let v: Value = serde_json::from_str(s).ok()?;
    serde_json::to_string(&v).ok().filter(|c| c != s)
}

/// Rewrites every string of `tree` that holds escaped JSON in canonical form (see
/// [`canonical_json`]); whether one changed.
pub fn canonicalize(tree: &mut Value) -> bool {
    match tree {
        Value::String(s) => match canonical_json(s) {
            Some(c) => {
                *s = c;
                true
            }
            None => false,
        },
        Value::Array(items) => items.iter_mut().fold(false, |a, i| canonicalize(i) | a),
        Value::Object(map) => map.values_mut().fold(false, |a, v| canonicalize(v) | a),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_decode_across_any_cut() {
        let text = r#"{"nir":"\u0031\u0020\u0038\u0035","q":"\"\\u0031\n","e":"\ud83d\ude00","x":"\u0000"}"#;
        let want = r#"{"nir":"1 85","q":"\"\\u0031\n","e":"😀","x":"\u0000"}"#;
        for cut in 0..=text.len() {
            if !text.is_char_boundary(cut) {
                continue;
            }
            let mut u = Unescaper::default();
            let mut out = u.push(&text[..cut]);
            out.push_str(&u.push(&text[cut..]));
            out.push_str(&u.finish());
            assert_eq!(out, want, "cut at {cut}");
        }
    }

    #[test]
    fn embedded_json_is_canonicalised() {
        assert_eq!(
            canonical_json(r#"{"nir": "1\u202f85\u202f05"}"#).as_deref(),
            Some("{\"nir\":\"1\u{202f}85\u{202f}05\"}")
        );
        assert_eq!(canonical_json("plain \\u0031 text"), None);
        assert_eq!(canonical_json("{not json \\u0031"), None);
    }
}
