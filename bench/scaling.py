"""One process vs --workers 2, with and without Redis-shared state; cache-hit latency.

    .venv/bin/python bench/scaling.py [--requests 3000] [--concurrency 32] [--redis redis://127.0.0.1:6379/14]

Each target is `llm-router serve` (separate processes) in front of one simulated
vLLM; the load generator runs here. Prints RPS and p50/p99 latency per target,
non-streaming and streaming, then the latency of cache hits (local cache).
Everything shares this machine's cores, load generator included.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.added_latency import run  # noqa: E402
from bench.common import free_port, pct, wait_up  # noqa: E402


def config(tmp: Path, sim_port: int, redis: str | None, cache: bool) -> Path:
    text = (f"model_list:\n  - {{model_name: bench, litellm_params: {{model: hosted_vllm/sim-model, "
            f"api_base: 'http://127.0.0.1:{sim_port}/v1'}}}}\nrouter_settings: {{monitor_interval: 60"
            + (f", redis_url: '{redis}', redis_key_prefix: 'llm-router-bench:'" if redis else "") + "}\n")
    if cache:
        text += "litellm_settings: {cache: true, cache_params: {type: local, ttl: 600}}\n"
    name = f"c-{'redis' if redis else 'mem'}-{'cache' if cache else 'nocache'}.yaml"
    (tmp / name).write_text(text)
    (tmp / "model-mappings.yaml").write_text("{}\n")
    return tmp / name


async def measure(port: int, concurrency: int, requests: int, stream: bool, same: bool = False) -> tuple[float, float, float, int]:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = orjson.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "stream": stream})
    await run(url, body, concurrency, 200, stream)  # warm-up (and, for the cache, the one miss)
    latencies, rps, errors = await run(url, body, concurrency, requests, stream)
    return rps, pct(latencies, 50), pct(latencies, 99), errors


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/14")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-scaling-"))
    sim_port = free_port()
    sim_cfg = config(tmp, sim_port, None, False)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    sim = subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(sim_cfg), "--ttft", "0", "--tokens-per-s", "0"],
                           cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = []
    try:
        await wait_up(f"http://127.0.0.1:{sim_port}/health")
        targets = [("1 process, in-memory", 1, None), ("1 process, Redis-shared", 1, args.redis),
                   ("--workers 2, in-memory", 2, None), ("--workers 2, Redis-shared", 2, args.redis)]
        for label, workers, redis in targets:
            port = free_port()
            proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config(tmp, sim_port, redis, False)),
                                     "--port", str(port), "--workers", str(workers), "--log-level", "warning"],
                                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                await wait_up(f"http://127.0.0.1:{port}/health/readiness")
                time.sleep(1.0 if workers > 1 else 0)  # let every worker bind before measuring
                for stream in (False, True):
                    rows.append((label, "streaming" if stream else "non-streaming",
                                 *await measure(port, args.concurrency, args.requests, stream)))
            finally:
                proc.terminate()
                proc.wait(timeout=60)
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(config(tmp, sim_port, None, True)),
                                 "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await wait_up(f"http://127.0.0.1:{port}/health/readiness")
            hit_rows = [("cache hits, 1 process", "C=1", *await measure(port, 1, 1000, False)),
                        ("cache hits, 1 process", f"C={args.concurrency}", *await measure(port, args.concurrency, args.requests, False))]
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        sim.terminate()
        sim.wait(timeout=10)
    print(f"## Scaling: {args.requests} requests per row at concurrency {args.concurrency}, one simulated vLLM, "
          f"{os.cpu_count()} cores shared by backend, router and load generator\n")
    print("| target | mode | RPS | p50 ms | p99 ms | errors |")
    print("|---|---|---|---|---|---|")
    for label, mode, rps, p50, p99, errors in rows + hit_rows:
        print(f"| {label} | {mode} | {rps:.0f} | {p50:.2f} | {p99:.2f} | {errors} |")


if __name__ == "__main__":
    asyncio.run(main())
