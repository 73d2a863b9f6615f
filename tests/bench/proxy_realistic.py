"""The sidecar in its realistic configuration, before and after a change, in one run:
`cargo xtask bench realistic` (which builds both and runs this).

Targets: the mock directly, nginx, and for each sidecar build (`--before DIR`,
`--after DIR`: folders holding a `vigie-sidecar`) two configurations:
- plain: standalone, one pool, no DLP, no budget, no telemetry (as `bench proxy`);
- realistic: managed by a control plane (usage ledger shipped), every built-in DLP
  detector in both directions (redact), a token budget with leased allowance, OTLP
  export of every request's span to a collector in another process.

Cells: open loop at fixed rates (oha, latency-corrected): p50/p99 and what each adds to
direct; CPU time of the proxy per request (from /proc); a closed loop (32 connections)
for the maximum; then, for the realistic sidecars, cells that force usage estimates
(answers without usage, streams the app abandons) while resident memory is sampled.
Proxies are pinned to CPU 1; the mock, the collector, the control plane and the load
generator to CPU 0. Prints a Markdown report.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
import harness  # noqa: E402
import otlp  # noqa: E402

REL = ROOT / "target" / "release"
OHA = ROOT / "target" / "tools" / "bin" / "oha"
MODEL = "bench-model"
BODY = json.dumps({"model": MODEL, "max_tokens": 8, "messages": [
    {"role": "system", "content": "Tu es l'assistant du bureau des titres de la préfecture."},
    {"role": "user", "content": "Bonjour, peux-tu résumer ce document en trois points ? Merci."}]})
NO_USAGE = json.dumps({"omit_usage": True})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(pid: int, cpu: int):
    """Every thread of `pid` on `cpu` (threads started later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), {cpu})
        except OSError:
            pass


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """Resident memory; `RssAnon` for its anonymous part (heap, stacks: the file-backed
    rest is the executable's and libraries' pages, shared by the sidecars of a node)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


class RssSampler:
    def __init__(self, pid: int):
        self.pid, self.peak, self.peak_anon, self._stop = pid, 0, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.peak_anon = max(self.peak_anon, rss_kib(self.pid, "RssAnon"))
            time.sleep(0.05)

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return self.peak


def oha(url: str, seconds: int, rate: int | None, connections: int, headers=()) -> dict:
    args = ["taskset", "-c", "0", str(OHA), "--no-tui", "--output-format", "json", "-z", f"{seconds}s",
            "-c", str(connections), "-m", "POST", "-H", "content-type: application/json", "-d", BODY]
    for h in headers:
        args += ["-H", h]
    if rate:
        args += ["-q", str(rate), "--latency-correction"]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True)
    v = json.loads(out.stdout)
    pct = v["latencyPercentiles"]
    total = sum(v.get("statusCodeDistribution", {}).values())
    ok = v.get("statusCodeDistribution", {}).get("200", 0)
    return {"rps": v["summary"]["requestsPerSec"], "p50": pct["p50"] * 1000, "p99": pct["p99"] * 1000,
            "ok": ok / total if total else 0.0, "requests": total}


def abandon_streams(base_url: str, n: int):
    """Streams the app abandons after the first bytes: the upstream's usage never comes."""
    body = json.loads(BODY) | {"stream": True, "max_tokens": 64}
    payload = json.dumps(body).encode()
    for _ in range(n):
        host, port = base_url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      + f"Content-Length: {len(payload)}\r\nx-mock-behaviour: {{\"tokens_per_sec\": 200}}\r\n\r\n".encode()
                      + payload)
            s.recv(4096)


class Nginx:
    def __init__(self, upstream: str):
        self.dir = Path(tempfile.mkdtemp(prefix="vigie-nginx-"))
        (self.dir / "logs").mkdir()
        self.port = free_port()
        conf = (f"daemon off; master_process off; worker_processes 1; pid {self.dir}/nginx.pid; "
                f"error_log {self.dir}/logs/error.log warn;\nevents {{ worker_connections 4096; }}\n"
                f"http {{ access_log off; client_body_temp_path {self.dir}; proxy_temp_path {self.dir};\n"
                f"  upstream mock {{ server {upstream}; keepalive 128; }}\n"
                f"  server {{ listen 127.0.0.1:{self.port}; location / {{ proxy_pass http://mock; "
                f"proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering off; }} }} }}\n")
        (self.dir / "nginx.conf").write_text(conf)
        nginx = "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else "nginx"
        self.proc = subprocess.Popen([nginx, "-c", self.dir / "nginx.conf", "-p", self.dir],
                                     stderr=subprocess.DEVNULL)
        harness.wait_until(lambda: socket.create_connection(("127.0.0.1", self.port)).close() is None,
                           what="nginx")
        pin(self.proc.pid, 1)
        self.url = f"http://127.0.0.1:{self.port}/v1/chat/completions"


def chat_requests(base_url: str, n: int):
    """`n` requests in sequence on one keep-alive connection."""
    import http.client
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    for _ in range(n):
        conn.request("POST", "/v1/chat/completions", BODY, {"content-type": "application/json"})
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
    conn.close()


def allocations(bindir: Path, make_sidecar, n1: int, n2: int) -> float:
    """Heap blocks allocated per request by the sidecar, counted by valgrind's DHAT:
    (blocks after `n2` requests - blocks after `n1`) / (n2 - n1), so start-up and
    warm-up cancel out."""
    blocks = []
    for n in (n1, n2):
        wrap = Path(tempfile.mkdtemp(prefix="vigie-dhat-"))
        log = wrap / "dhat.log"
        (wrap / "vigie-sidecar").write_text(
            f"#!/bin/sh\nexec valgrind --tool=dhat --dhat-out-file=/dev/null --log-file={log} "
            f"{bindir / 'vigie-sidecar'} \"$@\"\n")
        (wrap / "vigie-sidecar").chmod(0o755)
        harness.BIN_DIR = wrap
        s = make_sidecar()
        harness.BIN_DIR = REL
        harness.wait_until(s.ready, timeout=120, what="sidecar under valgrind")
        chat_requests(s.base_url, n)
        s.process.proc.send_signal(15)
        s.process.proc.wait(timeout=120)
        s.stop()
        total = [line for line in log.read_text().splitlines() if "Total:" in line]
        # "==PID== Total:     1,234,567 bytes in 12,345 blocks"
        blocks.append(int(total[0].split(" in ")[1].split()[0].replace(",", "")))
    return (blocks[1] - blocks[0]) / (n2 - n1)


def main():
    # The load generator steers the mock with a test header; the sidecar forwards only
    # allow-listed headers unless told otherwise (older builds forward everything).
    os.environ["VIGIE_FORWARD_HEADERS"] = "x-mock-behaviour"
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, required=True)
    ap.add_argument("--after", type=Path, required=True)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rates", default="500,1000")
    ap.add_argument("--abandoned", type=int, default=300)
    ap.add_argument("--allocations", default="100,400",
                    help="request counts of the two DHAT runs per sidecar ('' skips)")
    opts = ap.parse_args()
    rates = [int(r) for r in opts.rates.split(",")]
    harness.BIN_DIR = REL

    mock = subprocess.Popen(["taskset", "-c", "0", REL / "vigie-mock-pool", "--models", MODEL, "--threads", "1",
                             "--capacity", "100000"], stdout=subprocess.PIPE)
    mock_addr = json.loads(mock.stdout.readline())["listening"]
    # The collector in its own process, on the load generator's core.
    otlp_port = free_port()
    sink = otlp.sink_process(otlp_port, cpu=0)
    cp = harness.ControlPlane()
    pin(cp.process.proc.pid, 0)
    admin = cp.token("bench-admin", "admin")
    workload = cp.token("bench-app", "workload", namespace="team-a")
    pool = harness.pool("gpu", [f"http://{mock_addr}"], [{"name": MODEL}])
    plain_policy = {"name": "bench", "pools": [pool]}
    cp.call("PolicyService/ApplyPolicy", {"policy": {
        "name": "realistic", "scope": {"namespace": "team-a"}, "pools": [pool],
        "dlp": {"rules": [{"detector": "*", "action": "DLP_ACTION_REDACT", "direction": "DLP_DIRECTION_BOTH"}]},
        "budgets": {"budgets": [{"name": "team-tokens", "unit": "BUDGET_UNIT_TOKENS", "limit": 1e12,
                                 "window": "BUDGET_WINDOW_DAY", "match": {"namespace": "team-a"}}]},
    }}, token=admin)
    nginx = Nginx(mock_addr)

    sidecars = {}
    for label, bindir in (("before", opts.before), ("after", opts.after)):
        harness.BIN_DIR = bindir
        plain = harness.Sidecar(plain_policy, env={"RUST_LOG": "warn"})
        real = harness.Sidecar(control_plane=cp, token=workload, identity={"pod": f"bench-{label}"},
                               env={"RUST_LOG": "warn", "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}"})
        harness.BIN_DIR = REL
        for s in (plain, real):
            pin(s.process.proc.pid, 1)
        sidecars[f"{label} plain"] = plain
        sidecars[f"{label} realistic"] = real
    targets = {"direct": f"http://{mock_addr}/v1/chat/completions", "nginx": nginx.url}
    targets |= {name: f"{s.base_url}/v1/chat/completions" for name, s in sidecars.items()}
    pids = {name: s.process.proc.pid for name, s in sidecars.items()} | {"nginx": nginx.proc.pid}
    for url in targets.values():
        oha(url, 2, 200, 16)
    time.sleep(1)
    idle = {name: rss_kib(pid) for name, pid in pids.items() if name != "nginx"}
    idle_anon = {name: rss_kib(pids[name], "RssAnon") for name in idle}
    peaks = dict.fromkeys(idle, 0)
    peaks_anon = dict.fromkeys(idle, 0)

    report = [f"Open loop (oha, latency-corrected), {opts.seconds} s per cell; proxies on CPU 1.\n",
              "| target | rate | achieved rps | 200 share | p50 ms | p99 ms | added p50 ms | added p99 ms | CPU µs/request |",
              "|---|---|---|---|---|---|---|---|---|"]
    added = {}
    for rate in rates:
        direct = None
        for name, url in targets.items():
            pid = pids.get(name)
            sampler = RssSampler(pid) if pid and name in idle else None
            cpu0 = cpu_seconds(pid) if pid else 0.0
            r = oha(url, opts.seconds, rate, 64)
            cpu = (cpu_seconds(pid) - cpu0) * 1e6 / max(r["requests"], 1) if pid else float("nan")
            if sampler:
                peaks[name] = max(peaks[name], sampler.stop())
                peaks_anon[name] = max(peaks_anon[name], sampler.peak_anon)
            direct = direct or r
            added[(name, rate)] = r["p50"] - direct["p50"]
            report.append(f"| {name} | {rate} | {r['rps']:.0f} | {r['ok']:.3f} | {r['p50']:.3f} | {r['p99']:.3f} | "
                          f"{r['p50'] - direct['p50']:+.3f} | {r['p99'] - direct['p99']:+.3f} | {cpu:.1f} |")
    report += ["", f"Closed loop (32 connections), {opts.seconds} s per cell:\n",
               "| target | max rps | CPU µs/request |", "|---|---|---|"]
    closed, closed_cpu = {}, {}
    for name, url in targets.items():
        if name == "direct":
            continue
        pid = pids[name]
        cpu0 = cpu_seconds(pid)
        r = oha(url, opts.seconds, None, 32)
        closed[name] = r["rps"]
        closed_cpu[name] = (cpu_seconds(pid) - cpu0) * 1e6 / max(r["requests"], 1)
        report.append(f"| {name} | {r['rps']:.0f} | {closed_cpu[name]:.1f} |")

    report += ["", "Usage estimates forced (answers without usage at 200 rps, then "
               f"{opts.abandoned} abandoned streams); resident memory (KiB):\n",
               "| sidecar | idle | peak over every cell | after the estimates | anonymous: idle | anonymous: peak |",
               "|---|---|---|---|---|---|"]
    for name, s in sidecars.items():
        if "realistic" not in name:
            continue
        pid = pids[name]
        sampler = RssSampler(pid)
        oha(targets[name], opts.seconds, 200, 16, headers=[f"x-mock-behaviour: {NO_USAGE}"])
        abandon_streams(s.base_url, opts.abandoned)
        time.sleep(1)
        peaks[name] = max(peaks[name], sampler.stop())
        peaks_anon[name] = max(peaks_anon[name], sampler.peak_anon)
        report.append(f"| {name} | {idle[name]} | {peaks[name]} | {rss_kib(pid)} | {idle_anon[name]} | "
                      f"{peaks_anon[name]} |")

    report += ["", "Against the pipeline issue's targets:\n"]
    for label in ("before", "after"):
        real, plain = f"{label} realistic", f"{label} plain"
        top = max(rates)
        ratio = added[(real, top)] / added[("nginx", top)] if added[("nginx", top)] > 0 else float("nan")
        report.append(f"- {label}: realistic added p50 at {top} rps = {ratio:.2f}× nginx's (target ≤ 1.2); "
                      f"closed-loop realistic / plain = {closed[real] / closed[plain]:.2f} (target ≥ 0.80; "
                      f"requests per CPU-second of the proxy: {closed_cpu[plain] / closed_cpu[real]:.2f}); "
                      f"peak RSS realistic = {peaks[real] / 1024:.1f} MiB (target ≤ 30)")
    for s in sidecars.values():
        s.stop()

    if opts.allocations:
        n1, n2 = (int(x) for x in opts.allocations.split(","))
        report += ["", f"Heap allocations per request (valgrind DHAT, blocks after {n2} minus after {n1} "
                   "sequential requests):\n", "| sidecar | plain | realistic |", "|---|---|---|"]
        for label, bindir in (("before", opts.before), ("after", opts.after)):
            extra = ["--shutdown-timeout-s", "1"]
            plain = allocations(bindir, lambda: harness.Sidecar(plain_policy, extra_args=extra, wait_ready=False,
                                                                env={"RUST_LOG": "warn"}), n1, n2)
            real = allocations(bindir, lambda: harness.Sidecar(
                control_plane=cp, token=workload, identity={"pod": f"dhat-{label}"}, extra_args=extra,
                wait_ready=False, env={"RUST_LOG": "warn",
                                       "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{otlp_port}"}), n1, n2)
            report.append(f"| {label} | {plain:.0f} | {real:.0f} |")
    print("\n".join(report))

    nginx.proc.kill()
    cp.stop()
    sink.kill()
    mock.kill()


if __name__ == "__main__":
    main()
