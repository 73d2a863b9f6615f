//! The logs of every binary: `RUST_LOG` (or the binary's default) decides, except that
//! crates which print raw protocol data at debug or trace — request lines with their
//! query strings, headers with provider keys and tokens, SQL — never log below `info`,
//! however `RUST_LOG` is spelt (`trace`, `5`, a bare target, a target prefix such as
//! `p=trace`). The cap is a filter of its own on each event's target, not an edit of
//! the user's directives. Vigie's own targets keep every level. A line longer than
//! [`MAX_LINE`] is cut (a JSON line becomes a smaller, still valid, JSON object): no
//! request can make one event fill a log pipeline.

use tracing::{Level, Metadata};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Crates whose debug/trace output carries raw request or response data.
const RAW_DATA_CRATES: &[&str] = &[
    "h2",
    "hyper",
    "hyper_util",
    "pingora",
    "pingora_core",
    "pingora_proxy",
    "pingora_http",
    "pingora_pool",
    "tonic",
    "tower",
    "rustls",
    "sqlx",
    "reqwest",
    "opentelemetry",
    "opentelemetry_sdk",
    "opentelemetry_otlp",
    "opentelemetry-otlp",
    "opentelemetry_http",
];

/// Whether an event may be logged whatever the directives say.
pub fn allowed(metadata: &Metadata<'_>) -> bool {
    let krate = metadata.target().split("::").next().unwrap_or_default();
    !(RAW_DATA_CRATES.contains(&krate) && *metadata.level() > Level::INFO)
}

/// Longest log line written, in bytes.
pub const MAX_LINE: usize = 16 * 1024;

/// What a cut line keeps of its start.
const KEPT_HEAD: usize = 4 * 1024;

/// A line as written: one line (in text, line breaks inside a value are escaped, so
/// a value cannot forge a second log line), unchanged up to [`MAX_LINE`], else its
/// head and the size cut (in JSON, a smaller object that keeps the event's timestamp,
/// level and target).
pub fn capped_line(line: &[u8], json: bool) -> std::borrow::Cow<'_, [u8]> {
    let body = line.strip_suffix(b"\n").unwrap_or(line);
    let breaks = !json && body.iter().any(|b| matches!(b, b'\n' | b'\r'));
    if line.len() <= MAX_LINE && !breaks {
        return line.into();
    }
    let text = String::from_utf8_lossy(body);
    let text = if breaks {
        text.replace('\n', "\\n").replace('\r', "\\r").into()
    } else {
        text
    };
    if text.len() < MAX_LINE {
        return format!("{text}\n").into_bytes().into();
    }
    let head = &text[..text.floor_char_boundary(KEPT_HEAD)];
    let out = if json {
        let field = |name: &str| json_string_field(&text, name);
        let cut = serde_json::json!({
            "timestamp": field("timestamp"),
            "level": field("level"),
            "target": field("target"),
            "cut": true,
            "bytes": line.len(),
            "head": head,
        });
        format!("{cut}\n")
    } else {
        format!("{head} … [log line cut: {} bytes]\n", line.len())
    };
    out.into_bytes().into()
}

/// The value of a top-level `"name":"value"` string field of a JSON line (the
/// formatter writes these plainly; a value containing quotes is not looked for).
fn json_string_field(line: &str, name: &str) -> Option<String> {
    let key = format!("\"{name}\":\"");
    // `target` follows the (long) fields: look at the line's end first.
    let at = line.rfind(&key)?;
    let rest = &line[at + key.len()..];
    let value = &rest[..rest.find('"')?];
    (value.len() <= 256 && !value.contains('\\')).then(|| value.to_string())
}

/// A log writer through [`capped_line`] (`.1`: JSON lines). The formatter hands each
/// event over in one write (`tracing_subscriber::fmt` formats a whole line, then
/// `write_all`s it).
struct Capped<W>(W, bool);

impl<W: std::io::Write> std::io::Write for Capped<W> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&capped_line(line, self.1))?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

/// Installs the global subscriber: text or JSON lines on stderr, filtered by
/// `RUST_LOG` (else `default`, plus `extra` directives), with the cap above.
pub fn init(default: &str, extra: &[&str], json: bool) {
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let mut filter = tracing_subscriber::EnvFilter::builder().parse_lossy(spec);
    for d in extra {
        if let Ok(d) = d.parse() {
            filter = filter.add_directive(d);
        }
    }
    let cap = tracing_subscriber::filter::filter_fn(allowed);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(move || Capped(std::io::stderr(), json));
    if json {
        builder.json().finish().with(cap).init();
    } else {
        builder.finish().with(cap).init();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt as _;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn raw_data_crates_never_log_below_info_whatever_the_directives() {
        // The spellings that went around a rewrite of the directives.
        for spec in ["trace", "5", "info,pingora_core", "info,p=trace,h=trace"] {
            let buf = Buf::default();
            let writer = buf.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::builder().parse_lossy(spec))
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish()
                .with(tracing_subscriber::filter::filter_fn(super::allowed));
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "pingora_core::protocols::http::v1::client", "authorization: Bearer sk-1");
                tracing::debug!(target: "h2::codec", "header sk-2");
                tracing::info!(target: "pingora_core::server", "listening");
                tracing::warn!(target: "hyper", "connection error");
            });
            let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            assert!(
                !out.contains("sk-1") && !out.contains("sk-2"),
                "{spec}: {out}"
            );
            if spec != "info,pingora_core" {
                assert!(out.contains("connection error"), "{spec}: {out}");
            }
        }
    }

    #[test]
    fn a_long_event_is_cut_to_a_bounded_line_and_json_stays_json() {
        let huge = "é".repeat(super::MAX_LINE);
        for json in [false, true] {
            let buf = Buf::default();
            let writer = buf.clone();
            let builder = tracing_subscriber::fmt()
                .with_writer(move || super::Capped(writer.clone(), json))
                .with_ansi(false);
            let event = || tracing::warn!(problems = %huge, "policy refused");
            if json {
                tracing::subscriber::with_default(builder.json().finish(), event);
            } else {
                tracing::subscriber::with_default(builder.finish(), event);
            }
            let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
            assert!(out.len() <= super::MAX_LINE, "{}", out.len());
            assert!(out.ends_with('\n') && out.lines().count() == 1);
            if json {
                let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                assert_eq!(v["cut"], true);
                assert!(v["bytes"].as_u64().unwrap() > 2 * super::MAX_LINE as u64);
            } else {
                assert!(
                    out.contains("policy refused") || out.contains("WARN"),
                    "{out}"
                );
                assert!(out.contains("[log line cut: "), "{out}");
            }
        }
        // Short lines pass untouched.
        assert_eq!(&*super::capped_line(b"ok\n", true), b"ok\n");
        assert_eq!(&*super::capped_line(b"ok\n", false), b"ok\n");
    }

    #[test]
    fn a_value_cannot_forge_a_second_text_line_and_a_cut_json_line_keeps_its_level() {
        let forged = b"WARN snapshot rejected error=x\nINFO policy applied by=\"alice\"\r\n";
        let out = super::capped_line(forged, false);
        assert_eq!(
            &*out,
            b"WARN snapshot rejected error=x\\nINFO policy applied by=\"alice\"\\r\n"
        );
        let huge = format!(
            r#"{{"timestamp":"2026-12-07T12:00:00Z","level":"WARN","fields":{{"message":"{}"}},"target":"vigie::x"}}"#,
            "a".repeat(super::MAX_LINE)
        ) + "\n";
        let v: serde_json::Value =
            serde_json::from_slice(&super::capped_line(huge.as_bytes(), true)).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "vigie::x");
        assert_eq!(v["timestamp"], "2026-12-07T12:00:00Z");
    }

    #[test]
    fn only_the_listed_crates_are_capped() {
        let capped = |target: &str| {
            let krate = target.split("::").next().unwrap_or_default();
            super::RAW_DATA_CRATES.contains(&krate)
        };
        assert!(capped("pingora_core::protocols"));
        assert!(capped("sqlx::query"));
        assert!(!capped("vigie_sidecar::pipeline"));
        assert!(!capped("pingora_fake_crate"));
    }
}
