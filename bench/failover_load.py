"""Failover under load: closed-loop clients against llm-router in front of three
simulated backends, one of which is killed and later restarted.

    .venv/bin/python bench/failover_load.py [--clients 200] [--seconds 30] [--stream]

Everything runs on loopback as separate processes: three `llm-router simulate`
backends (one vLLM each), `llm-router serve` with the three in one model group,
and the load generator here. At 1/3 of the run backend #1 is killed (SIGKILL),
at 2/3 it is restarted on the same port. Prints, per phase, requests served,
errors the clients saw, and p50/p99 latency, plus which backends served. The
target: zero client-visible errors while a healthy backend existed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, pct, wait_up  # noqa: E402


def start_backend(tmp: Path, port: int) -> subprocess.Popen:
    cfg = tmp / f"sim-{port}.yaml"
    cfg.write_text(f"model_list:\n  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: 'http://127.0.0.1:{port}/v1'}}}}\n")
    return subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(cfg), "--ttft", "0.005", "--tokens-per-s", "0"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--stream", action="store_true")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="llm-router-failover-"))
    ports = [free_port() for _ in range(3)]
    proxy_port = free_port()
    backends = [start_backend(tmp, p) for p in ports]
    lines = ["model_list:"]
    for i, p in enumerate(ports):
        lines.append(f"  - {{model_name: m, litellm_params: {{model: hosted_vllm/m, api_base: 'http://127.0.0.1:{p}/v1', timeout: 5}}, model_info: {{id: backend-{i}}}}}")
    lines.append("router_settings: {routing_strategy: least-busy, allowed_fails: 2, cooldown_time: 5, num_retries: 1, "
                 "monitor_interval: 1, enable_pre_call_checks: true, timeout: 10}")
    (tmp / "config.yaml").write_text("\n".join(lines) + "\n")
    (tmp / "model-mappings.yaml").write_text("{}\n")
    proxy = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp / "config.yaml"), "--port", str(proxy_port),
                              "--log-level", "warning"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        for p in ports:
            await wait_up(f"http://127.0.0.1:{p}/health")
        await wait_up(f"http://127.0.0.1:{proxy_port}/health/readiness")
        url = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        body = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "stream": args.stream})
        results: list[tuple[float, float, int, str]] = []  # (start offset, latency, status, deployment)
        start = time.monotonic()
        kill_at, restart_at = args.seconds / 3, 2 * args.seconds / 3

        async def chaos() -> None:
            await asyncio.sleep(kill_at)
            backends[1].send_signal(signal.SIGKILL)
            backends[1].wait()
            await asyncio.sleep(restart_at - kill_at)
            backends[1] = start_backend(tmp, ports[1])

        async def client(session: aiohttp.ClientSession) -> None:
            while (now := time.monotonic()) - start < args.seconds:
                t0 = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                        data = await r.read()
                        status = r.status
                        if status == 200 and args.stream and b"[DONE]" not in data[-32:]:
                            status = 599  # a stream that did not end properly counts as an error
                        results.append((now - start, time.perf_counter() - t0, status, r.headers.get("x-router-deployment", "")))
                except aiohttp.ClientError:
                    results.append((now - start, time.perf_counter() - t0, 598, ""))

        conn = aiohttp.TCPConnector(limit=args.clients)
        async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=30)) as session:
            await asyncio.gather(chaos(), *(client(session) for _ in range(args.clients)))
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
        for b in backends:
            b.terminate()
            b.wait(timeout=10)

    phases = {"before (3 backends)": (0, kill_at), "during (backend-1 killed)": (kill_at, restart_at),
              "after (backend-1 restarted)": (restart_at, args.seconds + 60)}
    mode = "streaming" if args.stream else "non-streaming"
    print(f"## Failover under load: {args.clients} clients, {args.seconds:g} s, {mode}, {os.cpu_count()} cores\n")
    print("| phase | requests | errors | RPS | p50 ms | p99 ms | served by |")
    print("|---|---|---|---|---|---|---|")
    for name, (lo, hi) in phases.items():
        rows = [r for r in results if lo <= r[0] < hi]
        ok = [r for r in rows if r[2] == 200]
        by = Counter(r[3] for r in ok)
        errors = Counter(r[2] for r in rows if r[2] != 200)
        span = min(hi, args.seconds) - lo
        print(f"| {name} | {len(rows)} | {sum(errors.values())}{' ' + str(dict(errors)) if errors else ''} | "
              f"{len(rows) / span:.0f} | {pct([r[1] for r in ok], 50):.1f} | {pct([r[1] for r in ok], 99):.1f} | "
              f"{', '.join(f'{k}: {v}' for k, v in sorted(by.items()))} |")


if __name__ == "__main__":
    asyncio.run(main())
