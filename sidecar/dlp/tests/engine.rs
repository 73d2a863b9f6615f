//! Detectors on French text, block/stream equivalence under any chunking, and no leak.
#![expect(clippy::unwrap_used, clippy::expect_used, reason = "test code")]

mod common;

use common::stream;
use proptest::prelude::*;
use vigie_dlp::{Engine, Redact, StreamScanner, builtins, transform_block};

static ENGINE: std::sync::LazyLock<Engine> = std::sync::LazyLock::new(|| {
    Engine::new(builtins()).expect("built-in patterns compile in both engines")
});

fn engine() -> &'static Engine {
    &ENGINE
}

fn redact(e: &Engine, text: &str) -> String {
    transform_block(e, text, &mut Redact::default()).unwrap()
}

/// (sentence, expected redaction) — valid identifiers generated with their checksums.
const POSITIVES: &[(&str, &str)] = &[
    (
        "Mon NIR est 1 85 05 78 006 084 91, merci.",
        "Mon NIR est [FR_NIR], merci.",
    ),
    ("NIR corse : 269052A00608490.", "NIR corse : [FR_NIR]."),
    (
        "Virement sur FR76 3000 6000 0112 3456 7890 189 demain",
        "Virement sur [IBAN] demain",
    ),
    ("IBAN DE89370400440532013000.", "IBAN [IBAN]."),
    (
        "Carte 4111 1111 1111 1111 exp 12/27",
        "Carte [CREDIT_CARD] exp 12/27",
    ),
    ("Mastercard 2223000048410010", "Mastercard [CREDIT_CARD]"),
    (
        "La société (SIREN 732 829 320) est cliente.",
        "La société (SIREN [FR_SIREN]) est cliente.",
    ),
    ("Son SIRET : 73282932000074", "Son SIRET : [FR_SIRET]"),
    (
        "TVA intracommunautaire FR44732829320",
        "TVA intracommunautaire [FR_TVA]",
    ),
    (
        "Appelez le 06 12 34 56 78 ou le +33 1 23 45 67 89.",
        "Appelez le [PHONE_NUMBER] ou le [PHONE_NUMBER].",
    ),
    (
        "Écrire à jean.dupont@interieur.gouv.fr svp",
        "Écrire à [EMAIL_ADDRESS] svp",
    ),
    (
        "Serveur 192.168.10.20 et 2001:db8::8a2e:370:7334",
        "Serveur [IP_ADDRESS] et [IP_ADDRESS]",
    ),
    (
        "Numéro de passeport 12AB34567",
        "Numéro de passeport [FR_PASSPORT]",
    ),
    (
        "véhicule immatriculé AB-123-CD",
        "véhicule immatriculé [FR_LICENSE_PLATE]",
    ),
    (
        "clé AKIAIOSFODNN7EXAMPLE dans le dépôt",
        "clé [AWS_ACCESS_KEY] dans le dépôt",
    ),
    (
        "token ghp_0123456789abcdefghijABCDEFGHIJ012345",
        "token [GITHUB_TOKEN]",
    ),
    (
        "export OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz012345",
        "export OPENAI_API_KEY=[OPENAI_API_KEY]",
    ),
    (
        "postgres://admin:S3cr3t!@db.local/app",
        "[URL_PASSWORD]db.local/app",
    ),
    (
        "Document DIFFUSION RESTREINTE à ne pas diffuser",
        "Document [CLASSIFICATION_MARKING] à ne pas diffuser",
    ),
    (
        "classé Confidentiel Défense",
        "classé [CLASSIFICATION_MARKING]",
    ),
];

/// Look-alikes that must stay: wrong checksums, dates, amounts, references, hashes.
const NEGATIVES: &[&str] = &[
    "Mon NIR est 1 85 05 78 006 084 92, faux.",
    "Virement FR76 3000 6000 0112 3456 7890 188 refusé",
    "Carte 4111 1111 1111 1112",
    "Commande n° 732829321 du 12/05/2024 pour 1 234,56 €",
    "Article L. 1234-56 du code du travail, décret 2019-1234",
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "uuid 123e4567-e89b-12d3-a456-426614174000",
    "version 10.4.2 du logiciel, 300.1.1.1",
    "Le 0612345678901 n'est pas un numéro",
    "Numéro 12AB34567 sans contexte",
    "732 829 320 sans contexte",
];

#[test]
fn detects_and_redacts_positives() {
    let e = engine();
    for (input, expected) in POSITIVES {
        assert_eq!(&redact(e, input), expected, "input: {input}");
    }
}

#[test]
fn found_by_property_tests() {
    let e = engine();
    // A key directly followed by an IBAN (seen in CI).
    assert_eq!(
        redact(
            e,
            "token ghp_0123456789abcdefghijABCDEFGHIJ012345 IBAN DE89370400440532013000. "
        ),
        "token [GITHUB_TOKEN] IBAN [IBAN]. "
    );
}

#[test]
fn context_words_reach_only_the_next_hundred_bytes() {
    let e = engine();
    let filler = "Le dossier suit son cours normal. ".repeat(10);
    // Near its context word (after a far one too), far from it, and with the word at the
    // very end of the text before (streaming history).
    let text = format!("SIREN {filler}SIREN 732 829 320. {filler}732 829 320.");
    assert_eq!(
        redact(e, &text),
        format!("SIREN {filler}SIREN [FR_SIREN]. {filler}732 829 320.")
    );
    let found = e.find("732 829 320 reçu.", "Le numéro SIREN ").unwrap();
    assert_eq!(found.len(), 1, "context word in the text before");
    let split = e.find("EN 732 829 320 reçu.", "Le numéro SIR").unwrap();
    assert_eq!(split.len(), 1, "context word straddling the two texts");
}

#[test]
fn every_built_in_scan_form_is_a_suffix_of_its_pattern() {
    // What makes scanning the suffix alone lossless: each match of the whole pattern
    // ends where a match of the suffix ends.
    for d in builtins() {
        for p in &d.patterns {
            assert!(
                p.full == p.scan || p.full.ends_with(&format!("){}", p.scan)),
                "{}: {:?} / {:?}",
                d.name,
                p.full,
                p.scan
            );
        }
    }
}

#[test]
fn leaves_hard_negatives_alone() {
    let e = engine();
    for input in NEGATIVES {
        assert_eq!(&redact(e, input), input);
    }
}

#[test]
fn only_a_trailing_candidate_is_held_back() {
    let e = engine();
    let mut s = StreamScanner::new(e, 4096);
    let mut t = Redact::default();
    let mut out = String::new();
    s.push("Bonjour, voici ", &mut t, &mut out).unwrap();
    assert_eq!(out, "Bonjour, voici ");
    s.push("mon numéro : 06 12", &mut t, &mut out).unwrap();
    assert_eq!(out, "Bonjour, voici mon numéro : ");
    assert_eq!(s.held(), "06 12".len());
    s.push(" 34 56 78. Merci", &mut t, &mut out).unwrap();
    // "Merci" is held until it ends: any word may begin an e-mail address.
    assert_eq!(out, "Bonjour, voici mon numéro : [PHONE_NUMBER]. ");
    s.finish(&mut t, &mut out).unwrap();
    assert_eq!(out, "Bonjour, voici mon numéro : [PHONE_NUMBER]. Merci");
}

#[test]
fn oversized_candidate_fails_closed() {
    let e = engine();
    let mut s = StreamScanner::new(e, 64);
    let mut t = Redact::default();
    let mut out = String::new();
    let secret_body = "A".repeat(500);
    s.push("clé sk-", &mut t, &mut out).unwrap();
    for chunk in secret_body.as_bytes().chunks(7) {
        s.push(std::str::from_utf8(chunk).unwrap(), &mut t, &mut out)
            .unwrap();
    }
    s.push(" et la suite.", &mut t, &mut out).unwrap();
    s.finish(&mut t, &mut out).unwrap();
    assert_eq!(out, "clé [REDACTED] et la suite.");
}

const FILLER: &[&str] = &[
    "Bonjour",
    "le dossier",
    "de Mme Martin",
    "concerne",
    "un virement",
    "du 12/05/2024",
    "de 1 234,56 €",
    "commande 732829321",
    "voir l'article 1240",
    "merci",
    "cordialement",
    "\n",
    ", ",
    ". ",
    " : ",
    "(",
    ")",
    "é",
    "à",
    "version 2.3.4",
];

fn sentence() -> impl Strategy<Value = (String, Vec<String>)> {
    let secret = prop::sample::select(POSITIVES.to_vec());
    let filler = prop::sample::select(FILLER.to_vec());
    prop::collection::vec(
        prop_oneof![3 => filler.prop_map(|f| (f.to_string(), None)),
        1 => secret.prop_map(|(s, _)| (s.to_string(), Some(s.to_string())))],
        1..12,
    )
    .prop_map(|parts| {
        let mut text = String::new();
        let mut secrets = Vec::new();
        for (p, s) in parts {
            text.push_str(&p);
            text.push(' ');
            if s.is_some() {
                secrets.push(p);
            }
        }
        (text, secrets)
    })
}

/// The sensitive values inside the positive sentences.
const VALUES: &[&str] = &[
    "1 85 05 78 006 084 91",
    "269052A00608490",
    "FR76 3000 6000 0112 3456 7890 189",
    "DE89370400440532013000",
    "4111 1111 1111 1111",
    "2223000048410010",
    "732 829 320",
    "73282932000074",
    "FR44732829320",
    "06 12 34 56 78",
    "+33 1 23 45 67 89",
    "jean.dupont@interieur.gouv.fr",
    "192.168.10.20",
    "2001:db8::8a2e:370:7334",
    "12AB34567",
    "AB-123-CD",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "admin:S3cr3t!",
    "DIFFUSION RESTREINTE",
    "Confidentiel Défense",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(std::env::var("VIGIE_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)))]

    #[test]
    fn streamed_equals_block_and_nothing_leaks(
        (text, _secrets) in sentence(),
        cuts in prop::collection::vec(any::<usize>(), 0..40),
    ) {
        let e = engine();
        let block = redact(e, &text);
        let streamed = stream(e, &text, &cuts);
        prop_assert_eq!(&streamed, &block);
        for v in VALUES {
            prop_assert!(!streamed.contains(v), "leaked {:?} in {:?}", v, streamed);
        }
    }

    #[test]
    fn one_byte_chunks(( text, _secrets) in sentence()) {
        let e = engine();
        let cuts: Vec<usize> = (0..text.len()).collect();
        prop_assert_eq!(stream(e, &text, &cuts), redact(e, &text));
    }
}
