//! Special categories of personal data (GDPR art. 9 and 10) in French prose: what is
//! found after a person designated earlier in the same sentence, what is left (general
//! statements, ambiguous words, a person in another sentence or only after the phrase),
//! and streamed == block under random chunking.
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
        "Mme Sophie Lefèvre, diabétique, demande un aménagement.",
        "Mme [PERSON], [HEALTH], demande un aménagement.",
    ),
    (
        "Le requérant a été condamné à deux ans.",
        "Le requérant a été [CRIMINAL_RECORD] deux ans.",
    ),
    (
        "Il est catholique pratiquant et vote pour le RN.",
        "Il est [RELIGION] et [POLITICAL_OPINION].",
    ),
    (
        "L'intéressée, de confession musulmane, porte le voile.",
        "L'intéressée, [RELIGION], [RELIGION].",
    ),
    (
        "Son fils, autiste, est suivi en psychiatrie depuis 2019.",
        "Son fils, [HEALTH], est [HEALTH] depuis 2019.",
    ),
    (
        "M. Karim Benali, délégué syndical CGT, a été placé en garde à vue.",
        "M. [PERSON], [UNION_MEMBERSHIP], a été [CRIMINAL_RECORD].",
    ),
    (
        "Elle est atteinte d'un cancer du sein et en arrêt maladie.",
        "Elle est [HEALTH] et [HEALTH].",
    ),
    (
        "Mme Durand est d'origine algérienne.",
        "Mme [PERSON] est [ETHNIC_ORIGIN].",
    ),
    ("Il est homosexuel.", "Il est [SEXUAL_ORIENTATION]."),
    (
        "Madame Martin, séropositive, est sous traitement.",
        "Madame [PERSON], [HEALTH], est [HEALTH].",
    ),
    (
        "Le salarié est syndiqué à la CFDT.",
        "Le salarié est [UNION_MEMBERSHIP].",
    ),
    (
        "Sa fille, enceinte de six mois, est hospitalisée.",
        "Sa fille, [HEALTH], est [HEALTH].",
    ),
    // `il` after an apostrophe is a word.
    (
        "Qu'il soit musulman ne change rien.",
        "Qu'il soit [RELIGION] ne change rien.",
    ),
    (
        "Mme Petit, militante de La France insoumise, a voté à gauche.",
        "Mme [PERSON], [POLITICAL_OPINION], [POLITICAL_OPINION].",
    ),
    // Abbreviations do not end the sentence.
    (
        "M. Dupont, cf. art. 5, a un casier judiciaire non vierge.",
        "M. [PERSON], cf. art. 5, a un [CRIMINAL_RECORD].",
    ),
    (
        "Dr Nguyen indique que le patient est bipolaire.",
        "Dr [PERSON] indique que le patient est [HEALTH].",
    ),
    (
        "L\u{2019}élève, dyslexique, est reconnue travailleuse handicapée.",
        "L\u{2019}élève, [HEALTH], est [HEALTH].",
    ),
    ("IL EST DIABETIQUE.", "IL EST [HEALTH]."),
    ("Je suis diabétique.", "Je suis [HEALTH]."),
    (
        "Il est membre de la CGT et fiché S.",
        "Il est [UNION_MEMBERSHIP] et [CRIMINAL_RECORD].",
    ),
    ("Elle est transgenre.", "Elle est [SEXUAL_ORIENTATION]."),
    // Only earlier in the sentence: a person after the phrase, or in the sentence
    // before, does not count.
    (
        "Diabétique depuis l'enfance, selon M. Martin.",
        "Diabétique depuis l'enfance, selon M. [PERSON].",
    ),
    (
        "Mme Martin est arrivée. Diabétique, le chien attend.",
        "Mme [PERSON] est arrivée. Diabétique, le chien attend.",
    ),
];

/// Left alone: general statements, ambiguous words alone, cues inside other words.
const LEFT: &[&str] = &[
    "La politique de santé publique est diabétique-friendly.",
    "Les organisations syndicales ont signé l'accord.",
    "Le casier judiciaire national est tenu à Nantes.",
    "La liberté religieuse est un droit fondamental.",
    "Les détenus ont droit à des visites.",
    "Dans la ville, un diabétique sur dix ignore sa maladie.",
    "Rendez-vous à l'enceinte du stade, il fait beau.",
    "Le syndicat des copropriétaires se réunit.",
    "Il visite l'Université catholique et la nouvelle synagogue.",
    "Il dit que la fiche s'est perdue.",
    "Il a condamné la porte du garage.",
    "Elle a lu un article sur le diabète et le VIH.",
    "Il est venu en 2019. Diabétique, le chat dort.",
    "Les militants du parti ont voté.",
    "Il reçoit les salariés syndiqués.",
];

#[test]
fn special_categories_are_found_after_a_person() {
    for (text, want) in FOUND {
        assert_eq!(&block(text), want, "{text}");
        let bytes: Vec<usize> = (0..text.len()).collect();
        assert_eq!(
            &common::stream(engine(), text, &bytes),
            want,
            "{text}, 1-byte chunks"
        );
    }
}

#[test]
fn general_statements_are_left_alone() {
    for text in LEFT {
        assert_eq!(&block(text), text);
    }
}

/// Texts read together (`parts::transform_parts`), redacted: what each part becomes.
fn parts(texts: &[&str]) -> Vec<String> {
    let out = vigie_dlp::transform_parts(engine(), texts, &mut Redact::default()).unwrap();
    out.into_iter()
        .zip(texts)
        .map(|(new, old)| new.unwrap_or_else(|| (*old).to_string()))
        .collect()
}

#[test]
fn the_sentence_runs_across_texts_read_together_and_the_text_before() {
    // A part boundary after a period ends the sentence; a cue at the start of the next
    // part is a word.
    assert_eq!(
        parts(&["Réponds à M. Martin.", "Il est diabétique."]),
        ["Réponds à M. [PERSON].", "Il est [HEALTH]."]
    );
    assert_eq!(
        parts(&["Mme Martin a écrit.", "Diabétique, le dossier suit."]),
        ["Mme [PERSON] a écrit.", "Diabétique, le dossier suit."]
    );
    // The text before (streaming history): a cue there counts, in the same sentence.
    let e = engine();
    let health = e.detectors.iter().position(|d| d.name == "HEALTH").unwrap();
    let found = e.find("diabétique, demande.", "Mme Martin, ").unwrap();
    assert!(found.iter().any(|f| f.detector == health), "{found:?}");
    let found = e
        .find("Diabétique, oui.", "Mme Martin est venue. ")
        .unwrap();
    assert!(found.iter().all(|f| f.detector != health), "{found:?}");
}

#[test]
fn special_categories_are_restricted_prose() {
    let names = [
        "HEALTH",
        "RELIGION",
        "POLITICAL_OPINION",
        "UNION_MEMBERSHIP",
        "SEXUAL_ORIENTATION",
        "ETHNIC_ORIGIN",
        "CRIMINAL_RECORD",
    ];
    for name in names {
        let d = engine().detectors.iter().find(|d| d.name == name).unwrap();
        assert_eq!(d.level, vigie_dlp::Level::Restricted, "{name}");
        assert!(d.yields && d.sentence, "{name}");
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

#[test]
fn a_person_on_the_line_before_counts_and_a_blank_line_ends_it() {
    assert_eq!(
        block("Patient : M. Dupont\nAntécédents : diabétique."),
        "Patient : M. [PERSON]\nAntécédents : [HEALTH]."
    );
    assert_eq!(
        block("Patient : M. Dupont\r\nAntécédents : diabétique."),
        "Patient : M. [PERSON]\r\nAntécédents : [HEALTH]."
    );
    assert_eq!(
        block("Patient : M. Dupont\n\nLe dossier évoque un cas diabétique."),
        "Patient : M. [PERSON]\n\nLe dossier évoque un cas diabétique."
    );
}
