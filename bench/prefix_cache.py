"""Prompt-cache-aware routing on a multi-turn chat workload (issue 19's benchmark).

    .venv/bin/python bench/prefix_cache.py                     # every variant: about 20 minutes
    .venv/bin/python bench/prefix_cache.py --duration 20 --warmup 5 --variants round-robin,cache-aware --no-write
    .venv/bin/python bench/prefix_cache.py --skip-litellm --repeats 2   # rotate the variants' order per repeat

Processes: the simulated vLLM servers in one subprocess (this script with
--serve-simulators: ``router.simulate.SimulatedBackend`` with ``max_num_seqs``,
which the ``llm-router simulate`` CLI does not expose, and a small control app
reading their counters), each router under test in its own subprocess
(``python -m router serve``; LiteLLM's ``litellm``), and the load generator here
(aiohttp, streaming chat). Every variant gets fresh simulators (empty prompt caches,
zeroed counters) and a fresh router.

Workload: T tenants (40), each with its own system prompt of ~2,000 words (a word
is one simulated token; words average 3 letters, so ~4 characters per token as
real tokenizers give), each holding one conversation at a time: 6 turns of a
~40-word user message, the answer (max_tokens 32, every answer runs to it, as
vLLM's ``ignore_eos`` makes it) appended to the history, then a new conversation.
Closed loop: one request in flight per tenant, for --warmup then --duration
seconds. The fleet (4 servers × max_num_seqs 4) is saturated: requests queue in
the servers. KV demand: 40 × ~2.3k tokens ≈ 90k tokens against 32k per server.

Variants: llm-router with simple-shuffle, round-robin, least-busy, cache-aware, and
round_robin + ``optional_pre_call_checks: [session_affinity]`` (one session id per
conversation, ``x-litellm-session-id`` and ``metadata.session_id``); cache-aware with
``--workers 2``, once with a new connection per request (the kernel's SO_REUSEPORT
picks each request's worker: a conversation's turns meet both workers) and once with
keep-alive (aiohttp reuses the connection a tenant just released, so a tenant mostly
stays on one worker); cache-aware as two instances, the client sending each request
to a random one, sharing Redis (one ``redis_key_prefix`` for both, deleted after) and
not; LiteLLM's proxy, by default and with its ``session_affinity`` check.

Per variant: prefix-cache hit rate (sum cached_tokens / sum prompt_tokens over the
servers, the counters' deltas over the measured window), TTFT (request sent →
first content delta) p50/p90, latency p50, throughput (answered requests/s and
prompt tokens/s admitted by the servers), success %, the share of turns 2-6 served
by the same deployment as the conversation's previous turn, and the load spread:
every 50 ms the servers' open requests (running + queued: the simulator's
``stats.open``) are read; the ratio busiest / mean over samples whose mean is ≥ 1
is reported as max and p99.

Then the saturation check: cache-aware under an open loop (Poisson arrivals) at
--saturation × the closed-loop throughput cache-aware reached; each arrival is the
next turn of an idle conversation of a random tenant (a new one if the tenant has
none idle). Success must be 100% (requests may queue, none may fail), and the
busiest server ≤ 1.25 × the mean load.

Writes the tables, with the machine's facts, to bench/results/<date>-prefix-cache.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port  # noqa: E402
from bench.harness import (LITELLM_ENV, LITELLM_VENV, PY, RESULTS, Server, ensure_litellm,  # noqa: E402
                           machine_facts, redis_cleanup, redis_settings, tree_pids)

NAN = float("nan")
MODEL = "chat"  # the model group the clients ask for
UPSTREAM = "sim-model"  # what the simulated vLLMs serve
SAMPLE_EVERY = 0.05  # s between reads of the servers' open requests


# ---------------------------------------------------------------- the simulators (a subprocess)

async def serve_simulators(spec: dict[str, Any]) -> None:
    """--serve-simulators: one simulated vLLM per port, and a control app on
    ``control``: ``GET /load`` answers, per server, [open, running, waiting,
    requests, prompt_tokens, cached_tokens] (one small read for all of them)."""
    from aiohttp import web

    from router.simulate import SimulatedBackend, core

    core.NATURAL_MIN = core.NATURAL_MAX = spec["max_tokens"]  # answers run to max_tokens (vLLM's ignore_eos)
    backends = [SimulatedBackend("vllm", [UPSTREAM], ttft=spec["ttft"], tokens_per_s=spec["tokens_per_s"],
                                 max_num_seqs=spec["max_num_seqs"], prefix_cache_tokens=spec["prefix_cache_tokens"],
                                 prefill_tokens_per_s=spec["prefill_tokens_per_s"],
                                 cache_block_tokens=spec["cache_block_tokens"], max_model_len=32768)
                for _ in spec["ports"]]
    for b, port in zip(backends, spec["ports"]):
        await b.start("127.0.0.1", port)

    async def load(request: web.Request) -> web.Response:
        rows = [[b.stats.open, len(b.scheduler.running), b.scheduler.waiting, b.stats.total, b.stats.prompt_tokens,
                 b.stats.cached_tokens] for b in backends]
        return web.Response(body=orjson.dumps(rows), content_type="application/json")

    app = web.Application()
    app.router.add_get("/load", load)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", spec["control"]).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        for b in backends:
            await b.stop()


def simulators(opts: argparse.Namespace, tmp: Path, tag: str) -> tuple[Server, list[int]]:
    ports = [free_port() for _ in range(opts.servers)]
    control = free_port()
    spec = {"ports": ports, "control": control, "ttft": opts.ttft, "tokens_per_s": opts.tokens_per_s,
            "max_num_seqs": opts.max_num_seqs, "prefix_cache_tokens": opts.prefix_cache_tokens,
            "prefill_tokens_per_s": opts.prefill_tokens_per_s, "cache_block_tokens": opts.cache_block_tokens,
            "max_tokens": opts.max_tokens}
    srv = Server(f"simulators-{tag}", [PY, str(Path(__file__).resolve()), "--serve-simulators",
                                       orjson.dumps(spec).decode()], control, "/load", tmp)
    return srv, ports


# ---------------------------------------------------------------- the targets

@dataclass(frozen=True)
class Variant:
    name: str
    settings: dict[str, Any] = field(default_factory=dict)  # router_settings
    workers: int = 1
    instances: int = 1
    redis: bool = False
    session: bool = False  # the client names each conversation's session
    litellm: bool = False
    fresh_connections: bool = False  # a new connection per request: the kernel picks the worker of each


VARIANTS = [
    Variant("simple-shuffle", {"routing_strategy": "simple-shuffle"}),
    Variant("round-robin", {"routing_strategy": "round_robin"}),
    Variant("least-busy", {"routing_strategy": "least-busy"}),
    Variant("cache-aware", {"routing_strategy": "cache-aware"}),
    Variant("session affinity", {"routing_strategy": "round_robin", "optional_pre_call_checks": ["session_affinity"]},
            session=True),
    Variant("cache-aware --workers 2", {"routing_strategy": "cache-aware"}, workers=2, fresh_connections=True),
    Variant("cache-aware --workers 2 (keep-alive)", {"routing_strategy": "cache-aware"}, workers=2),
    Variant("cache-aware 2 instances + Redis", {"routing_strategy": "cache-aware"}, instances=2, redis=True),
    Variant("cache-aware 2 instances (no Redis)", {"routing_strategy": "cache-aware"}, instances=2),
    Variant("LiteLLM default", {}, litellm=True),
    Variant("LiteLLM session_affinity", {"optional_pre_call_checks": ["session_affinity"]}, session=True, litellm=True),
]
BY_NAME = {v.name: v for v in VARIANTS}
ALIASES = {"workers2": "cache-aware --workers 2", "workers2-keepalive": "cache-aware --workers 2 (keep-alive)",
           "instances2": "cache-aware 2 instances + Redis",
           "instances2-alone": "cache-aware 2 instances (no Redis)",
           "session": "session affinity", "litellm": "LiteLLM default", "litellm-session": "LiteLLM session_affinity"}


def model_list(ports: list[int]) -> str:
    return "model_list:\n" + "".join(
        f"  - {{model_name: {MODEL}, litellm_params: {{model: hosted_vllm/{UPSTREAM}, api_base: 'http://127.0.0.1:{p}/v1',"
        f" api_key: sk-bench}}, model_info: {{id: s{i}}}}}\n" for i, p in enumerate(ports))


def targets(v: Variant, ports: list[int], tmp: Path, opts: argparse.Namespace,
            redis: tuple[str, int, str] | None) -> list[Server]:
    slug = "".join(c if c.isalnum() else "_" for c in v.name)
    if v.litellm:
        cfg = tmp / f"litellm-{slug}.yaml"
        text = model_list(ports) + "litellm_settings: {telemetry: false}\n"
        if v.settings:
            text += "router_settings: " + orjson.dumps(v.settings).decode() + "\n"
        cfg.write_text(text)
        port = free_port()
        return [Server(v.name, [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
                                "--port", str(port), "--num_workers", "1"], port, "/health/readiness", tmp,
                       env=LITELLM_ENV, ready_timeout=180.0)]
    settings = dict(v.settings)
    if v.redis and redis is not None:
        settings.update(redis_host=redis[0], redis_port=redis[1], redis_key_prefix=redis[2])
    cfg = tmp / f"router-{slug}.yaml"
    cfg.write_text(model_list(ports) + "router_settings: " + orjson.dumps(settings).decode() + "\n")
    out = []
    for i in range(v.instances):
        port = free_port()
        out.append(Server(f"{v.name} #{i}", [PY, "-m", "router", "serve", "--config", str(cfg), "--host", "127.0.0.1",
                                             "--port", str(port), "--workers", str(v.workers),
                                             "--log-level", opts.router_log_level], port, "/health/readiness", tmp))
    return out


# ---------------------------------------------------------------- the workload

def vocabulary(n: int = 6000, seed: int = 19) -> list[str]:
    """Made-up words of 1-5 letters (3 on average: with the space, ~4 characters per token)."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return ["".join(rng.choice(letters) for _ in range(rng.randint(1, 5))) for _ in range(n)]


class Workload:
    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.vocab = vocabulary()
        self.systems = [self.system_prompt(t) for t in range(opts.tenants)]

    def words(self, rng: random.Random, n: int) -> str:
        return " ".join(rng.choices(self.vocab, k=n))

    def system_prompt(self, tenant: int) -> str:
        rng = random.Random(f"system {tenant}")
        return f"You are the assistant of tenant {tenant}. " + self.words(rng, self.opts.system_words)

    def user_turn(self, tenant: int, conv: int, turn: int) -> str:
        return self.words(random.Random(f"user {tenant} {conv} {turn}"), self.opts.user_words)


@dataclass
class Conversation:
    tenant: int
    number: int
    messages: list[dict[str, str]]
    turn: int = 0
    last_dep: str | None = None

    @property
    def session(self) -> str:
        return f"tenant{self.tenant:03d}-conv{self.number:05d}"


@dataclass(slots=True)
class Record:
    start: float
    first: float  # first content delta (NaN if none)
    end: float
    ok: bool
    error: str = ""
    dep: str = ""
    turn: int = 0
    same_dep: bool | None = None  # turns 2+: served where the previous turn was
    session: str = ""


class Client:
    """Streams chat requests at one or more router URLs (a random one per request)."""

    def __init__(self, urls: list[str], workload: Workload, session_ids: bool, timeout: float,
                 fresh_connections: bool = False) -> None:
        self.urls, self.workload, self.session_ids = urls, workload, session_ids
        self.fresh_connections = fresh_connections
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.records: list[Record] = []
        self.http: aiohttp.ClientSession | None = None
        self.rng = random.Random(7)
        self.convs = [0] * workload.opts.tenants

    async def __aenter__(self) -> Client:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, force_close=self.fresh_connections))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.http is not None
        await self.http.close()

    def new_conversation(self, tenant: int) -> Conversation:
        self.convs[tenant] += 1
        return Conversation(tenant, self.convs[tenant], [{"role": "system", "content": self.workload.systems[tenant]}])

    async def turn(self, conv: Conversation) -> Record:
        """The conversation's next turn; on success the answer joins its history."""
        opts = self.workload.opts
        conv.turn += 1
        msgs = conv.messages + [{"role": "user", "content": self.workload.user_turn(conv.tenant, conv.number, conv.turn)}]
        body: dict[str, Any] = {"model": MODEL, "messages": msgs, "max_tokens": opts.max_tokens, "stream": True,
                                "stream_options": {"include_usage": True}}
        headers = {"Content-Type": "application/json"}
        if self.session_ids:
            headers["x-litellm-session-id"] = conv.session
            body["metadata"] = {"session_id": conv.session}
        url = self.urls[0] if len(self.urls) == 1 else self.rng.choice(self.urls)
        t0 = time.perf_counter()
        first, ok, error, dep, pieces = NAN, False, "", "", []
        assert self.http is not None
        try:
            async with self.http.post(url, data=orjson.dumps(body), headers=headers, timeout=self.timeout) as r:
                dep = r.headers.get("x-router-deployment") or r.headers.get("x-litellm-model-id") or ""
                if r.status != 200:
                    error = f"HTTP {r.status}"
                    await r.read()
                else:
                    async for line in r.content:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            ok = True
                            break
                        event = orjson.loads(data)
                        for choice in event.get("choices") or ():
                            text = (choice.get("delta") or {}).get("content")
                            if text:
                                if first != first:
                                    first = time.perf_counter()
                                pieces.append(text)
                    if not ok:
                        error = "stream without [DONE]"
        except asyncio.TimeoutError:
            error = "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            error = type(exc).__name__
        end = time.perf_counter()
        if ok and first != first:
            ok, error = False, "no content"
        same = None if conv.turn == 1 or not dep or conv.last_dep is None else dep == conv.last_dep
        rec = Record(t0, first, end, ok, error, dep, conv.turn, same, conv.session)
        self.records.append(rec)
        if ok:
            conv.messages = msgs + [{"role": "assistant", "content": "".join(pieces)}]
            conv.last_dep = dep
        return rec

    async def closed_loop(self, until: float) -> None:
        """One loop per tenant: its conversations one after the other, one request in flight."""
        turns = self.workload.opts.turns

        async def tenant_loop(t: int) -> None:
            await asyncio.sleep(t * 0.025)  # staggered start
            conv = self.new_conversation(t)
            while time.perf_counter() < until:
                rec = await self.turn(conv)
                if not rec.ok:
                    await asyncio.sleep(0.1)
                if conv.turn >= turns or not rec.ok:
                    conv = self.new_conversation(t)

        await asyncio.gather(*(tenant_loop(t) for t in range(self.workload.opts.tenants)))

    async def open_loop(self, rate: float, until: float, drain: float) -> int:
        """Poisson arrivals at ``rate``/s until ``until``; each is the next turn of an idle
        conversation of a random tenant (a new one when it has none idle). Waits for
        every request sent (up to ``drain`` s after ``until``); returns how many were sent."""
        turns = self.workload.opts.turns
        idle: list[deque[Conversation]] = [deque() for _ in range(self.workload.opts.tenants)]
        rng = random.Random(11)
        tasks: set[asyncio.Task] = set()

        async def one(conv: Conversation) -> None:
            rec = await self.turn(conv)
            if rec.ok and conv.turn < turns:
                idle[conv.tenant].append(conv)

        sent = 0
        next_at = time.perf_counter()
        while True:
            next_at += rng.expovariate(rate)
            if next_at >= until:
                break
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tenant = rng.randrange(self.workload.opts.tenants)
            conv = idle[tenant].popleft() if idle[tenant] else self.new_conversation(tenant)
            task = asyncio.ensure_future(one(conv))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        if tasks:
            await asyncio.wait(list(tasks), timeout=max(1.0, until + drain - time.perf_counter()))
        return sent


class LoadSampler:
    """Reads the simulators' counters every SAMPLE_EVERY seconds."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, list[list[int]]]] = []
        self._task: asyncio.Task | None = None

    async def read(self, http: aiohttp.ClientSession) -> list[list[int]]:
        async with http.get(self.url) as r:
            return orjson.loads(await r.read())

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            next_at = time.perf_counter()
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                    self.samples.append((time.perf_counter(), await self.read(http)))
                next_at += SAMPLE_EVERY
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def at(self, t: float) -> list[list[int]]:
        """The sample nearest to time t."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]

    def ratios(self, w0: float, w1: float) -> list[float]:
        """busiest / mean open requests, per sample in [w0, w1] whose mean is ≥ 1."""
        out = []
        for t, rows in self.samples:
            if w0 <= t <= w1:
                opens = [r[0] for r in rows]
                mean = sum(opens) / len(opens)
                if mean >= 1:
                    out.append(max(opens) / mean)
        return out

    def over_bound(self, w0: float, w1: float, factor: float = 1.25) -> tuple[int, int, int]:
        """(samples in [w0, w1] with any load, those whose busiest server holds more than
        CHWBL's integer bound ceil(factor × total / n), the largest excess in requests)."""
        n = over = worst = 0
        for t, rows in self.samples:
            if w0 <= t <= w1:
                opens = [r[0] for r in rows]
                if sum(opens):
                    n += 1
                    excess = max(opens) - math.ceil(factor * sum(opens) / len(opens))
                    if excess > 0:
                        over += 1
                        worst = max(worst, excess)
        return n, over, worst

    def mean_open(self, w0: float, w1: float, column: int = 0) -> list[float]:
        """Per server, the mean over [w0, w1] of a counter (0: open requests, 1: running)."""
        rows = [r for t, r in self.samples if w0 <= t <= w1]
        return [statistics.fmean(s[i][column] for s in rows) for i in range(len(rows[0]))] if rows else []


def cpu_ticks() -> tuple[int, int]:
    """(ticks the machine's CPUs were busy, ticks of this process tree: the simulators,
    the targets, the client), from /proc: their difference over a window is what other
    processes on the machine took."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    mine = 0
    for pid in tree_pids(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()
            mine += int(stat[11]) + int(stat[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return busy, mine


async def cpu_over(w0: float, w1: float) -> tuple[float, float]:
    """CPU used over [w0, w1] (perf_counter times), in % of one CPU: (this benchmark, others)."""
    await asyncio.sleep(max(0.0, w0 - time.perf_counter()))
    b0, m0 = cpu_ticks()
    t0 = time.perf_counter()
    await asyncio.sleep(max(0.0, w1 - time.perf_counter()))
    b1, m1 = cpu_ticks()
    ticks = os.sysconf("SC_CLK_TCK") * (time.perf_counter() - t0) / 100
    return (m1 - m0) / ticks, max(0.0, (b1 - b0) - (m1 - m0)) / ticks


def pct(values: list[float], p: float) -> float:
    if not values:
        return NAN
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def summarize(client: Client, sampler: LoadSampler, w0: float, w1: float) -> dict[str, Any]:
    """The window's figures: requests that ended inside [w0, w1], the servers' counters' deltas."""
    recs = [r for r in client.records if w0 <= r.end <= w1]
    ok = [r for r in recs if r.ok]
    seconds = w1 - w0
    a, b = sampler.at(w0), sampler.at(w1)
    prompt = sum(y[4] - x[4] for x, y in zip(a, b))
    cached = sum(y[5] - x[5] for x, y in zip(a, b))
    per_server = [y[3] - x[3] for x, y in zip(a, b)]
    ratios = sampler.ratios(w0, w1)
    later = [r for r in ok if r.same_dep is not None]
    errors: dict[str, int] = {}
    for r in recs:
        if not r.ok:
            errors[r.error] = errors.get(r.error, 0) + 1
    return {
        "requests": len(recs), "ok": len(ok), "success": 100.0 * len(ok) / len(recs) if recs else NAN, "errors": errors,
        "hit": cached / prompt if prompt else NAN,
        "ttft_p50": pct([r.first - r.start for r in ok], 50) * 1000, "ttft_p90": pct([r.first - r.start for r in ok], 90) * 1000,
        "lat_p50": pct([r.end - r.start for r in ok], 50) * 1000,
        "rps": len(ok) / seconds, "prompt_tps": prompt / seconds,
        "ratio_max": max(ratios) if ratios else NAN, "ratio_p99": pct(ratios, 99), "samples": len(ratios),
        "same_dep": 100.0 * sum(r.same_dep for r in later) / len(later) if later else NAN,
        "per_server": per_server, "mean_open": sampler.mean_open(w0, w1),
        "mean_running": sampler.mean_open(w0, w1, 1), "over_bound": sampler.over_bound(w0, w1),
    }


# ---------------------------------------------------------------- one run

async def run_variant(v: Variant, opts: argparse.Namespace, workload: Workload, tmp: Path,
                      redis: tuple[str, int, str] | None, rate: float | None = None) -> dict[str, Any]:
    """Fresh simulators and target(s), then the closed loop (or, with ``rate``, the open loop)."""
    sims, ports = simulators(opts, tmp, "".join(c if c.isalnum() else "_" for c in v.name))
    sims.start()
    if not await sims.ready():
        raise SystemExit(f"the simulators did not start: {sims.error}")
    servers = targets(v, ports, tmp, opts, redis)
    try:
        for s in servers:
            s.start()
        up = await asyncio.gather(*(s.ready() for s in servers))
        if not all(up):
            return {"failed": "; ".join(s.error or "" for s in servers if s.error)}
        await asyncio.sleep(opts.settle)  # the routers' first probes (vLLM /metrics: KV capacity) are in
        sampler = LoadSampler(f"http://127.0.0.1:{sims.port}/load")
        sampler.start()
        async with Client([s.url for s in servers], workload, v.session, opts.request_timeout, v.fresh_connections) as client:
            t0 = time.perf_counter()
            w0, w1 = t0 + opts.warmup, t0 + opts.warmup + (opts.saturation_duration if rate else opts.duration)
            cpu = asyncio.ensure_future(cpu_over(w0, w1))
            if rate:
                sent = await client.open_loop(rate, w1, opts.request_timeout)
            else:
                await client.closed_loop(w1)
            cpu_mine, cpu_other = await cpu
            await asyncio.sleep(0.1)
            await sampler.stop()
            out = summarize(client, sampler, w0, w1)
            out["records"] = client.records
            out["cpu_mine"], out["cpu_other"] = cpu_mine, cpu_other
            if rate:
                done = [r for r in client.records]
                out.update(sent=sent, answered=len(done), all_ok=sum(r.ok for r in done),
                           all_errors={e: sum(1 for r in done if r.error == e) for e in {r.error for r in done if r.error}},
                           offered=rate, over_bound=sampler.over_bound(w0, w1),
                           ratio_max_arrivals=max(sampler.ratios(t0, w1) or [NAN]),
                           ratio_max_all=max(sampler.ratios(t0, time.perf_counter()) or [NAN]),
                           ttft_p90_all=pct([r.first - r.start for r in done if r.ok], 90) * 1000,
                           ttft_max_all=max([r.first - r.start for r in done if r.ok] or [NAN]) * 1000)
            return out
    finally:
        for s in servers:
            s.stop()
        sims.stop()


# ---------------------------------------------------------------- report

def fmt(v: float, digits: int = 1) -> str:
    return "—" if v != v else f"{v:,.{digits}f}"


def median_of(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else NAN


def describe(opts: argparse.Namespace) -> str:
    seat_cached = opts.ttft + opts.max_tokens / opts.tokens_per_s
    demand = opts.tenants * (opts.system_words + opts.turns * (opts.user_words + opts.max_tokens) / 2)
    return (f"{opts.servers} simulated vLLM servers (`max_num_seqs` {opts.max_num_seqs}, prompt cache "
            f"{opts.prefix_cache_tokens:,} tokens each in blocks of {opts.cache_block_tokens}, prefill "
            f"{opts.prefill_tokens_per_s:,.0f} tokens/s, decode {opts.tokens_per_s:g} tokens/s, ttft {opts.ttft:g} s); "
            f"{opts.tenants} tenants, each with its own {opts.system_words:,}-word system prompt, each a closed loop of "
            f"{opts.turns}-turn conversations ({opts.user_words}-word user turns, answers of {opts.max_tokens} tokens "
            f"appended to the history), streaming with `include_usage`. KV demand ≈ {demand:,.0f} tokens "
            f"({demand / opts.prefix_cache_tokens:.1f}× one server's cache). A seat costs ≈ {seat_cached * 1000:.0f} ms "
            f"when the prompt is cached, ≈ {(seat_cached + (opts.system_words + 150) / opts.prefill_tokens_per_s) * 1000:.0f} ms "
            f"when it is not. {opts.warmup:g} s warm-up, then {opts.duration:g} s measured per variant, fresh simulators "
            f"and router each time.")


COLUMNS = ["variant", "requests", "success %", "hit rate", "TTFT p50 ms", "TTFT p90 ms", "latency p50 ms", "req/s",
           "prompt tok/s", "busiest/mean max", "busiest/mean p99", "same server as previous turn"]


def row(name: str, runs: list[dict[str, Any]]) -> list[str]:
    m = lambda k: median_of(runs, k)  # noqa: E731
    errs: dict[str, int] = {}
    for r in runs:
        for k, n in r.get("errors", {}).items():
            errs[k] = errs.get(k, 0) + n
    success = fmt(m("success"), 2) + (f" ({', '.join(f'{k}: {n}' for k, n in errs.items())})" if errs else "")
    return [name, fmt(m("requests"), 0), success, fmt(m("hit") * 100, 1) + "%", fmt(m("ttft_p50"), 0), fmt(m("ttft_p90"), 0),
            fmt(m("lat_p50"), 0), fmt(m("rps"), 1), fmt(m("prompt_tps"), 0), fmt(m("ratio_max"), 2), fmt(m("ratio_p99"), 2),
            fmt(m("same_dep"), 1) + "%"]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_rows(results: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    out: list[list[str]] = []
    rr = results.get("round-robin")
    ca = results.get("cache-aware")
    if rr and ca:
        h_rr, h_ca = median_of(rr, "hit"), median_of(ca, "hit")
        hr = h_ca / h_rr if h_rr else math.inf
        out.append(["prefix-cache hit rate vs round-robin", f"{h_ca * 100:.1f}% vs {h_rr * 100:.1f}% = {hr:.1f}×", "≥ 3×",
                    verdict(hr >= 3)])
        t_rr, t_ca = median_of(rr, "ttft_p90"), median_of(ca, "ttft_p90")
        out.append(["p90 TTFT vs round-robin", f"{t_ca:.0f} vs {t_rr:.0f} ms = {t_ca / t_rr:.2f}×", "≤ 0.33×",
                    verdict(t_ca <= t_rr / 3)])
        r_rr, r_ca = median_of(rr, "rps"), median_of(ca, "rps")
        out.append(["throughput vs round-robin", f"{r_ca:.1f} vs {r_rr:.1f} req/s = {(r_ca / r_rr - 1) * 100:+.0f}%",
                    "≥ +50%", verdict(r_ca >= 1.5 * r_rr)])
        for name in ("cache-aware --workers 2", "cache-aware 2 instances + Redis"):
            if results.get(name):
                h = median_of(results[name], "hit")
                d = (h - h_ca) / h_ca * 100
                out.append([f"{name}: hit rate vs single", f"{h * 100:.1f}% vs {h_ca * 100:.1f}% ({d:+.1f}%)",
                            "within 5%", verdict(abs(d) <= 5)])
    return out


def write_result(facts: dict[str, str], lines: list[str]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y-%m-%d-%H%M%S')}-prefix-cache.md"
    head = ["# llm-router benchmark: prompt-cache-aware routing (issue 19)", "",
            f"Command: `{' '.join(['.venv/bin/python', 'bench/prefix_cache.py', *sys.argv[1:]])}`", "",
            "| machine | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in facts.items()] + [""]
    path.write_text("\n".join(head + lines) + "\n")
    return path


# ---------------------------------------------------------------- main

async def amain(opts: argparse.Namespace) -> None:
    main_task = asyncio.current_task()
    assert main_task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop the servers on the way out (a background job ignores SIGINT)
        asyncio.get_running_loop().add_signal_handler(sig, main_task.cancel)
    facts = machine_facts()
    variants = opts.variants
    if any(v.litellm for v in variants):
        try:
            facts["LiteLLM"] = await asyncio.to_thread(ensure_litellm, opts.litellm_version)
        except Exception as exc:  # noqa: BLE001 - any failure: say so and go on without it
            print(f"LiteLLM could not be installed ({exc}): its variants are skipped", file=sys.stderr)
            variants = [v for v in variants if not v.litellm]
    redis = redis_settings(opts.redis) if any(v.redis for v in variants) else None
    if redis is None:
        variants = [v for v in variants if not v.redis]
    print(f"machine: {facts['nproc']} CPUs, {facts['CPU']}; load average {facts['load average at start']}\n"
          + describe(opts) + "\n", flush=True)
    workload = Workload(opts)
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-prefix-cache-"))
    results: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    failed: dict[str, str] = {}
    began = time.monotonic()
    try:
        for rep in range(opts.repeats):
            order = variants[rep % len(variants):] + variants[:rep % len(variants)]
            for v in order:
                print(f"[{(time.monotonic() - began) / 60:5.1f} min] repeat {rep + 1}/{opts.repeats}: {v.name} ...", flush=True)
                out = await run_variant(v, opts, workload, tmp, redis)
                if "failed" in out:
                    failed[v.name] = out["failed"]
                    print(f"  {v.name} failed: {out['failed']}", flush=True)
                    continue
                results[v.name].append(out)
                print("  " + " | ".join(f"{h}: {c}" for h, c in zip(COLUMNS[1:], row(v.name, [out])[1:])), flush=True)
                print(f"  requests per server {out['per_server']}, mean open {[round(x, 1) for x in out['mean_open']]}, "
                      f"mean running {[round(x, 1) for x in out['mean_running']]}; CPU: this benchmark {out['cpu_mine']:.0f}%, "
                      f"other processes {out['cpu_other']:.0f}%", flush=True)
                if redis is not None and v.redis:
                    redis_cleanup(redis)
        saturation = None
        unsaturated: dict[str, list[dict[str, Any]]] = {}
        if opts.saturation and results.get("cache-aware"):
            rate = opts.saturation * median_of(results["cache-aware"], "rps")
            print(f"[{(time.monotonic() - began) / 60:5.1f} min] saturation: cache-aware, open loop at {rate:.1f} req/s ...",
                  flush=True)
            saturation = await run_variant(BY_NAME["cache-aware"], opts, workload, tmp, None, rate=rate)
            if "failed" not in saturation:
                print(f"  requests per server {saturation['per_server']}, mean open "
                      f"{[round(x, 1) for x in saturation['mean_open']]}, mean running "
                      f"{[round(x, 1) for x in saturation['mean_running']]}", flush=True)
        if opts.unsaturated_seqs:
            light = argparse.Namespace(**{**vars(opts), "max_num_seqs": opts.unsaturated_seqs})
            for name in ("round-robin", "cache-aware"):
                print(f"[{(time.monotonic() - began) / 60:5.1f} min] unsaturated (max_num_seqs {opts.unsaturated_seqs}): "
                      f"{name} ...", flush=True)
                out = await run_variant(BY_NAME[name], light, workload, tmp, None)
                if "failed" not in out:
                    unsaturated[name] = [out]
                    print("  " + " | ".join(f"{h}: {c}" for h, c in zip(COLUMNS[1:], row(name, [out])[1:])), flush=True)
    finally:
        if redis is not None:
            redis_cleanup(redis)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())

    lines = [describe(opts), "",
             "Hit rate = Σ cached_tokens / Σ prompt_tokens over the servers (their own counters, deltas over the window). "
             "TTFT = request sent → first content delta, through the router. req/s = answered streams per second; "
             "prompt tok/s = prompt tokens the servers admitted per second. busiest/mean = the busiest server's open "
             "requests (running + queued) ÷ the mean over the servers, read every 50 ms, samples with a mean ≥ 1. "
             "Same server = turns 2–6 served by the deployment of the conversation's previous turn "
             "(`x-router-deployment`, LiteLLM's `x-litellm-model-id`)."
             + (f" Medians of {opts.repeats} repeats, the variants' order rotating per repeat." if opts.repeats > 1 else ""),
             "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for name, runs in results.items():
        if runs:
            lines.append("| " + " | ".join(row(name, runs)) + " |")
    for name, why in failed.items():
        lines.append(f"| {name} | did not run: {why} |" + " |" * (len(COLUMNS) - 2))
    lines.append("")
    lines += ["Per server (s0..s3) over the window: requests, mean open requests, and how many 50 ms samples had "
              "the busiest server above CHWBL's integer bound ceil(1.25 × total open / servers)"
              + (" (the last repeat)" if opts.repeats > 1 else "") + ":", "",
              "| variant | requests per server | mean open per server | samples above the bound "
              "| CPU: this benchmark / other processes (% of one) |",
              "|---|---|---|---|---|"]
    for name, runs in results.items():
        if runs:
            n, over, worst = runs[-1]["over_bound"]
            lines.append(f"| {name} | {' / '.join(map(str, runs[-1]['per_server']))} | "
                         f"{' / '.join(f'{x:.1f}' for x in runs[-1]['mean_open'])} | {over} of {n}"
                         + (f" (by at most {worst})" if over else "")
                         + f" | {runs[-1]['cpu_mine']:.0f}% / {runs[-1]['cpu_other']:.0f}% |")
    lines.append("")
    tr = target_rows(results)
    if saturation is not None and "failed" not in saturation:
        s = saturation
        bound = (f"max {s['ratio_max']:.2f} (p99 {s['ratio_p99']:.2f}) over the window, {s['ratio_max_arrivals']:.2f} "
                 f"from the first arrival (warm-up included), {s['ratio_max_all']:.2f} with the drain after the last "
                 "arrival (the last queued requests, a handful, on one server)")
        lines += [f"## Saturation: cache-aware, open loop at {s['offered']:.1f} req/s "
                  f"({opts.saturation:g}× its closed-loop {median_of(results['cache-aware'], 'rps'):.1f} req/s)", "",
                  f"Poisson arrivals for {opts.warmup:g} + {opts.saturation_duration:g} s; each arrival is the next turn of an "
                  "idle conversation of a random tenant (a new conversation when none is idle); every request sent is "
                  f"awaited (timeout {opts.request_timeout:g} s).", "",
                  "| sent | answered OK | errors | hit rate | TTFT p50 ms | TTFT p90 ms | TTFT max ms (whole run) "
                  "| req/s answered | busiest/mean | samples above ceil(1.25 × total / n) |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {s['sent']} | {s['all_ok']} ({100 * s['all_ok'] / max(1, s['sent']):.2f}%) | {s['all_errors'] or 0} | "
                  f"{s['hit'] * 100:.1f}% | {s['ttft_p50']:.0f} | {s['ttft_p90']:.0f} | {s['ttft_max_all']:.0f} | {s['rps']:.1f} | "
                  f"{bound} | {s['over_bound'][1]} of {s['over_bound'][0]} (by at most {s['over_bound'][2]}) |", "",
                  f"Per server: requests received {' / '.join(map(str, s['per_server']))}, mean open "
                  f"{' / '.join(f'{x:.1f}' for x in s['mean_open'])}, mean running "
                  f"{' / '.join(f'{x:.1f}' for x in s['mean_running'])}; CPU over the window: this benchmark "
                  f"{s['cpu_mine']:.0f}%, other processes {s['cpu_other']:.0f}% (of one CPU).", ""]
        tr.append(["1.2× saturation: success", f"{100 * s['all_ok'] / max(1, s['sent']):.2f}% of {s['sent']}", "100%",
                   verdict(s["all_ok"] == s["sent"])])
        tr.append(["1.2× saturation: busiest / mean open requests", f"{s['ratio_max']:.2f} (p99 {s['ratio_p99']:.2f})",
                   "≤ 1.25", verdict(s["ratio_max"] <= 1.25)])
    elif saturation is not None:
        lines += [f"Saturation run failed: {saturation['failed']}", ""]
    if len(unsaturated) == 2:
        lines += [f"## Unsaturated: the same workload with `max_num_seqs` {opts.unsaturated_seqs} "
                  f"({opts.servers * opts.unsaturated_seqs} seats for {opts.tenants} tenants: nothing queues in the servers)", "",
                  "In the saturated closed loop above, TTFT is mostly the wait for a seat, which throughput sets "
                  "(Little's law: latency = tenants ÷ throughput); here it is the prefill alone.", "",
                  "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row(name, runs)) + " |" for name, runs in unsaturated.items()] + [""]
        t_rr, t_ca = median_of(unsaturated["round-robin"], "ttft_p90"), median_of(unsaturated["cache-aware"], "ttft_p90")
        tr.append([f"p90 TTFT vs round-robin, unsaturated (max_num_seqs {opts.unsaturated_seqs})",
                   f"{t_ca:.0f} vs {t_rr:.0f} ms = {t_ca / t_rr:.2f}×", "≤ 0.33× (for reference)", verdict(t_ca <= t_rr / 3)])
    if tr:
        lines += ["## Targets (issue 19, against round-robin)", "", "| target | measured | limit | verdict |",
                  "|---|---|---|---|"] + ["| " + " | ".join(r) + " |" for r in tr] + [""]
    print("\n" + "\n".join(lines), flush=True)
    if not opts.no_write:
        print(f"written: {write_result(facts, lines).relative_to(ROOT)}")
    print(f"took {(time.monotonic() - began) / 60:.1f} min")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/prefix_cache.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", help="comma-separated (default all): " + ", ".join(v.name for v in VARIANTS)
                    + "; aliases " + ", ".join(f"{k}={v!r}" for k, v in ALIASES.items()))
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--litellm-version")
    ap.add_argument("--redis", default="127.0.0.1:6379", help="for the two-instance variant ('' to skip it)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds measured per variant (default 60)")
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--settle", type=float, default=1.5, help="seconds between the router's start and the load")
    ap.add_argument("--saturation", type=float, default=1.2, help="open-loop rate ÷ cache-aware's closed-loop req/s (0: none)")
    ap.add_argument("--saturation-duration", type=float, default=45.0)
    ap.add_argument("--unsaturated-seqs", type=int, default=16,
                    help="also run round-robin and cache-aware with this max_num_seqs, so nothing queues (0: not)")
    ap.add_argument("--request-timeout", type=float, default=300.0)
    ap.add_argument("--router-log-level", default="info", choices=("debug", "info", "warning", "error"))
    ap.add_argument("--no-write", action="store_true")
    g = ap.add_argument_group("workload")
    g.add_argument("--tenants", type=int, default=40)
    g.add_argument("--system-words", type=int, default=2000)
    g.add_argument("--user-words", type=int, default=40)
    g.add_argument("--turns", type=int, default=6)
    g.add_argument("--max-tokens", type=int, default=32)
    g = ap.add_argument_group("simulators")
    g.add_argument("--servers", type=int, default=4)
    g.add_argument("--max-num-seqs", type=int, default=4)
    g.add_argument("--prefix-cache-tokens", type=int, default=32000)
    g.add_argument("--cache-block-tokens", type=int, default=16)
    g.add_argument("--prefill-tokens-per-s", type=float, default=10000.0)
    g.add_argument("--tokens-per-s", type=float, default=150.0)
    g.add_argument("--ttft", type=float, default=0.01)
    opts = ap.parse_args(argv)
    names = [ALIASES.get(n.strip(), n.strip()) for n in opts.variants.split(",") if n.strip()] if opts.variants \
        else [v.name for v in VARIANTS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}")
    opts.variants = [BY_NAME[n] for n in names if not (opts.skip_litellm and BY_NAME[n].litellm)]
    if not opts.redis:
        opts.variants = [v for v in opts.variants if not v.redis]
    return opts


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-simulators":
        run = serve_simulators(orjson.loads(sys.argv[2]))
    else:
        run = amain(parse(sys.argv[1:]))
    try:
        import uvloop
        uvloop.run(run)
    except ImportError:
        asyncio.run(run)


if __name__ == "__main__":
    main()
