"""What translating to a hosted Anthropic API costs against an OpenAI-compatible cloud (issue 18).

A ``model_list`` entry ``anthropic/claude-x`` gets OpenAI chat requests translated to
Anthropic's Messages API (``/v1/messages``) and the Anthropic SSE stream translated back
into OpenAI chat chunks, event by event (router/providers/anthropic.py,
anthropic_stream.py); ``groq/sim-model`` (or any OpenAI-compatible cloud) is relayed byte
for byte. This script measures the difference with the same client request: one
simulated vLLM (OpenAI-compatible) and one simulated hosted Anthropic API, each its own
process at the same pace, and one ``llm-router serve`` (its own process) with two
deployments, ``openai-compat`` (``groq/sim-model`` on the vLLM simulator) and
``anthropic`` (``anthropic/claude-x`` on the Anthropic simulator), both with an api_key.
The client sends the same OpenAI chat request to each: a stream with
``stream_options.include_usage``, and the same request not streamed.

Rounds, cells, TTFB, last byte, ``x-router-overhead-ms`` and router CPU are measured as
bench/doors.py measures them (its client and tables are reused). Before measuring, one
answer per case and token count is read whole and checked: it must reach the intended
simulator (and only it), carry N tokens, end with ``finish_reason: length`` and a usage
chunk of N completion tokens; the shape of each stream (events, the reads they arrived
in, where the finish_reason rides) goes in the report. Prints markdown tables and writes
them, with the machine's facts, to bench/results/<date>-providers.md.

    .venv/bin/python bench/providers.py                              # about 5 minutes
    .venv/bin/python bench/providers.py --seconds 30 --no-write      # a quick look
    .venv/bin/python bench/providers.py --no-json                    # streams only
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port  # noqa: E402
from bench.doors import (  # noqa: E402
    CHAT, HI, Case, Cell, Client, arg_parser, checked, chat_request, error_lines, idle_cpu, machine, method, report,
    router_server, run_rounds, serve_simulator, simulator_server, table, write_result)
from bench.harness import Layout  # noqa: E402

KEY = "sk-bench-providers"
TOKEN = b'"delta":{"content":"'  # an OpenAI chunk carrying output text
JSON_END = (b'"finish_reason":"length"',)  # every answer here is cut at max_tokens
MESSAGES = "/v1/messages"


def json_request(model: str, tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": HI, "max_tokens": tokens}


@dataclass(frozen=True, slots=True)
class Sim:
    """One simulated upstream: the deployment on it and how it is started."""

    deployment: str
    kind: str
    model: str
    name: str


SIMS = (Sim("openai-compat", "vllm", "sim-model", "simulated vLLM"),
        Sim("anthropic", "anthropic", "claude-x", "simulated Anthropic API"))
STREAMS: tuple[Case, ...] = (
    Case("openai-compat stream", CHAT, "openai-compat", CHAT, (b"[DONE]",), TOKEN, chat_request),
    Case("anthropic stream", CHAT, "anthropic", MESSAGES, (b"[DONE]",), TOKEN, chat_request),
)
JSONS: tuple[Case, ...] = (
    Case("openai-compat JSON", CHAT, "openai-compat", CHAT, JSON_END, b"", json_request),
    Case("anthropic JSON", CHAT, "anthropic", MESSAGES, JSON_END, b"", json_request),
)
STREAM_PAIR = ("stream: anthropic − openai-compat", "anthropic stream", "openai-compat stream")
JSON_PAIR = ("JSON: anthropic − openai-compat", "anthropic JSON", "openai-compat JSON")


def router_config(ports: dict[str, int]) -> str:
    """An OpenAI-compatible cloud (relayed) and an Anthropic one (translated), both keyed."""
    return ("model_list:\n"
            f"  - {{model_name: openai-compat, litellm_params: {{model: groq/sim-model, "
            f"api_base: 'http://127.0.0.1:{ports['openai-compat']}/v1', api_key: {KEY}}}, model_info: {{id: openai-compat}}}}\n"
            f"  - {{model_name: anthropic, litellm_params: {{model: anthropic/claude-x, "
            f"api_base: 'http://127.0.0.1:{ports['anthropic']}', api_key: {KEY}}}, model_info: {{id: anthropic}}}}\n")


# ---------------------------------------------------------------- checks before measuring

@dataclass(slots=True)
class Shape:
    """What one answer looked like to the client."""

    events: int = 0  # SSE data events ([DONE] included)
    tokens: int = 0  # events with non-empty content
    reads: int = 0  # body reads (events that arrived together count once)
    first_read: int = 0  # events in the first read
    most: int = 0  # most events in one read
    finish: str = ""  # where the finish_reason rode: on the last token, or its own chunk
    usage: str = "missing"
    models: str = ""  # the chunks' model field
    nbytes: int = 0


def sse_events(data: bytes) -> list[bytes]:
    return [line[6:] for line in data.split(b"\n") if line.startswith(b"data: ")]


def stream_shape(reads: list[bytes], tokens: int, problems: list[str], label: str) -> Shape:
    body = b"".join(reads)
    events = sse_events(body)
    shape = Shape(events=len(events), reads=len(reads), nbytes=len(body))
    per_read = [r.count(b"\ndata: ") + r.startswith(b"data: ") for r in reads]
    shape.first_read, shape.most = (per_read[0], max(per_read)) if per_read else (0, 0)
    if not events or events[-1] != b"[DONE]":
        problems.append(f"{label}: does not end with [DONE]")
        return shape
    chunks = [orjson.loads(e) for e in events[:-1]]
    ids, models, finishes, text = set(), set(), [], []
    for i, chunk in enumerate(chunks):
        ids.add(chunk.get("id"))
        models.add(chunk.get("model"))
        if chunk.get("usage"):
            u = chunk["usage"]
            shape.usage = f"{u.get('prompt_tokens')} + {u.get('completion_tokens')}"
            if u.get("completion_tokens") != tokens or i != len(chunks) - 1 or chunk.get("choices"):
                problems.append(f"{label}: usage {u} in chunk {i} of {len(chunks)}, not the last one of {tokens} tokens")
        for choice in chunk.get("choices") or []:
            content = (choice.get("delta") or {}).get("content")
            if content:
                shape.tokens += 1
                text.append(content)
            if choice.get("finish_reason"):
                finishes.append((choice["finish_reason"], bool(content), i))
    shape.models = ", ".join(sorted(map(str, models)))
    if shape.tokens != tokens or len("".join(text).split()) != tokens:
        problems.append(f"{label}: {shape.tokens} content chunks, {len(''.join(text).split())} words; {tokens} asked")
    if len(finishes) != 1 or finishes[0][0] != "length":
        problems.append(f"{label}: finish_reason {finishes}")
    elif finishes:
        shape.finish = "on the last token" if finishes[0][1] else "its own chunk"
    if shape.usage == "missing":
        problems.append(f"{label}: no usage chunk although stream_options.include_usage was asked")
    if len(ids) != 1:
        problems.append(f"{label}: {len(ids)} chunk ids")
    role = chunks[0]["choices"][0]["delta"] if chunks and chunks[0].get("choices") else {}
    if role.get("role") != "assistant":
        problems.append(f"{label}: the first chunk is not the role chunk: {chunks[0] if chunks else None}")
    return shape


def json_shape(body: bytes, tokens: int, problems: list[str], label: str) -> Shape:
    shape = Shape(events=1, reads=1, first_read=1, most=1, nbytes=len(body))
    obj = orjson.loads(body)
    choice = obj["choices"][0]
    words = len((choice["message"].get("content") or "").split())
    shape.tokens, shape.models = words, str(obj.get("model"))
    u = obj.get("usage") or {}
    shape.usage = f"{u.get('prompt_tokens')} + {u.get('completion_tokens')}" if u else "missing"
    shape.finish = str(choice.get("finish_reason"))
    if words != tokens or u.get("completion_tokens") != tokens or choice.get("finish_reason") != "length":
        problems.append(f"{label}: {words} words, usage {u}, finish_reason {choice.get('finish_reason')}; {tokens} asked")
    return shape


async def preflight(router_port: int, ports: dict[str, int], cases: tuple[Case, ...], tokens: list[int]
                    ) -> tuple[list[str], list[list[str]]]:
    """One answer per case and token count, read whole: it must reach the intended
    simulator's path and no other simulator, carry ``tokens`` tokens, end at max_tokens
    and say its usage. Returns what is wrong (empty: all good) and the shape table's rows."""
    import aiohttp

    problems: list[str] = []
    rows: list[list[str]] = []

    async def stats(s: aiohttp.ClientSession, port: int) -> dict[str, Any]:
        async with s.get(f"http://127.0.0.1:{port}/__sim/stats") as r:
            return await r.json(loads=orjson.loads)

    async with aiohttp.ClientSession() as s:
        for case in cases:
            for n in tokens:
                label = f"{case.name}, {n} tokens"
                before = {d: await stats(s, p) for d, p in ports.items()}
                reads: list[bytes] = []
                async with s.post(f"http://127.0.0.1:{router_port}{case.path}", data=case.body(n),
                                  headers={"Content-Type": "application/json"}) as r:
                    status, dep = r.status, r.headers.get("x-router-deployment")
                    async for piece in r.content.iter_any():
                        reads.append(piece)
                after = {d: await stats(s, p) for d, p in ports.items()}
                for d in ports:
                    hits = after[d]["total"] - before[d]["total"]
                    want = 1 if d == case.model else 0
                    on_path = after[d]["requests"].get(case.upstream, 0) - before[d]["requests"].get(case.upstream, 0)
                    if hits != want or (want and on_path != 1):
                        problems.append(f"{label}: {hits} request(s) on {d}'s simulator ({on_path} on {case.upstream})")
                sent = after[case.model]["last_body"] or {}
                if case.model == "anthropic" and (sent.get("max_tokens") != n or sent.get("stream") is not
                                                  (True if case.token else None) or sent.get("model") != "claude-x"):
                    problems.append(f"{label}: the Messages request was {sent}")
                if status != 200 or dep != case.model:
                    problems.append(f"{label}: HTTP {status}, deployment {dep}: {b''.join(reads)[:300]!r}")
                    continue
                try:
                    shape = (stream_shape if case.token else json_shape)(reads if case.token else b"".join(reads),
                                                                         n, problems, label)
                except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, AttributeError) as exc:
                    problems.append(f"{label}: unreadable answer ({exc!r}): {b''.join(reads)[:300]!r}")
                    continue
                rows.append([case.name, str(n), str(shape.events), str(shape.tokens), str(shape.reads),
                             str(shape.first_read), str(shape.most), shape.finish, shape.usage, shape.models,
                             f"{shape.nbytes / 1024:.1f}"])
    return problems, rows


# ---------------------------------------------------------------- the run

async def measure(args: argparse.Namespace, layout: Layout, tmp: Path, cases: tuple[Case, ...]
                  ) -> tuple[dict[tuple[str, int, int], Cell], float, int, float, list[list[str]]]:
    """Start both simulators and the router, check every case, then run rounds until the budget is spent."""
    ports = {sim.deployment: free_port() for sim in SIMS}
    sims = [simulator_server(sim.name, layout, args, ports[sim.deployment], tmp, Path(__file__).resolve(),
                             ("--kind", sim.kind)) for sim in SIMS]
    router = router_server(layout, router_config(ports), tmp)
    for server in (*sims, router):
        server.start()
    client: Client | None = None
    try:
        for server in (*sims, router):
            if not await server.ready():
                raise SystemExit(f"{server.name} did not start (its log is above)")
        problems, shapes = await preflight(router.port, ports, cases, args.tokens_list)
        if problems:
            raise SystemExit("the cases are not what they claim to be:\n  " + "\n  ".join(problems))
        assert router.pid is not None
        idle = await idle_cpu(router.pid)
        client = Client(router.port, router.pid)
        cells, rounds, seconds = await run_rounds(client, cases, args)
        return cells, idle, rounds, seconds, shapes
    finally:
        if client is not None:
            client.close()
        router.stop()
        for server in sims:
            server.stop()


def reads_rows(cells: dict[tuple[str, int, int], Cell], cases: tuple[Case, ...], levels: list[int],
               tokens: list[int]) -> list[list[str]]:
    """Body reads per answer under load: events the router wrote together, or that the
    client's socket gathered, arrive as one read."""
    rows = []
    for case in cases:
        row = [case.name]
        for c in levels:
            for n in tokens:
                x = cells[case.name, c, n]
                row.append(f"{x.reads / len(x.last):.1f}" if x.last else "—")
        rows.append(row)
    return rows


async def amain(args: argparse.Namespace) -> None:
    cases = STREAMS if args.no_json else STREAMS + JSONS
    pairs = (STREAM_PAIR,) if args.no_json else (STREAM_PAIR, JSON_PAIR)
    layout = Layout(not args.no_pin)
    facts = machine(layout)
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-providers-"))
    try:
        cells, idle, rounds, seconds, shapes = await measure(args, layout, tmp, cases)
    except BaseException:
        print(f"logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = method("Simulated vLLM (deployment `openai-compat`, `groq/sim-model`, relayed) and simulated Anthropic "
                   "API (deployment `anthropic`, `anthropic/claude-x`, translated), each its own process,", args,
                   rounds, seconds, "the translation of the Anthropic stream's first events counts as upstream wait "
                   "there")
    lines += ["## What the client got (one answer per case and N, read whole before measuring)", ""]
    lines += table(["case", "N", "events", "content events", "reads", "events in first read", "most events in a read",
                    "finish_reason", "usage (prompt + completion)", "model field", "KiB"], shapes)
    lines += report(cells, args.levels, args.tokens_list, idle, cases, pairs)
    lines += ["## Body reads per answer while measuring (events that arrive together count once)", ""]
    lines += table(["case"] + [f"C={c}, N={n}" for c in args.levels for n in args.tokens_list],
                   reads_rows(cells, cases, args.levels, args.tokens_list))
    lines += error_lines(cells)
    print("\n".join(lines), flush=True)
    if not args.no_write:
        write_result("providers", "llm-router benchmark: hosted providers, Anthropic translated vs OpenAI-compatible "
                     "relayed", "bench/providers.py", facts, lines)


def main() -> None:
    ap = arg_parser(__doc__, 270.0)
    ap.add_argument("--no-json", action="store_true", help="streams only: leave out the non-streamed pair")
    ap.add_argument("--kind", default="vllm", help=argparse.SUPPRESS)  # the simulator child's kind
    args = checked(ap, sys.argv[1:])
    if args.simulator:
        sim = next(s for s in SIMS if s.kind == args.kind)
        asyncio.run(serve_simulator(args.simulator, args.tokens_per_s, args.natural, sim.kind, (sim.model,), KEY))
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
