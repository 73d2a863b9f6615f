//! Checksums and structural checks that turn a format match into a detection.
//! Each takes the matched text (separators included) and says whether it is real.

fn digits(s: &str) -> Vec<u32> {
    s.chars().filter_map(|c| c.to_digit(10)).collect()
}

/// Luhn (ISO/IEC 7812): cards, SIREN, SIRET.
pub fn luhn(ds: &[u32]) -> bool {
    let sum: u32 = ds
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    !ds.is_empty() && sum.is_multiple_of(10)
}

/// The digits of a number written with separators, and the separator before each
/// digit that has one: `(digit index, separator kind)`. A run of separators counts as
/// its first character that is not a parenthesis.
fn groups(s: &str) -> (Vec<u32>, Vec<(usize, char)>) {
    let mut ds = Vec::new();
    let mut gaps = Vec::new();
    let mut run: Option<char> = None;
    for c in s.chars() {
        match c.to_digit(10) {
            Some(d) => {
                if let Some(kind) = run.take()
                    && !ds.is_empty()
                {
                    gaps.push((ds.len(), kind));
                }
                ds.push(d);
            }
            None if c.is_ascii_alphabetic() => ds.push(u32::MAX),
            None => {
                let kind = if matches!(c, '(' | ')') { ' ' } else { c };
                run = Some(match run {
                    Some(' ') if kind != ' ' => kind,
                    Some(k) => k,
                    None => kind,
                });
            }
        }
    }
    (ds, gaps)
}

/// Whether a number's separators are written the way people group it: none, or one
/// kind of separator exactly at one of the `layouts` (digit indexes). A newline
/// anywhere lifts the rule: it is how texts read together (parts, messages) are
/// joined, and a value split across them is grouped wherever the split fell.
fn grouped(gaps: &[(usize, char)], layouts: &[&[usize]]) -> bool {
    if gaps.is_empty() || gaps.iter().any(|&(_, k)| matches!(k, '\n' | '\r')) {
        return true;
    }
    let kind = gaps[0].1;
    gaps.iter().all(|&(_, k)| k == kind)
        && layouts
            .iter()
            .any(|l| l.len() == gaps.len() && l.iter().zip(gaps).all(|(&i, &(g, _))| i == g))
}

/// Payment card: 13–19 digits, a known issuer prefix, Luhn, and separators written
/// as people write card numbers (none, or one kind between groups of four; Amex 4-6-5).
pub fn credit_card(s: &str) -> bool {
    let (ds, gaps) = groups(s);
    let fours: Vec<usize> = (1..5).map(|i| 4 * i).filter(|&i| i < ds.len()).collect();
    if !grouped(&gaps, &[&fours, &[4, 10]]) {
        return false;
    }
    if !(13..=19).contains(&ds.len()) || !luhn(&ds) || ds.iter().any(|&d| d > 9) {
        return false;
    }
    let prefix = |n: usize| ds.iter().take(n).fold(0u32, |a, d| a * 10 + d);
    match ds[0] {
        4 => matches!(ds.len(), 13 | 16 | 19),                 // Visa
        5 => (51..=55).contains(&prefix(2)) && ds.len() == 16, // Mastercard
        2 => (2221..=2720).contains(&prefix(4)) && ds.len() == 16, // Mastercard 2-series
        3 => {
            matches!(prefix(2), 34 | 37) && ds.len() == 15           // Amex
            || (3528..=3589).contains(&prefix(4)) && ds.len() >= 16   // JCB
            || matches!(prefix(2), 36 | 38 | 39) && ds.len() >= 14
        } // Diners
        6 => {
            prefix(4) == 6011 || prefix(2) == 65 || (644..=649).contains(&prefix(3)) // Discover
            || prefix(2) == 62
        } // UnionPay
        _ => false,
    }
}

/// French phone number: ten digits from 0 (or +33 / 0033 and nine digits), grouped
/// as people write them: none, pairs (`06 12 34 56 78`), 3-3-4 (`061 234 5678`), with
/// one kind of separator, the area code possibly in parentheses.
pub fn fr_phone(s: &str) -> bool {
    let national = s
        .strip_prefix("+33")
        .or_else(|| s.strip_prefix("0033"))
        .map(|rest| rest.trim_start_matches([' ', '.', '-', '/', '_', '\n']));
    match national {
        Some(rest) => {
            let rest = rest.strip_prefix("(0)").unwrap_or(rest);
            let (ds, gaps) = groups(rest);
            ds.len() == 9 && grouped(&gaps, &[&[1, 3, 5, 7]])
        }
        None => {
            let (ds, gaps) = groups(s);
            ds.len() == 10 && ds[0] == 0 && grouped(&gaps, &[&[2, 4, 6, 8], &[3, 6]])
        }
    }
}

/// French social security number (NIR): 13 digits + 2-digit key,
/// key = 97 − (N mod 97); Corsica's 2A / 2B count as 19 / 18 for the key.
pub fn fr_nir(s: &str) -> bool {
    let compact: String = s.chars().filter(char::is_ascii_alphanumeric).collect();
    if compact.len() != 15 {
        return false;
    }
    let body = &compact[..13];
    let key: u64 = match compact[13..].parse() {
        Ok(k) => k,
        Err(_) => return false,
    };
    let numeric = match &body[5..7] {
        "2A" | "2a" => format!("{}19{}", &body[..5], &body[7..]),
        "2B" | "2b" => format!("{}18{}", &body[..5], &body[7..]),
        _ => body.to_string(),
    };
    let Ok(n) = numeric.parse::<u64>() else {
        return false;
    };
    let month: u32 = body[3..5].parse().unwrap_or(0);
    // Months 20–42 and 50–99 exist (unknown or fictitious birth months).
    let month_ok = (1..=12).contains(&month) || (20..=42).contains(&month) || month >= 50;
    month_ok && (1..=97).contains(&key) && 97 - (n % 97) == key
}

/// IBAN length per country (ISO 13616 registry, common countries).
fn iban_length(country: &str) -> Option<usize> {
    Some(match country {
        "FR" | "MC" | "IT" | "SM" => 27,
        "DE" => 22,
        "ES" | "SE" | "SK" | "CZ" | "TN" => 24,
        "BE" => 16,
        "NL" => 18,
        "LU" | "AT" | "EE" | "LT" | "KZ" | "XK" | "BA" => 20,
        "CH" | "LI" | "LV" | "HR" => 21,
        "GB" | "IE" | "BG" | "BH" | "GE" | "ME" | "RS" => 22,
        "PT" | "GR" | "MA" | "RO" | "SA" => 25,
        "PL" | "HU" | "CY" | "LB" | "AL" | "DO" | "AZ" | "GT" | "SV" | "BY" => 28,
        "DK" | "FI" | "FO" | "GL" => 18,
        "NO" => 15,
        "SI" | "MK" => 19,
        "IS" | "TR" => 26,
        "MT" | "MU" => 30,
        "IL" | "AE" | "TL" => 23,
        "BR" | "PS" | "QA" | "UA" | "JO" | "KW" => 29,
        _ => return None,
    })
}

/// IBAN: known country length and ISO 7064 mod-97 = 1.
pub fn iban(s: &str) -> bool {
    // Runs on every candidate a run of letters and digits offers (hundreds in a long
    // identifier): the country and the length are checked before any arithmetic, and
    // nothing is allocated.
    let mut chars = s.bytes().filter(u8::is_ascii_alphanumeric);
    let (Some(a), Some(b)) = (chars.next(), chars.next()) else {
        return false;
    };
    let country = [a.to_ascii_uppercase(), b.to_ascii_uppercase()];
    let Some(len) = std::str::from_utf8(&country).ok().and_then(iban_length) else {
        return false;
    };
    if chars.count() + 2 != len {
        return false;
    }
    // ISO 7064: the first four characters moved to the end, letters as 10–35.
    let compact = s.bytes().filter(u8::is_ascii_alphanumeric);
    let mut rem: u32 = 0;
    for c in compact.clone().skip(4).chain(compact.take(4)) {
        let v = match c {
            b'0'..=b'9' => u32::from(c - b'0'),
            _ => u32::from(c.to_ascii_uppercase() - b'A') + 10,
        };
        rem = if v >= 10 {
            (rem * 100 + v) % 97
        } else {
            (rem * 10 + v) % 97
        };
    }
    rem == 1
}

/// SIREN: 9 digits, Luhn.
pub fn fr_siren(s: &str) -> bool {
    let ds = digits(s);
    ds.len() == 9 && luhn(&ds) && ds.iter().any(|&d| d != 0)
}

/// SIRET: 14 digits, Luhn — except La Poste (SIREN 356 000 000), whose
/// establishments are numbered so that the digit sum is a multiple of 5.
pub fn fr_siret(s: &str) -> bool {
    let ds = digits(s);
    if ds.len() != 14 || ds.iter().all(|&d| d == 0) {
        return false;
    }
    if ds[..9] == [3, 5, 6, 0, 0, 0, 0, 0, 0] {
        return ds.iter().sum::<u32>().is_multiple_of(5);
    }
    luhn(&ds)
}

/// Intra-community VAT number: FR + 2-digit key + SIREN,
/// key = (12 + 3 × (SIREN mod 97)) mod 97.
pub fn fr_tva(s: &str) -> bool {
    let compact: String = s.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    if compact.len() != 13 || !compact[..2].eq_ignore_ascii_case("FR") {
        return false;
    }
    let (Ok(key), Ok(siren)) = (compact[2..4].parse::<u64>(), compact[4..].parse::<u64>()) else {
        return false;
    };
    fr_siren(&compact[4..]) && (12 + 3 * (siren % 97)) % 97 == key
}

/// Numéro fiscal (SPI): 13 digits starting 0–3; the last 3 digits are the first 10 mod 511.
pub fn fr_nif(s: &str) -> bool {
    let compact: String = s.chars().filter(char::is_ascii_digit).collect();
    if compact.len() != 13 || !matches!(compact.as_bytes()[0], b'0'..=b'3') {
        return false;
    }
    let (Ok(n), Ok(key)) = (compact[..10].parse::<u64>(), compact[10..].parse::<u64>()) else {
        return false;
    };
    n % 511 == key
}

pub fn ipv4(s: &str) -> bool {
    s.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| {
        // Version-like strings (1.2.3.4 in "v1.2.3.4") are cut by boundaries; reject
        // leading zeros, which addresses in prose never have.
        !s.split('.').any(|o| o.len() > 1 && o.starts_with('0')) && !ip.is_unspecified()
    })
}

pub fn ipv6(s: &str) -> bool {
    s.contains(':') && s.matches(':').count() >= 2 && s.parse::<std::net::Ipv6Addr>().is_ok()
}

/// SIV plates (AA-123-AA): letters I, O and U are never used, nor the pairs SS and WW
/// on the left or SS on the right, nor 000.
pub fn fr_plate_siv(s: &str) -> bool {
    let compact: String = s.chars().filter(char::is_ascii_alphanumeric).collect();
    if compact.len() != 7 {
        return false;
    }
    let (left, num, right) = (&compact[..2], &compact[2..5], &compact[5..]);
    let letters_ok = |p: &str| {
        p.chars()
            .all(|c| c.is_ascii_uppercase() && !"IOU".contains(c))
    };
    letters_ok(left)
        && letters_ok(right)
        && num != "000"
        && left != "SS"
        && left != "WW"
        && right != "SS"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_accept_valid_and_reject_one_digit_off() {
        // Generated with the documented algorithms (not real people or companies).
        assert!(fr_nir("1 85 05 78 006 084 91"));
        assert!(fr_nir("185057800608491"));
        assert!(!fr_nir("185057800608492"));
        assert!(fr_nir("2 69 05 2A 006 084 90"));
        assert!(!fr_nir("2 69 05 2B 006 084 90"));
        assert!(iban("FR76 3000 6000 0112 3456 7890 189"));
        assert!(iban("FR7630006000011234567890189"));
        assert!(!iban("FR7630006000011234567890188"));
        assert!(iban("DE89 3704 0044 0532 0130 00"));
        assert!(!iban("DE89 3704 0044 0532 0130 0"));
        assert!(credit_card("4111 1111 1111 1111"));
        assert!(credit_card("5555 5555 5555 4444"));
        assert!(credit_card("2223 0000 4841 0010"));
        assert!(!credit_card("4111 1111 1111 1112"));
        // Mixed or misplaced separators: a UUID tail, not a card.
        assert!(!credit_card("4111-111111111111"));
        assert!(!credit_card("4111 1111-1111 1111"));
        assert!(credit_card("4111.1111.1111.1111") && credit_card("4111/1111/1111/1111"));
        // Joined parts: a newline anywhere lifts the grouping rule, not the checksum.
        assert!(credit_card("4111 11\n11 1111 1111") && !credit_card("4111 11\n11 1111 1112"));
        assert!(fr_phone("06 12 34 56 78") && fr_phone("0612345678") && fr_phone("061 234 5678"));
        assert!(
            fr_phone("(06) 12 34 56 78")
                && fr_phone("06/12/34/56/78")
                && fr_phone("06.12.34.56.78")
        );
        assert!(
            fr_phone("+33 6 12 34 56 78")
                && fr_phone("+33 (0)6 12 34 56 78")
                && fr_phone("0033612345678")
        );
        // A date and a time are not a phone number.
        assert!(!fr_phone("01/02/2023 12") && !fr_phone("06 12-34 56 78"));
        assert!(fr_nir("1.85.05.78.006.084.91") && fr_nir("1-85-05-78-006-084-91"));
        assert!(
            iban("fr76 3000 6000 0112 3456 7890 189") && iban("FR76-3000-6000-0112-3456-7890-189")
        );
        assert!(credit_card("3782 822463 10005"));
        assert!(fr_siren("732 829 320"));
        assert!(!fr_siren("732 829 321"));
        assert!(fr_siret("732 829 320 00074"));
        assert!(fr_siret("35600000000047"));
        assert!(!fr_siret("35600000000048"));
        assert!(fr_tva("FR44732829320"));
        assert!(!fr_tva("FR45732829320"));
        assert!(ipv4("192.168.1.20") && !ipv4("999.1.1.1") && !ipv4("01.2.3.4"));
        assert!(ipv6("2001:db8::8a2e:370:7334") && !ipv6("12:30"));
        assert!(
            fr_plate_siv("AB-123-CD") && !fr_plate_siv("AI-123-CD") && !fr_plate_siv("AB-000-CD")
        );
    }

    #[test]
    fn nif_key() {
        // 10 digits, then their value mod 511 on 3 digits.
        let body = 1_234_567_890u64;
        let s = format!("{body:010}{:03}", body % 511);
        assert!(fr_nif(&s));
        let wrong = format!("{body:010}{:03}", (body + 1) % 511);
        assert!(!fr_nif(&wrong));
    }
}
