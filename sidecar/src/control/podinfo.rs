//! Pod labels from a downward-API file (`fieldRef: metadata.labels`), one
//! `key="value"` line per label, values quoted the way Go's `strconv.Quote` does.

use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum LabelsError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse { path: String, source: BadLine },
}

/// A line of the labels file that is not `key="value"` (its number, from 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {0} is not key=\"value\"")]
pub struct BadLine(pub usize);

/// The labels in `path`; a line that cannot be read is an error naming its number.
pub fn read_labels(path: &Path) -> Result<BTreeMap<String, String>, LabelsError> {
    let text = std::fs::read_to_string(path).map_err(|source| LabelsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    parse_labels(&text).map_err(|source| LabelsError::Parse {
        path: path.display().to_string(),
        source,
    })
}

pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, BadLine> {
    let mut labels = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || BadLine(n + 1);
        let (key, quoted) = line.split_once('=').ok_or_else(bad)?;
        let inner = quoted
            .strip_prefix('"')
            .and_then(|q| q.strip_suffix('"'))
            .ok_or_else(bad)?;
        labels.insert(key.to_string(), unquote(inner).ok_or_else(bad)?);
    }
    Ok(labels)
}

/// Label values are restricted to `[A-Za-z0-9._-]`, so only the simple escapes can
/// appear; anything else is refused rather than guessed.
fn unquote(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            'n' => out.push('\n'),
            't' => out.push('\t'),
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downward_api_format() {
        let labels = parse_labels(
            "app.kubernetes.io/name=\"chat\"\npod-template-hash=\"7d9f8b6c5\"\ntier=\"a\\\"b\"\n",
        )
        .unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "chat");
        assert_eq!(labels["pod-template-hash"], "7d9f8b6c5");
        assert_eq!(labels["tier"], "a\"b");
        assert_eq!(parse_labels("").unwrap().len(), 0);
    }

    #[test]
    fn malformed_lines_are_named() {
        assert_eq!(
            parse_labels("a=\"1\"\nb=2\n").unwrap_err().to_string(),
            "line 2 is not key=\"value\""
        );
        assert!(parse_labels("novalue\n").is_err());
        assert!(parse_labels("a=\"\\x41\"\n").is_err());
    }
}
