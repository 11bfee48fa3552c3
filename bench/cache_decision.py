"""cache-aware's decision cost: rendering a prompt to block keys, and the whole
``Engine.decide`` for a 4-deployment cache-aware group, with the prefix index holding
``--blocks`` entries (1M by default: far more than a fleet's KV caches hold in blocks).

    .venv/bin/python bench/cache_decision.py [--chars 8000] [--blocks 1000000] [--iterations 20000]

Prints median and p99 in microseconds for: the keys alone (``prompt_of``), the decision
with the keys already made, and both (what a request pays), plus the index's insert after
an answer (``observe``), and the index's memory.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
import tracemalloc
from pathlib import Path

from router.config import load_config
from router.domain import RequestFacts
from router.routing.engine import Engine
from router.routing.prefix import prompt_of
from router.state import StateTable


def timed(fn, iterations: int) -> tuple[float, float]:
    samples = []
    for _ in range(iterations):
        t = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t) / 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--chars", type=int, default=8000)
    ap.add_argument("--blocks", type=int, default=1_000_000)
    ap.add_argument("--iterations", type=int, default=20000)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    lines = ["model_list:"] + [
        f"  - {{model_name: grp, litellm_params: {{model: hosted_vllm/m, api_base: 'http://127.0.0.1:{9000 + i}/v1'}}, "
        f"model_info: {{id: d{i}, kv_cache_tokens: {args.blocks * 32}}}}}" for i in range(4)]
    lines.append("router_settings: {routing_strategy: cache-aware}")
    (tmp / "c.yaml").write_text("\n".join(lines) + "\n")
    engine = Engine(load_config(str(tmp / "c.yaml")), random.Random(0))
    view = StateTable()
    rng = random.Random(1)
    tracemalloc.start()
    filler = 0
    while len(view.prefixes) < args.blocks:  # other conversations' blocks, spread over the four servers
        keys = [(i + 1) << 32 | rng.getrandbits(32) for i in range(200)]
        view.prefixes.insert(f"d{filler % 4}", keys)
        filler += 1
    memory = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    system = "You are the assistant of tenant 7. " + "Follow the house rules. " * (args.chars // 24)
    body = {"model": "grp", "messages": [{"role": "system", "content": system[: args.chars - 40]},
                                         {"role": "user", "content": "What changed in the last release?"}]}
    prompt = prompt_of(body)
    view.prefixes.insert("d2", prompt.keys[: len(prompt.keys) // 2])  # half of it cached on one server
    facts = RequestFacts(model="grp", prompt=prompt)
    keys = timed(lambda: prompt_of(body), args.iterations)
    decide = timed(lambda: engine.decide(facts, view), args.iterations)
    both = timed(lambda: engine.decide(RequestFacts(model="grp", prompt=prompt_of(body)), view), args.iterations)
    observe = timed(lambda: view.prefixes.observe("d2", prompt, len(prompt.keys), None), args.iterations)
    print(f"prompt: {len(str(body['messages']))} characters, {len(prompt.keys)} blocks; index: {len(view.prefixes):,} blocks "
          f"({memory / 2**20:.0f} MiB)")
    for name, (p50, p99) in (("keys (prompt_of)", keys), ("decide (keys made)", decide), ("keys + decide", both),
                             ("observe after the answer", observe)):
        print(f"  {name:<26} p50 {p50:6.1f} µs   p99 {p99:6.1f} µs")


if __name__ == "__main__":
    main()
