"""Priority and fair admission on serial backends (issue 20's benchmark).

    .venv/bin/python bench/priority.py                      # the full run: about 25 minutes
    .venv/bin/python bench/priority.py --quick --no-write   # a smoke run: about 3 minutes
    .venv/bin/python bench/priority.py --baseline ../wt-base --repeats 2 --skip-litellm

Processes: two simulated vLLM servers in one subprocess (this script with
--serve-simulators: ``router.simulate.SimulatedBackend`` with ``max_num_seqs`` 1, which
the ``llm-router simulate`` CLI does not expose, and a small control app reading their
counters), each target in its own subprocess (``python -m router serve``; LiteLLM's
``litellm``), and the clients here (aiohttp). Every (variant, workload) run gets fresh
simulators and a fresh target.

The servers are serial: ``max_num_seqs`` 1 on the simulator and ``max_parallel_requests: 1``
on each of the router's two deployments (one model group): when both are busy, requests
wait in the router, where the feature under test decides who goes next. Every answer
runs to ``max_tokens`` (as vLLM's ``ignore_eos`` makes it); a prompt costs
``words / --prefill-tokens-per-s`` before its first token (each prompt is distinct, so
the servers' prompt caches never hit), then one token per ``1 / --tokens-per-s``.

Workload A (priority): key ``batch-a`` (``priority: batch``) sends --batch-jobs long jobs
at once (--batch-words-word prompts, ``max_tokens`` --batch-max-tokens, not streamed),
while two interactive keys send short streamed chats (--chat-words, ``max_tokens``
--chat-max-tokens, ``include_usage``), one every --chat-every seconds each, until the last
batch job has answered: ``alice``'s key has ``priority: interactive``, ``bob``'s has none and
his requests carry ``X-Priority: interactive``. LiteLLM gets the body's ``"priority"``
instead (0 for the chats, 2 for the batch: its scheduler's integer, lower first).
Measured: the chats' latency (sent → last byte) and TTFT (sent → first content delta)
p50/p90, the batch's total time (first send → last batch answer), answers that were not
200 or streams that did not end with ``data: [DONE]``, and the router's ``queued_ms``
(from its ROUTER log lines, joined on ``x-request-id``).

Workload B (fairness): keys ``batch-a`` and ``batch-b`` (both ``priority: batch``) send
identical jobs (--fair-words-word prompts, ``max_tokens`` --fair-max-tokens), open loop at
--rate-a and --rate-b requests/s, both above what the two servers serve; after --fair-warmup
seconds, each key's share of the requests answered (and of the tokens) in the next
--fair-window seconds. ``queue_limit`` is set above everything the clients send in a run, so
a 429 ``queue_full`` would count as rejected (none is expected). Afterwards every client
goes away at once, and four probe requests must be answered within --probe-timeout
seconds: a slot or a queue entry that leaked would stall them.

Variants: "arrival order (today)": the router before the feature (--baseline, a checkout
of it; default: commit 583bd79's ``router/`` extracted with ``git archive``), which wakes
every waiter when a slot frees and lets them race (in effect arrival order); "priority
only": ``priority: {fairness: false}`` (one FIFO per class); "priority + fairness": the
defaults; "LiteLLM": its proxy with the same two deployments, without
``max_parallel_requests`` (LiteLLM 1.108 answers 429 at that limit instead of queueing:
the servers' own FIFO queues are the queue), the body's ``priority`` routing requests
through its scheduler. All llm-router variants read the same config (the old router
warns about ``priority`` and ignores it).

Writes the tables, with the machine's facts, to bench/results/<date>-priority[-quick].md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.harness import LITELLM_ENV, LITELLM_VENV, PY, RESULTS, Server, ensure_litellm, machine_facts, sh  # noqa: E402

NAN = float("nan")
MODEL = "chat"  # the model group the clients ask for
UPSTREAM = "sim-model"  # what the simulated vLLMs serve
BASELINE_COMMIT = "583bd79"  # the router before priority admission
SAMPLE_EVERY = 0.1  # s between reads of the servers' counters
MASTER = "sk-master-bench20-0001"
KEYS = {  # name -> (key, priority field or None)
    "batch-a": ("sk-batch-a-0001", "batch"),
    "batch-b": ("sk-batch-b-0001", "batch"),
    "alice": ("sk-alice-00001", "interactive"),
    "bob": ("sk-bob-0000001", None),  # no class on the key: his requests say X-Priority: interactive
}
LITELLM_PRIORITY = {"batch-a": 2, "batch-b": 2, "alice": 0, "bob": 0}


# ---------------------------------------------------------------- the simulators (a subprocess)

async def serve_simulators(spec: dict[str, Any]) -> None:
    """--serve-simulators: one serial simulated vLLM per port, and a control app on
    ``control``: ``GET /load`` answers, per server, [open, running, waiting, requests,
    prompt_tokens]."""
    from aiohttp import web

    from router.simulate import SimulatedBackend, core

    # answers run to max_tokens (vLLM's ignore_eos): a natural length at least the largest max_tokens
    # (not more: the simulator draws every word of it, whatever max_tokens cuts)
    core.NATURAL_MIN = core.NATURAL_MAX = spec["max_tokens"]
    backends = [SimulatedBackend("vllm", [UPSTREAM], ttft=spec["ttft"], tokens_per_s=spec["tokens_per_s"],
                                 max_num_seqs=1, prefix_cache_tokens=spec["prefix_cache_tokens"],
                                 prefill_tokens_per_s=spec["prefill_tokens_per_s"], max_model_len=32768)
                for _ in spec["ports"]]
    for b, port in zip(backends, spec["ports"]):
        await b.start("127.0.0.1", port)

    async def load(request: web.Request) -> web.Response:
        rows = [[b.stats.open, len(b.scheduler.running), b.scheduler.waiting, b.stats.total, b.stats.prompt_tokens]
                for b in backends]
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
    from bench.common import free_port

    ports = [free_port() for _ in range(opts.servers)]
    control = free_port()
    spec = {"ports": ports, "control": control, "ttft": opts.ttft, "tokens_per_s": opts.tokens_per_s,
            "prefill_tokens_per_s": opts.prefill_tokens_per_s, "prefix_cache_tokens": 65536,
            "max_tokens": max(opts.batch_max_tokens, opts.chat_max_tokens, opts.fair_max_tokens, 4)}
    srv = Server(f"simulators-{tag}", [PY, str(Path(__file__).resolve()), "--serve-simulators",
                                       orjson.dumps(spec).decode()], control, "/load", tmp)
    return srv, ports


# ---------------------------------------------------------------- the targets

@dataclass(frozen=True)
class Variant:
    name: str
    kind: str  # "baseline" | "router" | "litellm"
    priority: dict[str, Any] = field(default_factory=dict)  # router_settings.priority
    workloads: str = "AB"


VARIANTS = [
    Variant("arrival order (today)", "baseline"),
    Variant("priority only", "router", {"fairness": False}),
    Variant("priority + fairness", "router", {}),
    # a diagnosis for workload B: without aging, the deficit round-robin alone decides (see the report)
    Variant("priority + fairness, aging_seconds 0", "router", {"aging_seconds": 0}, workloads="B"),
    Variant("LiteLLM", "litellm"),
]
BY_NAME = {v.name: v for v in VARIANTS}
ALIASES = {"baseline": "arrival order (today)", "arrival": "arrival order (today)", "priority": "priority only",
           "fair": "priority + fairness", "fairness": "priority + fairness",
           "no-aging": "priority + fairness, aging_seconds 0", "litellm": "LiteLLM"}


def router_config(v: Variant, ports: list[int], opts: argparse.Namespace) -> str:
    models = "model_list:\n" + "".join(
        f"  - {{model_name: {MODEL}, litellm_params: {{model: hosted_vllm/{UPSTREAM}, api_base: 'http://127.0.0.1:{p}/v1',"
        f" api_key: sk-bench, max_parallel_requests: 1}}, model_info: {{id: s{i}}}}}\n" for i, p in enumerate(ports))
    priority = {"queue_limit": opts.queue_limit, **v.priority}
    settings = {"queue_timeout": opts.request_timeout, "timeout": opts.request_timeout, "priority": priority}
    keys = "".join(f"    - {{name: {name}, key: {key}" + (f", priority: {cls}" if cls else "") + "}\n"
                   for name, (key, cls) in KEYS.items())
    return (models + "router_settings: " + orjson.dumps(settings).decode() + "\n"
            + f"general_settings:\n  master_key: {MASTER}\n  api_keys:\n" + keys)


def litellm_config(ports: list[int], opts: argparse.Namespace) -> str:
    # no max_parallel_requests: LiteLLM 1.108 answers 429 at that limit (MaxParallelRequestsLimit) instead of waiting
    models = "model_list:\n" + "".join(
        f"  - {{model_name: {MODEL}, litellm_params: {{model: hosted_vllm/{UPSTREAM}, api_base: 'http://127.0.0.1:{p}/v1',"
        f" api_key: sk-bench}}, model_info: {{id: s{i}}}}}\n" for i, p in enumerate(ports))
    t = int(opts.request_timeout)
    return (models + f"litellm_settings: {{telemetry: false, request_timeout: {t}}}\n"
            + f"router_settings: {{timeout: {t}, num_retries: 0}}\n")


def target(v: Variant, ports: list[int], tmp: Path, opts: argparse.Namespace, tag: str) -> Server:
    from bench.common import free_port

    slug = "".join(c if c.isalnum() else "_" for c in v.name) + "-" + tag
    cfg = tmp / f"{slug}.yaml"
    port = free_port()
    if v.kind == "litellm":
        cfg.write_text(litellm_config(ports, opts))
        return Server(f"{slug}", [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg), "--host", "127.0.0.1",
                                  "--port", str(port), "--num_workers", "1"], port, "/health/readiness", tmp,
                      env=LITELLM_ENV, ready_timeout=180.0)
    cfg.write_text(router_config(v, ports, opts))
    root = opts.baseline_root if v.kind == "baseline" else ROOT
    return Server(slug, [PY, "-m", "router", "serve", "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                         "--log-level", "info"], port, "/health/readiness", tmp, cwd=root,
                  env={"PYTHONPATH": str(root)})


def baseline_root(opts: argparse.Namespace, tmp: Path) -> tuple[Path, str]:
    """The pre-feature router: --baseline (a checkout), else commit BASELINE_COMMIT's
    ``router/`` extracted into tmp (no worktree needed)."""
    if opts.baseline is not None:
        return opts.baseline, sh(["git", "-C", str(opts.baseline), "log", "-1", "--format=%h %s"]) or str(opts.baseline)
    dest = tmp / "baseline"
    dest.mkdir()
    tar = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", BASELINE_COMMIT, "router"],
                         capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(dest, filter="data")
    return dest, sh(["git", "log", "-1", "--format=%h %s", BASELINE_COMMIT])


# ---------------------------------------------------------------- the clients

_rng = random.Random(20)
WORDS = ["".join(_rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(3)) for _ in range(4000)]  # 3 letters each


def prompt(tag: str, words: int) -> str:
    """A distinct prompt of ``words`` simulated tokens (3 letters + a space each: the same
    byte size for every prompt with the same ``words``)."""
    rng = random.Random(tag)
    return " ".join(rng.choices(WORDS, k=words))


@dataclass(slots=True)
class Record:
    who: str  # the key's name
    start: float
    first: float = NAN  # first content delta (streams)
    end: float = NAN
    ok: bool = False
    error: str = ""
    status: int = 0
    rid: str = ""
    tokens: int = 0  # prompt + completion tokens (usage)
    stream: bool = False
    rejected: bool = False  # 429 queue_full


class Client:
    def __init__(self, url: str, litellm: bool, timeout: float) -> None:
        self.url, self.litellm = url, litellm
        self.timeout = aiohttp.ClientTimeout(total=timeout)
        self.records: list[Record] = []
        self.http: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Client:
        self.http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.http is not None
        await self.http.close()

    async def send(self, who: str, text: str, max_tokens: int, stream: bool) -> Record:
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        headers = {"Content-Type": "application/json"}
        if self.litellm:
            body["priority"] = LITELLM_PRIORITY[who]
        else:
            headers["Authorization"] = f"Bearer {KEYS[who][0]}"
            if KEYS[who][1] is None:
                headers["X-Priority"] = "interactive"
        rec = Record(who, time.perf_counter(), stream=stream)
        self.records.append(rec)
        assert self.http is not None
        try:
            async with self.http.post(self.url, data=orjson.dumps(body), headers=headers, timeout=self.timeout) as r:
                rec.status, rec.rid = r.status, r.headers.get("x-request-id", "")
                if r.status != 200:
                    raw = await r.read()
                    rec.error = f"HTTP {r.status}"
                    if r.status == 429 and b"queue_full" in raw:
                        rec.rejected, rec.error = True, "429 queue_full"
                elif stream:
                    done = False
                    async for line in r.content:
                        if not line.startswith(b"data:"):
                            continue
                        data = line[5:].strip()
                        if data == b"[DONE]":
                            done = True
                            continue
                        if done:
                            rec.error = "data after [DONE]"
                            break
                        event = orjson.loads(data)
                        if rec.first != rec.first and any((c.get("delta") or {}).get("content")
                                                           for c in event.get("choices") or ()):
                            rec.first = time.perf_counter()
                        usage = event.get("usage")
                        if usage:
                            rec.tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
                    rec.ok = done and not rec.error
                    if not done:
                        rec.error = "stream cut (no [DONE])"
                else:
                    out = orjson.loads(await r.read())
                    usage = out.get("usage") or {}
                    rec.tokens = usage.get("prompt_tokens", 0) + usage.get("completion_tokens", 0)
                    rec.ok = bool(out.get("choices"))
                    if not rec.ok:
                        rec.error = "no choices"
        except asyncio.TimeoutError:
            rec.error = "timeout"
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            rec.error = type(exc).__name__
        rec.end = time.perf_counter()
        return rec


class LoadSampler:
    """Reads the simulators' counters every SAMPLE_EVERY seconds (for how busy they were)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.samples: list[tuple[float, list[list[int]]]] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        async with aiohttp.ClientSession() as http:
            next_at = time.perf_counter()
            while True:
                with contextlib.suppress(aiohttp.ClientError, OSError, ValueError):
                    async with http.get(self.url) as r:
                        self.samples.append((time.perf_counter(), orjson.loads(await r.read())))
                next_at += SAMPLE_EVERY
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def busy(self, w0: float, w1: float) -> float:
        """The servers' mean share of time running a request over [w0, w1] (1.0: always both)."""
        rows = [r for t, r in self.samples if w0 <= t <= w1]
        if not rows:
            return NAN
        return statistics.fmean(min(1, s[1]) for r in rows for s in r)

    def max_waiting(self, w0: float, w1: float) -> int:
        """The most requests queued in a server (not in the router) over [w0, w1]."""
        return max((s[2] for t, r in self.samples if w0 <= t <= w1 for s in r), default=0)


def queued_ms(log: Path) -> dict[str, float]:
    """request id -> queued_ms, from the router's ROUTER log lines (a request that did
    not wait has none: 0)."""
    out: dict[str, float] = {}
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        if "[ROUTER]" not in line:
            continue
        m = re.search(r"request_id=(\S+)", line)
        if m:
            q = re.search(r"queued_ms=([\d.]+)", line)
            out[m.group(1)] = float(q.group(1)) if q else 0.0
    return out


async def probe(url: str, litellm: bool, n: int, timeout: float) -> tuple[int, float]:
    """``n`` small requests at once after the clients left: how many were answered within
    ``timeout`` s, and the slowest (a leaked slot or waiter would stall them)."""
    async with Client(url, litellm, timeout) as c:
        recs = await asyncio.gather(*(c.send("alice", prompt(f"probe {i}", 10), 4, False) for i in range(n)))
    return sum(r.ok for r in recs), max(r.end - r.start for r in recs)


def pct(values: list[float], p: float) -> float:
    if not values:
        return NAN
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


# ---------------------------------------------------------------- the runs

async def with_target(v: Variant, opts: argparse.Namespace, tmp: Path, tag: str, run) -> dict[str, Any]:
    """Fresh simulators and target, ``run(client, server, sampler)``, then the probe."""
    sims, ports = simulators(opts, tmp, tag)
    sims.start()
    if not await sims.ready():
        raise SystemExit(f"the simulators did not start: {sims.error}")
    srv = target(v, ports, tmp, opts, tag)
    try:
        srv.start()
        if not await srv.ready():
            return {"failed": srv.error or "did not start"}
        await asyncio.sleep(opts.settle)  # the router's first probes are in
        sampler = LoadSampler(f"http://127.0.0.1:{sims.port}/load")
        sampler.start()
        try:
            async with Client(srv.url, v.kind == "litellm", opts.request_timeout) as client:
                out = await run(client, srv, sampler)
        finally:
            await sampler.stop()
        await asyncio.sleep(opts.settle)  # the clients' disconnects have reached the router
        (tmp / f"{srv.name}-records.json").write_bytes(orjson.dumps(  # for a closer look afterwards
            [{"who": r.who, "start": r.start - out["t0"], "first": r.first - out["t0"] if r.first == r.first else None,
              "end": r.end - out["t0"] if r.end == r.end else None, "ok": r.ok, "error": r.error, "rid": r.rid}
             for r in out["records"]]))
        out["probe_n"] = 2 * opts.servers
        out["probe_ok"], out["probe_s"] = await probe(srv.url, v.kind == "litellm", out["probe_n"], opts.probe_timeout)
        if v.kind != "litellm":
            q = queued_ms(srv.log)
            for r in out["records"]:
                r_q = q.get(r.rid)
                if r_q is not None:
                    out.setdefault("queued", {}).setdefault(r.who, []).append(r_q / 1000)
            out["logged_queued"] = any("queued_ms=" in line for line in srv.tail(10 ** 6))
        return out
    finally:
        srv.stop()
        sims.stop()


async def workload_a(v: Variant, opts: argparse.Namespace, tmp: Path, tag: str) -> dict[str, Any]:
    async def run(client: Client, srv: Server, sampler: LoadSampler) -> dict[str, Any]:
        t0 = time.perf_counter()
        batch = [asyncio.ensure_future(client.send("batch-a", f"job {i:04d}: " + prompt(f"batch {tag} {i}", opts.batch_words),
                                                   opts.batch_max_tokens, opts.batch_stream))
                 for i in range(opts.batch_jobs)]
        chats: list[asyncio.Task] = []

        async def chatter(who: str, offset: float) -> None:
            n = 0
            next_at = t0 + offset
            while True:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                if all(b.done() for b in batch):
                    return
                chats.append(asyncio.ensure_future(client.send(
                    who, f"chat {n:04d}: " + prompt(f"chat {tag} {who} {n}", opts.chat_words), opts.chat_max_tokens, True)))
                n += 1
                next_at += opts.chat_every

        limit = opts.a_limit or 3 * opts.batch_jobs * job_seconds(opts, opts.batch_words, opts.batch_max_tokens) \
            / opts.servers + 60
        chatters = [asyncio.ensure_future(chatter("alice", 0.5)),
                    asyncio.ensure_future(chatter("bob", 0.5 + opts.chat_every / 2))]
        _, late = await asyncio.wait(batch, timeout=limit)  # a batch that starves must not hold the run forever
        for t in (*late, *chatters):
            t.cancel()
        await asyncio.gather(*chatters, return_exceptions=True)
        t_batch = time.perf_counter()
        await asyncio.wait(chats, timeout=max(1.0, t0 + limit + 60 - time.perf_counter())) if chats else None
        for t in chats:
            t.cancel()
        await asyncio.gather(*batch, *chats, return_exceptions=True)
        recs = client.records
        for r in recs:
            if r.end != r.end:  # cancelled above: unfinished within the limit
                r.error, r.end = "unfinished", time.perf_counter()
        b = [r for r in recs if r.who == "batch-a"]
        c = [r for r in recs if r.who != "batch-a"]
        okc = [r for r in c if r.ok]
        chat_s = job_seconds(opts, opts.chat_words, opts.chat_max_tokens)
        return {
            "records": recs, "t0": t0,
            "batch_total": max(r.end for r in b) - t0 if not late else NAN, "batch_unfinished": len(late),
            "batch_ok": sum(r.ok for r in b), "batch_n": len(b),
            "all_done": max(r.end for r in recs) - t0,
            # server time the chats took before the batch's end (the batch's own time is what is left of it)
            "chat_share": chat_s * sum(1 for r in okc if r.end <= t_batch) / (opts.servers * (t_batch - t0)),
            "chat_n": len(c), "chat_ok": len(okc),
            "lat_p50": pct([r.end - r.start for r in okc], 50), "lat_p90": pct([r.end - r.start for r in okc], 90),
            "lat_max": max([r.end - r.start for r in okc] or [NAN]),
            "ttft_p50": pct([r.first - r.start for r in okc], 50), "ttft_p90": pct([r.first - r.start for r in okc], 90),
            "bad": sum(not r.ok for r in recs), "cut": sum(r.error.startswith("stream cut") for r in recs),
            "errors": count_errors(recs),
            "busy": sampler.busy(t0 + 1, t_batch), "backend_waiting": sampler.max_waiting(t0, t_batch),
        }

    return await with_target(v, opts, tmp, tag, run)


async def workload_b(v: Variant, opts: argparse.Namespace, tmp: Path, tag: str) -> dict[str, Any]:
    async def run(client: Client, srv: Server, sampler: LoadSampler) -> dict[str, Any]:
        t0 = time.perf_counter()
        w0 = t0 + opts.fair_warmup
        w1 = w0 + opts.fair_window
        tasks: list[asyncio.Task] = []

        async def sender(who: str, rate: float, offset: float) -> None:
            n = 0
            next_at = t0 + offset
            while next_at < w1:
                await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
                tasks.append(asyncio.ensure_future(client.send(
                    who, f"{who} {n:05d}: " + prompt(f"fair {tag} {who} {n}", opts.fair_words), opts.fair_max_tokens, False)))
                n += 1
                next_at += 1 / rate

        await asyncio.gather(sender("batch-a", opts.rate_a, 0.0), sender("batch-b", opts.rate_b, 0.05))
        await asyncio.sleep(max(0.0, w1 - time.perf_counter()))
        pending = sum(not t.done() for t in tasks)
        for t in tasks:  # every client goes away at once (the probe afterwards checks that nothing leaked)
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        recs = client.records
        out: dict[str, Any] = {"records": recs, "t0": t0, "pending_at_end": pending, "errors": count_errors(
            [r for r in recs if r.end <= w1])}
        done = [r for r in recs if r.ok and w0 <= r.end <= w1]
        for who in ("batch-a", "batch-b"):
            mine = [r for r in done if r.who == who]
            out[who] = {"sent": sum(1 for r in recs if r.who == who and r.start <= w1), "done": len(mine),
                        "tokens": sum(r.tokens for r in mine),
                        "rejected": sum(1 for r in recs if r.who == who and r.rejected),
                        "failed": sum(1 for r in recs if r.who == who and not r.ok and not r.rejected and r.end <= w1
                                      and r.error != "CancelledError")}
        total = out["batch-a"]["done"] + out["batch-b"]["done"]
        tokens = out["batch-a"]["tokens"] + out["batch-b"]["tokens"]
        out["done"] = total
        out["share_a"] = out["batch-a"]["done"] / total if total else NAN
        out["share_b"] = out["batch-b"]["done"] / total if total else NAN
        out["work_a"] = out["batch-a"]["tokens"] / tokens if tokens else NAN
        out["work_b"] = out["batch-b"]["tokens"] / tokens if tokens else NAN
        out["busy"] = sampler.busy(w0, w1)
        return out

    return await with_target(v, opts, tmp, tag, run)


def job_seconds(opts: argparse.Namespace, words: int, max_tokens: int) -> float:
    """A request's time on a server: its prefill, the simulator's ttft and its decode."""
    return words / opts.prefill_tokens_per_s + opts.ttft + max_tokens / opts.tokens_per_s


def count_errors(recs: list[Record]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in recs:
        if not r.ok:
            out[r.error] = out.get(r.error, 0) + 1
    return out


# ---------------------------------------------------------------- report

def fmt(v: float, digits: int = 1) -> str:
    return "—" if v != v else f"{v:,.{digits}f}"


def med(runs: list[dict[str, Any]], key: str) -> float:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else NAN


def describe(opts: argparse.Namespace) -> str:
    job = job_seconds(opts, opts.batch_words, opts.batch_max_tokens)
    chat = job_seconds(opts, opts.chat_words, opts.chat_max_tokens)
    fair = job_seconds(opts, opts.fair_words, opts.fair_max_tokens)
    chat_load = 2 * chat / opts.chat_every / opts.servers
    return (f"{opts.servers} serial simulated vLLM servers (`max_num_seqs` 1; each router deployment "
            f"`max_parallel_requests: 1`, one model group), prefill {opts.prefill_tokens_per_s:,.0f} tokens/s, decode "
            f"{opts.tokens_per_s:g} tokens/s, ttft {opts.ttft:g} s; every answer runs to `max_tokens`, no prompt is cached. "
            f"**Workload A**: key `batch-a` (`priority: batch`) sends {opts.batch_jobs} jobs at once "
            f"({opts.batch_words:,}-token prompts, `max_tokens` {opts.batch_max_tokens}, "
            f"{'streamed' if opts.batch_stream else 'not streamed'}: ≈ {job:.1f} s of a server each, "
            f"≈ {opts.batch_jobs * job / opts.servers:.0f} s for the batch alone); keys `alice` (`priority: interactive`) "
            f"and `bob` (no class; `X-Priority: interactive` on each request) each send a streamed chat "
            f"({opts.chat_words}-token prompt, `max_tokens` {opts.chat_max_tokens}: ≈ {chat:.2f} s) every "
            f"{opts.chat_every:g} s until the batch is done (≈ {chat_load * 100:.0f}% of the servers). LiteLLM gets "
            f"`\"priority\": 0` (chats) / `2` (batch) in the body. "
            f"**Workload B**: keys `batch-a` and `batch-b` (both `priority: batch`) send identical jobs "
            f"({opts.fair_words:,}-token prompts, `max_tokens` {opts.fair_max_tokens}: ≈ {fair:.2f} s each, so the servers "
            f"answer ≈ {opts.servers / fair:.2f}/s) open loop at {opts.rate_a:g} and {opts.rate_b:g} requests/s; shares of "
            f"what was answered in {opts.fair_window:g} s after a {opts.fair_warmup:g} s warm-up. `queue_limit` "
            f"{opts.queue_limit:,} (above the {int((opts.rate_a + opts.rate_b) * (opts.fair_warmup + opts.fair_window)):,} "
            f"requests a run sends), `queue_timeout` and `timeout` {opts.request_timeout:g} s. Fresh simulators and target "
            f"for every run.")


A_COLUMNS = ["variant", "chats OK", "chat latency p50 s", "p90 s", "max s", "chat TTFT p50 s", "p90 s",
             "batch total s", "batch OK", "all done s", "chats' share of the servers during the batch", "not 200 / cut",
             "chat queued p50 / p90 s", "batch queued p50 s", "servers busy", "probe after"]


def a_row(name: str, runs: list[dict[str, Any]]) -> list[str]:
    m = lambda k: med(runs, k)  # noqa: E731
    errs: dict[str, int] = {}
    for r in runs:
        for k, n in r["errors"].items():
            errs[k] = errs.get(k, 0) + n
    bad = f"{sum(r['bad'] for r in runs)} / {sum(r['cut'] for r in runs)}" + (
        f" ({', '.join(f'{k}: {n}' for k, n in errs.items())})" if errs else "")
    qc = [x for r in runs for who in ("alice", "bob") for x in r.get("queued", {}).get(who, [])]
    qb = [x for r in runs for x in r.get("queued", {}).get("batch-a", [])]
    logged = any(r.get("logged_queued") for r in runs)
    queued_c = f"{fmt(pct(qc, 50), 2)} / {fmt(pct(qc, 90), 2)}" if logged and qc else "—"
    queued_b = fmt(pct(qb, 50), 1) if logged and qb else "—"
    probe_ = "; ".join(f"{r['probe_ok']} OK in {r['probe_s']:.1f} s" for r in runs)
    return [name, f"{sum(r['chat_ok'] for r in runs)} of {sum(r['chat_n'] for r in runs)}", fmt(m("lat_p50"), 2),
            fmt(m("lat_p90"), 2), fmt(m("lat_max"), 1), fmt(m("ttft_p50"), 2), fmt(m("ttft_p90"), 2),
            fmt(m("batch_total"), 1) + (f" ({sum(r['batch_unfinished'] for r in runs)} unfinished)"
                                        if any(r["batch_unfinished"] for r in runs) else ""),
            f"{sum(r['batch_ok'] for r in runs)} of {sum(r['batch_n'] for r in runs)}", fmt(m("all_done"), 1),
            f"{m('chat_share') * 100:.0f}%", bad,
            queued_c, queued_b, f"{m('busy') * 100:.0f}%", probe_]


B_COLUMNS = ["variant", "answered in the window", "batch-a share", "batch-b share", "batch-a / batch-b work share",
             "sent a / b", "rejected (429 queue_full) a / b", "other errors", "servers busy", "probe after"]


def b_row(name: str, runs: list[dict[str, Any]]) -> list[str]:
    m = lambda k: med(runs, k)  # noqa: E731
    rej = f"{sum(r['batch-a']['rejected'] for r in runs)} / {sum(r['batch-b']['rejected'] for r in runs)}"
    errs: dict[str, int] = {}
    for r in runs:
        for k, n in r["errors"].items():
            if k not in ("429 queue_full",):
                errs[k] = errs.get(k, 0) + n
    probe_ = "; ".join(f"{r['probe_ok']} OK in {r['probe_s']:.1f} s" for r in runs)
    return [name, fmt(m("done"), 0), f"{m('share_a') * 100:.1f}%", f"{m('share_b') * 100:.1f}%",
            f"{m('work_a') * 100:.1f}% / {m('work_b') * 100:.1f}%",
            f"{fmt(med([r['batch-a'] for r in runs], 'sent'), 0)} / {fmt(med([r['batch-b'] for r in runs], 'sent'), 0)}",
            rej, ", ".join(f"{k}: {n}" for k, n in errs.items()) or "0", f"{m('busy') * 100:.0f}%", probe_]


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def target_rows(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]) -> list[list[str]]:
    out: list[list[str]] = []
    base = a.get("arrival order (today)")
    for name in ("priority + fairness", "priority only"):
        runs = a.get(name)
        if not runs:
            continue
        tag = "" if name == "priority + fairness" else f" ({name})"
        if base:
            for key, p, want in (("lat_p50", "P50", 0.70), ("lat_p90", "P90", 0.50)):
                x, y = med(runs, key), med(base, key)
                cut = 1 - x / y
                out.append([f"interactive {p} latency vs arrival order{tag}", f"{x:.2f} vs {y:.2f} s: {cut * 100:.0f}% lower",
                            f"≥ {want * 100:.0f}% lower", verdict(cut >= want)])
            x, y = med(runs, "batch_total"), med(base, "batch_total")
            out.append([f"batch total time vs arrival order{tag}", f"{x:.1f} vs {y:.1f} s: {(x / y - 1) * 100:+.1f}%",
                        "≤ +20%", verdict(x <= 1.2 * y)])
            share = med(runs, "chat_share")
            bound = y / (1 - share)  # the batch's own work at arrival order's pace, plus the chats served meanwhile
            out.append([f"(added) work conserving: batch total vs arrival order's ÷ (1 − the chats' share of the servers "
                        f"during it){tag}", f"{x:.1f} vs {y:.1f} ÷ (1 − {share:.2f}) = {bound:.1f} s: "
                        f"{(x / bound - 1) * 100:+.1f}%", "≤ +5%", verdict(x <= 1.05 * bound)])
        bad = sum(r["bad"] for r in runs)
        cut = sum(r["cut"] for r in runs)
        out.append([f"streams cut / answers not 200{tag}", f"{cut} / {bad} of {sum(len(r['records']) for r in runs)}",
                    "0", verdict(bad == 0 and cut == 0)])
    for name in ("priority + fairness", "priority + fairness, aging_seconds 0"):
        runs = b.get(name)
        if runs:
            sa, sb = med(runs, "share_a"), med(runs, "share_b")
            ok = all(0.45 <= r["share_a"] <= 0.55 for r in runs)
            reps = " (repeats: " + ", ".join(f"{r['share_a'] * 100:.1f}%" for r in runs) + ")" if len(runs) > 1 else ""
            out.append([f"fairness: each key's share of the answers ({name})", f"{sa * 100:.1f}% / {sb * 100:.1f}%" + reps,
                        "45–55% each", verdict(ok) + ("" if name == "priority + fairness" else " (diagnosis, not a target)")])
    # LiteLLM does not cancel what it sent upstream when its client leaves: the servers work through
    # the abandoned requests first, so its probe says nothing about leaks (its column shows it)
    probes = [(name, r) for d in (a, b) for name, runs in d.items() for r in runs if BY_NAME[name].kind != "litellm"]
    if probes:
        stalled = [name for name, r in probes if r["probe_ok"] < r["probe_n"]]
        out.append(["(added) no slot or waiter leaked: the probes after every llm-router run answered",
                    f"{sum(1 for _, r in probes if r['probe_ok'] >= r['probe_n'])} of {len(probes)} runs"
                    + (f" (stalled: {', '.join(sorted(set(stalled)))})" if stalled else ""), "all",
                    verdict(not stalled)])
    return out


def write_result(facts: dict[str, str], lines: list[str], quick: bool) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{time.strftime('%Y-%m-%d-%H%M%S')}-priority{'-quick' if quick else ''}.md"
    head = [f"# llm-router benchmark: priority and fair admission (issue 20){' (quick)' if quick else ''}", "",
            f"Command: `{' '.join(['.venv/bin/python', 'bench/priority.py', *sys.argv[1:]])}`", "",
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
    if any(v.kind == "litellm" for v in variants):
        try:
            facts["LiteLLM"] = await asyncio.to_thread(ensure_litellm, opts.litellm_version)
        except Exception as exc:  # noqa: BLE001 - any failure: say so and go on without it
            print(f"LiteLLM could not be installed ({exc}): its variant is skipped", file=sys.stderr)
            variants = [v for v in variants if v.kind != "litellm"]
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-priority-"))
    if any(v.kind == "baseline" for v in variants):
        opts.baseline_root, facts["baseline (arrival order)"] = baseline_root(opts, tmp)
    print(f"machine: {facts['nproc']} CPUs, {facts['CPU']}; load average {facts['load average at start']}\n"
          + describe(opts) + f"\nlogs in {tmp}\n", flush=True)
    res_a: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    res_b: dict[str, list[dict[str, Any]]] = {v.name: [] for v in variants}
    failed: dict[str, str] = {}
    began = time.monotonic()
    for rep in range(opts.repeats):
        order = variants[rep % len(variants):] + variants[:rep % len(variants)]
        for workload, results, fn in (("A", res_a, workload_a), ("B", res_b, workload_b)):
            if workload not in opts.workloads:
                continue
            for v in order:
                if workload not in v.workloads:
                    continue
                print(f"[{(time.monotonic() - began) / 60:5.1f} min] repeat {rep + 1}/{opts.repeats}, workload {workload}: "
                      f"{v.name} ...", flush=True)
                out = await fn(v, opts, tmp, f"{workload}{rep}")
                if "failed" in out:
                    failed[v.name] = out["failed"]
                    print(f"  {v.name} failed: {out['failed']}", flush=True)
                    continue
                results[v.name].append(out)
                cols, row = (A_COLUMNS, a_row) if workload == "A" else (B_COLUMNS, b_row)
                print("  " + " | ".join(f"{h}: {c}" for h, c in zip(cols[1:], row(v.name, [out])[1:])), flush=True)
    facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    took = (time.monotonic() - began) / 60

    rep_note = f" Medians of {opts.repeats} repeats, the variants' order rotating per repeat." if opts.repeats > 1 else ""
    lines = [describe(opts), ""]
    if any(res_a.values()):
        lines += ["## Workload A: a batch flood and interactive chats", "",
                  "Chat latency = request sent → last byte; TTFT = sent → first content delta (both through the target, "
                  "for the chats answered). Batch total = first batch send → last batch answer. Not 200 / cut: answers "
                  "that were not 200 (or not a whole JSON body) / streams that did not end with `data: [DONE]`, all "
                  "requests. Queued: the router's `queued_ms` (its ROUTER log line, by `x-request-id`; the router before "
                  "the feature logs none). Servers busy: the servers' mean share of time running a request while the "
                  "batch ran (work conservation). Probe after: 4 small requests sent at once after the run, answered "
                  "within the time shown (a leaked slot would stall them)." + rep_note, "",
                  "| " + " | ".join(A_COLUMNS) + " |", "|" + "---|" * len(A_COLUMNS)]
        lines += ["| " + " | ".join(a_row(n, runs)) + " |" for n, runs in res_a.items() if runs] + [""]
    if any(res_b.values()):
        lines += ["## Workload B: two batch keys at 10:1", "",
                  f"Share = the key's part of the requests answered (200) with their last byte inside the "
                  f"{opts.fair_window:g} s window; work share = of their prompt + completion tokens. Sent: requests sent "
                  "up to the window's end; what was still waiting then was abandoned (the clients left) and is not "
                  "counted." + rep_note, "",
                  "| " + " | ".join(B_COLUMNS) + " |", "|" + "---|" * len(B_COLUMNS)]
        lines += ["| " + " | ".join(b_row(n, runs)) + " |" for n, runs in res_b.items() if runs] + [""]
    for name, why in failed.items():
        lines += [f"{name} did not run: {why}", ""]
    tr = target_rows(res_a, res_b)
    if tr:
        lines += ["## Targets", "", "| target | measured | limit | verdict |", "|---|---|---|---|"]
        lines += ["| " + " | ".join(r) + " |" for r in tr] + [""]
    lines += [f"Took {took:.1f} min."]
    print("\n" + "\n".join(lines), flush=True)
    if not opts.no_write:
        print(f"written: {write_result(facts, lines, opts.quick).relative_to(ROOT)}")
    print(f"logs: {tmp}")


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/priority.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a smoke run (about 3 minutes): 8 batch jobs of 100 tokens, "
                    "a 15 s fairness window, LiteLLM left out")
    ap.add_argument("--variants", help="comma-separated (default all): " + ", ".join(v.name for v in VARIANTS)
                    + "; aliases " + ", ".join(f"{k}={v!r}" for k, v in ALIASES.items()))
    ap.add_argument("--workloads", default="A,B", help="A (priority), B (fairness) or both (default)")
    ap.add_argument("--baseline", type=lambda p: Path(p).resolve(),
                    help=f"a checkout of the router before the feature (default: commit {BASELINE_COMMIT}'s router/, "
                         "extracted with git archive)")
    ap.add_argument("--skip-litellm", action="store_true")
    ap.add_argument("--litellm-version")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--settle", type=float, default=1.5, help="seconds between the target's start and the load")
    ap.add_argument("--request-timeout", type=float, default=1200.0)
    ap.add_argument("--probe-timeout", type=float, default=30.0)
    ap.add_argument("--queue-limit", type=int, help="router_settings.priority.queue_limit (default: above what a run sends)")
    ap.add_argument("--no-write", action="store_true")
    g = ap.add_argument_group("simulators")
    g.add_argument("--servers", type=int, default=2)
    g.add_argument("--prefill-tokens-per-s", type=float, default=1000.0)
    g.add_argument("--tokens-per-s", type=float, default=40.0)
    g.add_argument("--ttft", type=float, default=0.02)
    g = ap.add_argument_group("workload A")
    g.add_argument("--batch-jobs", type=int)
    g.add_argument("--batch-words", type=int, default=2000)
    g.add_argument("--batch-max-tokens", type=int)
    g.add_argument("--batch-stream", action="store_true", help="stream the batch jobs too")
    g.add_argument("--chat-words", type=int, default=50)
    g.add_argument("--chat-max-tokens", type=int, default=25)
    g.add_argument("--chat-every", type=float, default=2.0, help="seconds between one key's chats")
    g.add_argument("--a-limit", type=float, help="seconds after which an unfinished batch is given up "
                   "(default: 3× the batch alone + 60 s)")
    g = ap.add_argument_group("workload B")
    g.add_argument("--rate-a", type=float, default=10.0)
    g.add_argument("--rate-b", type=float, default=1.0)
    g.add_argument("--fair-words", type=int, default=1000)
    g.add_argument("--fair-max-tokens", type=int, default=60)
    g.add_argument("--fair-warmup", type=float)
    g.add_argument("--fair-window", type=float)
    opts = ap.parse_args(argv)
    q = opts.quick
    opts.batch_jobs = opts.batch_jobs or (8 if q else 50)
    opts.batch_max_tokens = opts.batch_max_tokens or (100 if q else 200)
    opts.fair_warmup = opts.fair_warmup if opts.fair_warmup is not None else (3.0 if q else 10.0)
    opts.fair_window = opts.fair_window or (15.0 if q else 60.0)
    opts.queue_limit = opts.queue_limit or max(1000, int(1.5 * (opts.rate_a + opts.rate_b)
                                                         * (opts.fair_warmup + opts.fair_window)))
    opts.workloads = {w.strip().upper() for w in opts.workloads.split(",") if w.strip()}
    names = [ALIASES.get(n.strip(), n.strip()) for n in opts.variants.split(",") if n.strip()] if opts.variants \
        else [v.name for v in VARIANTS]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        ap.error(f"unknown variant(s) {unknown}")
    # --quick leaves LiteLLM out unless --variants names it (its start alone takes ~15 s a run)
    opts.variants = [BY_NAME[n] for n in names if BY_NAME[n].kind != "litellm"
                     or not (opts.skip_litellm or (q and not opts.variants))]
    return opts


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--serve-simulators":
        run = serve_simulators(orjson.loads(sys.argv[2]))
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # hundreds of open requests; children inherit it
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
        run = amain(parse(sys.argv[1:]))
    try:
        import uvloop
        uvloop.run(run)
    except ImportError:
        asyncio.run(run)


if __name__ == "__main__":
    main()
