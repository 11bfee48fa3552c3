"""What a front door's translation costs against pass-through (issue 17).

The router serves Anthropic Messages (/v1/messages), OpenAI Responses (/v1/responses)
and Ollama's /api/chat. To a server that speaks the dialect (vLLM: Messages, Responses)
it passes the body through and relays the stream byte for byte, only watching it for
its end; to a deployment declared with ``model_info: {native_apis: []}`` it translates
the request to /v1/chat/completions and the OpenAI SSE stream back, chunk by chunk.
This script measures the difference: one simulated vLLM (its own process), one
``llm-router serve`` (its own process) with two deployments of the same model on that
backend, ``native`` and ``translated``, and a plain /v1/chat/completions stream as the
reference. A vLLM has no /api/chat, so Ollama's door is always translated there: it is
compared with the chat reference.

Each round runs every case in every (concurrency, tokens) cell: a batch of C keep-alive
connections, each sending ceil(--batch-tokens / N) streams back to back. The cases of a
cell run one after the other in an order that rotates per round, so drift and other
people's load fall on every case alike; rounds go on until --seconds is spent. Per
request: TTFB (request sent to the first body byte), time to the last byte, and the
router's own ``x-router-overhead-ms`` (time in the proxy before the first byte, upstream
waits excluded). Per batch: the router's CPU time (the first field of
/proc/<pid>/task/*/schedstat, in ns). Prints markdown tables and writes them, with the
machine's facts, to bench/results/<date>-doors.md.

    .venv/bin/python bench/doors.py                              # about 6-7 minutes
    .venv/bin/python bench/doors.py --seconds 60 --no-write      # a quick look
    .venv/bin/python bench/doors.py --tokens 16,256 --concurrency 1,8 --tokens-per-s 2000
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, pct  # noqa: E402
from bench.harness import PY, Layout, Server, machine_facts, tree_pids  # noqa: E402
from bench.loadgen import HEAD, HttpConn, build_request  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NAN = float("nan")
HI = [{"role": "user", "content": "Hi"}]
OVERHEAD = b"\r\nx-router-overhead-ms:"


# ---------------------------------------------------------------- the cases

def chat_request(model: str, tokens: int) -> dict[str, Any]:
    # include_usage: the same upstream stream the translations ask for (they add it)
    return {"model": model, "messages": HI, "max_tokens": tokens, "stream": True,
            "stream_options": {"include_usage": True}}


def messages_request(model: str, tokens: int) -> dict[str, Any]:
    return {"model": model, "max_tokens": tokens, "messages": HI, "stream": True}


def responses_request(model: str, tokens: int) -> dict[str, Any]:
    return {"model": model, "input": "Hi", "max_output_tokens": tokens, "stream": True, "store": False}


def ollama_request(model: str, tokens: int) -> dict[str, Any]:
    return {"model": model, "messages": HI, "options": {"num_predict": tokens}, "stream": True}


@dataclass(frozen=True, slots=True)
class Case:
    """One kind of stream the client asks for."""

    name: str
    path: str
    model: str  # the deployment (model group) asked for
    upstream: str  # the simulator's path it must reach: pass-through or translation
    ends: tuple[bytes, ...]  # one of them is in the stream's last event: the stream is complete
    token: bytes  # found in each line that carries one output token
    request: Callable[[str, int], dict[str, Any]]

    def body(self, tokens: int) -> bytes:
        return orjson.dumps(self.request(self.model, tokens))


CHAT = "/v1/chat/completions"
# The simulated vLLM ends an answer cut at max_output_tokens with response.completed, the
# router's translation with response.incomplete (as OpenAI does): both end a whole stream
RESPONSES_END = (b"response.completed", b"response.incomplete")
CASES: tuple[Case, ...] = (
    Case("chat (reference)", CHAT, "native", CHAT, (b"[DONE]",), b'"delta":{"content":"', chat_request),
    Case("messages native", "/v1/messages", "native", "/v1/messages", (b"message_stop",), b'"text_delta"', messages_request),
    Case("messages translated", "/v1/messages", "translated", CHAT, (b"message_stop",), b'"text_delta"', messages_request),
    Case("responses native", "/v1/responses", "native", "/v1/responses", RESPONSES_END,
         b'"response.output_text.delta"', responses_request),
    Case("responses translated", "/v1/responses", "translated", CHAT, RESPONSES_END,
         b'"response.output_text.delta"', responses_request),
    Case("ollama /api/chat translated", "/api/chat", "native", CHAT, (b'"done":true',), b'"done":false', ollama_request),
)
BY_NAME = {c.name: c for c in CASES}
# (what it shows, minuend, subtrahend): differences reported per cell
PAIRS: tuple[tuple[str, str, str], ...] = (
    ("Messages: translated − native", "messages translated", "messages native"),
    ("Responses: translated − native", "responses translated", "responses native"),
    ("/api/chat translated − chat", "ollama /api/chat translated", "chat (reference)"),
    ("Messages native − chat", "messages native", "chat (reference)"),
    ("Responses native − chat", "responses native", "chat (reference)"),
)


# ---------------------------------------------------------------- the processes

def router_config(sim_port: int) -> str:
    """Two deployments of one model on one simulated vLLM: passed through and translated."""
    base = f"http://127.0.0.1:{sim_port}/v1"
    return ("model_list:\n"
            f"  - {{model_name: native, litellm_params: {{model: hosted_vllm/sim-model, api_base: '{base}'}}, "
            "model_info: {id: native}}\n"
            f"  - {{model_name: translated, litellm_params: {{model: hosted_vllm/sim-model, api_base: '{base}'}}, "
            "model_info: {id: translated, native_apis: []}}\n")


async def serve_simulator(port: int, tokens_per_s: float, natural: int, kind: str = "vllm",
                          models: tuple[str, ...] = ("sim-model",), api_key: str | None = None) -> None:
    """The simulated vLLM (``--simulator``; bench/providers.py also runs kind ``anthropic``
    here). Its answers have a natural length of 8-24 words; a benchmark of N tokens needs
    answers that run to max_tokens (what vLLM's ``ignore_eos`` gives), so every answer
    here is ``natural`` words, then cut."""
    from router.simulate import SimulatedBackend, core

    core.NATURAL_MIN = core.NATURAL_MAX = natural
    backend = SimulatedBackend(kind, list(models), tokens_per_s=tokens_per_s, api_key=api_key)
    await backend.start("127.0.0.1", port)
    try:
        await asyncio.Event().wait()
    finally:
        await backend.stop()


def cpu_ns(pid: int) -> int:
    """CPU time (user + system, ns) of pid's threads and children: schedstat's first field
    (ns, where /proc/<pid>/stat counts 10 ms ticks)."""
    total = 0
    for p in tree_pids(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/schedstat", "rb") as f:
                    total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return total


# ---------------------------------------------------------------- the client

class DoorConn(HttpConn):
    """loadgen's keep-alive connection, also keeping the router's overhead header and
    whether the body carried the stream's end (its tail alone cannot tell: the last
    event of a Responses stream is the whole response)."""

    overhead: float = NAN
    ended: bool = False
    nbytes: int = 0
    reads: int = 0  # body pieces as the socket delivered them (events that arrive together: one)

    def ask(self, raw: bytes, ends: tuple[bytes, ...]) -> asyncio.Future:
        self.overhead, self.ended, self.nbytes, self.reads, self.ends, self.carry = NAN, False, 0, 0, ends, b""
        return self.request(raw)

    def data_received(self, data: bytes) -> None:
        if self.state == HEAD:
            head = bytes(self.buf) + data
            stop = head.find(b"\r\n\r\n")
            if stop >= 0:
                self.overhead = header_ms(head[:stop].lower())
        super().data_received(data)

    def _body(self, data: bytes | bytearray) -> None:
        super()._body(data)
        self.nbytes += len(data)
        self.reads += 1
        if not self.ended:
            window = self.carry + bytes(data)
            self.ended = any(end in window for end in self.ends)
            self.carry = window[-max(map(len, self.ends)):]


def header_ms(head: bytes) -> float:
    """x-router-overhead-ms from a lower-cased response head, in seconds; NaN when absent or odd."""
    at = head.find(OVERHEAD)
    if at < 0:
        return NAN
    stop = head.find(b"\r\n", at + 2)
    try:
        value = float(head[at + len(OVERHEAD):stop if stop > 0 else None])
    except ValueError:
        return NAN
    return value / 1000 if 0 <= value < 1e6 else NAN


@dataclass(slots=True)
class Cell:
    """What one case measured at one (concurrency, tokens): every request, every batch."""

    ttfb: list[float] = field(default_factory=list)
    last: list[float] = field(default_factory=list)
    overhead: list[float] = field(default_factory=list)
    batch_cpu: list[float] = field(default_factory=list)  # router CPU seconds per request, per batch
    cpu: float = 0.0  # router CPU seconds, all batches
    requests: int = 0
    nbytes: int = 0
    reads: int = 0  # body reads, all streams
    errors: Counter[str] = field(default_factory=Counter)


class Client:
    """A pool of keep-alive connections to the router, reused by every case."""

    def __init__(self, port: int, router_pid: int) -> None:
        self.port, self.router_pid = port, router_pid
        self.conns: list[DoorConn | None] = []

    async def _conn(self, i: int) -> DoorConn:
        while len(self.conns) <= i:
            self.conns.append(None)
        conn = self.conns[i]
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(DoorConn, "127.0.0.1", self.port)
            self.conns[i] = conn
        return conn

    async def _one(self, i: int, raw: bytes, ends: tuple[bytes, ...], cell: Cell | None) -> None:
        try:
            conn = await self._conn(i)
        except OSError as exc:
            if cell is not None:
                cell.errors[f"connect: {type(exc).__name__}"] += 1
            return
        t0 = time.perf_counter()
        try:
            status, first, last, _ = await asyncio.wait_for(conn.ask(raw, ends), 60)
        except (ConnectionError, OSError, asyncio.TimeoutError) as exc:
            conn.close()
            if cell is not None:
                cell.errors[type(exc).__name__] += 1
            return
        if conn.must_close:
            conn.close()
        if cell is None:
            return
        if status != 200:
            cell.errors[f"HTTP {status}"] += 1
        elif not conn.ended:
            cell.errors["stream without its end"] += 1
        else:
            cell.ttfb.append(first - t0)
            cell.last.append(last - t0)
            cell.overhead.append(conn.overhead)
            cell.nbytes += conn.nbytes
            cell.reads += conn.reads

    async def batch(self, case: Case, concurrency: int, tokens: int, per_conn: int, cell: Cell | None) -> None:
        """C connections, each sending per_conn streams back to back; the router's CPU
        time over the batch is charged to the cell."""
        _, _, raw = build_request(f"http://127.0.0.1:{self.port}{case.path}", case.body(tokens))

        async def conn_loop(i: int) -> None:
            for _ in range(per_conn):
                await self._one(i, raw, case.ends, cell)

        before = cpu_ns(self.router_pid)
        await asyncio.gather(*(conn_loop(i) for i in range(concurrency)))
        spent = (cpu_ns(self.router_pid) - before) / 1e9
        if cell is not None:
            n = concurrency * per_conn
            cell.cpu += spent
            cell.requests += n
            cell.batch_cpu.append(spent / n)

    def close(self) -> None:
        for conn in self.conns:
            if conn is not None:
                conn.close()


# ---------------------------------------------------------------- checks before measuring

async def preflight(router_port: int, sim_port: int, tokens: int) -> list[str]:
    """One stream per case, read whole: each must reach the simulator's path it is meant
    to (pass-through or translation), end as its dialect ends, and carry ``tokens``
    tokens. Returns what is wrong (empty: all good)."""
    import aiohttp

    problems = []
    async with aiohttp.ClientSession() as s:
        for case in CASES:
            async with s.get(f"http://127.0.0.1:{sim_port}/__sim/stats") as r:
                before = (await r.json(loads=orjson.loads))["requests"].get(case.upstream, 0)
            async with s.post(f"http://127.0.0.1:{router_port}{case.path}", data=case.body(tokens),
                              headers={"Content-Type": "application/json"}) as r:
                body, status, dep = await r.read(), r.status, r.headers.get("x-router-deployment")
            async with s.get(f"http://127.0.0.1:{sim_port}/__sim/stats") as r:
                after = (await r.json(loads=orjson.loads))["requests"].get(case.upstream, 0)
            seen = sum(1 for line in body.split(b"\n") if case.token in line)
            last = body.rstrip(b"\n").rsplit(b"\n", 1)[-1]  # SSE: the last event's data line
            ended = any(end in last for end in case.ends)
            if status != 200 or dep != case.model or after != before + 1 or not ended or seen != tokens:
                problems.append(f"{case.name}: HTTP {status}, deployment {dep}, {after - before} hit(s) on "
                                f"{case.upstream}, {seen} token lines of {tokens}, end {'found' if ended else 'missing'}")
    return problems


# ---------------------------------------------------------------- statistics

def boot_ci(a: list[float], b: list[float], stat: Callable[[list[float]], float], rng: random.Random,
            reps: int = 300) -> tuple[float, float]:
    """A 90% bootstrap interval of stat(a) - stat(b): whether a difference is more than noise."""
    if len(a) < 2 or len(b) < 2:
        return NAN, NAN
    diffs = sorted(stat(rng.choices(a, k=len(a))) - stat(rng.choices(b, k=len(b))) for _ in range(reps))
    return diffs[int(0.05 * reps)], diffs[int(0.95 * reps) - 1]


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares y = a + b·x: CPU per request = fixed part + per-token part."""
    if len(points) < 2:
        return NAN, NAN
    mx = sum(x for x, _ in points) / len(points)
    my = sum(y for _, y in points) / len(points)
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return NAN, NAN
    b = sum((x - mx) * (y - my) for x, y in points) / sxx
    return my - b * mx, b


def median(values: list[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else NAN


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else NAN


def ms(x: float, signed: bool = False) -> str:
    return "—" if math.isnan(x) else (f"{x * 1000:+.2f}" if signed else f"{x * 1000:.2f}")


def us(x: float, signed: bool = False) -> str:
    return "—" if math.isnan(x) else (f"{x * 1e6:+.1f}" if signed else f"{x * 1e6:.1f}")


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows] + [""]


# ---------------------------------------------------------------- the report

def quantile(values: list[float], q: float) -> float:
    """The q-th percentile in seconds (common.pct answers in ms); NaNs left out."""
    return pct([v for v in values if not math.isnan(v)], q) / 1000


def interval(lo_hi: tuple[float, float], fmt: Callable[[float, bool], str]) -> str:
    return f"{fmt(lo_hi[0], True)} … {fmt(lo_hi[1], True)}"


def case_rows(cells: dict[tuple[str, int, int], Cell], c: int, n: int,
              cases: tuple[Case, ...] = CASES) -> list[list[str]]:
    rows = []
    for case in cases:
        x = cells[case.name, c, n]
        rows.append([case.name, str(len(x.last)), ms(quantile(x.ttfb, 50)), ms(quantile(x.ttfb, 90)),
                     ms(quantile(x.last, 50)), ms(quantile(x.last, 90)), ms(quantile(x.overhead, 50)),
                     ms(quantile(x.overhead, 90)), us(x.cpu / x.requests if x.requests else NAN),
                     f"{x.nbytes / max(1, len(x.last)) / 1024:.1f}", str(sum(x.errors.values()))])
    return rows


def difference_rows(cells: dict[tuple[str, int, int], Cell], c: int, n: int, rng: random.Random,
                    pairs: tuple[tuple[str, str, str], ...] = PAIRS) -> list[list[str]]:
    """Each pair's differences of medians (CPU: of means over batches), per request and per token."""
    rows = []
    for label, a_name, b_name in pairs:
        a, b = cells[a_name, c, n], cells[b_name, c, n]
        d_last = median(a.last) - median(b.last)
        d_cpu = mean(a.batch_cpu) - mean(b.batch_cpu)
        rows.append([label,
                     ms(median(a.ttfb) - median(b.ttfb), True), interval(boot_ci(a.ttfb, b.ttfb, median, rng), ms),
                     ms(d_last, True), interval(boot_ci(a.last, b.last, median, rng), ms),
                     ms(quantile(a.last, 90) - quantile(b.last, 90), True),
                     ms(median(a.overhead) - median(b.overhead), True), us(d_last / n, True),
                     us(d_cpu, True), interval(boot_ci(a.batch_cpu, b.batch_cpu, mean, rng), us), us(d_cpu / n, True)])
    return rows


def cost_rows(cells: dict[tuple[str, int, int], Cell], c: int, tokens: list[int], cases: tuple[Case, ...] = CASES,
              pairs: tuple[tuple[str, str, str], ...] = PAIRS) -> list[list[str]]:
    """Router CPU per request = fixed + per token × N, fitted over the token counts at concurrency c."""
    fits = {}
    for case in cases:
        pts = [(n, x.cpu / x.requests) for n in tokens if (x := cells[case.name, c, n]).requests]
        fits[case.name] = fit_line(pts)
    rows = [[f"{case.name}", str(c), us(fits[case.name][0]), us(fits[case.name][1])] for case in cases]
    for label, a_name, b_name in pairs:
        (fa, ta), (fb, tb) = fits[a_name], fits[b_name]
        rows.append([f"*{label}*", str(c), us(fa - fb, True), us(ta - tb, True)])
    return rows


def report(cells: dict[tuple[str, int, int], Cell], levels: list[int], tokens: list[int], idle_cpu: float,
           cases: tuple[Case, ...] = CASES, pairs: tuple[tuple[str, str, str], ...] = PAIRS) -> list[str]:
    """The tables: per cell, each case and the differences; then the CPU cost model."""
    rng = random.Random(17)
    out: list[str] = []
    for c in levels:
        for n in tokens:
            out += [f"## C={c}, {n} output tokens", ""]
            out += table(["case", "streams", "TTFB p50 ms", "TTFB p90", "last byte p50 ms", "last byte p90",
                          "overhead p50 ms", "overhead p90", "router CPU µs/req", "KiB/stream", "errors"],
                         case_rows(cells, c, n, cases))
            out += table(["difference", "Δ TTFB p50 ms", "90% interval", "Δ last byte p50 ms", "90% interval",
                          "Δ last byte p90 ms", "Δ overhead p50 ms", "Δ last byte p50 per token µs",
                          "Δ router CPU µs/req", "90% interval", "Δ router CPU per token µs"],
                         difference_rows(cells, c, n, rng, pairs))
    out += ["## Router CPU per request = fixed + per token × N (least squares over the token counts)", ""]
    out += table(["case", "C", "fixed µs/request", "per token µs"], [r for c in levels for r in cost_rows(cells, c, tokens, cases, pairs)])
    out += [f"Router CPU when idle (its background loops): {idle_cpu * 1000:.2f} ms/s, included above.", ""]
    return out


# ---------------------------------------------------------------- the run

def arg_parser(doc: str, seconds: float) -> argparse.ArgumentParser:
    """The options doors.py and providers.py share (``doc``: the script's docstring)."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc.split("\n\n", 1)[1])
    ap.add_argument("--tokens", default="16,256", help="output tokens per stream, comma-separated (default 16,256)")
    ap.add_argument("--concurrency", default="1,8", help="concurrent streams, comma-separated (default 1,8)")
    ap.add_argument("--tokens-per-s", type=float, default=2000.0,
                    help="the simulator's pace per stream (default 2000; 0: as fast as it can write, chunks then merge)")
    ap.add_argument("--batch-tokens", type=int, default=64,
                    help="each connection of a batch sends ceil(this / N) streams (default 64)")
    ap.add_argument("--seconds", type=float, default=seconds,
                    help=f"measuring budget; rounds stop once it is spent (default {seconds:g})")
    ap.add_argument("--rounds", type=int, default=10_000, help="at most this many rounds")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the router, the simulator and the client to CPUs")
    ap.add_argument("--no-write", action="store_true", help="print only; no file under bench/results/")
    ap.add_argument("--simulator", type=int, metavar="PORT", help=argparse.SUPPRESS)  # the child process
    ap.add_argument("--natural", type=int, default=256, help=argparse.SUPPRESS)
    return ap


def checked(ap: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = ap.parse_args(argv)
    try:
        args.tokens_list = sorted({int(x) for x in args.tokens.split(",")})
        args.levels = sorted({int(x) for x in args.concurrency.split(",")})
    except ValueError:
        ap.error("--tokens and --concurrency take comma-separated integers")
    if min(args.tokens_list) < 1 or min(args.levels) < 1 or args.batch_tokens < 1:
        ap.error("--tokens, --concurrency and --batch-tokens must be at least 1")
    return args


def parse(argv: list[str]) -> argparse.Namespace:
    return checked(arg_parser(__doc__, 330.0), argv)


def simulator_server(name: str, layout: Layout, args: argparse.Namespace, port: int, tmp: Path,
                     script: Path, extra: tuple[str, ...] = ()) -> Server:
    """A simulator child process: ``script --simulator PORT`` (its own ``serve_simulator``),
    answers of ``max(--tokens) + 8`` words, so that every one is cut at max_tokens."""
    natural = max(args.tokens_list) + 8
    return Server(name, layout.prefix(layout.mock) + [
        PY, str(script), "--simulator", str(port), "--tokens-per-s", str(args.tokens_per_s),
        "--natural", str(natural), *extra], port, "/__sim/stats", tmp)


def router_server(layout: Layout, config: str, tmp: Path) -> Server:
    cfg = tmp / "router.yaml"
    cfg.write_text(config)
    port = free_port()
    return Server("llm-router", layout.prefix(layout.target) + [
        PY, "-m", "router", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)],
        port, "/health/readiness", tmp)


async def idle_cpu(pid: int, seconds: float = 2.0) -> float:
    """The router's CPU seconds per second while nothing is asked of it (its background loops)."""
    t, c0 = time.perf_counter(), cpu_ns(pid)
    await asyncio.sleep(seconds)
    return (cpu_ns(pid) - c0) / 1e9 / (time.perf_counter() - t)


async def run_rounds(client: Client, cases: tuple[Case, ...], args: argparse.Namespace
                     ) -> tuple[dict[tuple[str, int, int], Cell], int, float]:
    """A warm-up batch of every case in every cell, then rounds until --seconds is spent:
    each runs every case in every (C, N) cell, cells and cases in an order that rotates."""
    cells = {(case.name, c, n): Cell() for case in cases for c in args.levels for n in args.tokens_list}
    grid = [(c, n) for c in args.levels for n in args.tokens_list]
    for c, n in grid:  # warm-up: every path, connection and cache once, not recorded
        for case in cases:
            await client.batch(case, c, n, 1, None)
    began = time.perf_counter()
    rounds = 0
    while rounds < args.rounds and time.perf_counter() - began < args.seconds:
        order = cases[rounds % len(cases):] + cases[:rounds % len(cases)]
        for c, n in grid[rounds % len(grid):] + grid[:rounds % len(grid)]:
            per_conn = max(1, -(-args.batch_tokens // n))
            for case in order:
                await client.batch(case, c, n, per_conn, cells[case.name, c, n])
        rounds += 1
        if rounds % 10 == 0:
            print(f"  {rounds} rounds, {time.perf_counter() - began:.0f} s", file=sys.stderr, flush=True)
    return cells, rounds, time.perf_counter() - began


async def measure(args: argparse.Namespace, layout: Layout, tmp: Path) -> tuple[dict, float, int, float]:
    """Start the simulator and the router, check every case, then run rounds until the budget is spent."""
    sim_port = free_port()
    sim = simulator_server("simulated vLLM", layout, args, sim_port, tmp, Path(__file__).resolve())
    router = router_server(layout, router_config(sim_port), tmp)
    sim.start()
    router.start()
    client: Client | None = None
    try:
        if not await sim.ready() or not await router.ready():
            raise SystemExit("the simulator or the router did not start (their logs are above)")
        problems = await preflight(router.port, sim_port, min(args.tokens_list))
        if problems:
            raise SystemExit("the cases are not what they claim to be:\n  " + "\n  ".join(problems))
        assert router.pid is not None
        idle = await idle_cpu(router.pid)
        client = Client(router.port, router.pid)
        cells, rounds, seconds = await run_rounds(client, CASES, args)
        return cells, idle, rounds, seconds
    finally:
        if client is not None:
            client.close()
        router.stop()
        sim.stop()


def machine(layout: Layout) -> dict[str, str]:
    """The machine's facts; pins this process (the client) where the layout says."""
    facts = machine_facts()
    if layout.enabled and layout.loadgen:
        os.sched_setaffinity(0, layout.loadgen)  # the client shares the simulator's CPU, the router has its own
    facts["CPU layout"] = layout.describe().replace("mock", "simulator").replace("load generator", "client")
    print(f"machine: {facts['nproc']} CPUs, {facts['CPU']}, Python {facts['python']}; {facts['CPU layout']}", flush=True)
    return facts


def method(backends: str, args: argparse.Namespace, rounds: int, seconds: float, overhead_note: str) -> list[str]:
    """The paragraph that says how the tables were measured."""
    return [f"{backends} at {args.tokens_per_s:g} tokens/s per stream (one SSE event per token), answers cut at "
            f"max_tokens; one router (1 worker, uvloop, log level info); {rounds} rounds in {seconds:.0f} s, each running "
            f"every case in every cell (C connections × ceil({args.batch_tokens} / N) streams), cases rotating. "
            "TTFB = request sent to the first body byte; last byte = to the end of the chunked body; overhead = the "
            "router's x-router-overhead-ms (time in the proxy before the first byte, upstream waits excluded: "
            f"{overhead_note}); router CPU = its threads' "
            "schedstat time over each batch ÷ the batch's streams. Percentiles over all streams of a cell; "
            "differences are of medians (CPU: of means over batches), with 90% bootstrap intervals.", ""]


def error_lines(cells: dict[tuple[str, int, int], Cell]) -> list[str]:
    errors = {f"{k[0]} C={k[1]} N={k[2]}": dict(v.errors) for k, v in cells.items() if v.errors}
    return ["Errors: " + orjson.dumps(errors).decode(), ""] if errors else []


def write_result(suffix: str, title: str, script: str, facts: dict[str, str], lines: list[str]) -> None:
    """bench/results/<date>-<suffix>.md: the title, the command, the machine, then ``lines``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{dt.datetime.now().strftime('%Y-%m-%d-%H%M%S')}-{suffix}.md"
    head = [f"# {title}", "",
            f"Command: `{' '.join(['.venv/bin/python', script, *sys.argv[1:]])}`", "",
            "| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    path.write_text("\n".join(head + lines) + "\n")
    print(f"written: {path.relative_to(ROOT)}", flush=True)


async def amain(args: argparse.Namespace) -> None:
    layout = Layout(not args.no_pin)
    facts = machine(layout)
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-doors-"))
    try:
        cells, idle, rounds, seconds = await measure(args, layout, tmp)
    except BaseException:
        print(f"logs kept in {tmp}", file=sys.stderr)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = method("Simulated vLLM", args, rounds, seconds,
                   "a translated stream's first-chunk translation counts as upstream wait there")
    lines += report(cells, args.levels, args.tokens_list, idle)
    lines += error_lines(cells)
    print("\n".join(lines), flush=True)
    if not args.no_write:
        write_result("doors", "llm-router benchmark: front doors, translated vs passed through", "bench/doors.py",
                     facts, lines)


def main() -> None:
    args = parse(sys.argv[1:])
    if args.simulator:
        asyncio.run(serve_simulator(args.simulator, args.tokens_per_s, args.natural))
        return
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
