"""`cargo xtask bench control-plane`: propagation to N real gRPC watchers, memory per
watcher and ApplyPolicy throughput, on the embedded store and on PostgreSQL.

Runs release binaries ($VIGIE_BIN_DIR); writes target/bench/control-plane.md.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import ROOT, ControlPlane, Postgres, binary  # noqa: E402

WATCHERS = int(os.environ.get("VIGIE_BENCH_WATCHERS", "1000"))
ROUNDS = int(os.environ.get("VIGIE_BENCH_ROUNDS", "20"))
APPLY_SECONDS = int(os.environ.get("VIGIE_BENCH_APPLY_SECONDS", "10"))


def run(backend: str, database_url: str | None) -> dict:
    cp = ControlPlane(database_url=database_url, replica=f"bench-{backend}")
    try:
        # Quiet logs: at 1000 watchers, per-connection info lines would cost CPU.
        admin = cp.token("bench-admin", "admin")
        workload = cp.token("bench-workload", "workload", namespace="bench")
        out = subprocess.run(
            [str(binary("vigie-watch-load")), "--control-plane", cp.url, "--admin-token", admin,
             "--workload-token", workload, "--watchers", str(WATCHERS), "--rounds", str(ROUNDS),
             "--cp-pid", str(cp.process.proc.pid), "--apply-seconds", str(APPLY_SECONDS)],
            capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"watch-load failed:\n{out.stderr}\n--- control plane log ---\n{cp.log()[-4000:]}")
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["backend"] = backend
        return result
    finally:
        cp.stop()


def main():
    results = [run("sqlite", None)]
    pg = Postgres(fsync=True)
    try:
        results.append(run("postgres", pg.new_database()))
    finally:
        pg.stop()
    lines = [
        f"Watchers: {WATCHERS} (one HTTP/2 connection each), {ROUNDS} policy changes pushed to all of them. "
        "SQLite: WAL, synchronous=NORMAL. PostgreSQL: local server, fsync on.",
        "",
        "| backend | propagation p50 | p90 | p99 | max | ACKs in status | CP RSS before → with watchers | KiB per watcher | ApplyPolicy/s sequential | ApplyPolicy/s 4 concurrent |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        p = r["propagation_ms"]
        lines.append(
            f"| {r['backend']} | {p['p50']:.1f} ms | {p['p90']:.1f} ms | {p['p99']:.1f} ms | {p['max']:.1f} ms "
            f"| {r['acked_in_status']}/{r['watchers']} | {r['cp_rss_kib']['before'] / 1024:.1f} → "
            f"{r['cp_rss_kib']['connected'] / 1024:.1f} MiB | {r['cp_kib_per_watcher']:.1f} "
            f"| {r['apply_per_s']['sequential']:.0f} | {r['apply_per_s']['concurrent_4']:.0f} |")
    text = "\n".join(lines) + "\n"
    out = ROOT / "target" / "bench" / "control-plane.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n```json\n" + json.dumps(results, indent=2) + "\n```\n")
    print(text)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
