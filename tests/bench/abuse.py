"""`cargo xtask bench abuse`: memory and latency under the issue-20 attacks, release
builds. Writes target/bench/abuse.md.

Control plane: p50/p99 of a normal ApplyPolicy (no DLP, and with a small DLP section)
alone, then while 4 auditors send the largest allowed ValidatePolicy in a loop
(64 custom detectors, each just under the regex limits); the control plane's RSS.

Sidecar: RSS idle, with 10,000 connections opened at once (at most 1,024 held), after
they close (and the 30 s trim), and with the most request bodies in flight (eight 8 MiB
bodies held by a slow upstream, more refused)."""

import json
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import ROOT, ControlPlane, MockPool, Sidecar, pool  # noqa: E402

MIB = 1024 * 1024


def rss(process) -> float:
    for line in Path(f"/proc/{process.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def grpc(cp, method, body, token):
    args = cp.grpcurl_args(token) + ["-d", "@", cp.address, f"vigie.v1.{method}"]
    t = time.monotonic()
    out = subprocess.run(args, input=json.dumps(body), capture_output=True, text=True, timeout=60)
    return out.returncode, time.monotonic() - t, out.stdout + out.stderr


def percentile(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def control_plane() -> list[str]:
    cp = ControlPlane(replica="bench-abuse")
    try:
        admin = cp.token("alice", "admin")
        auditors = [cp.token(f"eve{i}", "auditor") for i in range(4)]
        m = "http://127.0.0.1:9"
        heavy = {"name": "heavy", "dlp": {
            "customDetectors": [{"name": f"D{i}", "regex": f"(?:[A-Z]{{2}}[0-9]{{17}}){{105}}"} for i in range(5)],
            "rules": [{"detector": f"D{i}", "action": "DLP_ACTION_REDACT"} for i in range(5)]}}
        code, took, text = grpc(cp, "PolicyService/ValidatePolicy", {"policy": heavy}, auditors[0])
        heavy_result = "valid" if code == 0 else text.split("Message:")[-1].strip().splitlines()[0][:120]

        def normal(i, dlp):
            p = {"name": "normal-dlp" if dlp else "normal", "pools": [pool("gpu", [m], [{"name": f"m{i}"}])]}
            if dlp:
                p["dlp"] = {"rules": [{"detector": "FR_NIR", "action": "DLP_ACTION_REDACT"}]}
            code, took, text = grpc(cp, "PolicyService/ApplyPolicy", {"policy": p}, admin)
            assert code == 0, text
            return took

        def measure(n=20):
            return {dlp: [normal(i, dlp) for i in range(n)] for dlp in (False, True)}

        rss_idle = rss(cp.process)
        alone = measure()
        stop, attacks, peak = threading.Event(), [], [rss_idle]

        def attacker(token):
            while not stop.is_set():
                attacks.append(grpc(cp, "PolicyService/ValidatePolicy", {"policy": heavy}, token)[0])

        def sampler():
            while not stop.is_set():
                peak.append(rss(cp.process))
                time.sleep(0.1)

        threads = [threading.Thread(target=attacker, args=(t,)) for t in auditors] + [threading.Thread(target=sampler)]
        for t in threads:
            t.start()
        time.sleep(1)
        under = measure()
        stop.set()
        for t in threads:
            t.join()
        rows = ["| normal ApplyPolicy | alone p50 | alone p99 | under attack p50 | under attack p99 |",
                "|---|---|---|---|---|"]
        for dlp in (False, True):
            rows.append(f"| {'with a DLP section' if dlp else 'no DLP'} | {statistics.median(alone[dlp]) * 1000:.0f} ms | "
                        f"{percentile(alone[dlp], 99) * 1000:.0f} ms | {statistics.median(under[dlp]) * 1000:.0f} ms | "
                        f"{percentile(under[dlp], 99) * 1000:.0f} ms |")
        rows += ["", f"Largest allowed ValidatePolicy (5 detectors × 1,995 unfolded states): {heavy_result} "
                     f"in {took:.1f} s; {len(attacks)} sent by 4 auditors during the run "
                     f"({sum(1 for c in attacks if c != 0)} refused as busy or too slow).",
                 f"Control plane RSS: idle {rss_idle:.1f} MiB, peak under attack {max(peak):.1f} MiB."]
        return rows
    finally:
        cp.stop()


def sidecar() -> list[str]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    slow = MockPool("slow", ["m"], ttft_ms=4000)
    s = Sidecar({"name": "p", "pools": [pool("gpu", [slow.url], [{"name": "m"}])]})
    rows = []
    try:
        host, port = s.base_url.removeprefix("http://").split(":")
        address = (host, int(port))
        idle = rss(s.process)
        socks = []
        for _ in range(10_000):
            try:
                socks.append(socket.create_connection(address, timeout=5))
            except OSError:
                break
        time.sleep(1)
        with_conns = rss(s.process)
        held = next(float(line.split()[-1]) for line in httpx.get(s.admin_url + "/metrics").text.splitlines()
                    if line.startswith("vigie_sidecar_connections_refused_total"))
        for sk in socks:
            sk.close()
        time.sleep(35)
        after = rss(s.process)
        # Bodies: 12 requests of 8 MiB at once, answered after 4 s by the slow upstream.
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "a " * (4 * MIB - 100)}]})
        statuses, peak, stop = [], [after], threading.Event()

        def send():
            r = httpx.post(s.base_url + "/v1/chat/completions", content=body, timeout=60,
                           headers={"content-type": "application/json"})
            statuses.append(r.status_code)

        def sampler():
            while not stop.is_set():
                peak.append(rss(s.process))
                time.sleep(0.05)

        sampling = threading.Thread(target=sampler)
        sampling.start()
        senders = [threading.Thread(target=send) for _ in range(12)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
        stop.set()
        sampling.join()
        rows = ["| sidecar (defaults) | RSS |", "|---|---|",
                f"| idle | {idle:.1f} MiB |",
                f"| 10,000 connections opened ({len(socks)} connected, {held:.0f} closed at once) | {with_conns:.1f} MiB |",
                f"| after they closed, 35 s later | {after:.1f} MiB |",
                f"| 12 × 8 MiB bodies at once (statuses {sorted(statuses)}) | peak {max(peak):.1f} MiB |",
                "", "Injected memory limit: 256 MiB."]
    finally:
        s.stop()
        slow.stop()
    return rows


def main():
    rows = control_plane() + [""] + sidecar()
    out = ROOT / "target/bench/abuse.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
