//! Names written without a civility or a role (`Sophie Lefèvre a écrit`, `LEFÈVRE
//! Sophie`, `signé Karim Benali`): two or three capitalised words, one of them a given
//! name of the gazetteer and the others surname-shaped. Surnames are recognised by
//! position and capitalisation, never by a list (ADR 0019).
//!
//! The gazetteer (`data/given_names.txt`, 33,438 names from Faker and @faker-js/faker,
//! MIT, plus a hand-written supplement; provenance in `data/README.md`) is held as one
//! sorted lower-case string with offsets (~400 KB), read with a binary search: no hash
//! set of 33,000 small strings in every pod.

use std::sync::LazyLock;

/// Lower-case names, sorted, each ending with `\n`, and where each starts.
struct Gazetteer {
    text: String,
    starts: Vec<u32>,
}

impl Gazetteer {
    fn of(list: &str) -> Self {
        let mut names: Vec<String> = list
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(key)
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut text = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        let mut starts = Vec::with_capacity(names.len());
        for n in names {
            starts.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
            text.push_str(&n);
            text.push('\n');
        }
        Self { text, starts }
    }

    fn name(&self, i: usize) -> &str {
        let from = self.starts.get(i).map_or(0, |&s| s as usize);
        let rest = self.text.get(from..).unwrap_or("");
        rest.split('\n').next().unwrap_or("")
    }

    fn contains(&self, key: &str) -> bool {
        let (mut lo, mut hi) = (0, self.starts.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.name(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return true,
            }
        }
        false
    }
}

static GIVEN: LazyLock<Gazetteer> =
    LazyLock::new(|| Gazetteer::of(include_str!("../data/given_names.txt")));
/// Given names that are also French words or places (`Pierre`, `Rose`, `Florence`).
static AMBIGUOUS: LazyLock<Gazetteer> =
    LazyLock::new(|| Gazetteer::of(include_str!("../data/ambiguous_given_names.txt")));

/// How names are looked up: lower case, typographic apostrophe as ASCII.
fn key(w: &str) -> String {
    w.to_lowercase().replace('\u{2019}', "'")
}

/// A given name of the gazetteer, whole or as hyphenated given names (`Anne-Sophie`).
pub fn is_given(word: &str) -> bool {
    let k = key(word);
    GIVEN.contains(&k)
        || (k.contains('-') && k.split('-').all(|p| !p.is_empty() && GIVEN.contains(p)))
}

/// A given name that is also a common word or a place (`Pierre`, `Rose`, `Florence`).
pub fn is_ambiguous(word: &str) -> bool {
    AMBIGUOUS.contains(&key(word))
}

/// Loads both lists (a few milliseconds): called when the engine is built, so the
/// first request does not pay for it.
pub fn warm() {
    LazyLock::force(&GIVEN);
    LazyLock::force(&AMBIGUOUS);
}

/// Capitalised words that are not names where a sentence, a heading or a letter puts
/// them (lower case).
const NOT_NAMES: &[&str] = &[
    // Function words and sentence openers.
    "le",
    "la",
    "les",
    "l'",
    "un",
    "une",
    "des",
    "du",
    "de",
    "d'",
    "au",
    "aux",
    "et",
    "ou",
    "en",
    "sur",
    "sous",
    "pour",
    "par",
    "avec",
    "dans",
    "chez",
    "ce",
    "cet",
    "cette",
    "ces",
    "mon",
    "ma",
    "mes",
    "son",
    "sa",
    "ses",
    "notre",
    "votre",
    "nos",
    "vos",
    "leur",
    "leurs",
    "je",
    "tu",
    "il",
    "elle",
    "nous",
    "vous",
    "ils",
    "elles",
    "on",
    "qui",
    "que",
    "quoi",
    "si",
    "mais",
    "donc",
    "car",
    "ni",
    "or",
    "depuis",
    "selon",
    "après",
    "avant",
    "suite",
    "concernant",
    "veuillez",
    "merci",
    "bonjour",
    "bonsoir",
    "cordialement",
    "objet",
    "réf",
    "ref",
    "copie",
    "pièce",
    "pièces",
    "annexe",
    "article",
    "alinéa",
    "chapitre",
    "titre",
    "section",
    "note",
    "nota",
    "attention",
    "urgent",
    "rappel",
    "cher",
    "chère",
    "chers",
    "chères",
    "salut",
    "tous",
    "toutes",
    "tout",
    "toute",
    "aucun",
    "aucune",
    "signé",
    "signée",
    "fait",
    "lu",
    "approuvé",
    "nom",
    "prénom",
    "prénoms",
    "adresse",
    "date",
    "lieu",
    "né",
    "née",
    "sexe",
    "nationalité",
    "profession",
    "dossier",
    "demande",
    // Days (months: `personal::MONTH_NAMES`).
    "lundi",
    "mardi",
    "mercredi",
    "jeudi",
    "vendredi",
    "samedi",
    "dimanche",
    // Civilities and titles.
    "monsieur",
    "madame",
    "mademoiselle",
    "messieurs",
    "mesdames",
    "mme",
    "mlle",
    "m",
    "mr",
    "me",
    "dr",
    "pr",
    "melle",
    "mmes",
    "mlles",
    "mm",
    "ms",
    "mrs",
    "miss",
    "sir",
    "lady",
    "épouse",
    "époux",
    "veuve",
    "veuf",
    "fils",
    "fille",
    "requérant",
    "requérante",
    "plaignant",
    "plaignante",
    "défunt",
    "défunte",
    "demandeur",
    "défendeur",
    "intéressé",
    "intéressée",
    "maître",
    "docteur",
    "professeur",
    "préfet",
    "préfète",
    "maire",
    "ministre",
    "président",
    "présidente",
    "directeur",
    "directrice",
    "juge",
    "procureur",
    "général",
    "générale",
    "commissaire",
    "capitaine",
    "colonel",
    "lieutenant",
    "sergent",
    "adjudant",
    "saint",
    "sainte",
    "st",
    "ste",
    // Institutions, places and common capitalised nouns of administrative text.
    "ministère",
    "préfecture",
    "sous-préfecture",
    "mairie",
    "tribunal",
    "cour",
    "conseil",
    "direction",
    "service",
    "services",
    "république",
    "état",
    "france",
    "française",
    "français",
    "europe",
    "européenne",
    "union",
    "nations",
    "unies",
    "assemblée",
    "nationale",
    "national",
    "sénat",
    "gouvernement",
    "agence",
    "office",
    "caisse",
    "université",
    "lycée",
    "collège",
    "école",
    "hôpital",
    "centre",
    "institut",
    "fondation",
    "association",
    "société",
    "groupe",
    "banque",
    "police",
    "gendarmerie",
    "justice",
    "intérieur",
    "travail",
    "santé",
    "éducation",
    "culture",
    "défense",
    "rue",
    "avenue",
    "boulevard",
    "place",
    "quai",
    "allée",
    "impasse",
    "chemin",
    "route",
    "cedex",
    "paris",
    "lyon",
    "marseille",
    "internet",
    "google",
    "microsoft",
    "word",
    "excel",
    "teams",
    "outlook",
];

/// Words before a name that make it a place or an institution named after someone
/// (`lycée Victor Hugo`, `rue Jean Moulin`, `la Rose Blanche`): lower case.
const NOT_AFTER: &[&str] = &[
    "lycée",
    "collège",
    "école",
    "université",
    "faculté",
    "institut",
    "rue",
    "avenue",
    "boulevard",
    "bd",
    "place",
    "quai",
    "allée",
    "impasse",
    "chemin",
    "square",
    "cours",
    "pont",
    "gare",
    "station",
    "métro",
    "stade",
    "gymnase",
    "salle",
    "hôpital",
    "chu",
    "clinique",
    "centre",
    "fondation",
    "musée",
    "prix",
    "promotion",
    "médiathèque",
    "bibliothèque",
    "théâtre",
    "résidence",
    "cité",
    "parc",
    "jardin",
    "piscine",
    "caserne",
    "établissement",
    "hôtel",
    "aéroport",
    "port",
    "église",
    "cathédrale",
    "basilique",
    "chapelle",
    "mosquée",
    "synagogue",
    "temple",
    "saint",
    "sainte",
    "le",
    "la",
    "les",
    "un",
    "une",
    "des",
    "ce",
    "cette",
    "navire",
    "porte-avions",
    "opération",
    "plan",
    "loi",
    "amendement",
    "rapport",
    "cabinet",
    "espace",
    "maison",
    "villa",
];

fn letters(w: &str) -> impl Iterator<Item = char> + '_ {
    w.chars().filter(|c| c.is_alphabetic())
}

/// A surname written in capitals (`LEFÈVRE`, `N'DIAYE`): at least two letters.
fn in_capitals(w: &str) -> bool {
    letters(w).count() >= 2 && letters(w).all(char::is_uppercase)
}

fn not_a_name(w: &str) -> bool {
    let lower = key(w.trim_end_matches(['.', ',']));
    NOT_NAMES.contains(&lower.as_str()) || crate::personal::MONTH_NAMES.contains(&lower.as_str())
}

/// Particles inside surnames (`de La Fontaine`).
fn particle(w: &str) -> bool {
    matches!(
        w,
        "de" | "du"
            | "des"
            | "De"
            | "Du"
            | "Le"
            | "La"
            | "Van"
            | "van"
            | "von"
            | "Von"
            | "der"
            | "Ben"
            | "ben"
            | "El"
            | "el"
    ) || w.starts_with("d'")
        || w.starts_with("d\u{2019}")
}

/// A name without civility: given names then a surname (`Sophie Lefèvre`, `Jean
/// Pierre Dupont`, `Awa Sow`), or a surname in capitals then given names (`LEFÈVRE
/// Sophie`, `PHAM Thu Hà`). Runs for every pair of capitalised words: no allocation
/// beyond the lower-cased lookups.
pub fn bare_person(value: &str) -> bool {
    if value.len() > 120 {
        return false;
    }
    let words: Vec<&str> = value.split(' ').filter(|w| !particle(w)).collect();
    if words.len() < 2 || words.iter().any(|w| not_a_name(w)) {
        return false;
    }
    let (first, rest) = (words[0], &words[1..]);
    // A surname in capitals, then given names.
    if in_capitals(first) && rest.iter().all(|w| !in_capitals(w) && is_given(w)) {
        return true;
    }
    // Given names, then a surname (any capitalised word, in capitals or not).
    let Some((_, middle)) = rest.split_last() else {
        return false;
    };
    // `Guillaume Robin`, `Marc Olivier`: two given names that are also words are a
    // person here (measured on the hand-written corpus: no false positive, 3 names
    // found); the place words before them (`not_after`) and capitalisation keep `une
    // pierre`, `la Rose Blanche` out.
    is_given(first) && middle.iter().all(|w| is_given(w) || in_capitals(w))
}

/// Whether `text` names someone without civility: two capitalised words in a row that
/// [`bare_person`] takes for a name.
pub fn names_a_person(text: &str) -> bool {
    let word = |w: &&str| w.chars().next().is_some_and(char::is_uppercase);
    let words: Vec<&str> = text
        .split(|c: char| !(c.is_alphabetic() || c == '-' || c == '\'' || c == '\u{2019}'))
        .filter(|w| !w.is_empty())
        .collect();
    // Two given names that are also words (`Rose Blanche`, `Pierre Noire`) are not
    // enough to open a special category: a cue must be unambiguous.
    words.windows(2).any(|pair| {
        pair.iter().all(word) && !pair.iter().all(|w| is_ambiguous(w)) && {
            let mut two = String::with_capacity(pair[0].len() + pair[1].len() + 1);
            two.push_str(pair[0]);
            two.push(' ');
            two.push_str(pair[1]);
            bare_person(&two)
        }
    })
}

/// Whether the word before a name makes it a place or an institution: `before` is the
/// text right before the match.
pub fn after_place_word(before: &str) -> bool {
    let trimmed = before.trim_end_matches([' ', '\u{a0}']);
    if trimmed.len() == before.len() && !before.is_empty() {
        // Glued to the word before: not a word boundary the pattern would accept.
        return false;
    }
    let word_start = trimmed
        .char_indices()
        .rev()
        .find(|(_, c)| !(c.is_alphabetic() || *c == '-'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let word = key(&trimmed[word_start..]);
    NOT_AFTER.contains(&word.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gazetteer_is_read_case_blind() {
        for n in [
            "Sophie",
            "sophie",
            "JEAN-PIERRE",
            "Aïcha",
            "Fatoumata",
            "Anne-Sophie",
        ] {
            assert!(is_given(n), "{n}");
        }
        assert!(!is_given("Ministère"));
        assert!(is_ambiguous("Pierre") && is_ambiguous("rose"));
        assert!(!is_ambiguous("Sophie"));
    }

    #[test]
    fn bare_names_in_the_forms_administrations_write() {
        for n in [
            "Sophie Lefèvre",
            "Sophie LEFÈVRE",
            "LEFÈVRE Sophie",
            "Jean Pierre Dupont",
            "Karim Benali",
            "Pierre Dumont",
            "Jean-Pierre de La Fontaine",
        ] {
            assert!(bare_person(n), "{n}");
        }
        for n in [
            "Bonjour Sophie",
            "Monsieur Dupont",
            "Ministère Intérieur",
            "Paris Lyon",
            "Lundi Matin",
            "Sophie",
        ] {
            assert!(!bare_person(n), "{n}");
        }
    }

    #[test]
    fn a_place_word_before_the_name_makes_it_a_place() {
        assert!(after_place_word("au lycée "));
        assert!(after_place_word("12 rue "));
        assert!(after_place_word("la "));
        assert!(!after_place_word("le dossier de "));
        assert!(!after_place_word(""));
        assert!(!after_place_word("Signé : "));
    }
}
