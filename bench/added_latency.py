"""Added latency of llm-router vs calling a simulated backend directly.

Starts `llm-router simulate` and `llm-router serve` as subprocesses (one OpenAI-
compatible backend, one deployment), then drives both targets with closed-loop
concurrency, interleaved in rounds, and prints p50/p90/p99 latency and RPS for
each plus the difference. Non-streaming by default; --stream measures time to
the last byte of an SSE stream.

    .venv/bin/python bench/added_latency.py --concurrency 16 --requests 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, pct, wait_up  # noqa: E402


async def run(url: str, body: bytes, concurrency: int, total: int, stream: bool) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    remaining = total
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=conn) as session:
        async def worker() -> None:
            nonlocal remaining, errors
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                latencies.append(time.perf_counter() - start)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    return latencies, total / elapsed, errors


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()

    sim_port, proxy_port = free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-bench-"))
    cfg = tmp / "config.yaml"
    cfg.write_text(
        "model_list:\n"
        "  - model_name: bench\n"
        f"    litellm_params: {{model: openai/sim-model, api_base: 'http://127.0.0.1:{sim_port}/v1'}}\n"
        "    model_info: {id: bench-vllm, provider: vllm}\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(cfg), "--ttft", "0", "--tokens-per-s", "0"],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(proxy_port)],
                         cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        await wait_up(f"http://127.0.0.1:{sim_port}/health")
        await wait_up(f"http://127.0.0.1:{proxy_port}/health/readiness")
        direct = f"http://127.0.0.1:{sim_port}/v1/chat/completions"
        proxied = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        make = lambda model: orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}],  # noqa: E731
                                           "max_tokens": 16, "stream": args.stream})
        await run(direct, make("sim-model"), args.concurrency, 200, args.stream)   # warm-up
        await run(proxied, make("bench"), args.concurrency, 200, args.stream)
        results: dict[str, list[tuple[list[float], float, int]]] = {"direct": [], "llm-router": []}
        for _ in range(args.rounds):
            results["direct"].append(await run(direct, make("sim-model"), args.concurrency, args.requests, args.stream))
            results["llm-router"].append(await run(proxied, make("bench"), args.concurrency, args.requests, args.stream))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)

    mode = "streaming" if args.stream else "non-streaming"
    print(f"## Added latency, {mode}, concurrency {args.concurrency}, {args.requests} requests x {args.rounds} rounds "
          f"(medians of rounds; {os.cpu_count()} cores)\n")
    print("| target | RPS | p50 ms | p90 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    summary = {}
    for name, rounds in results.items():
        med = lambda f: statistics.median(f(r) for r in rounds)  # noqa: E731
        row = (med(lambda r: r[1]), med(lambda r: pct(r[0], 50)), med(lambda r: pct(r[0], 90)), med(lambda r: pct(r[0], 99)),
               sum(r[2] for r in rounds))
        summary[name] = row
        print(f"| {name} | {row[0]:.0f} | {row[1]:.2f} | {row[2]:.2f} | {row[3]:.2f} | {row[4]} |")
    d, p = summary["direct"], summary["llm-router"]
    print(f"\nadded by llm-router: p50 +{p[1] - d[1]:.2f} ms, p90 +{p[2] - d[2]:.2f} ms, p99 +{p[3] - d[3]:.2f} ms; "
          f"throughput {p[0] / d[0]:.2f}x direct")


if __name__ == "__main__":
    asyncio.run(main())
