"""Sidecar memory with OTLP export on, against the e2e tests' decoding receiver
(tests/e2e/otlp.py): a re-run of `cargo xtask bench telemetry` run 1's "collector up"
scenario, to check its RSS figure. Needs the release binaries and oha that
`cargo xtask bench telemetry` builds and installs.

    target/venv/bin/python tests/bench/telemetry_rss.py MODE
    MODE: inprocess (receiver in this process), pinned (receiver in its own process on
    CPU 0, as in run 1), slow (receiver in this process, 0.3 s per export)
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from otlp import OtlpReceiver, sink_process  # noqa: E402

REL = ROOT / "target" / "release"
BODY = ('{"model":"bench-model","messages":[{"role":"user","content":"Bonjour, peux-tu resumer ce document '
        'en trois points ?"}],"max_tokens":8}')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(mode: str):
    mock = subprocess.Popen(["taskset", "-c", "0", REL / "vigie-mock-pool", "--models", "bench-model",
                             "--threads", "1", "--capacity", "100000"], stdout=subprocess.PIPE)
    addr = json.loads(mock.stdout.readline())["listening"]
    policy = Path("/tmp/vigie-rss-policy.json")
    policy.write_text(json.dumps({"name": "bench", "pools": [{"name": "gpu", "kind": "POOL_KIND_VLLM",
                                  "endpoints": [{"url": f"http://{addr}"}], "models": [{"name": "bench-model"}]}]}))
    stop = []
    if mode == "pinned":
        port = free_port()
        sink = sink_process(port, cpu=0, clear_every=5)
        endpoint = f"http://127.0.0.1:{port}"
        stop.append(sink.kill)
    else:
        r = OtlpReceiver("grpc").start()
        r.set_delay(0.3 if mode == "slow" else 0)
        endpoint = r.endpoint
        stop.append(r.stop)
    port, admin = free_port(), free_port()
    sidecar = subprocess.Popen(["taskset", "-c", "1", REL / "vigie-sidecar", "--listen", f"127.0.0.1:{port}",
                                "--admin-listen", f"127.0.0.1:{admin}", "--policy-file", policy],
                               env={**os.environ, "RUST_LOG": "warn", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint},
                               stderr=subprocess.DEVNULL)
    try:
        time.sleep(2)
        subprocess.run(["taskset", "-c", "0", ROOT / "target/tools/bin/oha", "--no-tui", "-z", "15s", "-c", "64",
                        "-q", "1000", "--latency-correction", "-m", "POST", "-H", "content-type: application/json",
                        "-d", BODY, f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True, check=True)
        time.sleep(2)
        status = Path(f"/proc/{sidecar.pid}/status").read_text().splitlines()
        rss = {k: v.split()[0] for k, v in (line.split(":", 1) for line in status) if k in ("VmRSS", "VmHWM")}
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
        counters = [m for m in metrics.splitlines() if m.startswith("vigie_telemetry_") and "traces" in m
                    and not m.endswith(" 0")]
        print(f"{mode}: RSS {int(rss['VmRSS']) / 1024:.1f} MiB, peak {int(rss['VmHWM']) / 1024:.1f} MiB; {counters}")
    finally:
        sidecar.kill()
        mock.kill()
        for s in stop:
            s()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "inprocess")
