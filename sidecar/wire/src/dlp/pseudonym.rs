//! Pseudonymization: the model sees `<FR_NIR_1>`; the answer gets the value back.
//! Placeholders are stable within a request (the same value, the same placeholder) and
//! never reused across requests.

use std::collections::HashMap;

/// Longest placeholder: `<` + detector name (≤ 64) + `_` + counter + `>`.
const MAX_PLACEHOLDER: usize = 80;

#[derive(Debug, Default, Clone)]
pub struct Pseudonyms {
    by_value: HashMap<(String, String), String>,
    by_placeholder: HashMap<String, String>,
    counters: HashMap<String, usize>,
}

impl Pseudonyms {
    pub fn is_empty(&self) -> bool {
        self.by_placeholder.is_empty()
    }

    pub fn placeholder(&mut self, detector: &str, value: &str) -> String {
        let key = (detector.to_string(), value.to_string());
        if let Some(p) = self.by_value.get(&key) {
            return p.clone();
        }
        let n = self.counters.entry(detector.to_string()).or_default();
        *n += 1;
        let p = format!("<{detector}_{n}>");
        self.by_placeholder.insert(p.clone(), value.to_string());
        self.by_value.insert(key, p.clone());
        p
    }

    /// Whether this placeholder was issued for this request (not text that looks like one).
    pub fn issued(&self, placeholder: &str) -> bool {
        self.by_placeholder.contains_key(placeholder)
    }

    fn original(&self, placeholder: &str) -> Option<&str> {
        self.by_placeholder.get(placeholder).map(String::as_str)
    }

    /// Restores every placeholder of a complete text.
    pub fn restore_all(&self, text: &str) -> String {
        let mut r = Restorer::default();
        let mut out = r.push(self, text);
        out.push_str(&r.finish());
        out
    }
}

fn placeholder_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'
}

/// Streaming restoration: holds back only a trailing `<…` that may still become a
/// placeholder, so a placeholder split across chunks is restored too.
#[derive(Debug, Default)]
pub struct Restorer {
    pending: String,
}

impl Restorer {
    pub fn push(&mut self, names: &Pseudonyms, chunk: &str) -> String {
        self.pending.push_str(chunk);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest = self.pending.as_str();
        loop {
            let Some(lt) = rest.find('<') else {
                out.push_str(rest);
                rest = "";
                break;
            };
            out.push_str(&rest[..lt]);
            let candidate = &rest[lt..];
            let body_len = candidate[1..]
                .find(|c: char| !placeholder_char(c))
                .unwrap_or(candidate.len() - 1);
            let after = candidate[1 + body_len..].chars().next();
            match after {
                // Still being written: hold from '<' unless it is too long to be one.
                None if candidate.len() <= MAX_PLACEHOLDER => {
                    rest = candidate;
                    break;
                }
                Some('>') => {
                    let whole = &candidate[..body_len + 2];
                    match names.original(whole) {
                        Some(v) => out.push_str(v),
                        None => out.push_str(whole),
                    }
                    rest = &candidate[body_len + 2..];
                }
                _ => {
                    out.push('<');
                    rest = &candidate[1..];
                }
            }
        }
        self.pending = rest.to_string();
        out
    }

    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_placeholders_and_split_restoration() {
        let mut p = Pseudonyms::default();
        assert_eq!(p.placeholder("FR_NIR", "185057800608491"), "<FR_NIR_1>");
        assert_eq!(p.placeholder("IBAN", "FR76…"), "<IBAN_1>");
        assert_eq!(p.placeholder("FR_NIR", "185057800608491"), "<FR_NIR_1>");
        assert_eq!(p.placeholder("FR_NIR", "269052A00608490"), "<FR_NIR_2>");
        let answer = "Le NIR <FR_NIR_1> et <FR_NIR_2>, pas <FR_NIR_9> ni <b>x</b> < 3.";
        let expected = "Le NIR 185057800608491 et 269052A00608490, pas <FR_NIR_9> ni <b>x</b> < 3.";
        assert_eq!(p.restore_all(answer), expected);
        for cut in 1..answer.len() {
            if !answer.is_char_boundary(cut) {
                continue;
            }
            let mut r = Restorer::default();
            let mut out = r.push(&p, &answer[..cut]);
            out.push_str(&r.push(&p, &answer[cut..]));
            out.push_str(&r.finish());
            assert_eq!(out, expected, "cut at {cut}");
        }
    }
}
