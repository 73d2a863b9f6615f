//! The folded view every detector reads: the text as a person reads it, with an offset
//! map back to the original bytes.
//!
//! Per character (context-free, so a stream cut anywhere folds as the whole text does):
//! - default-ignorable characters (zero-width space/joiner/non-joiner, word joiner,
//!   soft hyphen, BOM, bidi marks, variation selectors, Hangul fillers, tags), other
//!   format characters, combining marks and C1 controls are dropped (NEL is a newline);
//! - every space separator (no-break, narrow no-break, thin…) becomes a space, line and
//!   paragraph separators a newline, every dash a hyphen-minus;
//! - every decimal digit (`\p{Nd}`: Arabic-Indic, Devanagari, full-width…) becomes its
//!   ASCII digit;
//! - any other character with a compatibility decomposition becomes its NFKC form
//!   (full-width letters and `＠`, mathematical alphanumerics, superscripts, ligatures).
//!
//! Case is left alone: detectors that ignore case say so in their patterns.
//! Character properties come from `unicode-properties` and `unicode-normalization`; a
//! bitmap of the Basic Multilingual Plane derived from them at start-up keeps the usual
//! case (French prose, nothing to fold) to one bit test per non-ASCII character.

use std::borrow::Cow;
use std::sync::LazyLock;

use icu_properties::CodePointSetData;
use icu_properties::props::DefaultIgnorableCodePoint;
use unicode_normalization::UnicodeNormalization as _;
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory as _};

/// The folded form of one character: `None` when it folds to itself.
fn fold_char(c: char, out: &mut String) -> Option<()> {
    if c.is_ascii() {
        return None;
    }
    // Characters meant to be invisible (format characters, Hangul fillers, variation
    // selectors, tags…) are dropped whatever their category.
    if CodePointSetData::new::<DefaultIgnorableCodePoint>().contains(c) {
        return Some(());
    }
    match c.general_category() {
        // C1 controls: NEL is a line end, the others nothing a reader sees.
        GeneralCategory::Control => {
            if c == '\u{85}' {
                out.push('\n');
            }
            Some(())
        }
        GeneralCategory::Format
        | GeneralCategory::NonspacingMark
        | GeneralCategory::EnclosingMark => Some(()),
        GeneralCategory::SpaceSeparator => {
            out.push(' ');
            Some(())
        }
        GeneralCategory::LineSeparator | GeneralCategory::ParagraphSeparator => {
            out.push('\n');
            Some(())
        }
        GeneralCategory::DashPunctuation => {
            out.push('-');
            Some(())
        }
        GeneralCategory::DecimalNumber => {
            out.push(char::from(b'0' + digit_value(c)));
            Some(())
        }
        _ => {
            let mut nfkc = std::iter::once(c).nfkc();
            if nfkc.clone().eq(std::iter::once(c)) {
                return None;
            }
            // The compatibility form may itself hold characters to fold (a full-width
            // space, a superscript digit's digit).
            for d in nfkc.by_ref() {
                if fold_char(d, out).is_none() {
                    out.push(d);
                }
            }
            Some(())
        }
    }
}

/// Value of a `\p{Nd}` character. Unicode encodes decimal digits in contiguous runs
/// of ten, 0 to 9 (a stability policy), so the value is the distance to the run's
/// start modulo ten.
fn digit_value(c: char) -> u8 {
    let mut start = c as u32;
    while start > 0
        && char::from_u32(start - 1)
            .is_some_and(|p| p.general_category() == GeneralCategory::DecimalNumber)
    {
        start -= 1;
    }
    ((c as u32 - start) % 10) as u8
}

/// What each BMP code point folds to, derived from [`fold_char`] at start-up (64 KiB):
/// [`KEEP`] (itself), [`DROP`] (nothing), [`COMPLEX`] (several characters, or one that is
/// not ASCII: ask [`fold_char`]), or the one ASCII byte it becomes (spaces, digits of
/// every script, dashes, full-width ASCII) — so the common folds cost one table read.
static BMP: LazyLock<Box<[u8]>> = LazyLock::new(|| {
    let mut table = vec![KEEP; 0x10000].into_boxed_slice();
    let mut scratch = String::new();
    for cp in 0x80u32..0x10000 {
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        scratch.clear();
        if fold_char(c, &mut scratch).is_none() {
            continue;
        }
        let code = match scratch.as_bytes() {
            [] => DROP,
            [b] if b.is_ascii() && *b >= FIRST_ASCII => *b,
            _ => COMPLEX,
        };
        if let Some(slot) = table.get_mut(cp as usize) {
            *slot = code;
        }
    }
    table
});

const KEEP: u8 = 0;
const DROP: u8 = 1;
const COMPLEX: u8 = 2;
/// Codes from here up are the ASCII byte itself (folds to controls never happen but
/// newline, which is 10: above the three codes).
const FIRST_ASCII: u8 = 3;

/// Builds the tables now rather than on the first request that needs them.
pub fn warm_up() {
    LazyLock::force(&BMP);
    LazyLock::force(&LATIN1_LETTERS_QUIET);
}

fn bmp_code(c: char) -> Option<u8> {
    let cp = c as usize;
    if cp < 0x10000 {
        BMP.get(cp).copied()
    } else {
        None
    }
}

fn folds(c: char) -> bool {
    if c.is_ascii() {
        return false;
    }
    match bmp_code(c) {
        Some(code) => code != KEEP,
        None => fold_char(c, &mut String::new()).is_some(),
    }
}

/// Appends `c` folded (itself when it does not fold).
fn push_folded(c: char, out: &mut String) {
    match bmp_code(c) {
        Some(KEEP) => out.push(c),
        Some(DROP) => {}
        Some(code) if code >= FIRST_ASCII => out.push(char::from(code)),
        _ => {
            if fold_char(c, out).is_none() {
                out.push(c);
            }
        }
    }
}

/// Whether no character of U+00C0–U+00FF folds (Latin-1 letters: é, à, ç…), so their
/// lead byte 0xC3 can be skipped unread. Derived from the table, not assumed.
static LATIN1_LETTERS_QUIET: LazyLock<bool> = LazyLock::new(|| {
    (0xC0u32..=0xFF)
        .filter_map(char::from_u32)
        .all(|c| !folds(c))
});

/// Offset of the first character at or after `from` that folds. This runs over every
/// text DLP reads, so it reads bytes, 32 at a time: ASCII never folds, continuation
/// bytes are skipped, and so is the lead byte of French accented letters; only other
/// lead bytes are decoded and looked up.
fn next_fold(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let skip_c3 = *LATIN1_LETTERS_QUIET;
    let wanted = |b: u8| b == 0xC2 || b >= 0xC4 || (b == 0xC3 && !skip_c3);
    let mut i = from;
    while i < bytes.len() {
        if let Some(chunk) = bytes.get(i..i + 32)
            && !chunk.iter().fold(false, |any, &b| any | wanted(b))
        {
            i += 32;
            continue;
        }
        let end = (i + 32).min(bytes.len());
        for j in i..end {
            // A wanted byte is always a lead byte: `j` is a char boundary.
            if bytes.get(j).is_some_and(|&b| wanted(b))
                && let Some(c) = text.get(j..).and_then(|t| t.chars().next())
                && folds(c)
            {
                return Some(j);
            }
        }
        i = end;
    }
    None
}

/// High bit of a map entry's original offset: the entry is one folded character (all
/// its folded bytes map to its start) rather than a run of copied bytes.
const FOLDED: u32 = 1 << 31;

/// A text in folded form, with the way back to the original's byte offsets.
#[derive(Debug, Clone)]
pub struct Folded<'t> {
    pub text: Cow<'t, str>,
    original_len: usize,
    /// `(folded offset, original offset | FOLDED)`, ascending. Empty when the text
    /// folds to itself. Sparse (one entry per change of shift), so the map costs at
    /// most 8 bytes per folded character, never 4 per byte.
    map: Vec<(u32, u32)>,
}

impl<'t> Folded<'t> {
    /// The folded view of `text`; borrowed, with no map, when nothing folds.
    pub fn of(text: &'t str) -> Folded<'t> {
        let first = next_fold(text, 0);
        let Some(first) = first else {
            return Folded {
                text: Cow::Borrowed(text),
                original_len: text.len(),
                map: Vec::new(),
            };
        };
        let mut out = String::with_capacity(text.len());
        let mut map = vec![(0, 0)];
        out.push_str(&text[..first]);
        let mut rest = &text[first..];
        let mut at = first;
        while !rest.is_empty() {
            // Copy the run of characters that fold to themselves in one go.
            let run = next_fold(rest, 0).unwrap_or(rest.len());
            if run > 0 {
                push_copy(&mut map, out.len(), at);
                out.push_str(&rest[..run]);
                at += run;
                rest = &rest[run..];
            }
            let Some(c) = rest.chars().next() else { break };
            let before = out.len();
            push_folded(c, &mut out);
            if out.len() > before {
                map.push((offset(before), offset(at) | FOLDED));
            }
            at += c.len_utf8();
            rest = &rest[c.len_utf8()..];
        }
        Folded {
            text: Cow::Owned(out),
            original_len: text.len(),
            map,
        }
    }

    /// Whether the folded text is the original itself.
    pub fn is_identity(&self) -> bool {
        self.map.is_empty()
    }

    /// The original offset of folded offset `at`: the start of the character that
    /// produced that byte (so a range maps to whole characters, and characters dropped
    /// just before `at` fall before it).
    pub fn original(&self, at: usize) -> usize {
        if self.map.is_empty() {
            return at;
        }
        if at >= self.text.len() {
            return self.original_len;
        }
        let i = self.map.partition_point(|&(n, _)| n as usize <= at);
        let Some(&(n, o)) = self.map.get(i.saturating_sub(1)) else {
            return at;
        };
        if o & FOLDED != 0 {
            (o & !FOLDED) as usize
        } else {
            o as usize + (at - n as usize)
        }
    }

    /// Bytes the map holds (for memory accounting in tests and benches).
    pub fn map_bytes(&self) -> usize {
        self.map.capacity() * std::mem::size_of::<(u32, u32)>()
    }
}

fn offset(i: usize) -> u32 {
    // Bodies are bounded far below 2 GiB by the sidecar's body limit.
    u32::try_from(i).unwrap_or(u32::MAX >> 1) & !FOLDED
}

fn push_copy(map: &mut Vec<(u32, u32)>, folded: usize, original: usize) {
    // A copy run that continues the previous one with the same shift needs no entry.
    if let Some(&(n, o)) = map.last()
        && o & FOLDED == 0
        && (o as usize).wrapping_sub(n as usize) == original.wrapping_sub(folded)
    {
        return;
    }
    map.push((offset(folded), offset(original)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folded(s: &str) -> String {
        Folded::of(s).text.into_owned()
    }

    #[test]
    fn folds_what_people_and_software_write() {
        assert_eq!(folded("1\u{a0}85\u{202f}05\u{2009}78"), "1 85 05 78");
        assert_eq!(
            folded("0\u{200b}6\u{200d}1\u{ad}2\u{feff}3\u{2060}4"),
            "061234"
        );
        assert_eq!(folded("１２３＠ｅｘ"), "123@ex");
        assert_eq!(folded("٠١٢٣٤٥٦٧٨٩ ०१२ 𝟏𝟐 ¹²³"), "0123456789 012 12 123");
        assert_eq!(folded("4\u{301}1\u{308}1"), "411");
        assert_eq!(folded("06\u{2011}12\u{2013}34"), "06-12-34");
        // Invisible letters and C1 controls (found by the attacker review).
        assert_eq!(folded("1\u{3164}8\u{115f}5\u{ffa0}0\u{85}5"), "1850\n5");
        assert_eq!(folded("4\u{fe0f}1\u{e0031}1"), "411");
        // French prose with nothing to fold is borrowed, not copied.
        let prose = "Le numéro de sécurité sociale « 1 85 » — voilà";
        let f = Folded::of("Le numéro de sécurité sociale « 1 85 » voilà");
        assert!(f.is_identity());
        assert!(!Folded::of(prose).is_identity(), "the em dash folds");
    }

    #[test]
    fn offsets_map_back_to_whole_original_characters() {
        let text = "tel ０６\u{200b}12 fin";
        let f = Folded::of(text);
        assert_eq!(f.text, "tel 0612 fin");
        let (s, e) = (4, 8);
        assert_eq!(&f.text[s..e], "0612");
        assert_eq!(&text[f.original(s)..f.original(e)], "０６\u{200b}12");
        assert_eq!(f.original(f.text.len()), text.len());
        assert_eq!(f.original(0), 0);
        // Every folded offset maps to a char boundary of the original, monotonically.
        let mut last = 0;
        for i in 0..=f.text.len() {
            let o = f.original(i);
            assert!(text.is_char_boundary(o) && o >= last);
            last = o;
        }
    }

    #[test]
    fn the_map_stays_sparse() {
        // Worst case for the map: a folded character after every ASCII one.
        let text = "1\u{200b}".repeat(10_000);
        let f = Folded::of(&text);
        assert_eq!(f.text.len(), 10_000);
        assert!(f.map_bytes() <= 8 * 10_001 * 2, "{}", f.map_bytes());
        assert!(f.map_bytes() + f.text.len() <= 4 * text.len());
    }
}
