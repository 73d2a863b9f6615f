"""`cargo xtask bench usage`: usage-ledger ingestion at the control plane, records/s
with batched ReportUsage from concurrent sidecar-like clients, on the embedded store
and on PostgreSQL (fsync on). Writes target/bench/usage.md."""

import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import ROOT, ControlPlane, Postgres, binary  # noqa: E402


def run(backend: str, database_url: str | None, clients: int, batch: int) -> dict:
    cp = ControlPlane(database_url=database_url, replica=f"bench-{backend}")
    try:
        token = cp.token("bench-usage", "workload", namespace="bench")
        out = subprocess.run([str(binary("vigie-usage-load")), "--control-plane", cp.url, "--token", token,
                              "--clients", str(clients), "--batch", str(batch), "--seconds", "10"],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"usage-load failed:\n{out.stderr}\n{cp.log()[-3000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1]) | {"backend": backend}
    finally:
        cp.stop()


def main():
    results = []
    for clients, batch in [(1, 1000), (4, 1000)]:
        results.append(run("sqlite", None, clients, batch))
    pg = Postgres(fsync=True)
    try:
        for clients, batch in [(1, 1000), (4, 1000)]:
            results.append(run("postgres", pg.new_database(), clients, batch))
    finally:
        pg.stop()
    lines = ["| backend | clients × batch | records/s | batch p50 | batch p99 | records |", "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['clients']} × {r['batch']} | {r['records_per_s']:,.0f} | "
                     f"{r['batch_ms']['p50']:.1f} ms | {r['batch_ms']['p99']:.1f} ms | {r['records']:,} |")
    out = ROOT / "target/bench/usage.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
