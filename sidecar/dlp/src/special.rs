//! Special categories of personal data (GDPR art. 9 and 10) in French prose, as
//! administrative text reveals them about a person: `HEALTH`, `RELIGION`,
//! `POLITICAL_OPINION`, `UNION_MEMBERSHIP`, `SEXUAL_ORIENTATION` (gender identity
//! included), `ETHNIC_ORIGIN` and `CRIMINAL_RECORD`.
//!
//! Each detector matches key phrases (`diabétique`, `atteinte d'un cancer`, `de
//! confession musulmane`, `délégué syndical`, `d'origine maghrébine`, `placé en garde
//! à vue`), specific enough not to be ordinary words: `condamné à`, not `condamné`;
//! `détenu à la maison d'arrêt`, not `détenu`; `est catholique`, not `catholique` (the
//! `Université catholique`). They are matched in any case, with or without their
//! accents (typed without, or decomposed: combining marks fold away), with either
//! apostrophe, a hyphen as a space or nothing, and `(e)` endings as forms write them
//! (`atteint(e)`). A verb that only carries an adjective (`est` of `est catholique`,
//! `été` of `a été condamné à`) stays in the text, like a civility before a name.
//!
//! **False positives: a person must be designated earlier in the same sentence.** A
//! phrase counts only when one of the context words — a civility (`M.`, `Mme`, `Dr`,
//! `Madame`…), a role word (`le requérant`, `l'intéressée`, `le salarié`, `la
//! patiente`, `l'élève`…), a relative (`son fils`, `ma fille`, `son épouse`…) or a
//! personal pronoun (`il`, `elle`, `ils`, `elles`, `je`…) — is in the same sentence,
//! before it, as a whole word (`il` is not in `ville`), at most
//! [`crate::engine::CONTEXT_WINDOW`] bytes before it ([`Detector::sentence`]). A
//! sentence ends at a line break, and at `!`, `?`, `;` or `.` followed by a space — a
//! `.` only after a number or a word of four letters or more (`M.`, `Mme.`, `Dr.`,
//! `art.`, `n°.`, `J.` end nothing; nor do `Mlle.`, `janv.`). So general statements
//! are left alone (`la politique de santé`, `les organisations syndicales`, `le
//! casier judiciaire national`, `la liberté religieuse`, `les détenus`), while
//! `Mme Sophie Lefèvre, diabétique, …` and `Il est diabétique.` are found.
//!
//! Earlier only, not after: exact streaming releases text as soon as nothing can still
//! match, and the engine never waits for the text after a match to decide about it —
//! so a person named only after the phrase (`Diabétique, M. Martin demande…`) does not
//! count. Not found either: a person designated only by a name without civility
//! (`Sophie Lefèvre est diabétique`), plurals (`les salariés syndiqués`), and a cue
//! more than [`crate::engine::CONTEXT_WINDOW`] bytes back in a long sentence.
//!
//! These are matches in free prose (`yields`): an identifier they overlap wins.

use std::fmt::Write as _;

use crate::detectors::{Detector, Level, Pattern};

/// A word after a preposition that names what the phrase is about (`maladie de
/// Parkinson`, `syndiqué chez Solidaires`): letters (Latin-1 and Latin Extended
/// included), digits, hyphens.
const WORD: &str = "[A-Za-z0-9\\x80-\\xbf\\xc3-\\xc9-]+";

/// Civilities, whole words in lower case (the window is lower-cased; `Me` is also the
/// pronoun `me`, which designates a person too).
const CIVILITIES: &[&str] = &[
    "m.",
    "mme",
    "mlle",
    "melle",
    "mmes",
    "mlles",
    "mr",
    "me",
    "dr",
    "pr",
    "monsieur",
    "madame",
    "mademoiselle",
    "maître",
    "docteur",
    "professeur",
];

/// Role words of administrative text that designate one person, besides the role
/// words before names ([`crate::personal::ROLES`], also cues here).
const ROLES: &[&str] = &[
    "l'agent",
    "le salarié",
    "la salariée",
    "l'usager",
    "l'usagère",
    "le patient",
    "la patiente",
    "l'élève",
    "le candidat",
    "la candidate",
    "le prévenu",
    "la prévenue",
    "l'accusé",
    "l'accusée",
    "le détenu",
    "la détenue",
    "la victime",
    "le bénéficiaire",
    "la bénéficiaire",
    "l'allocataire",
    "l'assuré",
    "l'assurée",
    "le locataire",
    "la locataire",
    "l'employé",
    "l'employée",
    "le fonctionnaire",
    "la fonctionnaire",
    "le stagiaire",
    "la stagiaire",
    "le mineur",
    "la mineure",
    "le majeur protégé",
    "la majeure protégée",
    "le résident",
    "la résidente",
    "le conjoint",
    "la conjointe",
    "l'époux",
    "l'épouse",
    "le père",
    "la mère",
    "le fils",
    "la fille",
    "le frère",
    "la sœur",
    "le mari",
    "le compagnon",
    "la compagne",
    "le concubin",
    "la concubine",
];

/// Possessives before a relative (`son fils`, `ma fille`).
const POSSESSIVES: &[&str] = &["son", "sa", "mon", "ma", "leur", "notre", "votre"];

const RELATIVES: &[&str] = &[
    "fils",
    "fille",
    "enfant",
    "époux",
    "épouse",
    "mari",
    "femme",
    "conjoint",
    "conjointe",
    "compagnon",
    "compagne",
    "père",
    "mère",
    "frère",
    "sœur",
    "grand-père",
    "grand-mère",
    "oncle",
    "tante",
    "neveu",
    "nièce",
    "cousin",
    "cousine",
];

/// Personal pronouns and words that take up a person already named.
const PRONOUNS: &[&str] = &[
    "il",
    "elle",
    "ils",
    "elles",
    "lui",
    "je",
    "j'",
    "moi",
    "celui-ci",
    "celle-ci",
    "ce dernier",
    "cette dernière",
    "ses enfants",
    "ses parents",
    "mes enfants",
    "mes parents",
    "leurs enfants",
];

/// Verbs that carry an adjective that would be ambiguous alone (`est catholique`),
/// and the auxiliaries of `a été condamné`: a match may start with one, which stays in
/// the text.
const LEADS: &[&str] = &[
    "se présente comme",
    "se définit comme",
    "se revendique",
    "se déclare",
    "se disant",
    "se dit",
    "devenue",
    "devenu",
    "serait",
    "était",
    "étant",
    "être",
    "sera",
    "soit",
    "est",
    "été",
    "déjà",
];

/// The copulas of [`LEADS`]: allowed before every phrase (`est diabétique`), needed
/// before the adjectives ambiguous alone (`est catholique`). The auxiliaries are part
/// of their own phrases (`été condamné`).
const COPULAS: &[&str] = &[
    "se présente comme",
    "se définit comme",
    "se revendique",
    "se déclare",
    "se disant",
    "se dit",
    "devenu(e)",
    "serait",
    "était",
    "étant",
    "être",
    "sera",
    "soit",
    "est",
];

/// Possessives before what a person has (`son cancer`, `sa religion`, `votre handicap`
/// in a letter to the person).
const HIS: &[&str] = &[
    "son", "sa", "ses", "leur", "leurs", "votre", "vos", "mon", "ma", "mes",
];

/// The letter without its accent, for the accented letters of French.
fn unaccented(c: char) -> Option<&'static str> {
    Some(match c {
        'à' | 'â' | 'ä' => "a",
        'ç' => "c",
        'é' | 'è' | 'ê' | 'ë' => "e",
        'î' | 'ï' => "i",
        'ô' | 'ö' => "o",
        'ù' | 'û' | 'ü' => "u",
        'ÿ' => "y",
        'œ' => "oe",
        'æ' => "ae",
        _ => return None,
    })
}

/// A non-ASCII character of a phrase: itself, in capitals, and without its accent
/// (case-insensitivity is ASCII-only in both engines).
fn accented(c: char, out: &mut String) {
    out.push('(');
    out.push(c);
    if c.is_lowercase() {
        out.push('|');
        out.extend(c.to_uppercase());
    }
    if let Some(bare) = unaccented(c) {
        out.push('|');
        out.push_str(bare);
    }
    out.push(')');
}

/// One phrase as a pattern of these (caseless) detectors: accented letters also in
/// capitals and without accent; an apostrophe either one; a hyphen also a space or
/// nothing; `(e)`, `(le)`, `(ne)`… an optional ending, also as written (`atteint(e)`).
fn phrase(p: &str) -> String {
    let mut out = String::with_capacity(3 * p.len());
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            '(' => {
                let ending: String = chars.by_ref().take_while(|&x| x != ')').collect();
                let e = phrase(&ending);
                let _ = write!(out, "({e}|\\({e}\\))?");
            }
            '\'' | '\u{2019}' => out.push_str("('|\u{2019})"),
            '-' => out.push_str("[ -]?"),
            c if c.is_ascii_alphanumeric() || c == ' ' => out.push(c),
            c if c.is_ascii() => {
                out.push('\\');
                out.push(c);
            }
            c => accented(c, &mut out),
        }
    }
    out
}

/// Phrases as one alternation.
fn any(phrases: &[&str]) -> String {
    let forms: Vec<String> = phrases.iter().map(|p| phrase(p)).collect();
    format!("({})", forms.join("|"))
}

/// What a person has, after a possessive (`son cancer`).
fn possessive(things: &[&str]) -> String {
    format!("{} {}", any(HIS), any(things))
}

/// A detector of this module: one pattern — its `phrases`, a copula allowed before
/// them (`est de confession musulmane`: the longest reading wins, so the copula must
/// be part of it), and the `states` that need one (`est catholique`).
fn special(name: &str, phrases: &[String], states: &[&str], cues: &[String]) -> Detector {
    let copulas = any(COPULAS);
    let mut pattern = format!("({copulas} )?({})", phrases.join("|"));
    if !states.is_empty() {
        pattern = format!("({pattern}|{copulas} {})", any(states));
    }
    Detector {
        name: name.to_string(),
        patterns: vec![Pattern::whole(&pattern)],
        caseless: true,
        check: None,
        context: cues.to_vec(),
        level: Level::Restricted,
        glue: false,
        lead: Some(lead),
        yields: true,
        sentence: true,
        not_after: None,
    }
}

/// The context words, lower case: each also without accents and with the other
/// apostrophe.
fn cues() -> Vec<String> {
    let mut words: Vec<String> = CIVILITIES
        .iter()
        .chain(crate::personal::ROLES)
        .chain(ROLES)
        .chain(PRONOUNS)
        .map(|w| (*w).to_string())
        .collect();
    for p in POSSESSIVES {
        for r in RELATIVES {
            words.push(format!("{p} {r}"));
        }
    }
    let mut all: Vec<String> = Vec::new();
    for w in words {
        let bare: String = w
            .chars()
            .map(|c| unaccented(c).map_or_else(|| c.to_string(), str::to_string))
            .collect();
        for form in [w, bare] {
            for f in [
                form.replace('\u{2019}', "'"),
                form.replace('\'', "\u{2019}"),
            ] {
                if !all.contains(&f) {
                    all.push(f);
                }
            }
        }
    }
    all
}

/// Whether two characters are the same letter, ignoring case and accents.
fn same_letter(a: char, b: char) -> bool {
    let key = |c: char| {
        let lower = c.to_lowercase().next().unwrap_or(c);
        unaccented(lower)
            .and_then(|s| s.chars().next())
            .unwrap_or(lower)
    };
    key(a) == key(b)
}

/// Bytes at the start of `value` that spell `word`, ignoring case and accents.
fn spelled(value: &str, word: &str) -> Option<usize> {
    let mut chars = value.char_indices();
    let mut end = 0;
    for w in word.chars() {
        let (i, c) = chars.next()?;
        if !same_letter(c, w) {
            return None;
        }
        end = i + c.len_utf8();
    }
    Some(end)
}

/// Bytes of a match that are one of the [`LEADS`] and the space after it: left in the
/// text (`Il est <RELIGION>`); 0 when it starts with none.
fn lead(value: &str) -> usize {
    LEADS
        .iter()
        .filter_map(|w| spelled(value, w))
        .filter(|&n| value[n..].starts_with(' '))
        .max()
        .map_or(0, |n| n + 1)
}

// ---------------------------------------------------------------------------- health

const DISEASES: &[&str] = &[
    "tumeur",
    "leucémie",
    "lymphome",
    "mélanome",
    "diabète",
    "sida",
    "VIH",
    "hépatite",
    "pathologie",
    "handicap",
    "sclérose en plaques",
    "sclérose latérale amyotrophique",
    "mucoviscidose",
    "myopathie",
    "autisme",
    "troubles autistiques",
    "trouble du spectre autistique",
    "dépression",
    "schizophrénie",
    "troubles bipolaires",
    "trouble bipolaire",
    "troubles psychiques",
    "troubles psychiatriques",
    "troubles mentaux",
    "maladie mentale",
    "épilepsie",
    "Alzheimer",
    "Parkinson",
    "covid",
    "covid-19",
    "tuberculose",
    "insuffisance rénale",
    "insuffisance cardiaque",
    "insuffisance respiratoire",
    "cirrhose",
    "anorexie",
    "boulimie",
    "alcoolisme",
    "addiction",
    "toxicomanie",
    "obésité",
    "endométriose",
    "fibromyalgie",
    "AVC",
    "infarctus",
    "paralysie",
    "surdité",
    "cécité",
    "déficience visuelle",
    "déficience auditive",
    "déficience intellectuelle",
    "trisomie",
    "démence",
    "psychose",
    "stress post-traumatique",
    "hémophilie",
    "drépanocytose",
    "lupus",
    "polyarthrite",
    "asthme",
    "dyslexie",
    "TDAH",
    "burn-out",
    "IST",
    "MST",
    "chimiothérapie",
    "radiothérapie",
    "dialyse",
];

/// Words that say a person has a disease, before `de`, `d'un`… and the disease.
const SUFFERS: &[&str] = &[
    "atteint(e)",
    "souffre",
    "souffrait",
    "souffrant",
    "diagnostiqué(e)",
    "malade",
    "décédé(e)",
    "mort(e)",
    "guéri(e)",
    "victime",
    "porteur",
    "porteuse",
    "opéré(e)",
];

const OF: &[&str] = &[
    "de ", "d'", "du ", "de la ", "de l'", "d'un ", "d'une ", "des ",
];

/// Verbs of having before an article and the disease (`a un cancer`), each group with
/// the articles it takes: in one alternation of every verb with every article,
/// Hyperscan scanned prose at a third of the speed.
const HAS: &[(&[&str], &[&str])] = &[
    (
        &["a", "avait", "aurait"],
        &["un ", "une ", "le ", "la ", "l'", "des "],
    ),
    (
        &["a eu", "avait eu", "a développé", "a contracté"],
        &["un ", "une "],
    ),
    (
        &["vit avec", "vivant avec"],
        &["le ", "la ", "l'", "un ", "une "],
    ),
];

/// Treated or followed for a disease (`soigné pour un cancer`).
const TREATED: &[&str] = &[
    "traité(e)",
    "soigné(e)",
    "suivi(e)",
    "hospitalisé(e)",
    "opéré(e)",
];

/// Events after `a fait un`, `a fait une`.
const EPISODES: &[&str] = &[
    "dépression",
    "AVC",
    "infarctus",
    "burn-out",
    "tentative de suicide",
    "crise d'épilepsie",
    "fausse couche",
    "malaise cardiaque",
    "arrêt cardiaque",
    "overdose",
    "décompensation",
];

/// Conditions named alone.
const HEALTH_WORDS: &[&str] = &[
    "diabétique",
    "insulino-dépendant(e)",
    "séropositif",
    "séropositive",
    "séropositif au VIH",
    "séropositive au VIH",
    "positif au VIH",
    "positive au VIH",
    "testé(e) positif",
    "testée positive",
    "dépisté(e) positif",
    "dépistée positive",
    "séropo",
    "dépressif",
    "dépressive",
    "schizophrène",
    "bipolaire",
    "autiste",
    "épileptique",
    "asthmatique",
    "paraplégique",
    "tétraplégique",
    "hémiplégique",
    "anorexique",
    "boulimique",
    "toxicomane",
    "alcoolique",
    "alcoolo-dépendant(e)",
    "handicapé(e)",
    "polyhandicapé(e)",
    "trisomique",
    "myopathe",
    "malvoyant(e)",
    "non-voyant(e)",
    "malentendant(e)",
    "dyslexique",
    "dyspraxique",
    "hyperactif",
    "hyperactive",
    "obèse",
    "sidéen(ne)",
    "dialysé(e)",
    "amputé(e)",
    "immunodéprimé(e)",
    "grabataire",
    "psychotique",
    "paranoïaque",
    "suicidaire",
    "hospitalisé(e)",
    "tombée enceinte",
    "tombé(e) malade",
    "en dépression",
    "dépression nerveuse",
    "en burn-out",
    "en arrêt maladie",
    "arrêt maladie",
    "en arrêt de travail",
    "congé maladie",
    "congé de maladie",
    "congé de longue maladie",
    "congé longue maladie",
    "congé de longue durée",
    "congé longue durée",
    "congé maternité",
    "congé de maternité",
    "congé pathologique",
    "en CLM",
    "en CLD",
    "mi-temps thérapeutique",
    "temps partiel thérapeutique",
    "affection de longue durée",
    "en ALD",
    "reconnu(e) travailleur handicapé",
    "reconnue travailleuse handicapée",
    "reconnu(e) handicapé(e)",
    "travailleur handicapé",
    "travailleuse handicapée",
    "RQTH",
    "l'AAH",
    "MDPH",
    "en situation de handicap",
    "porteur de handicap",
    "porteuse de handicap",
    "porteur d'un handicap",
    "porteuse d'un handicap",
    "taux d'incapacité",
    "taux d'invalidité",
    "pension d'invalidité",
    "en invalidité",
    "carte d'invalidité",
    "carte mobilité inclusion",
    "sous traitement",
    "sous antidépresseurs",
    "sous antidépresseur",
    "sous anxiolytiques",
    "sous neuroleptiques",
    "sous antirétroviraux",
    "sous chimiothérapie",
    "sous chimio",
    "en chimiothérapie",
    "en chimio",
    "sous radiothérapie",
    "en radiothérapie",
    "sous insuline",
    "sous méthadone",
    "sous dialyse",
    "en dialyse",
    "en rémission",
    "en soins palliatifs",
    "en cure de désintoxication",
    "suivi(e) en psychiatrie",
    "suivi(e) par un psychiatre",
    "suivi psychiatrique",
    "suivi(e) en addictologie",
    "soins psychiatriques",
    "hospitalisé(e) en psychiatrie",
    "hospitalisé(e) en hôpital psychiatrique",
    "hospitalisé(e) sous contrainte",
    "hospitalisé(e) d'office",
    "interné(e) en psychiatrie",
    "interné(e) en hôpital psychiatrique",
    "interné(e) d'office",
    "hospitalisation psychiatrique",
    "hospitalisation sous contrainte",
    "hospitalisation d'office",
    "tentative de suicide",
    "tenté de se suicider",
    "problèmes de santé",
    "problème de santé",
    "raisons de santé",
    "raison de santé",
    "raisons médicales",
    "raison médicale",
];

/// Adjectives ambiguous alone (`l'enceinte du tribunal`), after a copula.
const HEALTH_STATES: &[&str] = &[
    "enceinte",
    "malade",
    "sourd(e)",
    "sourd(e)-muet(te)",
    "aveugle",
];

/// What a person has, after `son`, `sa`…
const HEALTH_OWNED: &[&str] = &[
    "cancer",
    "diabète",
    "handicap",
    "maladie",
    "pathologie",
    "dépression",
    "leucémie",
    "tumeur",
    "grossesse",
    "séropositivité",
    "hospitalisation",
    "invalidité",
    "infirmité",
    "état de santé",
    "dossier médical",
    "schizophrénie",
    "épilepsie",
    "autisme",
    "addiction",
    "alcoolisme",
    "toxicomanie",
    "obésité",
    "troubles psychiatriques",
    "troubles psychiques",
    "troubles mentaux",
    "trouble bipolaire",
    "troubles bipolaires",
    "problèmes de santé",
    "arrêt maladie",
    "arrêt de travail",
    "congé maladie",
    "congé maternité",
    "ALD",
    "RQTH",
    "VIH",
    "sida",
    "chimiothérapie",
    "traitement médical",
    "traitement antidépresseur",
    "suivi psychiatrique",
    "suivi médical",
    "psychiatre",
    "oncologue",
    "cancérologue",
    "taux d'incapacité",
    "taux d'invalidité",
    "pension d'invalidité",
    "fausse couche",
    "IVG",
    "avortement",
];

fn health(cues: &[String]) -> Detector {
    // A disease, named diseases with their name (`maladie de Parkinson`, `syndrome
    // d'Asperger`, `cancer du sein`).
    let disease = format!(
        "({}|{}( {}{WORD})?|{}( {}{WORD})?)",
        any(DISEASES),
        any(&["maladie", "syndrome"]),
        any(&["de ", "d'"]),
        phrase("cancer"),
        any(&["du ", "de la ", "de l'", "des ", "d'"]),
    );
    let weeks = format!(
        "{} ([0-9]{{1,2}}|{}) {}",
        phrase("enceinte de"),
        any(&[
            "un", "deux", "trois", "quatre", "cinq", "six", "sept", "huit", "neuf",
        ]),
        any(&["mois", "semaines"]),
    );
    let mut alternatives = vec![
        any(HEALTH_WORDS),
        format!("{} {}{disease}", any(SUFFERS), any(OF)),
        format!(
            "{} {}{disease}",
            any(TREATED),
            any(&["pour ", "pour un ", "pour une "])
        ),
        format!(
            "{} {}{}",
            any(&["fait", "a fait", "avait fait"]),
            any(&["un ", "une "]),
            any(EPISODES)
        ),
        weeks,
        possessive(HEALTH_OWNED),
    ];
    for (verbs, articles) in HAS {
        alternatives.push(format!("{} {}{disease}", any(verbs), any(articles)));
    }
    special("HEALTH", &alternatives, HEALTH_STATES, cues)
}

// -------------------------------------------------------------------------- religion

/// Religions, as the feminine adjective after `de confession`.
const CONFESSIONS: &[&str] = &[
    "musulmane",
    "juive",
    "israélite",
    "catholique",
    "protestante",
    "chrétienne",
    "orthodoxe",
    "bouddhiste",
    "hindoue",
    "hindouiste",
    "évangélique",
    "anglicane",
    "sikhe",
    "mormone",
    "islamique",
    "judaïque",
    "copte",
    "chiite",
    "sunnite",
    "alévie",
    "adventiste",
    "baptiste",
    "luthérienne",
    "calviniste",
    "animiste",
    "salafiste",
];

/// Believers, before or after a qualifier (`musulman pratiquant`, `fervent catholique`).
const BELIEVERS: &[&str] = &[
    "musulman(e)",
    "juif",
    "juive",
    "catholique",
    "chrétien(ne)",
    "protestant(e)",
    "bouddhiste",
    "hindou(e)",
    "évangélique",
];

const PRACTICE: &[&str] = &[
    "pratiquant(e)",
    "non-pratiquant(e)",
    "croyant(e)",
    "fervent(e)",
    "convaincu(e)",
    "rigoriste",
    "intégriste",
    "orthodoxe",
    "traditionaliste",
    "radicalisé(e)",
    "converti(e)",
];

const RELIGION_WORDS: &[&str] = &[
    "musulman(e)",
    "juif",
    "juive",
    "israélite",
    "témoin de Jéhovah",
    "témoins de Jéhovah",
    "salafiste",
    "mange halal",
    "mange casher",
    "mange kasher",
    "mange cacher",
    "ne mange pas de porc",
];

/// Adjectives ambiguous alone (`une méthode peu orthodoxe`, `en protestant`), after a
/// copula.
const RELIGION_STATES: &[&str] = &[
    "catholique",
    "protestant(e)",
    "chrétien(ne)",
    "orthodoxe",
    "athée",
    "agnostique",
    "bouddhiste",
    "hindou(e)",
    "hindouiste",
    "pratiquant(e)",
    "croyant(e)",
    "non-croyant(e)",
    "non-pratiquant(e)",
    "très pratiquant(e)",
    "très croyant(e)",
    "très religieux",
    "très religieuse",
    "évangélique",
    "évangéliste",
    "mormon(e)",
    "anglican(e)",
    "sikh(e)",
    "converti(e)",
    "adventiste",
    "animiste",
];

/// Not `sa confession` (of a crime), `sa conversion` (of a career), `son baptême` (de
/// l'air).
const RELIGION_OWNED: &[&str] = &[
    "religion",
    "foi",
    "croyances religieuses",
    "convictions religieuses",
    "opinions religieuses",
    "appartenance religieuse",
    "pratique religieuse",
    "athéisme",
    "communauté religieuse",
    "paroisse",
    "mosquée",
    "synagogue",
    "imam",
    "rabbin",
    "communion",
    "première communion",
    "voile",
    "kippa",
];

fn religion(cues: &[String]) -> Detector {
    let alternatives = [
        any(RELIGION_WORDS),
        format!(
            "{} {}",
            any(&[
                "de confession",
                "de religion",
                "de foi",
                "de culture",
                "de tradition",
            ]),
            any(CONFESSIONS)
        ),
        format!("{} {}", any(BELIEVERS), any(PRACTICE)),
        format!(
            "{} {}",
            any(&[
                "membre de la communauté",
                "membre actif de la communauté",
                "membre active de la communauté",
                "fidèle de la communauté",
            ]),
            any(CONFESSIONS)
        ),
        format!(
            "{} {}",
            any(&["fervent(e)", "pieux", "pieuse", "dévot(e)", "bon", "bonne"]),
            any(BELIEVERS)
        ),
        format!(
            "{} {}",
            any(&["converti(e)", "conversion"]),
            any(&[
                "à l'islam",
                "au judaïsme",
                "au catholicisme",
                "au christianisme",
                "au protestantisme",
                "au bouddhisme",
                "à l'hindouisme",
                "à la religion musulmane",
                "à la religion juive",
                "à la foi chrétienne",
            ])
        ),
        format!(
            "{} {}",
            any(&["porte", "portait", "portant", "a porté"]),
            any(&[
                "le voile",
                "un voile",
                "le voile islamique",
                "le foulard islamique",
                "un foulard islamique",
                "le hijab",
                "un hijab",
                "le niqab",
                "un niqab",
                "le tchador",
                "la burqa",
                "une burqa",
                "la burka",
                "une burka",
                "le burkini",
                "la kippa",
                "une kippa",
                "le turban sikh",
                "un turban sikh",
            ])
        ),
        format!(
            "{} {}",
            any(&[
                "fait",
                "faisait",
                "pratique",
                "pratiquait",
                "observe",
                "observait",
                "respecte",
                "respectait",
                "suit",
                "suivait",
            ]),
            any(&[
                "le ramadan",
                "ramadan",
                "le carême",
                "le shabbat",
                "shabbat",
                "le sabbat",
                "la prière",
                "sa prière",
                "ses prières",
            ])
        ),
        format!(
            "{} {}",
            any(&[
                "fréquente",
                "fréquentait",
                "va à",
                "allait à",
                "se rend à",
                "se rendait à",
                "assiste à",
                "assistait à",
            ]),
            any(&[
                "la mosquée",
                "la synagogue",
                "l'église",
                "la paroisse",
                "la messe",
                "l'office",
            ])
        ),
        format!(
            "{} {}",
            any(&[
                "va au",
                "allait au",
                "se rend au",
                "se rendait au",
                "assiste au",
                "assistait au",
            ]),
            any(&["temple", "culte", "catéchisme", "prêche"])
        ),
        possessive(RELIGION_OWNED),
    ];
    special("RELIGION", &alternatives, RELIGION_STATES, cues)
}

// ----------------------------------------------------------------- political opinion

const PARTIES: &[&str] = &[
    "parti socialiste",
    "PS",
    "parti communiste",
    "parti communiste français",
    "PCF",
    "la France insoumise",
    "France insoumise",
    "LFI",
    "Rassemblement national",
    "RN",
    "Front national",
    "FN",
    "les Républicains",
    "LR",
    "UMP",
    "Renaissance",
    "la République en marche",
    "En marche",
    "LREM",
    "MoDem",
    "UDI",
    "Horizons",
    "EELV",
    "Europe Écologie",
    "les Écologistes",
    "les Verts",
    "NPA",
    "Lutte ouvrière",
    "LO",
    "Reconquête",
    "Debout la France",
    "les Patriotes",
    "UPR",
    "parti radical",
    "PRG",
    "Place publique",
    "parti animaliste",
    "Génération écologie",
    "Nouveau Front populaire",
    "NFP",
    "Action française",
    "Génération identitaire",
];

/// Opinions, after a copula (`est socialiste`) or `militant`, `électeur`.
const IDEOLOGIES: &[&str] = &[
    "communiste",
    "socialiste",
    "gaulliste",
    "anarchiste",
    "royaliste",
    "monarchiste",
    "trotskiste",
    "maoïste",
    "marxiste",
    "nationaliste",
    "libertaire",
    "écologiste",
    "centriste",
    "frontiste",
    "insoumis(e)",
    "macroniste",
    "lepéniste",
    "mélenchoniste",
    "zemmouriste",
    "sarkozyste",
    "identitaire",
    "indépendantiste",
    "autonomiste",
    "séparatiste",
    "néonazi(e)",
    "néo-nazi(e)",
    "fasciste",
    "antifasciste",
    "antifa",
    "féministe",
    "souverainiste",
    "eurosceptique",
    "altermondialiste",
    "anticapitaliste",
    "d'extrême droite",
    "d'extrême gauche",
    "d'ultra-droite",
    "d'ultra-gauche",
    "de gauche",
    "de droite",
];

/// Before a party (`militant du`, `membre de la`).
const OF_PARTY: &[&str] = &[
    "du ",
    "de la ",
    "de l'",
    "de ",
    "d'",
    "des ",
    "au ",
    "à la ",
    "à l'",
    "d'un ",
    "d'une ",
    "au sein du ",
    "au sein de la ",
    "au sein de l'",
    "au sein d'un ",
    "au sein d'une ",
    "sur la liste ",
    "sur la liste du ",
    "sur la liste de la ",
    "sur la liste de l'",
];

const POLITICAL_OWNED: &[&str] = &[
    "opinions politiques",
    "opinion politique",
    "convictions politiques",
    "idées politiques",
    "engagement politique",
    "appartenance politique",
    "orientation politique",
    "sensibilité politique",
    "affiliation politique",
    "couleur politique",
    "bord politique",
    "militantisme",
    "carte du parti",
];

fn political(cues: &[String]) -> Detector {
    // A party by name, or `parti` and the word after it (not `mouvement`: `membre du
    // mouvement scout`).
    let party = format!(
        "({}|{}( {WORD})?)",
        any(PARTIES),
        any(&["parti", "parti politique", "mouvement politique"])
    );
    // What a vote is for (`vote pour le RN`, `vote à gauche`).
    let voted = format!(
        "({}{party}|{})",
        any(&["pour ", "pour le ", "pour la ", "pour les ", "pour l'"]),
        any(&[
            "à gauche",
            "à droite",
            "à l'extrême droite",
            "à l'extrême gauche",
            "pour l'extrême droite",
            "pour l'extrême gauche",
            "extrême droite",
            "extrême gauche",
        ])
    );
    let alternatives = [
        format!(
            "{} {}{party}",
            any(&[
                "militant(e)",
                "adhérent(e)",
                "membre",
                "électeur",
                "électrice",
                "sympathisant(e)",
                "élu(e)",
                "candidat(e)",
            ]),
            any(OF_PARTY)
        ),
        format!("{} {}", any(&["élu(e)", "candidat(e)"]), any(PARTIES)),
        format!(
            "{} {}{WORD}",
            any(&["militant(e)", "milite"]),
            any(&[
                "pour ",
                "pour le ",
                "pour la ",
                "pour les ",
                "pour l'",
                "contre ",
                "contre le ",
                "contre la ",
                "contre les ",
                "contre l'",
            ])
        ),
        format!(
            "{} {}",
            any(&["militant(e)", "électeur", "électrice", "sympathisant(e)"]),
            any(IDEOLOGIES)
        ),
        any(&[
            "militant(e) politique",
            "sympathisant(e)",
            "encarté(e)",
            "d'extrême droite",
            "d'extrême gauche",
            "d'ultra-droite",
            "d'ultra-gauche",
        ]),
        format!(
            "{} {}{party}",
            any(&["encarté(e)", "adhère", "a adhéré", "adhésion", "cotise"]),
            any(&["au ", "à la ", "à l'", "chez "])
        ),
        format!(
            "{} {voted}",
            any(&[
                "vote",
                "votait",
                "a voté",
                "avait voté",
                "votera",
                "voterait",
                "a toujours voté",
                "vote toujours",
            ])
        ),
        possessive(POLITICAL_OWNED),
    ];
    let states: Vec<&str> = IDEOLOGIES
        .iter()
        .copied()
        .chain([
            "militant(e)",
            "engagé(e) politiquement",
            "engagé(e) à gauche",
            "engagé(e) à droite",
        ])
        .collect();
    special("POLITICAL_OPINION", &alternatives, &states, cues)
}

// ------------------------------------------------------------------ union membership

const UNIONS: &[&str] = &[
    "CGT",
    "CFDT",
    "FO",
    "Force ouvrière",
    "CFE-CGC",
    "CGC",
    "CFTC",
    "Solidaires",
    "SUD Rail",
    "SUD PTT",
    "SUD Santé",
    "SUD Éducation",
    "UNSA",
    "FSU",
    "CNT",
    "SNES",
    "SNES-FSU",
    "SNUipp",
    "SNUipp-FSU",
    "SGEN",
    "SGEN-CFDT",
    "SNALC",
    "un syndicat",
];

/// Union roles and members, before a union (`délégué CGT`, `adhérent de la CFDT`).
const UNION_ROLES: &[&str] = &[
    "délégué(e)",
    "représentant(e)",
    "élu(e)",
    "militant(e)",
    "responsable",
    "secrétaire",
    "secrétaire général(e)",
    "trésorier",
    "trésorière",
    "membre",
    "adhérent(e)",
    "adhère",
    "a adhéré",
    "adhésion",
    "cotise",
    "cotisation",
    "carte",
    "syndiqué(e)",
    "candidat(e)",
];

const AT_UNION: &[&str] = &[
    "de la ",
    "du ",
    "de l'",
    "d'",
    "à la ",
    "au ",
    "à l'",
    "à ",
    "chez ",
    "au sein de la ",
    "au sein du ",
    "au sein de l'",
    "au sein d'",
];

/// Union roles in their own words (`délégué syndical`), a union possibly after them.
const UNION_WORDS: &[&str] = &[
    "délégué(e) syndical(e)",
    "représentant(e) syndical(e)",
    "représentant(e) de section syndicale",
    "représentant(e) de la section syndicale",
    "responsable syndical(e)",
    "militant(e) syndical(e)",
    "élu(e) syndical(e)",
    "secrétaire syndical(e)",
];

const UNION_OWNED: &[&str] = &[
    "syndicat",
    "activité syndicale",
    "activités syndicales",
    "engagement syndical",
    "appartenance syndicale",
    "adhésion syndicale",
    "carte syndicale",
    "étiquette syndicale",
    "section syndicale",
];

fn union_membership(cues: &[String]) -> Detector {
    let unions = any(UNIONS);
    let alternatives = [
        any(&[
            "syndiqué(e)",
            "syndicaliste",
            "mandat syndical",
            "mandats syndicaux",
            "heures de délégation",
            "cotisation syndicale",
        ]),
        format!("{} {unions}", any(&["sur la liste", "sur une liste"])),
        format!("{}( {}?{unions})?", any(UNION_WORDS), any(AT_UNION)),
        format!("{} {}?{unions}", any(UNION_ROLES), any(AT_UNION)),
        // `SUD` alone only right after the role (`délégué du Sud-Ouest` is a region).
        format!("{} {}", any(UNION_ROLES), phrase("SUD")),
        // `syndiqué chez Solidaires`: any organisation after `syndiqué`.
        format!("{} {}{WORD}", phrase("syndiqué(e)"), any(AT_UNION)),
        possessive(UNION_OWNED),
    ];
    special("UNION_MEMBERSHIP", &alternatives, &[], cues)
}

// ---------------------------------------------------------------- sexual orientation

const ORIENTATION_WORDS: &[&str] = &[
    "homosexuel(le)",
    "hétérosexuel(le)",
    "bisexuel(le)",
    "pansexuel(le)",
    "asexuel(le)",
    "lesbienne",
    "transgenre",
    "transsexuel(le)",
    "intersexe",
    "non-binaire",
    "coming-out",
    "changement de sexe",
    "a changé de sexe",
    "réassignation sexuelle",
    "réassignation de sexe",
    "transition de genre",
];

/// Words ambiguous alone (`Gay` is a surname), after a copula.
const ORIENTATION_STATES: &[&str] = &["gay", "homo", "hétéro", "queer", "trans", "LGBT"];

const ORIENTATION_OWNED: &[&str] = &[
    "orientation sexuelle",
    "homosexualité",
    "bisexualité",
    "hétérosexualité",
    "identité de genre",
    "identité sexuelle",
    "sexualité",
    "transidentité",
];

fn orientation(cues: &[String]) -> Detector {
    let alternatives = [any(ORIENTATION_WORDS), possessive(ORIENTATION_OWNED)];
    special(
        "SEXUAL_ORIENTATION",
        &alternatives,
        ORIENTATION_STATES,
        cues,
    )
}

// -------------------------------------------------------------------- ethnic origin

/// Origins after `d'origine` (feminine).
const ORIGINS: &[&str] = &[
    "maghrébine",
    "africaine",
    "nord-africaine",
    "sub-saharienne",
    "ouest-africaine",
    "asiatique",
    "arabe",
    "berbère",
    "kabyle",
    "rom",
    "tzigane",
    "tsigane",
    "gitane",
    "manouche",
    "yéniche",
    "juive",
    "noire",
    "antillaise",
    "caribéenne",
    "réunionnaise",
    "guyanaise",
    "mahoraise",
    "comorienne",
    "créole",
    "métisse",
    "européenne",
    "caucasienne",
    "slave",
    "indienne",
    "chinoise",
    "vietnamienne",
    "cambodgienne",
    "laotienne",
    "japonaise",
    "coréenne",
    "turque",
    "kurde",
    "arménienne",
    "algérienne",
    "marocaine",
    "tunisienne",
    "libyenne",
    "égyptienne",
    "sénégalaise",
    "malienne",
    "ivoirienne",
    "camerounaise",
    "congolaise",
    "guinéenne",
    "mauritanienne",
    "nigériane",
    "haïtienne",
    "portugaise",
    "italienne",
    "espagnole",
    "polonaise",
    "roumaine",
    "bulgare",
    "serbe",
    "albanaise",
    "kosovare",
    "tchétchène",
    "russe",
    "ukrainienne",
    "libanaise",
    "syrienne",
    "irakienne",
    "iranienne",
    "afghane",
    "pakistanaise",
    "sri-lankaise",
    "tamoule",
    "bangladaise",
    "philippine",
    "brésilienne",
    "latino-américaine",
    "sud-américaine",
    "amérindienne",
    "étrangère",
    "immigrée",
];

/// After `de type` in descriptions of people (`de type maghrébin`).
const TYPES: &[&str] = &[
    "maghrébin",
    "africain",
    "nord-africain",
    "asiatique",
    "arabe",
    "méditerranéen",
    "caucasien",
    "antillais",
    "indien",
    "latino",
    "slave",
    "gitan",
    "eurasien",
    "métis",
];

const ETHNIC_WORDS: &[&str] = &[
    "origine ethnique",
    "origines ethniques",
    "appartenance ethnique",
    "origine raciale",
    "appartenance raciale",
    "couleur de peau",
    "couleur de sa peau",
    "homme de couleur",
    "femme de couleur",
    "personne de couleur",
    "issu(e) de l'immigration",
    "issu(e) de la diversité",
    "de race noire",
    "de race blanche",
    "de race jaune",
    "de race arabe",
    "de race juive",
    "à la peau noire",
    "à la peau mate",
    "à la peau foncée",
    "noir(e) de peau",
    "originaire du Maghreb",
    "originaire d'Afrique",
    "originaire d'Afrique du Nord",
    "originaire d'Afrique subsaharienne",
    "originaire d'Asie",
    "originaire des Antilles",
    "originaire des Comores",
];

/// Ambiguous alone, after a copula (`il est arabe`; not `il parle arabe`).
const ETHNIC_STATES: &[&str] = &[
    "arabe",
    "maghrébin(e)",
    "métis(se)",
    "rom",
    "gitan(e)",
    "tzigane",
    "berbère",
    "kabyle",
    "kurde",
];

const ETHNIC_OWNED: &[&str] = &["origines", "ethnie", "race", "couleur de peau"];

/// After `race :` in a form.
const RACES: &[&str] = &[
    "arabe",
    "noire",
    "noir",
    "blanche",
    "blanc",
    "jaune",
    "asiatique",
    "juive",
    "juif",
    "maghrébine",
    "maghrébin",
    "africaine",
    "africain",
    "métisse",
    "métis",
    "caucasienne",
    "caucasien",
];

/// The plural of feminine adjectives (`maghrébines`, `roms`).
fn plural(words: &[&str]) -> Vec<String> {
    words
        .iter()
        .map(|w| {
            if w.ends_with('s') {
                (*w).to_string()
            } else {
                format!("{w}s")
            }
        })
        .collect()
}

fn ethnic(cues: &[String]) -> Detector {
    let owned = plural(ORIGINS);
    let plurals: Vec<&str> = owned.iter().map(String::as_str).collect();
    let alternatives = [
        any(ETHNIC_WORDS),
        format!("{} {}", phrase("d'origine"), any(ORIGINS)),
        // `origines maghrébines`: the plural of the same adjectives.
        format!("{} {}", phrase("origines"), any(&plurals)),
        // `race : arabe` in a form.
        format!("{} ?: ?{}", phrase("race"), any(RACES)),
        format!("{} {}", phrase("de type"), any(TYPES)),
        format!("{}{WORD}", phrase("d'ethnie ")),
        // `« race »`, `"race"`: the word quoted, as texts that use it write it.
        format!("(\u{ab} ?|\"){}( ?\u{bb}|\")", phrase("race")),
        possessive(ETHNIC_OWNED),
    ];
    special("ETHNIC_ORIGIN", &alternatives, ETHNIC_STATES, cues)
}

// ------------------------------------------------------------------ criminal record

const CRIMINAL_WORDS: &[&str] = &[
    "casier judiciaire portant mention",
    "casier judiciaire portant la mention",
    "casier judiciaire portant une mention",
    "casier judiciaire portant des mentions",
    "casier judiciaire mentionnant",
    "casier judiciaire non vierge",
    "casier judiciaire n'est pas vierge",
    "casier judiciaire chargé",
    "casier judiciaire comportant",
    "casier judiciaire qui mentionne",
    "casier judiciaire porte mention",
    "casier judiciaire porte la mention",
    "casier judiciaire porte une mention",
    "casier judiciaire fait mention",
    "casier judiciaire fait état",
    "connu(e) des services de police",
    "connu(e) de la police",
    "connu(e) de la justice",
    "connu(e) des services de gendarmerie",
    "défavorablement connu(e)",
    "condamnation pénale",
    "condamnations pénales",
    "l'objet d'une condamnation",
    "reconnu(e) coupable",
    "déclaré(e) coupable",
    "jugé(e) coupable",
    "plaidé coupable",
    "plaide coupable",
    "incarcéré(e)",
    "réincarcéré(e)",
    "emprisonné(e)",
    "écroué(e)",
    "en détention",
    "placé(e) en détention",
    "sous écrou",
    "en prison",
    "sorti(e) de prison",
    "sorti(e) de détention",
    "libéré(e) de prison",
    "purge une peine",
    "purge sa peine",
    "purgé une peine",
    "purgé sa peine",
    "purgeait une peine",
    "purgeait sa peine",
    "en liberté conditionnelle",
    "libération conditionnelle",
    "en semi-liberté",
    "bracelet électronique",
    "sous surveillance électronique",
    "sous contrôle judiciaire",
    "placé(e) en garde à vue",
    "en garde à vue",
    "mis(e) en examen",
    "mis(e) en cause pour",
    "poursuivi(e) pour",
    "poursuivi(e) pénalement",
    "poursuivi(e) devant",
    "poursuivi(e) en justice",
    "inculpé(e)",
    "déféré(e) au parquet",
    "déféré(e) devant",
    "comparaît pour",
    "comparaissait pour",
    "en comparution immédiate",
    "jugé(e) en comparution immédiate",
    "jugé(e) par le tribunal correctionnel",
    "jugé(e) aux assises",
    "jugé(e) devant la cour d'assises",
    "interpellé(e) par la police",
    "interpellé(e) par les policiers",
    "interpellé(e) par les gendarmes",
    "interpellé(e) par la gendarmerie",
    "interpellé(e) pour",
    "arrêté(e) par la police",
    "arrêté(e) par les policiers",
    "arrêté(e) par les gendarmes",
    "antécédents judiciaires",
    "antécédents pénaux",
    "antécédents criminels",
    "passé judiciaire",
    "passé pénal",
    "récidiviste",
    "en récidive",
    "en état de récidive",
    "objet d'une fiche S",
    "fiché(e) au FPR",
    "fiché(e) au FIJAIS",
    "fiché(e) au FIJAIT",
    "fiché(e) au TAJ",
    "fiché(e) au fichier",
    "inscrit(e) au FIJAIS",
    "inscrit(e) au fichier des auteurs",
    "sursis probatoire",
    "sursis avec mise à l'épreuve",
    "avec sursis",
    "peine de prison",
    "peine d'emprisonnement",
    "peine de réclusion",
    "ans de prison",
    "mois de prison",
    "ans d'emprisonnement",
    "mois d'emprisonnement",
    "ans de réclusion",
    "travaux d'intérêt général",
    "TIG",
    "stage de citoyenneté",
    "interdiction du territoire",
    "suivi socio-judiciaire",
    "sous main de justice",
];

/// What follows `condamné` (`condamné à`, `condamné pour`).
const SENTENCED: &[&str] = &[
    "à",
    "pour",
    "par",
    "en appel",
    "en première instance",
    "en comparution immédiate",
    "avec sursis",
    "définitivement",
    "pénalement",
    "plusieurs fois",
    "à plusieurs reprises",
];

fn criminal(cues: &[String]) -> Detector {
    let condemned = phrase("condamné(e)");
    let detained = any(&[
        "à la maison d'arrêt",
        "en maison d'arrêt",
        "à la prison",
        "en prison",
        "au centre pénitentiaire",
        "au centre de détention",
        "en centre de détention",
        "dans un établissement pénitentiaire",
        "à Fleury-Mérogis",
        "à Fresnes",
        "aux Baumettes",
    ]);
    let alternatives = [
        any(CRIMINAL_WORDS),
        // `fiché S` with its accent: `la fiche s'est perdue` is not one.
        "fich(\u{e9}|\u{c9})(e|\\(e\\))? S".to_string(),
        format!("{condemned} {}", any(SENTENCED)),
        // `a été condamné.`: the auxiliary stays in the text (see `LEADS`).
        format!(
            "{} {condemned}( {})?",
            any(&["été", "déjà"]),
            any(SENTENCED)
        ),
        format!("{} {detained}", phrase("détenu(e)")),
        possessive(&[
            "casier",
            "casier judiciaire",
            "condamnation",
            "condamnations",
            "garde à vue",
            "incarcération",
            "détention",
            "mise en examen",
            "peine de prison",
            "bracelet électronique",
        ]),
    ];
    special("CRIMINAL_RECORD", &alternatives, &[], cues)
}

/// HEALTH, RELIGION, POLITICAL_OPINION, UNION_MEMBERSHIP, SEXUAL_ORIENTATION,
/// ETHNIC_ORIGIN and CRIMINAL_RECORD.
pub fn detectors() -> Vec<Detector> {
    let cues = cues();
    vec![
        health(&cues),
        religion(&cues),
        political(&cues),
        union_membership(&cues),
        orientation(&cues),
        ethnic(&cues),
        criminal(&cues),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phrases_allow_case_accents_apostrophes_and_endings() {
        assert_eq!(phrase("né"), "n(é|É|e)");
        assert_eq!(phrase("atteint(e)"), "atteint(e|\\(e\\))?");
        assert_eq!(phrase("d'un"), "d('|\u{2019})un");
        assert_eq!(phrase("non-binaire"), "non[ -]?binaire");
        assert_eq!(phrase("sœur"), "s(œ|Œ|oe)ur");
        assert_eq!(phrase("«"), "(«)");
    }

    #[test]
    fn context_words_come_in_every_spelling() {
        let c = cues();
        for w in [
            "il",
            "m.",
            "l'intéressée",
            "l\u{2019}intéressée",
            "l'interessee",
            "son fils",
            "ma fille",
            "sa soeur",
            "sa sœur",
            "le salarie",
        ] {
            assert!(c.iter().any(|x| x == w), "{w}");
        }
        assert!(c.iter().all(|w| *w == w.to_lowercase()));
    }

    #[test]
    fn copulas_and_auxiliaries_stay_in_the_text() {
        assert_eq!(lead("est catholique"), "est ".len());
        assert_eq!(lead("ÉTAIT pratiquante"), "ÉTAIT ".len());
        assert_eq!(lead("etait athée"), "etait ".len());
        assert_eq!(lead("se déclare athée"), "se déclare ".len());
        assert_eq!(lead("été condamné à"), "été ".len());
        assert_eq!(lead("devenue musulmane"), "devenue ".len());
        assert_eq!(lead("diabétique"), 0);
        assert_eq!(lead("estimé"), 0);
    }

    /// `DETECTOR:value` of each finding of the special categories alone.
    fn found(text: &str) -> Vec<String> {
        static ENGINE: std::sync::LazyLock<crate::Engine> =
            std::sync::LazyLock::new(|| crate::Engine::new(detectors()).unwrap());
        ENGINE
            .find(text, "")
            .unwrap()
            .iter()
            .map(|f| {
                let name = &ENGINE.detectors[f.detector].name;
                format!("{name}:{}", &text[f.start..f.end])
            })
            .collect()
    }

    #[test]
    fn found_after_a_person_in_the_same_sentence() {
        assert_eq!(
            found("Mme Sophie Lefèvre, diabétique, demande un aménagement."),
            ["HEALTH:diabétique"]
        );
        assert_eq!(
            found("Le requérant a été condamné à deux ans."),
            ["CRIMINAL_RECORD:condamné à"]
        );
        assert_eq!(found("Il est catholique."), ["RELIGION:catholique"]);
        assert_eq!(
            found("L'intéressée, de confession musulmane, est déléguée syndicale CGT."),
            [
                "RELIGION:de confession musulmane",
                "UNION_MEMBERSHIP:déléguée syndicale CGT"
            ]
        );
        assert_eq!(
            found("Son fils est atteint de la maladie de Crohn."),
            ["HEALTH:atteint de la maladie de Crohn"]
        );
        assert_eq!(
            found("M. Martin est d'origine maghrébine."),
            ["ETHNIC_ORIGIN:d'origine maghrébine"]
        );
        assert_eq!(
            found("Elle est lesbienne."),
            ["SEXUAL_ORIENTATION:lesbienne"]
        );
        assert_eq!(
            found("Il est militant du Rassemblement national."),
            ["POLITICAL_OPINION:militant du Rassemblement national"]
        );
        assert_eq!(
            found("Le requérant, fiché S, est convoqué."),
            ["CRIMINAL_RECORD:fiché S"]
        );
        // Without accents, in capitals, with the other apostrophe.
        assert_eq!(found("IL EST DIABETIQUE."), ["HEALTH:DIABETIQUE"]);
        assert_eq!(
            found("Elle est atteinte d\u{2019}un cancer du sein."),
            ["HEALTH:atteinte d\u{2019}un cancer du sein"]
        );
    }

    #[test]
    fn not_found_without_a_person_before_in_the_same_sentence() {
        for text in [
            "La politique de santé publique est diabétique-friendly.",
            "Les organisations syndicales sont reçues.",
            "Le casier judiciaire national est tenu à Nantes.",
            "La liberté religieuse est garantie.",
            "Les détenus ont droit aux visites.",
            // The person is in the sentence before.
            "Mme Martin a écrit. Diabétique depuis longtemps, le dossier suit.",
            // `il` inside `ville`, `elle` inside `nouvelle`.
            "La ville et la nouvelle tour sont diabétique-compatibles.",
            // A plural.
            "Il reçoit les salariés syndiqués.",
            // Ambiguous words alone.
            "Il visite l'Université catholique et l'enceinte du stade.",
            "Il a condamné la porte.",
            "Il dit que la fiche s'est perdue.",
            "M. Martin, délégué du Sud-Ouest, est arrivé.",
        ] {
            assert_eq!(found(text), Vec::<String>::new(), "{text}");
        }
    }

    #[test]
    fn abbreviations_do_not_end_the_sentence() {
        assert_eq!(
            found("M. Martin, cf. art. 3, est diabétique."),
            ["HEALTH:diabétique"]
        );
        assert_eq!(found("Vu Mme. Durand, diabétique."), ["HEALTH:diabétique"]);
        assert_eq!(
            found("Mme Durand a, le 12 janv. 2021, été incarcérée."),
            ["CRIMINAL_RECORD:incarcérée"]
        );
        // A period after a long word or a number does, and a blank line (one line
        // break does not: forms put the person on the line before).
        assert_eq!(
            found("Il est venu en 2019. Diabétique, oui."),
            Vec::<String>::new()
        );
        assert_eq!(
            found("Elle a signé hier\n\nDiabétique, oui."),
            Vec::<String>::new()
        );
    }
}
