"""The real check of prompt-cache-aware routing (issue 19): two real llama-cpp-python
servers, two interleaved conversations, cache-aware against round-robin, TTFT per turn.

    .venv/bin/python bench/realbackend_cache.py                      # about 3 minutes
    .venv/bin/python bench/realbackend_cache.py --append bench/results/<date>-prefix-cache.md

Needs .venv-llamacpp (scripts/setup-llamacpp). The model is the real-backend tier's
tiny random-weight GGUF (scripts/make_tiny_gguf.py --seed 7: 2 layers, 64 dims, a
vocabulary of whole words, trained context 2048); the servers run it with
``--n_ctx 8192`` (llama.cpp warns that this exceeds the trained context; the weights
are random anyway) and one thread each, so that a prompt of a few thousand tokens
takes a visible time to prefill. llama-cpp-python serves one request at a time and
keeps only its last prompt's KV cache (the longest common prefix with the next
prompt is reused).

Each case: both servers' caches are flushed (an unrelated prompt sent to each
directly), a fresh ``llm-router serve`` (round_robin or cache-aware; the servers as
``provider: llama_cpp_python``), then two conversations, each a long system prompt
(--system-words words, one token each) and --turns turns of a short user message
with the streamed answer (16 tokens) appended. Turns are sent one at a time through
the router in one of two orders:

- ``ABAB``: A1, B1, A2, B2, ... (the issue's order);
- ``ABBA``: A1, B1, B2, A2, A3, B3, ... (the same turns, the order every other pair
  reversed, so that round-robin's alternation no longer lines up with the conversations).

and with one system prompt shared by both conversations, or one each: two that
cache-aware's ring places on different servers and two it places on the same one
(the first seeds from --seed that give each). TTFT =
request sent → first content delta, through the router; the deployment that served
each turn is read from ``x-router-deployment``. Every case runs --repeats times (the
order of strategies alternating); the tables show the median TTFT per turn.
"""

from __future__ import annotations

import argparse
import asyncio
import random
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
from bench.harness import PY, machine_facts  # noqa: E402

LLAMACPP_PY = ROOT / ".venv-llamacpp" / "bin" / "python"
STRATEGIES = ("round_robin", "cache-aware")


def vocabulary() -> list[str]:
    """The tiny model's whole words (each one token), from its generator."""
    text = (ROOT / "scripts" / "make_tiny_gguf.py").read_text()
    return text.split('WORDS = """', 1)[1].split('"""', 1)[0].split()


class Llama:
    def __init__(self, model: Path, tmp: Path, n_ctx: int) -> None:
        self.port = free_port()
        self.log = tmp / f"llama-{self.port}.log"
        self.cmd = [str(LLAMACPP_PY), "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                    "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "1", "--n_threads_batch", "1"]
        self.proc: subprocess.Popen | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(self.cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def router_cmd(tmp: Path, llamas: list[Llama], strategy: str, port: int) -> list[str]:
    cfg = tmp / f"router-{strategy}.yaml"
    cfg.write_text("model_list:\n" + "".join(
        f"  - {{model_name: tiny, litellm_params: {{model: openai/tiny, api_base: '{s.base}/v1'}}, "
        f"model_info: {{id: L{i}, provider: llama_cpp_python}}}}\n" for i, s in enumerate(llamas))
        + f"router_settings: {{routing_strategy: {strategy}}}\n")
    return [PY, "-m", "router", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]


async def ask(http: aiohttp.ClientSession, url: str, messages: list[dict], max_tokens: int) -> tuple[float, str, str]:
    """One streamed turn: (TTFT s, the answer, the deployment that served it)."""
    body = orjson.dumps({"model": "tiny", "messages": messages, "max_tokens": max_tokens, "stream": True,
                         "temperature": 0.8})
    t0 = time.perf_counter()
    first, pieces = None, []
    async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {(await r.text())[:300]}")
        dep = r.headers.get("x-router-deployment", "?")
        async for line in r.content:
            if not line.startswith(b"data:") or line.startswith(b"data: [DONE]"):
                continue
            for choice in orjson.loads(line[5:]).get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    if first is None:
                        first = time.perf_counter() - t0
                    pieces.append(text)
    return (first if first is not None else float("nan")), "".join(pieces), dep


def order_of(kind: str, turns: int) -> list[tuple[str, int]]:
    out = []
    for t in range(1, turns + 1):
        pair = [("A", t), ("B", t)]
        out += pair if kind == "ABAB" or t % 2 == 1 else pair[::-1]
    return out


def system_prompts(opts: argparse.Namespace, shared: bool, seed: int) -> dict[str, str]:
    rng = random.Random(f"system {seed}")
    words = vocabulary()
    a = " ".join(rng.choices(words, k=opts.system_words))
    return {"A": a, "B": a if shared else " ".join(rng.choices(words, k=opts.system_words))}


def ring_home(prompt: str) -> str:
    """Where cache-aware places a new conversation with this system prompt (no cached match,
    no load): its first message's hash on the ring of the two deployments."""
    from router.routing.prefix import Ring, prompt_of

    body = {"messages": [{"role": "system", "content": prompt}, {"role": "user", "content": "x"}]}
    return Ring(["L0", "L1"]).walk(prompt_of(body).anchor)[0]


def scenarios(opts: argparse.Namespace) -> list[tuple[str, bool, int]]:
    """(title, shared, seed): the shared prompt; two own prompts whose hashes land on
    different servers; and two that land on the same one (1 chance in 2 with 2 servers)."""
    out = [("One system prompt shared by A and B", True, opts.seed)]
    found: dict[bool, int] = {}
    seed = opts.seed
    while len(found) < 2:
        p = system_prompts(opts, False, seed)
        found.setdefault(ring_home(p["A"]) == ring_home(p["B"]), seed)
        seed += 1
    out.append(("A and B each with its own system prompt, the two hashing to different servers", False, found[False]))
    out.append(("A and B each with its own system prompt, the two hashing to the same server", False, found[True]))
    return out


async def run_case(opts: argparse.Namespace, llamas: list[Llama], tmp: Path, strategy: str, order: str, shared: bool,
                   seed: int) -> dict[tuple[str, int], tuple[float, str]]:
    words = vocabulary()
    rng = random.Random(seed)
    prompts = system_prompts(opts, shared, seed)
    convs = {c: [{"role": "system", "content": prompts[c]}] for c in "AB"}
    async with aiohttp.ClientSession() as http:
        for s in llamas:  # flush: each server's last prompt becomes an unrelated one
            await ask(http, s.base + "/v1/chat/completions", [{"role": "user", "content": " ".join(rng.choices(words, k=20))}], 1)
        port = free_port()
        proc = subprocess.Popen(router_cmd(tmp, llamas, strategy, port), cwd=ROOT, stdout=open(tmp / f"router-{port}.log", "wb"),
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            await wait_up(f"http://127.0.0.1:{port}/health/readiness", 30)
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            out = {}
            for conv, turn in order_of(order, opts.turns):
                question = f"question {turn} of {conv}: " + " ".join(rng.choices(words, k=opts.user_words))
                messages = convs[conv] + [{"role": "user", "content": question}]
                ttft, answer, dep = await ask(http, url, messages, opts.max_tokens)
                convs[conv] = messages + [{"role": "assistant", "content": answer}]
                out[(conv, turn)] = (ttft, dep)
            return out
        finally:
            proc.terminate()
            proc.wait(timeout=15)


def table(opts: argparse.Namespace, runs: dict[tuple[str, str, str], list[dict]]) -> list[str]:
    lines = []
    for title, _shared, seed in scenarios(opts):
        for order in ("ABAB", "ABBA"):
            sequence = order_of(order, opts.turns)
            lines += [f"### {title} (seed {seed}), "
                      f"order {order} ({', '.join(f'{c}{t}' for c, t in sequence[:6])}, ...)", "",
                      "| strategy | " + " | ".join(f"{c}{t}" for c, t in sequence) + " | mean of turns 2+ | servers A / B |",
                      "|---|" + "---|" * (len(sequence) + 2)]
            for strategy in STRATEGIES:
                reps = runs.get((strategy, order, title)) or []
                if not reps:
                    continue
                med = {k: statistics.median(r[k][0] for r in reps) * 1000 for k in sequence}
                later = statistics.fmean(v for (c, t), v in med.items() if t > 1)
                servers = {c: "".join(reps[0][(c, t)][1][-1] for t in range(1, opts.turns + 1)) for c in "AB"}
                lines.append(f"| {strategy} | " + " | ".join(f"{med[k]:.0f}" for k in sequence)
                             + f" | {later:.0f} | {servers['A']} / {servers['B']} |")
            lines.append("")
    return lines


async def amain(opts: argparse.Namespace) -> None:
    if not LLAMACPP_PY.exists():
        raise SystemExit(f"no {LLAMACPP_PY}: run scripts/setup-llamacpp")
    facts = machine_facts()
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-realcache-"))
    model = tmp / "tiny.gguf"
    subprocess.run([str(LLAMACPP_PY), str(ROOT / "scripts" / "make_tiny_gguf.py"), str(model), "--seed", "7"], check=True,
                   capture_output=True)
    llamas = [Llama(model, tmp, opts.n_ctx) for _ in range(2)]
    runs: dict[tuple[str, str, str], list[dict]] = {}
    try:
        for s in llamas:
            s.start()
        for s in llamas:
            await wait_up(s.base + "/v1/models", 60)
        for rep in range(opts.repeats):
            for title, shared, seed in scenarios(opts):
                for order in ("ABAB", "ABBA"):
                    for strategy in (STRATEGIES if rep % 2 == 0 else STRATEGIES[::-1]):
                        out = await run_case(opts, llamas, tmp, strategy, order, shared, seed)
                        runs.setdefault((strategy, order, title), []).append(out)
                        print(f"repeat {rep + 1}: {strategy:<12} {order} seed {seed} {'shared' if shared else 'own'} prompts: "
                              + " ".join(f"{c}{t}={v[0] * 1000:.0f}ms@{v[1]}" for (c, t), v in out.items()), flush=True)
    finally:
        for s in llamas:
            s.stop()
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in __import__("os").getloadavg())
    lines = ["## Real check: two llama-cpp-python servers, two interleaved conversations", "",
             f"`bench/realbackend_cache.py {' '.join(sys.argv[1:])}`: the tiny GGUF of the real-backend tier on two "
             f"`python -m llama_cpp.server` (`--n_ctx {opts.n_ctx}`, one thread each), behind one `llm-router serve` "
             f"(fresh per case; servers as `provider: llama_cpp_python`). Two conversations of {opts.turns} turns: a "
             f"{opts.system_words:,}-word system prompt (a token per word), {opts.user_words}-word questions, "
             f"{opts.max_tokens}-token answers appended. Both servers' caches flushed before each case. "
             f"TTFT in ms (request sent → first content delta, through the router), median of {opts.repeats} repeats; "
             "`servers` = the deployment (L0/L1) of each turn in the first repeat. llama-cpp-python keeps only its last "
             "prompt: a turn is fast when the server's previous request shared its beginning.", "",
             f"Machine: {facts['nproc']} CPUs, {facts['CPU']}, load average {facts['load average at start']} → "
             f"{facts['load average at end']}; llm-router {facts['llm-router commit']}.", ""]
    lines += table(opts, runs)
    print("\n".join(lines))
    if opts.append:
        with open(opts.append, "a") as f:
            f.write("\n" + "\n".join(lines) + "\n")
        print(f"appended to {opts.append}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system-words", type=int, default=3000)
    ap.add_argument("--user-words", type=int, default=20)
    ap.add_argument("--turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--n-ctx", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1, help="the prompts' words")
    ap.add_argument("--append", help="a results file to append the tables to")
    asyncio.run(amain(ap.parse_args()))


if __name__ == "__main__":
    main()
