//! A labelled corpus generator: French prompts with valid identifiers (checksums
//! computed, not copied from real people) and hard negatives (wrong checksums, dates,
//! amounts, order numbers, hashes, UUIDs, article numbers). Seeded, so a run is
//! reproducible; used by the precision/recall harness and the Presidio comparison.

use std::fmt::Write as _;

/// One sample: the text and the expected findings (detector, byte span).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    pub text: String,
    pub labels: Vec<(String, usize, usize)>,
}

struct Gen(fastrand::Rng);

impl Gen {
    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.0.u8(0..10)))
            .collect()
    }
    fn upper(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.0.usize(0..alphabet.len())]))
            .collect()
    }
    fn alnum(&mut self, n: usize) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        self.upper(n, A)
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.0.usize(0..items.len())]
    }
}

fn luhn_complete(partial: &str) -> String {
    for d in 0..10 {
        let candidate = format!("{partial}{d}");
        let ds: Vec<u32> = candidate.chars().filter_map(|c| c.to_digit(10)).collect();
        if crate::checks::luhn(&ds) {
            return candidate;
        }
    }
    partial.to_string()
}

fn group(s: &str, size: usize, sep: &str) -> String {
    s.as_bytes()
        .chunks(size)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(sep)
}

fn mod97(s: &str) -> u32 {
    s.chars().fold(0u32, |r, c| {
        let v = c.to_digit(36).unwrap_or(0);
        if v >= 10 {
            (r * 100 + v) % 97
        } else {
            (r * 10 + v) % 97
        }
    })
}

fn iban(country: &str, bban: &str) -> String {
    let check = 98 - mod97(&format!("{bban}{country}00"));
    format!("{country}{check:02}{bban}")
}

/// A valid identifier of `detector`, and the words to put before it.
fn positive(g: &mut Gen, detector: &str) -> (String, String) {
    match detector {
        "FR_NIR" => {
            let dept = if g.0.u8(0..10) == 0 {
                g.pick(&["2A", "2B"]).to_string()
            } else {
                format!("{:02}", g.0.u8(1..96))
            };
            let body = format!(
                "{}{:02}{:02}{dept}{:03}{:03}",
                g.0.u8(1..3),
                g.0.u8(0..100),
                g.0.u8(1..13),
                g.0.u16(1..990),
                g.0.u16(1..999)
            );
            let n: u64 = body
                .replace("2A", "19")
                .replace("2B", "18")
                .parse()
                .unwrap_or(0);
            let full = format!("{body}{:02}", 97 - n % 97);
            let v = if g.0.bool() {
                format!(
                    "{} {} {} {} {} {} {}",
                    &full[0..1],
                    &full[1..3],
                    &full[3..5],
                    &full[5..7],
                    &full[7..10],
                    &full[10..13],
                    &full[13..]
                )
            } else {
                full
            };
            ("numéro de sécurité sociale".into(), v)
        }
        "IBAN" => {
            let v = if g.0.bool() {
                iban("FR", &g.digits(23))
            } else {
                iban("DE", &g.digits(18))
            };
            let v = if g.0.bool() { group(&v, 4, " ") } else { v };
            ("IBAN".into(), v)
        }
        "CREDIT_CARD" => {
            let v = match g.0.u8(0..3) {
                0 => luhn_complete(&format!("4{}", g.digits(14))),
                1 => luhn_complete(&format!("5{}{}", g.0.u8(1..6), g.digits(13))),
                _ => luhn_complete(&format!("{}{}", g.0.u16(2221..2721), g.digits(11))),
            };
            let v = if g.0.bool() { group(&v, 4, " ") } else { v };
            ("carte bancaire".into(), v)
        }
        "FR_SIREN" => (
            "SIREN".into(),
            luhn_complete(&format!("{}", g.0.u32(10_000_000..99_999_999))),
        ),
        "FR_SIRET" => (
            "SIRET".into(),
            luhn_complete(&format!(
                "{}{}",
                g.0.u32(100_000_000..999_999_999),
                g.digits(4)
            )),
        ),
        "FR_TVA" => {
            let siren = luhn_complete(&format!("{}", g.0.u32(10_000_000..99_999_999)));
            let n: u64 = siren.parse().unwrap_or(0);
            (
                "TVA intracommunautaire".into(),
                format!("FR{:02}{siren}", (12 + 3 * (n % 97)) % 97),
            )
        }
        "FR_NIF" => {
            let body = g.0.u64(1_000_000_000..3_999_999_999);
            (
                "numéro fiscal".into(),
                format!("{body:010}{:03}", body % 511),
            )
        }
        "PHONE_NUMBER" => {
            let sep = g.pick(&[" ", ".", "", "-"]);
            let rest = format!("{}{}", g.0.u8(1..10), g.digits(8));
            let v = if g.0.bool() {
                format!("0{}{sep}{}", &rest[..1], group(&rest[1..], 2, sep))
            } else {
                format!("+33 {}{sep}{}", &rest[..1], group(&rest[1..], 2, sep))
            };
            ("téléphone".into(), v)
        }
        "EMAIL_ADDRESS" => {
            let v = format!(
                "{}.{}@{}",
                g.pick(&["jean", "marie", "a", "camille", "luc"]),
                g.pick(&["dupont", "martin", "n", "bernard"]),
                g.pick(&[
                    "interieur.gouv.fr",
                    "exemple.fr",
                    "mairie-lyon.fr",
                    "mail.com"
                ])
            );
            ("courriel".into(), v)
        }
        "IP_ADDRESS" => (
            "serveur".into(),
            format!(
                "{}.{}.{}.{}",
                g.0.u8(1..224),
                g.0.u8(0..=255),
                g.0.u8(0..=255),
                g.0.u8(1..255)
            ),
        ),
        "FR_PASSPORT" => (
            "passeport".into(),
            format!(
                "{}{}{}",
                g.digits(2),
                g.upper(2, b"ABCDEFGHJKLMNPRSTUVWXYZ"),
                g.digits(5)
            ),
        ),
        "FR_CNI" => ("carte nationale d'identité".into(), g.digits(12)),
        "FR_LICENSE_PLATE" => {
            const L: &[u8] = b"ABCDEFGHJKLMNPQRSTVXYZ";
            (
                "véhicule".into(),
                format!(
                    "{}-{:03}-{}",
                    g.upper(2, L),
                    g.0.u16(1..1000),
                    g.upper(2, L)
                ),
            )
        }
        "AWS_ACCESS_KEY" => (
            "clé".into(),
            format!("AKIA{}", g.upper(16, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")),
        ),
        "GITHUB_TOKEN" => ("jeton".into(), format!("ghp_{}", g.alnum(36))),
        "OPENAI_API_KEY" => ("clé".into(), format!("sk-proj-{}", g.alnum(40))),
        "ANTHROPIC_API_KEY" => ("clé".into(), format!("sk-ant-api03-{}", g.alnum(48))),
        "MISTRAL_API_KEY" => ("clé Mistral".into(), format!("{}7", g.alnum(31))),
        "SLACK_TOKEN" => (
            "jeton".into(),
            format!("xoxb-{}-{}", g.digits(12), g.alnum(24)),
        ),
        "GOOGLE_API_KEY" => ("clé".into(), format!("AIza{}", g.alnum(35))),
        "JWT" => (
            "jeton".into(),
            format!("eyJ{}.eyJ{}.{}", g.alnum(20), g.alnum(30), g.alnum(43)),
        ),
        "URL_PASSWORD" => ("base".into(), format!("postgres://admin:{}@", g.alnum(12))),
        "PRIVATE_KEY" => (
            "clé privée".into(),
            format!(
                "-----BEGIN PRIVATE KEY-----\n{}\n{}\n-----END PRIVATE KEY-----",
                g.alnum(64),
                g.alnum(40)
            ),
        ),
        _ => (
            "document".into(),
            g.pick(&[
                "DIFFUSION RESTREINTE",
                "Confidentiel Défense",
                "SECRET DÉFENSE",
            ])
            .to_string(),
        ),
    }
}

/// Text that looks like identifiers and is not one.
fn negative(g: &mut Gen) -> String {
    match g.0.u8(0..19) {
        0 => format!(
            "le {:02}/{:02}/20{:02}",
            g.0.u8(1..29),
            g.0.u8(1..13),
            g.0.u8(0..30)
        ),
        1 => format!(
            "{} {:03},{:02} €",
            g.0.u16(1..999),
            g.0.u16(0..1000),
            g.0.u8(0..100)
        ),
        2 => format!("commande n° {} {}", g.digits(4), g.digits(4)),
        3 => format!(
            "empreinte {}",
            (0..64)
                .map(|_| char::from(b"0123456789abcdef"[g.0.usize(0..16)]))
                .collect::<String>()
        ),
        4 => format!(
            "{}-{}-{}-{}-{}",
            g.alnum(8).to_lowercase(),
            g.digits(4),
            g.digits(4),
            g.digits(4),
            g.digits(12)
        ),
        5 => format!(
            "article L. {}-{} du code",
            g.0.u16(100..9999),
            g.0.u8(1..50)
        ),
        6 => {
            // A NIR-shaped number with a wrong key.
            let body = format!(
                "1{:02}{:02}{:02}{:03}{:03}",
                g.0.u8(0..100),
                g.0.u8(1..13),
                g.0.u8(1..96),
                g.0.u16(1..990),
                g.0.u16(1..999)
            );
            let n: u64 = body.parse().unwrap_or(0);
            format!("{body}{:02}", (97 - n % 97) % 97 + 1)
        }
        7 => {
            // A card-shaped number that fails Luhn.
            let ok = luhn_complete(&format!("4{}", g.digits(14)));
            let last = ok.chars().last().and_then(|c| c.to_digit(10)).unwrap_or(0);
            format!("{}{}", &ok[..15], (last + 1) % 10)
        }
        8 => format!(
            "version {}.{}.{}",
            g.0.u8(0..20),
            g.0.u8(0..20),
            g.0.u8(0..50)
        ),
        // Numbers with separators that detectors now accept between digit groups.
        10 => format!(
            "le 0{}/{:02}/20{:02} {:02}:{:02}",
            g.0.u8(1..10),
            g.0.u8(1..13),
            g.0.u8(0..30),
            g.0.u8(0..24),
            g.0.u8(0..60)
        ),
        11 => format!(
            "dossier {:02}.{:02}.20{:02}-{}",
            g.0.u8(1..29),
            g.0.u8(1..13),
            g.0.u8(0..30),
            g.digits(4)
        ),
        12 => format!("pièce 0{}_{}_{}", g.0.u8(1..10), g.digits(4), g.digits(4)),
        // Prose that looks like personal data and is not: titles after civilities,
        // meeting dates, bodies and streets named after people, common nouns that are
        // also given names, cities on their own.
        13 => g
            .pick(&[
                "M. le Préfet a reçu Madame la Ministre",
                "Monsieur Le Maire ouvre la séance",
                "Madame la Directrice signe l'arrêté",
            ])
            .to_string(),
        14 => format!(
            "réunion le {:02}/{:02}/20{:02} à {} h",
            g.0.u8(1..29),
            g.0.u8(1..13),
            g.0.u8(20..30),
            g.0.u8(8..18)
        ),
        15 => format!(
            "au lycée {} ou à l'avenue {}",
            g.pick(&["Victor-Hugo", "Jean-Moulin", "Marie-Curie"]),
            g.pick(&["Victor-Hugo", "Jean-Jaurès", "de la République"])
        ),
        16 => g
            .pick(&[
                "une pierre, la rose et le mois de mars",
                "il reste 2 places de parking",
                "la route est coupée et le cours reprend",
            ])
            .to_string(),
        17 => format!(
            "la préfecture de {} et le tribunal de {}",
            g.pick(&["Lyon", "Rennes", "Lille"]),
            g.pick(&["Paris", "Nantes", "Bordeaux"])
        ),
        18 => format!(
            "courrier donné le {:02}/{:02}/20{:02} au guichet",
            g.0.u8(1..29),
            g.0.u8(1..13),
            g.0.u8(20..30)
        ),
        _ => format!("référence {}", g.digits(9)),
    }
}

const GIVEN: &[&str] = &[
    "Sophie",
    "Jean-Pierre",
    "Karim",
    "Marie",
    "Hélène",
    "Thi Lan",
    "Mamadou",
    "Léa",
    "François",
];
const SURNAMES: &[&str] = &[
    "Lefèvre",
    "Martin",
    "Durand",
    "Benali",
    "de La Fontaine",
    "Nguyen",
    "LEFÈVRE",
    "Diallo",
    "Le Goff",
    "d'Artagnan",
];

/// A clause with one piece of personal data of `detector`, and the byte span of it.
fn personal(g: &mut Gen, detector: &str) -> (String, usize, usize) {
    let (before, value, after) = match detector {
        "PERSON" => {
            let name = match g.0.u8(0..3) {
                0 => format!("{} {}", g.pick(GIVEN), g.pick(SURNAMES)),
                1 => g.pick(SURNAMES).to_string(),
                _ => format!(
                    "{} {}",
                    g.pick(&["LEFÈVRE", "MARTIN", "DIALLO"]),
                    g.pick(GIVEN)
                ),
            };
            let lead = g.pick(&[
                "Convocation de Mme ",
                "Courrier adressé à M. ",
                "Rendez-vous pris par Maître ",
                "La plaignante, ",
                "Le mis en cause ",
                "Avis du Dr ",
                "Dossier de M. et Mme ",
            ]);
            (lead.to_string(), name, " reçu ce jour".to_string())
        }
        "ADDRESS" => {
            let number = format!("{}{}", g.0.u16(1..300), g.pick(&["", " bis", " ter"]));
            let way = g.pick(&[
                "rue",
                "avenue",
                "boulevard",
                "place",
                "chemin",
                "allée",
                "impasse",
                "quai",
            ]);
            let name = g.pick(&[
                "des Lilas",
                "Victor-Hugo",
                "de la République",
                "du Général de Gaulle",
                "Jean Jaurès",
                "de Paris",
            ]);
            let city = g.pick(&[
                "75011 Paris",
                "69003 Lyon",
                "35000 Rennes",
                "97400 Saint-Denis",
                "13001 Marseille",
            ]);
            let value = match g.0.u8(0..3) {
                0 => format!("{number} {way} {name}, {city}"),
                1 => format!("{number} {way} {name}"),
                _ => format!("{way} {name}, {city}"),
            };
            let lead = g.pick(&["demeurant ", "Adresse : ", "à renvoyer au ", "domicile : "]);
            (lead.to_string(), value, ", merci".to_string())
        }
        _ => {
            let (d, m, y) = (g.0.u8(1..29), g.0.u8(1..13), g.0.u16(1930..2010));
            let value = match g.0.u8(0..3) {
                0 => format!("{d:02}/{m:02}/{y}"),
                1 => format!(
                    "{d} {} {y}",
                    crate::personal::MONTH_NAMES[usize::from(m - 1)]
                ),
                _ => format!("{y}-{m:02}-{d:02}"),
            };
            let lead = g.pick(&[
                "né le ",
                "née le ",
                "Date de naissance : ",
                "DDN ",
                "né(e) le ",
            ]);
            (lead.to_string(), value, " à Lyon".to_string())
        }
    };
    let text = format!("{before}{value}{after}");
    (text, before.len(), before.len() + value.len())
}

/// Detectors whose samples are clauses of prose rather than `Le <context> : <value>`.
const PROSE: &[&str] = &["PERSON", "ADDRESS", "DATE_OF_BIRTH"];

const FILLER: &[&str] = &[
    "Bonjour, pouvez-vous vérifier le dossier",
    "Le service instructeur a bien reçu la demande",
    "Merci de répondre avant vendredi",
    "Voici les éléments transmis par l'usager",
    "La commission a rendu son avis",
];

pub const DETECTORS: &[&str] = &[
    "FR_NIR",
    "IBAN",
    "CREDIT_CARD",
    "FR_SIREN",
    "FR_SIRET",
    "FR_TVA",
    "FR_NIF",
    "PHONE_NUMBER",
    "EMAIL_ADDRESS",
    "IP_ADDRESS",
    "FR_PASSPORT",
    "FR_CNI",
    "FR_LICENSE_PLATE",
    "AWS_ACCESS_KEY",
    "GITHUB_TOKEN",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "MISTRAL_API_KEY",
    "SLACK_TOKEN",
    "GOOGLE_API_KEY",
    "JWT",
    "URL_PASSWORD",
    "PRIVATE_KEY",
    "CLASSIFICATION_MARKING",
    "PERSON",
    "ADDRESS",
    "DATE_OF_BIRTH",
];

/// `n` samples, each with 0–2 identifiers and 0–2 hard negatives.
pub fn generate(seed: u64, n: usize) -> Vec<Sample> {
    let mut g = Gen(fastrand::Rng::with_seed(seed));
    (0..n)
        .map(|_| {
            let mut text = String::new();
            let mut labels = Vec::new();
            text.push_str(g.pick(FILLER));
            for _ in 0..g.0.usize(0..3) {
                let _ = write!(text, ", {}", negative(&mut g));
            }
            for _ in 0..g.0.usize(0..3) {
                let det = DETECTORS[g.0.usize(0..DETECTORS.len())];
                if PROSE.contains(&det) {
                    let (clause, from, to) = personal(&mut g, det);
                    text.push_str(". ");
                    let at = text.len();
                    text.push_str(&clause);
                    labels.push((det.to_string(), at + from, at + to));
                    continue;
                }
                let (context, value) = positive(&mut g, det);
                let _ = write!(text, ". Le {context} : ");
                let start = text.len();
                text.push_str(&value);
                labels.push((det.to_string(), start, text.len()));
            }
            text.push_str(". ");
            text.push_str(g.pick(FILLER));
            text.push('.');
            Sample { text, labels }
        })
        .collect()
}
