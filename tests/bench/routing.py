"""`cargo xtask bench routing`: routing quality on GPU-like mock endpoints, measured the
way the Gateway API Inference Extension does — round robin, least-request, and Vigie's
queue-aware balancing with prefix affinity, in one run on the same workload.

Endpoints: vigie-mock-pool instances with finite capacity (a queue beyond it) and a
prefix-cache model (first token in TTFT_HIT_MS when the system prompt is cached, in
TTFT_MISS_MS otherwise; each keeps CACHE_ENTRIES system prompts). One endpoint is half
as big and slower. Workload: SYSTEM_PROMPTS shared system prompts drawn with a Zipf law
(a few are hot), bursty arrivals (a burst every second on top of a Poisson stream),
streamed chat completions through a release sidecar. Writes target/bench/routing.md.
"""

import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from harness import ROOT, MockPool, Sidecar, pool  # noqa: E402

SECONDS = float(os.environ.get("VIGIE_BENCH_SECONDS", "30"))
RATE = float(os.environ.get("VIGIE_BENCH_RATE", "14"))  # background requests per second
BURST = (10, 30)  # requests per burst, once a second
SYSTEM_PROMPTS = 16
CACHE_ENTRIES = 4
TTFT_MISS_MS, TTFT_HIT_MS = 250, 25
MAX_TOKENS = 16
SEED = 20261129

STRATEGIES = [
    ("round robin", "BALANCING_ROUND_ROBIN"),
    ("least request (P2C)", "BALANCING_LEAST_REQUEST"),
    ("queue-aware + prefix affinity (Vigie default)", "BALANCING_QUEUE_AWARE"),
]


def start_mocks():
    specs = [dict(capacity=4, tokens_per_sec=200)] * 3 + [dict(capacity=2, tokens_per_sec=100)]
    return [MockPool(f"gpu{i}", ["llama-3-8b"], ttft_ms=TTFT_MISS_MS, ttft_hit_ms=TTFT_HIT_MS,
                     prefix_cache=CACHE_ENTRIES, threads=1, **spec) for i, spec in enumerate(specs)]


def schedule(rng: random.Random):
    """Arrival times (s) and system-prompt index of each request."""
    weights = [1 / (k + 1) for k in range(SYSTEM_PROMPTS)]
    arrivals = []
    t = 0.0
    while t < SECONDS:
        t += rng.expovariate(RATE)
        arrivals.append(t)
    for second in range(int(SECONDS)):
        arrivals += [second + 0.5 + rng.random() * 0.05 for _ in range(rng.randint(*BURST))]
    arrivals.sort()
    return [(a, rng.choices(range(SYSTEM_PROMPTS), weights)[0]) for a in arrivals if a < SECONDS]


SYSTEMS = [f"Tu es l'assistant n°{k} de la direction des services. " + ("Réponds avec précision. " * 40)
           for k in range(SYSTEM_PROMPTS)]


async def one(client: httpx.AsyncClient, url: str, system: int, question: int) -> tuple[float, float] | None:
    body = {"model": "llama-3-8b", "stream": True, "max_tokens": MAX_TOKENS,
            "messages": [{"role": "system", "content": SYSTEMS[system]},
                         {"role": "user", "content": f"Question {question} : quel est le délai ?"}]}
    start = time.monotonic()
    ttft = None
    try:
        async with client.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                return None
            async for line in r.aiter_lines():
                if ttft is None and line.startswith("data:") and '"content"' in line:
                    ttft = time.monotonic() - start
        return (ttft if ttft is not None else float("nan"), time.monotonic() - start)
    except httpx.HTTPError:
        return None


async def drive(url: str, plan) -> tuple[list, float]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=200)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        start = time.monotonic()

        async def at(offset, system, q):
            await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
            return await one(client, url, system, q)

        results = await asyncio.gather(*(at(a, s, i) for i, (a, s) in enumerate(plan)))
        return results, time.monotonic() - start


def pct(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(round((len(v) - 1) * q)))] if v else float("nan")


def run(label: str, balancing: str, plan) -> dict:
    mocks = start_mocks()
    sidecar = None
    try:
        policy = {"name": "bench-routing", "pools": [
            pool("gpu", [m.url for m in mocks], [{"name": "llama-3-8b"}], balancing=balancing, probeInterval="0.25s")]}
        sidecar = Sidecar(policy, env={"RUST_LOG": "warn"})
        # Warm the connection pools and the scraper; the caches start empty.
        time.sleep(1.0)
        results, wall = asyncio.run(drive(sidecar.base_url + "/v1/chat/completions", plan))
        ok = [r for r in results if r is not None]
        stats = [m.stats() for m in mocks]
        hits = sum(s["prefix_hits"] for s in stats)
        lookups = hits + sum(s["prefix_misses"] for s in stats)
        ttft = [r[0] * 1000 for r in ok]
        total = [r[1] * 1000 for r in ok]
        return {
            "strategy": label, "requests": len(plan), "ok": len(ok),
            "ttft_p50": pct(ttft, 0.5), "ttft_p90": pct(ttft, 0.9), "ttft_p99": pct(ttft, 0.99),
            "total_p50": pct(total, 0.5), "total_p99": pct(total, 0.99),
            "throughput": len(ok) / wall, "hit_rate": hits / lookups if lookups else 0.0,
            "share": [s["requests_total"] for s in stats],
        }
    finally:
        if sidecar:
            sidecar.stop()
        for m in mocks:
            m.stop()


def main():
    plan = schedule(random.Random(SEED))
    rows = [run(label, balancing, plan) for label, balancing in STRATEGIES]
    md = [f"Workload: {len(plan)} streamed requests over {SECONDS:.0f} s (Poisson {RATE}/s + a burst of "
          f"{BURST[0]}–{BURST[1]} every second), {SYSTEM_PROMPTS} system prompts (Zipf), 4 endpoints "
          f"(3 × capacity 4 at 200 tokens/s, 1 × capacity 2 at 100 tokens/s), prefix cache of {CACHE_ENTRIES} "
          f"prompts per endpoint, TTFT {TTFT_MISS_MS} ms on a miss / {TTFT_HIT_MS} ms on a hit, {MAX_TOKENS} tokens.",
          "",
          "| strategy | ok | TTFT p50 | TTFT p90 | TTFT p99 | total p50 | total p99 | throughput | prefix-cache hit rate | requests per endpoint |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['strategy']} | {r['ok']}/{r['requests']} | {r['ttft_p50']:.0f} ms | {r['ttft_p90']:.0f} ms | "
                  f"{r['ttft_p99']:.0f} ms | {r['total_p50']:.0f} ms | {r['total_p99']:.0f} ms | "
                  f"{r['throughput']:.1f} req/s | {r['hit_rate']:.1%} | {r['share']} |")
    text = "\n".join(md)
    out = ROOT / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.md").write_text(text + "\n")
    (out / "routing.json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
