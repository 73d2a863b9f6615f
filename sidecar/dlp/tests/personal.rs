//! Personal data in French administrative prose: PERSON (after a civility or a role),
//! ADDRESS and DATE_OF_BIRTH — what is found, what is left (civilities, titles, dates
//! that are not births, common nouns), and streamed == block under random chunking.
#![expect(clippy::unwrap_used, reason = "test code")]

use std::sync::OnceLock;

mod common;

use proptest::prelude::*;
use vigie_dlp::stream::{Redact, transform_block};
use vigie_dlp::{Engine, builtins};

fn engine() -> &'static Engine {
    static E: OnceLock<Engine> = OnceLock::new();
    E.get_or_init(|| Engine::new(builtins()).unwrap())
}

fn block(text: &str) -> String {
    transform_block(engine(), text, &mut Redact::default()).unwrap()
}

/// (text, what block mode must make of it).
const FOUND: &[(&str, &str)] = &[
    (
        "Rédige un courrier pour Mme Sophie Lefèvre, née le 14/02/1987 à Lyon, demeurant 12 bis rue des Lilas, 75011 Paris.",
        "Rédige un courrier pour Mme [PERSON], née le [DATE_OF_BIRTH] à Lyon, demeurant [ADDRESS].",
    ),
    (
        "Convocation de M. Jean-Pierre de La Fontaine.",
        "Convocation de M. [PERSON].",
    ),
    (
        "Reçu Mme LEFÈVRE Sophie ce matin.",
        "Reçu Mme [PERSON] ce matin.",
    ),
    (
        "Courrier à M. et Mme Martin.",
        "Courrier à M. et Mme [PERSON].",
    ),
    (
        "Maître Dupont représente la plaignante, Sophie Durand.",
        "Maître [PERSON] représente la plaignante, [PERSON].",
    ),
    (
        "Marie Curie, épouse Sklodowska.",
        "Marie Curie, épouse [PERSON].",
    ),
    (
        "Le mis en cause Karim Benali conteste.",
        "Le mis en cause [PERSON] conteste.",
    ),
    ("Dr Nguyen a signé.", "Dr [PERSON] a signé."),
    (
        "Né le 3 mars 1950 à Brest, DDN confirmée.",
        "Né le [DATE_OF_BIRTH] à Brest, DDN confirmée.",
    ),
    (
        "Date de naissance : 1987-02-14.",
        "Date de naissance : [DATE_OF_BIRTH].",
    ),
    // Context words without a long ASCII run are gated where a word starts, in lower
    // and upper case, also at the very start of a text.
    ("Née le 14/02/1987.", "Née le [DATE_OF_BIRTH]."),
    ("NÉE LE 14/02/1987.", "NÉE LE [DATE_OF_BIRTH]."),
    (
        "Le requérant, né le 1er janvier 1990, demande un titre.",
        "Le requérant, né le [DATE_OF_BIRTH], demande un titre.",
    ),
    (
        "Adresse : 5 avenue Victor-Hugo 69003 Lyon.",
        "Adresse : [ADDRESS].",
    ),
    (
        "Envoyer au 8 boulevard de la Chapelle.",
        "Envoyer au [ADDRESS].",
    ),
    (
        "Elle est domiciliée à Saint-Denis depuis 2019.",
        "Elle est domiciliée à [ADDRESS] depuis 2019.",
    ),
    (
        "Siège : place de la République, 75003 Paris.",
        "Siège : [ADDRESS].",
    ),
    // Names give way to the identifiers and markings they would run into.
    (
        "de Mme Martin Bonjour Document DIFFUSION RESTREINTE à ne pas diffuser",
        "de Mme [PERSON] [CLASSIFICATION_MARKING] à ne pas diffuser",
    ),
    ("Mme Martin de Mme Durand", "Mme [PERSON] de Mme [PERSON]"),
];

/// Left alone: titles after civilities, dates that are not births, common nouns that
/// are also given names, places and public bodies on their own.
const LEFT: &[&str] = &[
    "M. le Préfet a reçu Madame la Ministre.",
    "Monsieur Le Maire ouvre la séance.",
    "Réunion le 14/02/2025 à 10 h, salle Pierre.",
    "Le courrier a été donné le 14/02/2025 au guichet.",
    "Une pierre, la rose et le mois de mars.",
    "Le lycée Victor-Hugo et l'avenue Victor-Hugo sont fermés.",
    "La préfecture de Lyon et le tribunal de Paris.",
    "Il reste 2 places de parking et 3 rues en travaux.",
    "L'année 1987 et le 14 février 1987, jour de réunion.",
];

#[test]
fn personal_data_is_found_and_the_context_kept() {
    for (text, want) in FOUND {
        assert_eq!(&block(text), want, "{text}");
    }
}

#[test]
fn ordinary_prose_is_left_alone() {
    for text in LEFT {
        assert_eq!(&block(text), text);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("VIGIE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200)))]

    #[test]
    fn streamed_equals_block(i in 0..FOUND.len() + LEFT.len(), cuts in proptest::collection::vec(0usize..400, 0..12)) {
        let text = FOUND.get(i).map_or_else(|| LEFT[i - FOUND.len()], |(t, _)| *t);
        prop_assert_eq!(common::stream(engine(), text, &cuts), block(text));
    }
}
