//! `cargo run --release -p vigie-dlp --example scan_throughput [MiB]`: block-mode and
//! streaming throughput of all built-in detectors on generated French prose with
//! identifiers sprinkled in (1 in ~40 sentences), on one core.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::time::Instant;

use vigie_dlp::{Engine, Redact, StreamScanner, builtins, transform_block};

const SENTENCES: &[&str] = &[
    "Le bureau des affaires générales a examiné le dossier de subvention déposé en mars. ",
    "Les agents de la préfecture rappellent que les délais de traitement restent de trois semaines. ",
    "Conformément à l'article 12 du décret du 4 juillet, la commission se réunira jeudi à 14 h 30. ",
    "Le montant total s'élève à 12 345,67 euros, hors taxes, pour l'exercice 2025. ",
    "Merci de transmettre les pièces justificatives avant la fin du mois, cordialement. ",
];
const SENSITIVE: &[&str] = &[
    "Contact : jean.dupont@interieur.gouv.fr, tél. 06 12 34 56 78. ",
    "IBAN FR76 3000 6000 0112 3456 7890 189 pour le remboursement. ",
    "NIR 1 85 05 78 006 084 91 de l'usager. ",
];

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(16);
    let mut text = String::new();
    let mut i = 0usize;
    while text.len() < mib << 20 {
        text.push_str(SENTENCES[i % SENTENCES.len()]);
        if i % 40 == 39 {
            text.push_str(SENSITIVE[(i / 40) % SENSITIVE.len()]);
        }
        i += 1;
    }
    if std::env::var_os("VIGIE_DLP_RAW").is_some() {
        raw(&text);
    }
    let engine = Engine::new(builtins()).expect("engine");
    let mb = text.len() as f64 / 1e6;

    let t = Instant::now();
    let mut redact = Redact::default();
    let out = transform_block(&engine, &text, &mut redact).unwrap();
    let block_s = t.elapsed().as_secs_f64();
    assert!(!out.contains("jean.dupont"));

    let t = Instant::now();
    let mut redact_s = Redact::default();
    let mut streamed = String::with_capacity(text.len());
    let mut scanner = StreamScanner::new(&engine, 4096);
    // Token-sized chunks, as an LLM stream delivers them.
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + 16).min(text.len());
        while !text.is_char_boundary(end) {
            end += 1;
        }
        scanner
            .push(&text[start..end], &mut redact_s, &mut streamed)
            .unwrap();
        start = end;
    }
    scanner.finish(&mut redact_s, &mut streamed).unwrap();
    let stream_s = t.elapsed().as_secs_f64();
    assert_eq!(streamed, out, "streamed output differs from block mode");

    println!(
        "{{\"text_mb\": {mb:.1}, \"block_mb_per_s\": {:.1}, \"stream16_mb_per_s\": {:.1}, \"findings\": {:?}}}",
        mb / block_s,
        mb / stream_s,
        redact.counts
    );
}

/// Raw matcher speed and candidate count per detector (diagnostics).
#[allow(dead_code)]
fn raw(text: &str) {
    use vigie_dlp::engine::{HyperscanMatcher, Matcher};
    let dets = builtins();
    let mut pats = Vec::new();
    let mut owner = Vec::new();
    for d in &dets {
        for p in &d.patterns {
            pats.push((p.clone(), d.caseless));
            owner.push(d.name.clone());
        }
    }
    let m = HyperscanMatcher::compile(&pats).unwrap();
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let t = Instant::now();
    m.scan(text.as_bytes(), &mut |p, _| {
        *counts.entry(owner[p].clone()).or_default() += 1
    })
    .unwrap();
    println!(
        "raw scan (ends only, as the engine does) {:.1} MB/s, ends {counts:?}",
        text.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    // The same patterns without start-of-match tracking.
    use hyperscan::prelude::{BlockDatabase, Builder as _, Matching, Pattern, Patterns};
    let list: Patterns = pats
        .iter()
        .enumerate()
        .map(|(i, (e, c))| Pattern {
            expression: e.clone(),
            flags: if *c {
                hyperscan::CompileFlags::CASELESS
            } else {
                hyperscan::CompileFlags::empty()
            },
            id: Some(i),
            ext: Default::default(),
            som: None,
        })
        .collect();
    let db: BlockDatabase = list.build().unwrap();
    let scratch = db.alloc_scratch().unwrap();
    let mut n = 0usize;
    let t = Instant::now();
    db.scan(text.as_bytes(), &scratch, |_, _, _, _| {
        n += 1;
        Matching::Continue
    })
    .unwrap();
    println!(
        "raw scan without SOM {:.1} MB/s, {n} ends",
        text.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    // The set without the detectors that need context words.
    let ctx: Vec<(String, bool)> = dets
        .iter()
        .filter(|d| d.context.is_empty())
        .flat_map(|d| {
            d.patterns
                .iter()
                .map(|p| (p.clone(), d.caseless))
                .collect::<Vec<_>>()
        })
        .collect();
    let m = HyperscanMatcher::compile(&ctx).unwrap();
    let t = Instant::now();
    m.scan(text.as_bytes(), &mut |_, _| {}).unwrap();
    println!(
        "  context-free detectors only: {:.0} MB/s",
        text.len() as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    // Groups scanned separately.
    let group_of = |d: &vigie_dlp::Detector| {
        if !d.context.is_empty() {
            "context"
        } else if d.patterns.iter().all(|p| {
            p.starts_with("[0-9]")
                || p.starts_with("[1-4")
                || p.starts_with("0[")
                || p.starts_with("(\\+33")
                || p.starts_with("[A-Z]{2}")
                || p.starts_with("3[47]")
                || p.starts_with("FR")
                || p.starts_with("[0-9A-F")
        }) {
            "digits"
        } else {
            "literal"
        }
    };
    let mut total = 0.0;
    for g in ["literal", "digits", "context"] {
        let set: Vec<(String, bool)> = dets
            .iter()
            .filter(|d| group_of(d) == g)
            .flat_map(|d| {
                d.patterns
                    .iter()
                    .map(|p| (p.clone(), d.caseless))
                    .collect::<Vec<_>>()
            })
            .collect();
        let names: Vec<&str> = dets
            .iter()
            .filter(|d| group_of(d) == g)
            .map(|d| d.name.as_str())
            .collect();
        let m = HyperscanMatcher::compile(&set).unwrap();
        let t = Instant::now();
        m.scan(text.as_bytes(), &mut |_, _| {}).unwrap();
        let secs = t.elapsed().as_secs_f64();
        total += secs;
        println!(
            "  group {g} ({} patterns: {names:?}): {:.0} MB/s",
            set.len(),
            text.len() as f64 / 1e6 / secs
        );
    }
    println!(
        "  three groups in sequence: {:.0} MB/s",
        text.len() as f64 / 1e6 / total
    );
    // Marginal cost: the set without each pattern.
    for (i, name) in owner.iter().enumerate() {
        let rest: Vec<(String, bool)> = pats
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, p)| p.clone())
            .collect();
        let m = HyperscanMatcher::compile(&rest).unwrap();
        let t = Instant::now();
        m.scan(text.as_bytes(), &mut |_, _| {}).unwrap();
        let rate = text.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
        if rate > 330.0 {
            println!("  without pattern {i} ({name}): {rate:.0} MB/s");
        }
    }
    // Each pattern alone: which ones cost.
    for (i, (expr, caseless)) in pats.iter().enumerate() {
        let m = HyperscanMatcher::compile(&[(expr.clone(), *caseless)]).unwrap();
        let t = Instant::now();
        m.scan(text.as_bytes(), &mut |_, _| {}).unwrap();
        let rate = text.len() as f64 / 1e6 / t.elapsed().as_secs_f64();
        if rate < 3000.0 {
            println!("  pattern {i} ({}) alone: {rate:.0} MB/s", owner[i]);
        }
    }
}
