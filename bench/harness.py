"""The benchmark harness: llm-router against a bare passthrough and LiteLLM's proxy,
all in front of the same fast mock upstream, measured in one run, interleaved.

    bench/run [--quick] [--skip-litellm] [throughput] [scale] [streams] [soak]

Parts (all of them when none is named):

throughput  closed-loop concurrency levels (1, 16, 64) and a fixed-rate mode,
            JSON and SSE, against direct (the mock itself), the passthrough
            (bench/passthrough.py, the floor), llm-router with 1 worker, with
            --workers 2, with Redis state on, and LiteLLM's proxy (installed on
            demand into bench/.venv-litellm). For every repeat, every level, each
            target runs in turn; tables show medians of repeats, ratios to the
            passthrough and to LiteLLM, and the issue's targets as PASS/FAIL.
scale       routing decision time vs deployments and vs patterns (in-process,
            bench/routing_decision.py's synthetic config).
streams     RSS vs concurrent open slow streams (100 -> 2,000).
soak        RSS over a long run (200k requests by default) to catch leaks.

Each part prints its tables and writes them, with the machine's facts, to
bench/results/<date>-<part>[-quick].md. The mock, the load generator
(bench/loadgen.py, a separate process) and the targets are pinned to different
CPUs with taskset where the machine has enough of them (see "CPU layout" in the
output). RSS is VmRSS from /proc summed over a target's process tree, sampled
every 100 ms during each run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.common import free_port, wait_up  # noqa: E402
from bench.loadgen import HttpConn, build_request, chat_body  # noqa: E402

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
LITELLM_VENV = BENCH / ".venv-litellm"
PY = sys.executable
CHAT = "/v1/chat/completions"
NAN = float("nan")


# ---------------------------------------------------------------- machine, CPUs, RSS

def sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_facts() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = "?"
    try:
        kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
        mem = f"{kb / 1024 / 1024:.1f} GiB"
    except (OSError, IndexError, ValueError):
        pass
    dirty = " (with uncommitted changes)" if sh(["git", "status", "--porcelain", "--", "router"]) else ""
    return {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "nproc": f"{os.cpu_count()} ({len(os.sched_getaffinity(0))} usable)",
        "CPU": cpu,
        "memory": mem,
        "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "llm-router commit": (sh(["git", "rev-parse", "--short", "HEAD"]) or "?") + dirty,
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


class Layout:
    """Which CPUs the mock, the load generator and the targets get (taskset -c).
    >= 4 CPUs: mock, load generator, targets each apart; 2-3 CPUs: mock and load
    generator share the first, single-process targets get the rest, --workers 2
    runs unpinned (it needs two CPUs, and there are not two left)."""

    def __init__(self, pin: bool) -> None:
        cpus = sorted(os.sched_getaffinity(0))
        self.enabled = pin and shutil.which("taskset") is not None and len(cpus) >= 2
        self.mock = self.loadgen = self.target = self.wide = None
        if self.enabled:
            if len(cpus) >= 4:
                self.mock, self.loadgen, self.target = cpus[:1], cpus[1:2], cpus[2:]
            else:
                self.mock, self.loadgen, self.target = cpus[:1], cpus[:1], cpus[1:]
            self.wide = self.target if len(self.target) >= 2 else None

    @staticmethod
    def prefix(cpus: list[int] | None) -> list[str]:
        return ["taskset", "-c", ",".join(map(str, cpus))] if cpus else []

    def describe(self) -> str:
        if not self.enabled:
            return "not pinned (taskset missing, --no-pin, or a single CPU)"
        f = lambda c: ",".join(map(str, c)) if c else "any"  # noqa: E731
        return (f"mock on CPU {f(self.mock)}, load generator on CPU {f(self.loadgen)}, single-process targets on "
                f"CPU {f(self.target)}, --workers 2 on CPU {f(self.wide)}")


def tree_pids(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                try:
                    todo.extend(int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split())
                except OSError:
                    pass
        except OSError:
            pass
    return out


def rss_mb(pid: int | None) -> float:
    """VmRSS summed over pid and its descendants, in MB (MiB)."""
    if pid is None:
        return NAN
    total = 0
    for p in tree_pids(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
        except (OSError, ValueError):
            pass
    return total / 1024


class Sampler:
    """Samples a process tree's RSS every `interval` seconds while active."""

    def __init__(self, pid: int | None, interval: float = 0.1) -> None:
        self.pid, self.interval, self.samples = pid, interval, []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(rss_mb(self.pid))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> Sampler:
        if self.pid is not None:
            self._task = asyncio.ensure_future(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            self.samples.append(rss_mb(self.pid))

    @property
    def peak(self) -> float:
        return max(self.samples) if self.samples else NAN


# ---------------------------------------------------------------- servers

class Server:
    """A long-lived subprocess (mock, passthrough, a router, LiteLLM) with its log in tmp."""

    def __init__(self, name: str, cmd: list[str], port: int, ready_path: str, tmp: Path,
                 env: dict[str, str] | None = None, ready_timeout: float = 60.0, chat_path: str = CHAT,
                 cwd: Path = ROOT) -> None:
        self.name, self.cmd, self.port, self.ready_path, self.ready_timeout = name, cmd, port, ready_path, ready_timeout
        self.cwd = cwd
        self.url = f"http://127.0.0.1:{port}{chat_path}"
        self.log = tmp / f"{name.replace(' ', '_').replace('/', '_')}.log"
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.error: str | None = None
        self.started_in = NAN

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> None:
        self.t0 = time.monotonic()
        with open(self.log, "wb") as f:
            self.proc = subprocess.Popen(self.cmd, cwd=self.cwd, env=self.env, stdout=f, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)

    async def ready(self) -> bool:
        try:
            await asyncio.wait_for(self._wait(), self.ready_timeout)
            self.started_in = time.monotonic() - self.t0
            return True
        except (asyncio.TimeoutError, SystemExit) as exc:
            self.error = f"did not answer {self.ready_path} within {self.ready_timeout:g} s ({type(exc).__name__})"
        except RuntimeError as exc:
            self.error = str(exc)
        print(f"  {self.name}: {self.error}; last lines of {self.log}:\n    "
              + "\n    ".join(self.tail(15)), file=sys.stderr)
        self.stop()
        return False

    async def _wait(self) -> None:
        url = f"http://127.0.0.1:{self.port}{self.ready_path}"
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"exited with status {self.proc.returncode} before it was ready")
            try:
                await wait_up(url, 1.0)
                return
            except SystemExit:
                await asyncio.sleep(0.2)

    def tail(self, n: int) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def mock_server(tmp: Path, layout: Layout, chunks: int = 16, chunk_delay: float = 0.0, ttft: float = 0.0) -> Server:
    port = free_port()
    return Server("mock", layout.prefix(layout.mock) + [PY, str(BENCH / "mock_upstream.py"), "--port", str(port),
                                                        "--chunks", str(chunks), "--chunk-delay", str(chunk_delay),
                                                        "--ttft", str(ttft)], port, "/health", tmp)


def passthrough_server(tmp: Path, layout: Layout, mock: Server) -> Server:
    port = free_port()
    return Server("passthrough", layout.prefix(layout.target) + [PY, str(BENCH / "passthrough.py"), "--upstream",
                                                                 f"http://127.0.0.1:{mock.port}", "--port", str(port)],
                  port, "/health", tmp)


def router_server(tmp: Path, layout: Layout, mock: Server, name: str, workers: int = 1, redis: tuple[str, int, str] | None = None,
                  settings: dict[str, Any] | None = None, log_level: str = "info", root: Path = ROOT,
                  env: dict[str, str] | None = None) -> Server:
    """llm-router as deployed (``root``: another checkout of it, e.g. an older commit, run
    from its own directory so that its ``router`` package is the one imported)."""
    rs = dict(settings or {})
    if redis:
        rs.update(redis_host=redis[0], redis_port=redis[1], redis_key_prefix=redis[2])
    cfg = tmp / f"router-{name.replace(' ', '_').replace('/', '_')}.yaml"
    text = ("model_list:\n  - model_name: bench\n"
            f"    litellm_params: {{model: openai/mock, api_base: 'http://127.0.0.1:{mock.port}/v1', api_key: sk-bench}}\n")
    if rs:
        text += "router_settings: " + orjson.dumps(rs).decode() + "\n"
    cfg.write_text(text)
    port = free_port()
    cpus = layout.wide if workers > 1 else layout.target
    return Server(name, layout.prefix(cpus) + [PY, "-m", "router", "serve", "--config", str(cfg), "--host", "127.0.0.1",
                                               "--port", str(port), "--workers", str(workers), "--log-level", log_level],
                  port, "/health/readiness", tmp, cwd=root, env=env)


def ensure_litellm(version: str | None) -> str:
    """bench/.venv-litellm with litellm[proxy] from PyPI (once); returns its version."""
    stamp = LITELLM_VENV / ".installed"
    spec = "litellm[proxy]" + (f"=={version}" if version else "")
    if not stamp.exists() or (version and stamp.read_text().strip() != spec):
        print(f"installing {spec} into {LITELLM_VENV.relative_to(ROOT)} (once; a few minutes) ...", flush=True)
        if not (LITELLM_VENV / "bin" / "python").exists():
            subprocess.run([shutil.which("python3") or PY, "-m", "venv", str(LITELLM_VENV)], check=True)
        subprocess.run([str(LITELLM_VENV / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                        spec], check=True)
        stamp.write_text(spec + "\n")
    return sh([str(LITELLM_VENV / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]) or "?"


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the model cost map: offline
    # telemetry: litellm_settings.telemetry false in the config (the proxy's usage telemetry
    # of v1.107+ is off unless LITELLM_TELEMETRY_* turn it on)
    # Recent releases refuse to start without a master key; llm-router runs without one
    # here too, so both proxies skip authentication (a local benchmark, loopback only).
    "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true",
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
}


def litellm_server(tmp: Path, layout: Layout, mock: Server) -> Server:
    cfg = tmp / "litellm.yaml"
    cfg.write_text("model_list:\n  - model_name: bench\n"
                   f"    litellm_params: {{model: openai/mock, api_base: 'http://127.0.0.1:{mock.port}/v1', api_key: sk-bench}}\n"
                   "litellm_settings: {telemetry: false}\n")
    port = free_port()
    return Server("LiteLLM", layout.prefix(layout.target) + [str(LITELLM_VENV / "bin" / "litellm"), "--config", str(cfg),
                                                             "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
                  port, "/health/readiness", tmp, env=LITELLM_ENV, ready_timeout=180.0)


async def start_all(servers: list[Server]) -> list[Server]:
    """Start them together, wait for each; returns those that came up."""
    for s in servers:
        s.start()
    ok = await asyncio.gather(*(s.ready() for s in servers))
    return [s for s, up in zip(servers, ok) if up]


def redis_settings(spec: str | None) -> tuple[str, int, str] | None:
    if not spec:
        return None
    host, _, port = spec.partition(":")
    try:
        import redis
        redis.Redis(host=host, port=int(port or 6379), socket_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means: no Redis target
        print(f"  no Redis at {spec} ({exc}): the Redis target is skipped", file=sys.stderr)
        return None
    return host, int(port or 6379), f"bench{os.getpid()}:"


def redis_cleanup(r: tuple[str, int, str] | None) -> None:
    if r is None:
        return
    try:
        import redis
        client = redis.Redis(host=r[0], port=r[1], socket_timeout=2)
        keys = list(client.scan_iter(match=r[2] + "*", count=1000))
        for i in range(0, len(keys), 500):
            client.delete(*keys[i:i + 500])
    except Exception as exc:  # noqa: BLE001
        print(f"  could not delete the Redis keys {r[2]}*: {exc}", file=sys.stderr)


# ---------------------------------------------------------------- load generator runs

class LoadGen:
    """bench/loadgen.py --serve: one (pinned) load-generator process for a whole part,
    fed one run per line, so no run pays for an interpreter's start-up."""

    def __init__(self, layout: Layout, tmp: Path) -> None:
        self.layout, self.log = layout, tmp / "loadgen.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *self.layout.prefix(self.layout.loadgen), PY, str(BENCH / "loadgen.py"), "--serve", cwd=ROOT,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, limit=1 << 20)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except asyncio.TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    async def __aenter__(self) -> LoadGen:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def run(self, url: str, args: list[str], on_line: Callable[[dict], None] | None = None,
                  timeout: float = 600.0) -> dict:
        """One run (loadgen.py's options); returns its result, NaN for missing percentiles."""
        if self.proc is None or self.proc.returncode is not None:
            await self.start()
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(["--url", url, *args]) + b"\n")
        await self.proc.stdin.drain()

        async def read() -> dict:
            assert self.proc is not None and self.proc.stdout is not None
            while line := await self.proc.stdout.readline():
                try:
                    data = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue
                if "progress" not in data:
                    return data
                if on_line:
                    on_line(data)
            return {"failed": f"the load generator exited ({self.proc.returncode}); see its log"}

        try:
            result = await asyncio.wait_for(read(), timeout)
        except asyncio.TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            return {"failed": f"load generator timed out after {timeout:g} s"}
        return {k: (NAN if v is None else v) for k, v in result.items()}


def med(values: list[float]) -> float:
    values = [v for v in values if v == v]
    return statistics.median(values) if values else NAN


def f(v: float, digits: int = 2) -> str:
    return "—" if v != v else f"{v:.{digits}f}"


def fr(v: float) -> str:
    return "—" if v != v else f"{v:.2f}×"


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


# ---------------------------------------------------------------- report

class Report:
    def __init__(self, part: str, opts: argparse.Namespace, facts: dict[str, str], layout: Layout | None) -> None:
        self.part, self.opts, self.lines = part, opts, []
        self.facts = dict(facts)
        if layout is not None:
            self.facts["CPU layout"] = layout.describe()

    def add(self, *lines: str) -> None:
        for line in lines:
            print(line, flush=True)
            self.lines.append(line)

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for r in rows:
            self.add("| " + " | ".join(r) + " |")
        self.add("")

    def write(self) -> Path:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stamp = dt.datetime.now().strftime("%Y-%m-%d-%H%M%S")
        path = RESULTS / f"{stamp}-{self.part}{'-quick' if self.opts.quick else ''}.md"
        self.facts["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        head = [f"# llm-router benchmark: {self.part}{' (quick)' if self.opts.quick else ''}", "",
                f"Command: `bench/run {' '.join(self.opts.argv)}`", "", "| machine | |", "|---|---|"]
        head += [f"| {k} | {v} |" for k, v in self.facts.items()] + [""]
        path.write_text("\n".join(head + self.lines) + "\n")
        print(f"\nwritten: {path.relative_to(ROOT)}", flush=True)
        return path


# ---------------------------------------------------------------- part: throughput

async def part_throughput(opts: argparse.Namespace, facts: dict[str, str], layout: Layout, tmp: Path) -> None:
    rep = Report("throughput", opts, facts, layout)
    redis = redis_settings(opts.redis)
    mock = mock_server(tmp, layout, chunks=opts.chunks)
    if not await start_all([mock]):
        raise SystemExit("the mock upstream did not start")
    candidates = [passthrough_server(tmp, layout, mock),
                  router_server(tmp, layout, mock, "llm-router", log_level=opts.router_log_level),
                  router_server(tmp, layout, mock, "llm-router --workers 2", workers=2, log_level=opts.router_log_level)]
    if redis:
        candidates.append(router_server(tmp, layout, mock, "llm-router + Redis", redis=redis, log_level=opts.router_log_level))
    if opts.baseline:
        facts["baseline"] = rep.facts["baseline"] = f"{opts.baseline} ({sh(['git', '-C', str(opts.baseline), 'log', '-1', '--format=%h %s'])})"
        candidates.append(router_server(tmp, layout, mock, "llm-router baseline", log_level=opts.router_log_level,
                                        root=opts.baseline))
    if opts.compare_loops:
        candidates.append(router_server(tmp, layout, mock, "llm-router asyncio-loop", log_level=opts.router_log_level,
                                        env={"LLM_ROUTER_LOOP": "asyncio"}))
    if opts.no_workers:
        candidates = [c for c in candidates if c.name != "llm-router --workers 2"]
    if not opts.skip_litellm:
        facts["LiteLLM"] = rep.facts["LiteLLM"] = ensure_litellm(opts.litellm_version)
        candidates.append(litellm_server(tmp, layout, mock))
    print(f"starting {', '.join(s.name for s in candidates)} ...", flush=True)
    servers = await start_all(candidates)
    missing = [s for s in candidates if s not in servers]
    await asyncio.sleep(1.0)  # every worker bound; start-up work done
    targets: list[tuple[str, str, Server | None]] = [("direct", mock.url, None)] + [(s.name, s.url, s) for s in servers]
    names = [t[0] for t in targets]
    idle_start = {s.name: rss_mb(s.pid) for s in servers}
    modes = [("JSON", False), ("SSE", True)]

    res: dict[tuple[str, str, int], list[dict]] = {}
    rate_res: dict[tuple[str, str, float], list[dict]] = {}
    try:
        async with LoadGen(layout, tmp) as lg:
            print("warm-up ...", flush=True)  # connections, pools, caches, first code paths
            for name, url, srv in targets:
                for _, stream in modes:
                    await lg.run(url, ["-c", "16", "--duration", str(opts.warmup_all)] + (["--stream"] if stream else []))
            await asyncio.sleep(1.0)
            idle_warm = {s.name: rss_mb(s.pid) for s in servers}

            async def one(srv: Server | None, url: str, args: list[str]) -> dict:
                async with Sampler(srv.pid if srv else None) as smp:
                    out = await lg.run(url, args + ["--warmup", str(opts.warmup), "--timeout", "30"])
                out["peak_rss"] = smp.peak
                return out

            t_begin = time.monotonic()
            for r in range(opts.repeats):
                order = targets[r % len(targets):] + targets[:r % len(targets)]  # rotate: no target always goes first
                for mode, stream in modes:
                    extra = ["--stream"] if stream else []
                    for c in opts.levels:
                        for name, url, srv in order:
                            out = await one(srv, url, ["-c", str(c), "--duration", str(opts.duration)] + extra)
                            res.setdefault((name, mode, c), []).append(out)
                            print(f"  repeat {r + 1}/{opts.repeats} {mode:4} C={c:<3} {name:24} " + (
                                out["failed"] if "failed" in out else
                                f"{out['rps']:8.0f} rps  p50 {f(out['p50'])} p99 {f(out['p99'])} ms  errors {out['errors']}"),
                                flush=True)
                    for rate in opts.rates:
                        for name, url, srv in order:
                            runs = [o for c in opts.levels for o in res.get((name, mode, c), []) if "failed" not in o]
                            best = max((o["rps"] for o in runs), default=NAN)
                            if best < rate * 1.1:  # it could not keep up: the run would only measure a queue
                                out = {"failed": f"saturated (≈{best:.0f} rps max)"}
                            else:
                                out = await one(srv, url, ["--rate", str(rate), "--duration", str(opts.rate_duration)] + extra)
                            rate_res.setdefault((name, mode, rate), []).append(out)
            elapsed = time.monotonic() - t_begin
    finally:
        for s in servers:
            s.stop()
        mock.stop()
        redis_cleanup(redis)

    # --- tables
    def ok(runs: list[dict]) -> list[dict]:
        return [o for o in runs if "failed" not in o]

    def m(name: str, mode: str, c: int, key: str) -> float:
        return med([o[key] for o in ok(res.get((name, mode, c), []))])

    def paired(a: str, b: str, mode: str, c: int, fn: Callable[[dict, dict], float]) -> float:
        """Median over repeats of fn(run of a, run of b), the two from the same repeat."""
        ra, rb = res.get((a, mode, c), []), res.get((b, mode, c), [])
        return med([fn(x, y) for x, y in zip(ra, rb) if "failed" not in x and "failed" not in y])

    rps_ratio = lambda x, y: x["rps"] / y["rps"] if y["rps"] else NAN  # noqa: E731
    rep.add(f"Closed-loop runs of {opts.duration:g} s (after {opts.warmup:g} s of warm-up load) per target, level and mode; "
            f"{opts.repeats} repeat(s), targets interleaved; medians of repeats (ratios: median of the per-repeat ratios). "
            f"Mock upstream: {opts.chunks} content chunks per stream, no delay. Load generator: bench/loadgen.py (raw asyncio "
            f"HTTP/1.1, keep-alive). Latency = request sent to last byte; TTFB = to the first body byte (first SSE chunk). "
            f"RSS = peak VmRSS of the target's process tree during the run. Measuring took {elapsed / 60:.1f} min.", "")
    if missing:
        rep.add("Not measured (did not start): " + "; ".join(f"{s.name}: {s.error}" for s in missing), "")
    rep.add("## Start-up and idle memory", "")
    rep.table(["target", "start-up s", "idle RSS MB (started)", "idle RSS MB (after warm-up)"],
              [[s.name, f(s.started_in, 1), f(idle_start[s.name], 1), f(idle_warm[s.name], 1)] for s in servers])
    for mode, _ in modes:
        for c in opts.levels:
            rep.add(f"## {mode}, concurrency {c}", "")
            rows = []
            proxy_rps = [m(n_, mode, c, "rps") for n_ in names if n_ != "direct"]
            best_proxy = max((v for v in proxy_rps if v == v), default=NAN)
            for name in names:
                runs = res.get((name, mode, c), [])
                if not ok(runs):
                    rows.append([name] + ["—"] * 10 + [runs[0].get("failed", "") if runs else ""])
                    continue
                rows.append([name, f(m(name, mode, c, "rps"), 0), fr(paired(name, "passthrough", mode, c, rps_ratio)),
                             fr(paired(name, "LiteLLM", mode, c, rps_ratio)), f(m(name, mode, c, "p50")),
                             f(m(name, mode, c, "p90")), f(m(name, mode, c, "p99")),
                             f(m(name, mode, c, "ttfb_p50")) if mode == "SSE" else "—",
                             f(m(name, mode, c, "ttfb_p99")) if mode == "SSE" else "—",
                             str(sum(o["errors"] for o in ok(runs))),
                             f(max(o["peak_rss"] for o in ok(runs)), 1) if name != "direct" else "—",
                             "mock + load generator near their limit: the proxies' RPS may be capped"
                             if name == "direct" and m(name, mode, c, "rps") < 1.5 * best_proxy else ""])
            rep.table(["target", "RPS", "× passthrough", "× LiteLLM", "p50 ms", "p90 ms", "p99 ms", "TTFB p50 ms",
                       "TTFB p99 ms", "errors", "peak RSS MB", "note"], rows)
    if opts.rates:
        rep.add(f"## Fixed rate (open loop, {opts.rate_duration:g} s; latency from the scheduled send time)", "")
        rows = []
        for rate in opts.rates:
            for mode, _ in modes:
                for name in names:
                    runs = rate_res.get((name, mode, rate), [])
                    good = ok(runs)
                    if not good:
                        rows.append([f"{rate:g}", mode, name] + ["—"] * 6 + [runs[0].get("failed", "") if runs else ""])
                        continue
                    g = lambda k: med([o[k] for o in good])  # noqa: E731
                    rows.append([f"{rate:g}", mode, name, f(g("rps"), 0), f(g("p50")), f(g("p99")),
                                 f(g("ttfb_p99")) if mode == "SSE" else "—", str(sum(o["errors"] for o in good)),
                                 f(max(o["peak_rss"] for o in good), 1) if name != "direct" else "—", ""])
        rep.table(["rate/s", "mode", "target", "achieved/s", "p50 ms", "p99 ms", "TTFB p99 ms", "errors", "peak RSS MB", "note"],
                  rows)

    # --- the targets
    R, W, L, P, D = "llm-router", "llm-router --workers 2", "LiteLLM", "passthrough", "direct"
    checks: list[list[str]] = []

    def check(what: str, value: float, limit: str, ok_: bool | None, unit: str = "") -> None:
        checks.append([what, "—" if value != value else f"{value:.2f}{unit}", limit,
                       verdict(None if value != value else ok_)])

    for mode, _ in modes:
        for c in (16, 64):
            if c in opts.levels:
                v = paired(R, P, mode, c, rps_ratio)
                check(f"throughput {mode} C={c} vs passthrough", v, "≥ 0.8×", v >= 0.8, "×")
                v = paired(R, L, mode, c, rps_ratio)
                check(f"throughput {mode} C={c} vs LiteLLM", v, "≥ 20×", v >= 20, "×")
    if 1 in opts.levels:
        for mode, _ in modes:
            added_r = paired(R, D, mode, 1, lambda x, y: x["p50"] - y["p50"])
            added_p = paired(P, D, mode, 1, lambda x, y: x["p50"] - y["p50"])
            v = added_r / added_p if added_p and added_p == added_p and added_p > 0 else NAN
            check(f"added latency {mode} C=1 p50 vs passthrough's ({f(added_r, 3)} vs {f(added_p, 3)} ms)", v, "≤ 1.25×",
                  v <= 1.25, "×")
            v = paired(R, D, mode, 1, lambda x, y: x["p99"] - y["p99"])
            check(f"added latency {mode} C=1 p99", v, "≤ 2 ms", v <= 2, " ms")
        v = paired(R, D, "SSE", 1, lambda x, y: x["ttfb_p99"] - y["ttfb_p99"])
        check("TTFB overhead SSE C=1 p99", v, "≤ 1 ms", v <= 1, " ms")
    if R in idle_warm:
        check("idle RSS, 1 worker (after warm-up)", idle_warm[R], "< 80 MB", idle_warm[R] < 80, " MB")
    top = max(opts.levels)
    for mode, _ in modes:
        v = paired(W, R, mode, top, rps_ratio)
        note = "" if layout.enabled and len(os.sched_getaffinity(0)) >= 4 else \
            f" (only {len(os.sched_getaffinity(0))} CPUs, shared with mock and load generator: not meaningful)"
        check(f"--workers 2 vs 1 worker, {mode} C={top}{note}", v, "≥ 1.6×", v >= 1.6, "×")
    rep.add("## Targets (issue)", "")
    rep.table(["target", "measured", "limit", "verdict"], checks)
    rep.add("Soak growth, 1,000 slow streams and decision time are checked by the soak, streams and scale parts.")
    rep.write()


# ---------------------------------------------------------------- part: scale

async def part_scale(opts: argparse.Namespace, facts: dict[str, str], layout: Layout, tmp: Path) -> None:
    from bench.routing_decision import build, timeit
    from router.domain import RequestFacts

    rep = Report("scale", opts, facts, None)
    it = opts.iterations
    rep.add(f"Engine.decide on bench/routing_decision.py's synthetic config (deployments in groups of 4 over 4 providers, "
            f"anchored `^orgN/` patterns plus every 10th unanchored), in this process, {it} iterations per cell after "
            f"{it // 10} of warm-up; median and p99 in µs.", "")

    def timed(engine: Any, facts_: Any) -> tuple[float, float]:
        timeit(engine, facts_, max(50, it // 10))
        return timeit(engine, facts_, it)

    sub = tempfile.mkdtemp(dir=tmp)
    rep.add(f"## Decision time vs deployments ({opts.scale_patterns} patterns)", "")
    routes = {"exact (group of 4)": lambda d, p: RequestFacts(model="group-1"),
              "deployment id": lambda d, p: RequestFacts(model="dep-5"),
              "capability (least-busy)": lambda d, p: RequestFacts(model=None, capability="code_generation"),
              "pattern (anchored, near last)": lambda d, p: RequestFacts(model=f"org{p - 2}/some-model"),
              "no route": lambda d, p: RequestFacts(model="nothing-matches-this")}
    rows, at_target = [], {}
    for n in opts.deployments:
        t0 = time.perf_counter()
        engine = build(Path(tempfile.mkdtemp(dir=sub)), n, opts.scale_patterns)
        built = time.perf_counter() - t0
        row = [str(n), f(built, 2)]
        for label, make in routes.items():
            mid, p99 = timed(engine, make(n, opts.scale_patterns))
            row.append(f"{mid:.1f} / {p99:.1f}")
            if n == 1000:
                at_target[label] = (mid, p99)
        rows.append(row)
        print(f"  {n} deployments done", flush=True)
    rep.table(["deployments", "config load s"] + [f"{k} med/p99 µs" for k in routes], rows)

    rep.add(f"## Decision time vs patterns ({opts.scale_pattern_deployments} deployments)", "")
    rows = []
    for n in opts.patterns:
        engine = build(Path(tempfile.mkdtemp(dir=sub)), opts.scale_pattern_deployments, n)
        last_unanchored = max(i for i in range(n) if i % 10 == 9) if n >= 10 else None
        cells = [("anchored, near last", RequestFacts(model=f"org{n - 2}/x")),
                 ("unanchored, last", RequestFacts(model=f"thing-v{last_unanchored}") if last_unanchored is not None else None),
                 ("no match", RequestFacts(model="nothing-matches-this"))]
        row = [str(n)]
        for _, facts_ in cells:
            if facts_ is None:
                row.append("—")
                continue
            mid, p99 = timed(engine, facts_)
            row.append(f"{mid:.1f} / {p99:.1f}")
        rows.append(row)
        print(f"  {n} patterns done", flush=True)
    rep.table(["patterns", "anchored near last med/p99 µs", "unanchored last med/p99 µs", "no match med/p99 µs"], rows)
    if at_target:
        rep.add(f"## Targets (issue): 1,000 deployments, {opts.scale_patterns} patterns", "")
        checks = []
        for label, (mid, p99) in at_target.items():
            checks.append([f"{label}: median", f"{mid:.1f} µs", "< 20 µs", verdict(mid < 20)])
            checks.append([f"{label}: p99", f"{p99:.1f} µs", "< 100 µs", verdict(p99 < 100)])
        rep.table(["target", "measured", "limit", "verdict"], checks)
    rep.write()


# ---------------------------------------------------------------- part: streams

async def hold_streams(url: str, body: bytes, levels: list[int], on_level: Callable[[int, int, int], Awaitable[None]],
                       open_parallel: int = 64, first_byte_timeout: float = 30.0) -> None:
    """Open slow streams up to each level in turn (each must deliver its first chunk),
    call on_level(level, open streams, failed opens), then close them all."""
    host, port, raw = build_request(url, body)
    conns: list[HttpConn] = []
    failed = 0
    gate = asyncio.Semaphore(open_parallel)

    async def open_one() -> None:
        nonlocal failed
        async with gate:
            try:
                conn = await asyncio.wait_for(HttpConn.open(host, port), first_byte_timeout)
                fut = conn.request(raw)
                fut.add_done_callback(lambda f_: f_.exception() if not f_.cancelled() else None)
                conns.append(conn)
                await asyncio.wait_for(asyncio.shield(conn.first_fut), first_byte_timeout)
                if conn.status != 200:
                    failed += 1
                    conn.close()
            except (OSError, ConnectionError, asyncio.TimeoutError):
                failed += 1

    try:
        for level in levels:
            alive = sum(1 for c in conns if not c.closed)
            await asyncio.gather(*(open_one() for _ in range(max(0, level - alive))))
            await on_level(level, sum(1 for c in conns if not c.closed and c.fut is not None and not c.fut.done()), failed)
    finally:
        for c in conns:
            c.close()


async def part_streams(opts: argparse.Namespace, facts: dict[str, str], layout: Layout, tmp: Path) -> None:
    rep = Report("streams", opts, facts, layout)
    levels = opts.stream_levels
    # a stream lasts chunks × delay seconds: long enough to outlive the ramp
    chunks = int(max(600, 60 * len(levels)) / opts.stream_chunk_delay)
    rep.add(f"Slow streams: the mock sends a first chunk at once, then one chunk every {opts.stream_chunk_delay:g} s "
            f"(a stream would last {chunks * opts.stream_chunk_delay / 60:.0f} min). Streams are opened "
            f"({64} at a time) up to each level and held open; every stream must have delivered its first chunk. "
            f"RSS: peak VmRSS of the target's process tree over 1 s once the level is reached.", "")
    body = chat_body("bench", True)
    results: dict[str, list[list[str]]] = {}
    at_1000: dict[str, float] = {}
    for target in opts.stream_targets:
        if target == "LiteLLM" and opts.skip_litellm:
            continue
        mock = mock_server(tmp, layout, chunks=chunks, chunk_delay=opts.stream_chunk_delay)
        if not await start_all([mock]):
            raise SystemExit("the mock upstream did not start")
        if target == "passthrough":
            srv = passthrough_server(tmp, layout, mock)
        elif target == "LiteLLM":
            facts["LiteLLM"] = rep.facts["LiteLLM"] = ensure_litellm(opts.litellm_version)
            srv = litellm_server(tmp, layout, mock)
        else:
            srv = router_server(tmp, layout, mock, "llm-router", settings={"max_connections_per_backend": 100000},
                                log_level=opts.router_log_level)
        print(f"{target}: starting ...", flush=True)
        if not await start_all([srv]):
            mock.stop()
            rep.add(f"{target}: did not start ({srv.error})", "")
            continue
        await asyncio.sleep(1.0)
        idle = rss_mb(srv.pid)
        rows = [["0 (idle)", "0", "0", f(idle, 1), "—"]]

        async def on_level(level: int, alive: int, failed: int) -> None:
            await asyncio.sleep(1.0)
            peak = 0.0
            for _ in range(10):
                peak = max(peak, rss_mb(srv.pid))
                await asyncio.sleep(0.1)
            per = (peak - idle) * 1024 / alive if alive else NAN
            rows.append([str(level), str(alive), str(failed), f(peak, 1), f(per, 1)])
            if level == 1000:
                at_1000[target] = peak
            print(f"  {target}: {alive} open streams ({failed} failed opens): RSS {peak:.1f} MB", flush=True)

        try:
            await hold_streams(srv.url, body, levels, on_level)
            await asyncio.sleep(2.0)
            rows.append(["after closing all", "0", "", f(rss_mb(srv.pid), 1), "—"])
        finally:
            srv.stop()
            mock.stop()
        results[target] = rows
    for target, rows in results.items():
        rep.add(f"## {target}", "")
        rep.table(["streams", "open", "failed opens", "RSS MB", "KB per stream"], rows)
    if "llm-router" in at_1000:
        v = at_1000["llm-router"]
        rep.add("## Targets (issue)", "")
        rep.table(["target", "measured", "limit", "verdict"], [["1,000 concurrent slow streams, llm-router RSS",
                                                                   f"{v:.1f} MB", "< 200 MB", verdict(v < 200)]])
    rep.write()


# ---------------------------------------------------------------- part: soak

async def part_soak(opts: argparse.Namespace, facts: dict[str, str], layout: Layout, tmp: Path) -> None:
    rep = Report("soak", opts, facts, layout)
    mock = mock_server(tmp, layout, chunks=opts.chunks)
    if not await start_all([mock]):
        raise SystemExit("the mock upstream did not start")
    srv = router_server(tmp, layout, mock, "llm-router", log_level=opts.router_log_level)
    if not await start_all([srv]):
        mock.stop()
        raise SystemExit(f"llm-router did not start: {srv.error}")
    n, c = opts.soak_requests, opts.soak_concurrency
    warm = max(2000, n // 40)
    curve: list[tuple[int, float, float]] = []  # (requests done, seconds, RSS MB)
    lg = LoadGen(layout, tmp)
    try:
        await lg.start()
        idle = rss_mb(srv.pid)
        print(f"soak: warm-up {warm} requests ...", flush=True)
        for stream in (False, True):
            await lg.run(srv.url, ["-c", str(c), "--requests", str(warm // 2)] + (["--stream"] if stream else []))
        await asyncio.sleep(1.0)
        base = rss_mb(srv.pid)
        curve.append((0, 0.0, base))
        print(f"soak: {n} requests at C={c}, half JSON and half SSE, interleaved ...", flush=True)
        last_print = [0.0]

        def progress(d: dict) -> None:
            v = rss_mb(srv.pid)
            curve.append((int(d["progress"]), float(d["t"]), v))
            if d["t"] - last_print[0] >= 10:
                last_print[0] = d["t"]
                print(f"  {d['progress']:>8} requests  {d['t']:6.0f} s  RSS {v:.1f} MB", flush=True)

        out = await lg.run(srv.url, ["-c", str(c), "--requests", str(n), "--mixed", "--progress", "--timeout", "30"],
                           on_line=progress, timeout=max(600.0, n / 50))
        await asyncio.sleep(1.0)
        end = rss_mb(srv.pid)
        curve.append((out.get("requests", n) if "failed" not in out else curve[-1][0], curve[-1][1], end))
    finally:
        await lg.close()
        srv.stop()
        mock.stop()
    if "failed" in out:
        rep.add(f"soak run failed: {out['failed']}", "")
        rep.write()
        return
    rep.add(f"llm-router (1 worker) in front of the mock: {warm} warm-up requests, then {n} requests closed-loop at "
            f"concurrency {c}, alternately JSON and SSE; RSS (VmRSS) sampled every second.", "")
    rep.table(["requests", "errors", "RPS", "p50 ms", "p99 ms", "idle RSS MB (started)", "RSS after warm-up MB",
               "peak RSS MB", "RSS at end MB"],
              [[str(out["requests"]), str(out["errors"]) + (f" {out['error_kinds']}" if out["errors"] else ""),
                f(out["rps"], 0), f(out["p50"]), f(out["p99"]), f(idle, 1), f(base, 1), f(max(v for *_, v in curve), 1),
                f(end, 1)]])
    rep.add("## RSS over the soak", "")
    marks, rows = [i / 10 for i in range(11)], []
    for frac in marks:
        want = frac * n
        point = min(curve, key=lambda p: abs(p[0] - want))
        rows.append([f"{int(frac * 100)}%", str(point[0]), f(point[1], 0), f(point[2], 1)])
    rep.table(["progress", "requests", "seconds", "RSS MB"], rows)
    growth = (end - base) / base * 100 if base else NAN
    tenth = min(curve, key=lambda p: abs(p[0] - n / 10))[2]
    rep.add("## Targets (issue)", "")
    rep.table(["target", "measured", "limit", "verdict"],
              [["RSS growth over the soak (end vs after warm-up)", f"{growth:+.1f}%", "< 5%", verdict(growth < 5)],
               ["RSS growth after the first 10% (end vs 10%)", f"{(end - tenth) / tenth * 100:+.1f}%", "(for reference)", ""],
               ["soak length ≥ 200k requests", str(out["requests"]), "≥ 200,000",
                "n/a (quick)" if opts.quick else verdict(out["requests"] >= 200000)]])
    rep.write()


# ---------------------------------------------------------------- main

PARTS = {"throughput": part_throughput, "scale": part_scale, "streams": part_streams, "soak": part_soak}


def ints(s: str) -> list[int]:
    return [int(x.replace("_", "")) for x in s.split(",") if x]


def floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x]


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="bench/run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="Defaults are the full run (20-40 min); --quick takes about two minutes.")
    ap.add_argument("parts", nargs="*", metavar="PART", help="throughput, scale, streams, soak (default: all)")
    ap.add_argument("--quick", action="store_true", help="few requests, one repeat: a smoke run of every part")
    ap.add_argument("--skip-litellm", action="store_true", help="no LiteLLM target (and no install)")
    ap.add_argument("--litellm-version", help="pin litellm[proxy]==VERSION (default: the newest, installed once)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    ap.add_argument("--redis", default="127.0.0.1:6379", help="HOST:PORT for the Redis target ('' to skip it)")
    ap.add_argument("--baseline", type=lambda p: Path(p).resolve(),
                    help="another checkout of llm-router (e.g. `git worktree add /tmp/before <commit>`), measured as "
                         "the target 'llm-router baseline' beside this one: before/after in one run")
    ap.add_argument("--no-workers", action="store_true", help="leave out the --workers 2 target")
    ap.add_argument("--compare-loops", action="store_true",
                    help="add llm-router on the standard asyncio loop (LLM_ROUTER_LOOP=asyncio) beside the default (uvloop)")
    ap.add_argument("--router-log-level", default="info", choices=("debug", "info", "warning", "error"),
                    help="llm-router's --log-level (default info, as deployed; its log goes to a file)")
    g = ap.add_argument_group("throughput")
    g.add_argument("--repeats", type=int)
    g.add_argument("--duration", type=float, help="seconds measured per run")
    g.add_argument("--warmup", type=float, help="seconds of load before each measured window")
    g.add_argument("--warmup-all", type=float, help="seconds of load per target and mode before the first repeat")
    g.add_argument("--levels", type=ints, default=[1, 16, 64], help="closed-loop concurrency levels (default 1,16,64)")
    g.add_argument("--rates", type=floats, help="fixed-rate runs, requests/s (default 50; '' for none)")
    g.add_argument("--rate-duration", type=float)
    g.add_argument("--chunks", type=int, default=16, help="content chunks per mock stream (default 16)")
    g = ap.add_argument_group("scale")
    g.add_argument("--deployments", type=ints, help="default 10,100,1000,10000 (quick: up to 1000)")
    g.add_argument("--patterns", type=ints, help="default 10,100,1000")
    g.add_argument("--iterations", type=int)
    g.add_argument("--scale-patterns", type=int, default=200, help="patterns for the deployments curve (default 200)")
    g.add_argument("--scale-pattern-deployments", type=int, default=1000, help="deployments for the patterns curve")
    g = ap.add_argument_group("streams")
    g.add_argument("--stream-levels", type=ints, help="default 100,250,500,1000,1500,2000 (quick: 100,1000)")
    g.add_argument("--stream-targets", type=lambda s: s.split(","), default=["passthrough", "llm-router"],
                   help="comma-separated from passthrough, llm-router, LiteLLM (default passthrough,llm-router)")
    g.add_argument("--stream-chunk-delay", type=float, default=1.0)
    g = ap.add_argument_group("soak")
    g.add_argument("--soak-requests", type=int, help="default 200000 (quick: 5000)")
    g.add_argument("--soak-concurrency", type=int, default=32)
    opts = ap.parse_args(argv)
    for part in opts.parts:
        if part not in PARTS:
            ap.error(f"unknown part {part!r} (choose from {', '.join(PARTS)})")
    opts.argv = argv
    q = opts.quick
    defaults = dict(repeats=1 if q else 3, duration=1.0 if q else 8.0, warmup=0.3 if q else 1.0, rates=[50.0],
                    warmup_all=0.5 if q else 2.0, rate_duration=1.0 if q else 5.0, deployments=[10, 100, 1000] if q else [10, 100, 1000, 10000],
                    patterns=[10, 100, 1000], iterations=2000 if q else 20000,
                    stream_levels=[100, 1000] if q else [100, 250, 500, 1000, 1500, 2000],
                    soak_requests=5000 if q else 200000)
    for k, v in defaults.items():
        if getattr(opts, k) is None:
            setattr(opts, k, v)
    opts.parts = opts.parts or list(PARTS)
    return opts


async def amain(opts: argparse.Namespace) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))  # children inherit it: thousands of streams
    layout = Layout(not opts.no_pin)
    facts = machine_facts()
    print(f"machine: {facts['nproc']} CPUs, {facts['CPU']}, Python {facts['python']}, aiohttp {facts['aiohttp']}, "
          f"{facts['kernel']}\nCPU layout: {layout.describe()}\n", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="llm-router-harness-"))
    failed = False
    try:
        for part in opts.parts:
            print(f"=== {part} ===", flush=True)
            t0 = time.monotonic()
            await PARTS[part](opts, facts, layout, tmp)
            print(f"=== {part} took {(time.monotonic() - t0) / 60:.1f} min ===\n", flush=True)
    except BaseException:
        failed = True
        raise
    finally:
        if failed:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    asyncio.run(amain(parse(sys.argv[1:])))


if __name__ == "__main__":
    main()
