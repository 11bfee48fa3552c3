"""Time to first token through llm-router vs straight to a real llama-cpp-python server.

    .venv/bin/python bench/realbackend_ttft.py [--requests 200]

Needs .venv-llamacpp (scripts/setup-llamacpp). Generates the tiny test model,
starts `python -m llama_cpp.server` and `llm-router serve` (separate processes,
loopback), then sends sequential streaming chat requests alternately direct and
through the router, and prints TTFT and total-time percentiles and the
difference. Sequential on purpose: llama-cpp-python serves one request at a time.
"""

from __future__ import annotations

import argparse
import asyncio
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
from bench.common import free_port, wait_up  # noqa: E402


async def one(session: aiohttp.ClientSession, url: str, model: str) -> tuple[float, float]:
    body = orjson.dumps({"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 16, "stream": True})
    start = time.perf_counter()
    async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        assert r.status == 200, await r.text()
        ttft = None
        async for chunk in r.content.iter_any():
            if ttft is None and b'"content"' in chunk:
                ttft = time.perf_counter() - start
        return ttft or time.perf_counter() - start, time.perf_counter() - start


def pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    python = ROOT / ".venv-llamacpp" / "bin" / "python"
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-ttft-"))
    model = tmp / "tiny.gguf"
    subprocess.run([str(python), str(ROOT / "scripts" / "make_tiny_gguf.py"), str(model), "--seed", "7"], check=True)
    server_port, proxy_port = free_port(), free_port()
    (tmp / "c.yaml").write_text(f"model_list:\n  - {{model_name: tiny, litellm_params: {{model: openai/tiny, "
                                f"api_base: 'http://127.0.0.1:{server_port}/v1'}}, model_info: {{provider: llama_cpp_python}}}}\n")
    (tmp / "model-mappings.yaml").write_text("{}\n")
    procs = [subprocess.Popen([str(python), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                               "--port", str(server_port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp / "c.yaml"), "--port", str(proxy_port)],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        await wait_up(f"http://127.0.0.1:{server_port}/v1/models", 60)
        await wait_up(f"http://127.0.0.1:{proxy_port}/health/readiness")
        direct = f"http://127.0.0.1:{server_port}/v1/chat/completions"
        routed = f"http://127.0.0.1:{proxy_port}/v1/chat/completions"
        results: dict[str, list[tuple[float, float]]] = {"direct": [], "llm-router": []}
        async with aiohttp.ClientSession() as s:
            for _ in range(10):  # warm-up
                await one(s, direct, "tiny")
                await one(s, routed, "tiny")
            for _ in range(args.requests):
                results["direct"].append(await one(s, direct, "tiny"))
                results["llm-router"].append(await one(s, routed, "tiny"))
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=10)
    print(f"## TTFT against a real llama-cpp-python server (tiny model, 16 tokens), {args.requests} sequential streams each\n")
    print("| target | TTFT p50 ms | TTFT p99 ms | total p50 ms | total p99 ms |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        t, total = [r[0] for r in rows], [r[1] for r in rows]
        print(f"| {name} | {pct(t, 50):.2f} | {pct(t, 99):.2f} | {pct(total, 50):.2f} | {pct(total, 99):.2f} |")
    d, r = results["direct"], results["llm-router"]
    print(f"\nTTFT added by llm-router: p50 +{pct([x[0] for x in r], 50) - pct([x[0] for x in d], 50):.2f} ms, "
          f"median of differences {statistics.median(x[0] - y[0] for x, y in zip(r, d)) * 1000:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main())
