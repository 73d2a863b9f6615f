//! Texts read together — the strings of a request in the order the model reads them —
//! scanned as one text, so that a value split across two content parts, two messages,
//! or the system prompt and the user's is found. Each part is folded on its own and
//! the folded parts are joined with nothing in between (the model reads them with
//! nothing that would stop a number); part boundaries count as word boundaries.
//!
//! A finding is written (replacement, placeholder) into the part where it starts and
//! its continuation is removed from the parts it runs into.

use crate::engine::{DlpError, Engine, Finding};
use crate::fold::Folded;
use crate::stream::Transform;

/// The new text of each part that changed (`None`: unchanged), in the order given.
pub fn transform_parts(
    engine: &Engine,
    parts: &[&str],
    t: &mut dyn Transform,
) -> Result<Vec<Option<String>>, DlpError> {
    let views: Vec<Folded<'_>> = parts.iter().map(|p| Folded::of(p)).collect();
    let mut joined = String::with_capacity(views.iter().map(|v| v.text.len()).sum());
    let mut seams = Vec::with_capacity(views.len());
    for v in &views {
        seams.push(joined.len());
        joined.push_str(&v.text);
    }
    let findings = engine.find_joined(&joined, &seams, &|d| t.acts_on(d))?;
    drop(joined);
    let mut out: Vec<Option<String>> = vec![None; parts.len()];
    if findings.is_empty() {
        return Ok(out);
    }
    let bounds = |i: usize| {
        let start = seams.get(i).copied().unwrap_or(0);
        let end = seams
            .get(i + 1)
            .copied()
            .unwrap_or_else(|| start + views.get(i).map_or(0, |v| v.text.len()));
        (start, end)
    };
    // The original text a finding covers, across the parts it spans.
    let value_of = |f: &Finding| {
        let mut value = String::new();
        for (i, (view, part)) in views.iter().zip(parts).enumerate() {
            let (ps, pe) = bounds(i);
            if pe <= f.start || ps >= f.end {
                continue;
            }
            let (from, to) = local(view, f, ps, pe);
            value.push_str(part.get(from..to).unwrap_or(""));
        }
        value
    };
    let mut first = 0;
    for (i, (view, part)) in views.iter().zip(parts).enumerate() {
        let (ps, pe) = bounds(i);
        while findings.get(first).is_some_and(|f| f.end <= ps) {
            first += 1;
        }
        let touching: Vec<&Finding> = findings[first..]
            .iter()
            .take_while(|f| f.start < pe)
            .filter(|f| f.end > ps)
            .collect();
        if touching.is_empty() {
            continue;
        }
        let mut text = String::with_capacity(part.len());
        let mut cursor = 0;
        for f in touching {
            let (from, to) = local(view, f, ps, pe);
            text.push_str(part.get(cursor..from).unwrap_or(""));
            if f.start >= ps {
                t.finding(engine, f, &value_of(f), &mut text);
            }
            cursor = to;
        }
        text.push_str(part.get(cursor..).unwrap_or(""));
        if let Some(slot) = out.get_mut(i) {
            *slot = Some(text);
        }
    }
    Ok(out)
}

/// The original byte range, in one part (folded range `ps..pe` of the joined text), of
/// the piece of a finding that lies in it. A piece continued from an earlier part
/// starts at the part's first byte (invisible characters there go with it).
fn local(view: &Folded<'_>, f: &Finding, ps: usize, pe: usize) -> (usize, usize) {
    let from = if f.start <= ps {
        0
    } else {
        view.original(f.start - ps)
    };
    (from, view.original(f.end.min(pe) - ps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builtins;
    use crate::stream::Redact;

    fn redact(parts: &[&str]) -> Vec<String> {
        let e = Engine::new(builtins()).unwrap();
        let out = transform_parts(&e, parts, &mut Redact::default()).unwrap();
        out.into_iter()
            .zip(parts)
            .map(|(new, old)| new.unwrap_or_else(|| old.to_string()))
            .collect()
    }

    #[test]
    fn a_value_split_across_parts_is_found_and_removed_from_each() {
        assert_eq!(
            redact(&["NIR 1 85 05 7", "8 006 084 91 merci"]),
            ["NIR [FR_NIR]", " merci"]
        );
        // Split at a group boundary with the separator dropped, over three parts.
        assert_eq!(
            redact(&["tel 06 12", "34 56", "78"]),
            ["tel [PHONE_NUMBER]", "", ""]
        );
        // Disguised in one part, plain in the other.
        assert_eq!(
            redact(&["carte 4111\u{a0}1111", "\u{200b}1111 1111."]),
            ["carte [CREDIT_CARD]", "."]
        );
    }

    #[test]
    fn a_value_ending_a_part_does_not_run_on_into_the_next() {
        assert_eq!(
            redact(&["écrire à jean.dupont@example.fr", "role", "model"]),
            ["écrire à [EMAIL_ADDRESS]", "role", "model"]
        );
        // Split inside the domain: found across, and stops at the next boundary.
        assert_eq!(
            redact(&["mail jean.dupont@exa", "mple.fr", "user"]),
            ["mail [EMAIL_ADDRESS]", "", "user"]
        );
    }

    #[test]
    fn a_part_boundary_is_a_word_boundary() {
        // A value at the end of a part, with digits at the start of the next.
        assert_eq!(
            redact(&["appelez le 06 12 34 56 78", "9 fois"]),
            ["appelez le [PHONE_NUMBER]", "9 fois"]
        );
        // Unchanged parts stay unchanged; nothing is found across unrelated numbers.
        let e = Engine::new(builtins()).unwrap();
        let out =
            transform_parts(&e, &["article 12", "34 du code"], &mut Redact::default()).unwrap();
        assert_eq!(out, [None, None]);
    }
}
