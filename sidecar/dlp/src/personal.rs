//! Personal data in free text, as French administrative prose writes it: people named
//! after a civility or a role (`Mme Sophie Lefèvre`, `la plaignante Sophie Durand`,
//! `épouse Martin`), postal addresses (`12 bis rue des Lilas, 75011 Paris`,
//! `domiciliée à Lyon`) and dates of birth (a date in a birth context).
//!
//! Same engine as the identifiers: byte patterns both Hyperscan and `regex-automata`
//! read alike, validated in Rust. Civilities and role words are part of the match (they
//! are what makes a capitalised word a name) but are left in the text: the detector's
//! `lead` says how many bytes of a match are that context, and the finding starts after
//! them (`Mme <PERSON_1>`).
//!
//! Names written without a civility or a role (`Sophie Lefèvre a écrit`) are a second
//! `PERSON` detector: capitalised words one of which is a given name of the gazetteer
//! ([`crate::names`]). NER-grade recall is the external detectors' (ADR 0019).

use crate::detectors::{Detector, Level, Pattern};

/// An upper-case letter: ASCII or Latin-1 (À–Þ, not ×), or a letter of Latin
/// Extended-A/B (Ł, Ş, Ș: their case is not told apart here).
const UP: &str = "([A-Z]|\\xc3[\\x80-\\x96\\x98-\\x9e]|[\\xc4-\\xc9][\\x80-\\xbf])";

/// [`UP`] as four disjoint sets, for the names that have no civility before them: each
/// is found fast by Hyperscan alone (ASCII capitals by a byte class; the Latin-1
/// capitals as two lists of at most 16 literals; the lead bytes of Latin Extended,
/// rare in French), while one class that holds `\xc3` stops the scan at every `é` of
/// the text (bare names: 14 → 8.6 ms per 16 MiB of prose, `docs/BENCHMARKS.md`).
const UP_SETS: [&str; 4] = [
    "[A-Z]",
    "(\\xc3\\x80|\\xc3\\x81|\\xc3\\x82|\\xc3\\x83|\\xc3\\x84|\\xc3\\x85|\\xc3\\x86|\\xc3\\x87|\\xc3\\x88|\\xc3\\x89|\\xc3\\x8a|\\xc3\\x8b|\\xc3\\x8c|\\xc3\\x8d|\\xc3\\x8e)",
    "(\\xc3\\x8f|\\xc3\\x90|\\xc3\\x91|\\xc3\\x92|\\xc3\\x93|\\xc3\\x94|\\xc3\\x95|\\xc3\\x96|\\xc3\\x98|\\xc3\\x99|\\xc3\\x9a|\\xc3\\x9b|\\xc3\\x9c|\\xc3\\x9d|\\xc3\\x9e)",
    "[\\xc4-\\xc9][\\x80-\\xbf]",
];

/// What follows the capital of a [`word`].
const WORD_TAIL: &str = "[a-zA-Z'\\x80-\\xbf\\xc3-\\xc9\\xe1\\xe2-]+";

/// A word that starts with a capital (`Lefèvre`, `LEFÈVRE`, `Jean-Pierre`,
/// `Saint-Denis`). One flat class after the capital: nested groups here made the
/// compiled automata large and the scan slow.
fn word() -> String {
    // One byte class (Latin-1 letters are \xc3 and a continuation byte). Unbounded:
    // Hyperscan refuses the address pattern with bounded words; the checks refuse long
    // matches at once instead (a crafted 8 MiB "word" is then refused as too complex by
    // the start-recovery budget, not checked once per byte).
    // Continuation bytes, the lead bytes of Latin-1 and Latin Extended-A/B letters
    // (\xc3–\xc9), of Latin Extended Additional (\xe1: Vietnamese) and of the
    // typographic apostrophe (\xe2: `N’Diaye`).
    format!("{UP}{WORD_TAIL}")
}

/// Longest match the checks look at: a name, an address (civility and context
/// included). Longer ones are crafted.
const MAX_MATCH: usize = 200;

/// How particles are written inside French surnames (`de La Fontaine`, `d'Artagnan`,
/// `Le Goff`): lower-case `le`/`la` are articles (`M. le Préfet`), not particles.
const PARTICLE: &str = "(de |du |des |d'|d\u{2019}|de La |de Le |De |Du |Le |La |Van |van |von |Von |van der |Ben |ben |El |el )";

/// Civilities written out: also in lower case and in capitals (address blocks).
const CIVILITY_WORDS: &[&str] = &[
    "monsieur et madame",
    "mesdames",
    "messieurs",
    "mademoiselle",
    "madame",
    "monsieur",
    "maître",
    "docteur",
    "professeur",
];

/// Abbreviated civilities, as written (with or without their period).
const CIVILITIES: &[&str] = &[
    "M. et Mme",
    "Mmes",
    "Mlles",
    "Mme.",
    "Mme",
    "Mlle.",
    "Mlle",
    "Melle",
    "MM.",
    "M.",
    "Mr.",
    "Mr",
    "Me",
    "Dr.",
    "Dr",
    "Pr.",
    "Pr",
];

/// Role words of complaints, judgements and civil status that introduce a person.
pub(crate) const ROLES: &[&str] = &[
    "le requérant",
    "la requérante",
    "le plaignant",
    "la plaignante",
    "le mis en cause",
    "la mise en cause",
    "le demandeur",
    "la demanderesse",
    "le défendeur",
    "la défenderesse",
    "l'intéressé",
    "l'intéressée",
    "l\u{2019}intéressé",
    "l\u{2019}intéressée",
    "le défunt",
    "la défunte",
    "épouse",
    "époux",
    "veuve",
    "veuf",
    "née",
    "fils de",
    "fille de",
    "son fils",
    "sa fille",
    "son époux",
    "son épouse",
    "leur fils",
    "leur fille",
    "l'enfant",
    "l\u{2019}enfant",
    "l'étudiant",
    "l'étudiante",
    "l\u{2019}étudiant",
    "l\u{2019}étudiante",
    "la famille",
];

/// Fields of forms and civil-status extracts that a name follows (`Nom : CAMARA`).
const FIELDS: &[&str] = &[
    "nom",
    "nom d'usage",
    "nom de naissance",
    "nom de famille",
    "nom patronymique",
    "prénom",
    "prénoms",
    "prénom(s)",
];

/// Titles that follow a civility without being a name (`Monsieur Le Maire`).
const TITLES: &[&str] = &[
    "adjoint",
    "adjointe",
    "ambassadeur",
    "capitaine",
    "colonel",
    "commandant",
    "commissaire",
    "conseiller",
    "conseillère",
    "député",
    "directeur",
    "directrice",
    "docteur",
    "général",
    "gouverneur",
    "greffier",
    "juge",
    "lieutenant",
    "maire",
    "ministre",
    "notaire",
    "préfet",
    "préfète",
    "président",
    "présidente",
    "procureur",
    "professeur",
    "recteur",
    "rectrice",
    "secrétaire",
    "sénateur",
    "trésorier",
    "proviseur",
    "principal",
    "bâtonnier",
    "inspecteur",
    "inspectrice",
    "ambassadrice",
    "délégué",
    "déléguée",
    "premier",
    "première",
    "vice",
    "sous",
    // Form fields after a name (`Nom : CAMARA Prénom : Seydou`).
    "nom",
    "prénom",
    "prénoms",
    // Institutions after a role word (`Le défendeur, Ministère de l'Intérieur`).
    "ministère",
    "association",
    "société",
    "préfecture",
    "mairie",
    "commune",
    "tribunal",
    "cour",
    "conseil",
    "département",
    "région",
    "état",
    "État",
    "république",
    "agence",
    "office",
    "caisse",
    "direction",
    "service",
    "université",
    "hôpital",
    "centre",
];

/// Words that introduce a place of residence (`domiciliée à Lyon`).
const RESIDES: &[&str] = &[
    "domicilié",
    "domiciliée",
    "domicilié(e)",
    "domicilie",
    "domiciliee",
    "demeurant",
    "résidant",
    "residant",
    "hébergé",
    "hébergée",
    "hébergé(e)",
];

/// Types of way of the national address base (BAN), as people write them.
const WAYS: &[&str] = &[
    "rue",
    "avenue",
    "av.",
    "av",
    "r.",
    "boulevard",
    "bd",
    "bld",
    "place",
    "chemin",
    "allée",
    "allee",
    "impasse",
    "quai",
    "route",
    "lieu-dit",
    "cours",
    "square",
    "passage",
    "résidence",
    "residence",
    "cité",
    "hameau",
    "sentier",
    "voie",
    "villa",
    "rond-point",
    "chaussée",
    "faubourg",
    "promenade",
    "esplanade",
    "parvis",
    "montée",
    "traverse",
    "ruelle",
    "carrefour",
    "domaine",
    "lotissement",
];

/// The months, as written in full.
pub const MONTH_NAMES: [&str; 12] = [
    "janvier",
    "février",
    "mars",
    "avril",
    "mai",
    "juin",
    "juillet",
    "août",
    "septembre",
    "octobre",
    "novembre",
    "décembre",
];

/// Other ways to write them (without accents, abbreviated), with their number.
const MONTH_VARIANTS: &[(&str, u32)] = &[
    ("fevrier", 2),
    ("aout", 8),
    ("decembre", 12),
    ("janv.", 1),
    ("févr.", 2),
    ("fevr.", 2),
    ("fév.", 2),
    ("fév", 2),
    ("avr.", 4),
    ("juil.", 7),
    ("sept.", 9),
    ("oct.", 10),
    ("nov.", 11),
    ("déc.", 12),
    ("dec.", 12),
];

/// Every written month with its number, longest first (`févr.` before `fév`).
fn months() -> Vec<(&'static str, u32)> {
    let mut all: Vec<(&'static str, u32)> = MONTH_NAMES.iter().copied().zip(1..).collect();
    all.extend_from_slice(MONTH_VARIANTS);
    all.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    all
}

fn escape(s: &str) -> String {
    crate::detectors::escape_literal(s)
}

/// `s`, `S…` and `S…` in capitals: the ways a word starts a sentence or a heading.
fn cases(words: &[&str]) -> String {
    let mut forms = Vec::new();
    for w in words {
        let mut chars = w.chars();
        let capitalised: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        for form in [w.to_string(), capitalised, w.to_uppercase()] {
            let e = escape(&form);
            if !forms.contains(&e) {
                forms.push(e);
            }
        }
    }
    format!("({})", forms.join("|"))
}

/// Given names and a surname, or a surname alone: up to three words, a particle before
/// the last.
fn name() -> String {
    let w = word();
    // Initials stand for given names: `S. Lefèvre`, `J.-P. Dupont`.
    let initial = format!("{UP}\\.(-{UP}\\.)?");
    format!("(({w}|{initial}) ){{0,2}}{PARTICLE}?{w}")
}

fn detector(name: &str, patterns: Vec<String>, check: fn(&str) -> bool) -> Detector {
    Detector {
        name: name.to_string(),
        patterns: patterns.iter().map(|p| Pattern::parse(p)).collect(),
        caseless: false,
        check: Some(check),
        context: Vec::new(),
        level: Level::Personal,
        glue: false,
        lead: None,
        yields: true,
        sentence: false,
        not_after: None,
    }
}

/// PERSON, ADDRESS and DATE_OF_BIRTH.
pub fn detectors() -> Vec<Detector> {
    let civility = format!(
        "({}|{})",
        CIVILITIES
            .iter()
            .map(|c| escape(c))
            .collect::<Vec<_>>()
            .join("|"),
        cases(CIVILITY_WORDS)
    );
    let mut person = detector(
        "PERSON",
        vec![
            // Up to three spaces after the civility (typed twice, or aligned).
            format!("{civility} {{1,3}}{}", name()),
            format!("{}(, | ){}", cases(ROLES), name()),
            format!("{} ?: {}", cases(FIELDS), name()),
        ],
        person,
    );
    person.lead = Some(person_lead);

    let w = word();
    let number_or_word = format!("({w}|[0-9]{{1,4}})");
    let street_word = format!(
        "(de la |de l'|du |des |de |d'|l'|la |le |les |aux |au |en |sur |sous )?{number_or_word}"
    );
    let street = format!("{} {street_word}( {street_word}){{0,4}}", cases(WAYS));
    let city = format!(
        "{w}( {w}|[ -](sur|sous|en|lès|les|le|la|de|du|des|d'|l')[ -]?{w}){{0,2}}( (Cedex|CEDEX)( [0-9]{{1,2}})?)?"
    );
    let postcode = "[0-9]{2} ?[0-9]{3}";
    // What comes between a way and its postcode: building, flat, room, floor.
    let complement = ", ?(bât\\.?|bâtiment|Bât\\.?|Bâtiment|apt\\.?|Apt\\.?|appartement|app\\.?|chambre|porte|étage|escalier|esc\\.?|BP|CS) [A-Za-z0-9]{1,5}";
    let number = "[0-9]{1,4}( ?(bis|ter|quater|Bis|Ter|BIS|TER|[ABCabc]))?,? ";
    let mut address = detector(
        "ADDRESS",
        vec![
            format!("{number}{street}(,? {postcode} {city})?"),
            // Scanned from the postcode (digits are rarer than `place` or `route`).
            format!("{street}({complement}){{0,3}},? «{postcode} {city}"),
            format!("{} (à|a|au) {city}", cases(RESIDES)),
            // A lieu-dit or a residence without a type of way, then postcode and
            // commune (`Le Bourg, 23200 Aubusson`).
            format!("{w}( {w}){{0,3}}({complement}){{0,3}}, «{postcode} {city}"),
        ],
        address,
    );
    address.lead = Some(address_lead);

    let months = months()
        .iter()
        .map(|(m, _)| escape(m))
        .collect::<Vec<_>>()
        .join("|");
    let mut birth = detector(
        "DATE_OF_BIRTH",
        vec![
            "(0?[1-9]|[12][0-9]|3[01])[/. -](0?[1-9]|1[0-2])[/. -]((19|20)[0-9]{2}|[0-9]{2})"
                .to_string(),
            format!("(1er|0?[1-9]|[12][0-9]|3[01]) ({months}) (19|20)[0-9]{{2}}"),
            "(19|20)[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])".to_string(),
        ],
        date_of_birth,
    );
    birth.caseless = true;
    // Phrases, not `né` alone: a gate word opens a window the date patterns are
    // scanned in, and French is full of words ending in `né`/`née` (`année`, `donné`).
    birth.context = [
        "né le",
        "née le",
        "né(e) le",
        // A maiden name between: `née Vasilescu le 9 mai 1988`. Not `né` alone: a
        // context word of fewer than three letters cannot gate (it would turn gating
        // off for every context-led detector: `every_built_in_context_word_gates`).
        "née",
        "nés le",
        "nées le",
        "né à",
        "née à",
        "né(e) à",
        "né en",
        "née en",
        // Not `naissance` alone: `connaissance`, `reconnaissance`.
        "de naissance",
        "naissance :",
        "naissance:",
        "naissance le",
        "ddn",
        "date of birth",
        "born on",
        "born in",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    let w = word();
    let mut bare = detector(
        "PERSON",
        UP_SETS
            .iter()
            .map(|first| format!("{first}{WORD_TAIL} ({w} )?{PARTICLE}?{w}"))
            .collect(),
        crate::names::bare_person,
    );
    bare.not_after = Some(crate::names::after_place_word);
    crate::names::warm();
    vec![person, address, birth, bare]
}

/// Bytes of `value` that are its civility or role word and what follows it (kept in
/// the text); 0 when it starts with neither.
fn person_lead(value: &str) -> usize {
    // Called for every candidate: the lower-case words are built once.
    static LEADS: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
        CIVILITIES
            .iter()
            .map(|c| c.to_lowercase())
            .chain(CIVILITY_WORDS.iter().map(|c| (*c).to_string()))
            .chain(ROLES.iter().map(|r| (*r).to_string()))
            .chain(FIELDS.iter().map(|f| (*f).to_string()))
            .collect()
    });
    // The longest lead is 20 bytes: only the head of the value is lower-cased.
    let head = &value[..crate::engine::floor_boundary(value, 32)];
    let lower = head.to_lowercase();
    let known = LEADS
        .iter()
        .filter(|w| lower.starts_with(w.as_str()))
        .map(String::len)
        .max();
    match known {
        // Lower-casing keeps the byte length of these words (ASCII and Latin-1 letters).
        Some(n) if value.is_char_boundary(n) => n + skip_separators(&value[n..]),
        _ => 0,
    }
}

fn skip_separators(s: &str) -> usize {
    s.len() - s.trim_start_matches([' ', ',', ':']).len()
}

/// A word without the punctuation around it.
fn bare(w: &str) -> &str {
    w.trim_matches(|c: char| !c.is_alphanumeric())
}

/// A name after a civility, not a title (`Monsieur Le Maire`, `Madame Directrice`).
/// Runs for every candidate (crafted text offers one per word): no allocation.
fn person(value: &str) -> bool {
    if value.len() > MAX_MATCH {
        return false;
    }
    let rest = &value[person_lead(value).min(value.len())..];
    let is_title = |w: &str| TITLES.iter().any(|t| t.eq_ignore_ascii_case(bare(w)));
    // Articles and particles alone are not a name (`Monsieur Le` of `Monsieur Le Maire`).
    let is_particle = |w: &str| {
        [
            "le", "la", "les", "de", "du", "des", "van", "von", "ben", "el",
        ]
        .iter()
        .any(|p| p.eq_ignore_ascii_case(w))
    };
    // A civility inside is the next person (`Mme Martin de Mme Durand`).
    let is_civility = |w: &str| {
        let w = bare(w);
        CIVILITIES
            .iter()
            .any(|c| c.trim_end_matches('.').eq_ignore_ascii_case(w))
            || CIVILITY_WORDS.iter().any(|c| c.eq_ignore_ascii_case(w))
    };
    // A shorter reading cut inside a hyphenated word (`Le Sous-` of `Le Sous-Préfet`).
    let cut = rest.ends_with(['-', '\'']);
    !rest.is_empty()
        && !cut
        && !rest
            .split([' ', '-'])
            .any(|w| is_title(w) || is_civility(w))
        && !rest.split(' ').all(is_particle)
}

/// Bytes of `value` that are the words introducing a place of residence.
fn address_lead(value: &str) -> usize {
    let lower = value.to_lowercase();
    if !RESIDES.iter().any(|r| lower.starts_with(r)) {
        return 0;
    }
    // `domiciliée à Lyon`: the commune is what is personal.
    lower
        .find(" à ")
        .map(|i| i + " à ".len())
        .or_else(|| lower.find(" au ").map(|i| i + " au ".len()))
        .or_else(|| lower.find(" a ").map(|i| i + " a ".len()))
        .unwrap_or(0)
}

/// An address is a number or a postcode away from being a mere street name.
fn address(value: &str) -> bool {
    if value.len() > MAX_MATCH {
        return false;
    }
    let rest = &value[address_lead(value).min(value.len())..];
    !rest.is_empty()
}

/// A real calendar date, not in the future of any living person's birth.
fn date_of_birth(value: &str) -> bool {
    if value.len() > MAX_MATCH {
        return false;
    }
    let lower = value.to_lowercase();
    let month_named = months()
        .into_iter()
        .find(|(m, _)| lower.contains(m))
        .map(|(_, n)| n);
    let numbers: Vec<u32> = lower
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let (day, month, year) = match (month_named, numbers.as_slice()) {
        (Some(m), [y]) if lower.starts_with("1er") => (1, m, *y),
        (Some(m), [d, y]) => (*d, m, *y),
        (None, [y, m, d]) if *y >= 1000 => (*d, *m, *y),
        (None, [d, m, y]) => (*d, *m, if *y < 100 { 1900 + *y } else { *y }),
        _ => return false,
    };
    let days = match month {
        2 => 29,
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => 0,
    };
    (1..=days).contains(&day) && (1880..=this_year()).contains(&year)
}

/// The current year (UTC), near enough: a date of birth is not in the future.
fn this_year() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // 365.2425 days a year.
    u32::try_from(1970 + secs / 31_556_952).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civilities_and_roles_are_kept_out_of_the_name() {
        assert_eq!(person_lead("Mme Sophie Lefèvre"), "Mme ".len());
        assert_eq!(person_lead("M. et Mme Martin"), "M. et Mme ".len());
        assert_eq!(
            person_lead("la plaignante, Sophie Durand"),
            "la plaignante, ".len()
        );
        assert_eq!(person_lead("Épouse Martin"), "Épouse ".len());
        assert!(person("Mme Sophie Lefèvre"));
        assert!(!person("Monsieur Le Maire"));
        assert!(!person("Madame Directrice"));
        assert!(!person("Monsieur Le"));
    }

    #[test]
    fn dates_of_birth_are_real_dates() {
        assert!(date_of_birth("14/02/1987"));
        assert!(date_of_birth("14 février 1987"));
        assert!(date_of_birth("1er mars 1950"));
        assert!(date_of_birth("1987-02-14"));
        assert!(date_of_birth("14.02.87"));
        assert!(!date_of_birth("31/02/1987"));
        assert!(!date_of_birth("14/13/1987"));
        assert!(!date_of_birth("30 février 1987"));
    }

    #[test]
    fn residence_phrases_keep_their_verb() {
        assert_eq!(address_lead("domiciliée à Lyon"), "domiciliée à ".len());
        assert_eq!(address_lead("12 rue des Lilas"), 0);
    }
}
