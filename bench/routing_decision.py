"""Routing decision micro-benchmark: how long Engine.decide takes per route type, and
how pattern matching scales with the number of patterns.

    .venv/bin/python bench/routing_decision.py [--deployments 1000] [--patterns 200] [--iterations 20000]

Builds a synthetic config (deployments in groups of 4 across 4 providers, anchored
``^orgN/`` patterns plus 10% unanchored ones, capabilities with preferred models),
then times each route over many iterations and prints median / p99 in microseconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from router.config import load_config
from router.domain import RequestFacts
from router.routing.engine import Engine
from router.state import StateTable

PROVIDERS = {"ollama": ("ollama", 11434), "vllm": ("vllm", 8001), "llama_cpp_python": ("llama_cpp_python", 8000),
             "llama_cpp_native": ("llama_cpp_native", 8080)}


def build(tmp: Path, deployments: int, patterns: int) -> Engine:
    lines = ["model_list:"]
    names = list(PROVIDERS)
    for i in range(deployments):
        provider = names[i % 4]
        prefix = "ollama_chat" if provider == "ollama" else "openai"
        lines.append(f"  - {{model_name: group-{i // 4}, litellm_params: {{model: '{prefix}/model-{i}', "
                     f"api_base: 'http://127.0.0.1:{PROVIDERS[provider][1]}'}}, model_info: {{id: dep-{i}, provider: {provider}}}}}")
    (tmp / "c.yaml").write_text("\n".join(lines) + "\n")
    policy = ["providers:"]
    for name, (kind, port) in PROVIDERS.items():
        policy.append(f"  {name}: {{type: {kind}, api_base: 'http://127.0.0.1:{port}'}}")
    policy.append("patterns:")
    for i in range(patterns):
        if i % 10 == 9:
            policy.append(f"  - {{pattern: '.*-v{i}$', provider: vllm}}")
        else:
            policy.append(f"  - {{pattern: '^org{i}/.*', provider: {names[i % 4]}}}")
    policy.append("capabilities:")
    policy.append("  code_generation: {preferred_models: [group-1, group-2], routing_strategy: least_loaded}")
    policy.append("  big: {min_model_size: '13B', provider: vllm, routing_strategy: round_robin}")
    (tmp / "model-mappings.yaml").write_text("\n".join(policy) + "\n")
    return Engine(load_config(str(tmp / "c.yaml")), random.Random(1))


def timeit(engine: Engine, facts: RequestFacts, iterations: int) -> tuple[float, float]:
    view = StateTable()
    samples = []
    for _ in range(iterations):
        start = time.perf_counter_ns()
        engine.decide(facts, view)
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(0.99 * len(samples))] / 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--deployments", type=int, default=1000)
    ap.add_argument("--patterns", type=int, default=200)
    ap.add_argument("--iterations", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        engine = build(Path(tmp), args.deployments, args.patterns)
        last = args.patterns - 2  # an anchored pattern near the end of the file
        cases = {
            "exact (group of 4, simple-shuffle)": RequestFacts(model="group-7"),
            "exact (single deployment id)": RequestFacts(model="dep-5"),
            "capability (preferred models, least-busy)": RequestFacts(model=None, capability="code_generation"),
            f"pattern (anchored, #{last} of {args.patterns})": RequestFacts(model=f"org{last}/some-model"),
            "pattern (unanchored, last)": RequestFacts(model=f"thing-v{args.patterns - 1}"),
            "no route (every step misses)": RequestFacts(model="nothing-matches-this"),
        }
        print(f"## Routing decision time: {args.deployments} deployments, {args.patterns} patterns, "
              f"{args.iterations} iterations each\n")
        print("| route | median µs | p99 µs |")
        print("|---|---|---|")
        for label, facts in cases.items():
            med, p99 = timeit(engine, facts, args.iterations)
            print(f"| {label} | {med:.1f} | {p99:.1f} |")
        print("\n## Pattern lookup vs pattern count (name matching the last anchored pattern; no match)\n")
        print("| patterns | last anchored median µs | no match median µs |")
        print("|---|---|---|")
        for n in (10, 100, 1000):
            with tempfile.TemporaryDirectory() as tmp2:
                eng = build(Path(tmp2), 40, n)
                hit, _ = timeit(eng, RequestFacts(model=f"org{n - 2}/x"), args.iterations // 4)
                miss, _ = timeit(eng, RequestFacts(model="nothing-matches-this"), args.iterations // 4)
                print(f"| {n} | {hit:.1f} | {miss:.1f} |")


if __name__ == "__main__":
    main()
