"""``llm-router serve --workers N``: N worker processes on one port, supervised.

Each worker is an ordinary ``llm-router serve`` that binds with SO_REUSEPORT, so
the kernel spreads connections over them. The parent only supervises: it
restarts a worker that dies (at most once a second per slot), reloads all on
SIGHUP or when a worker asks (``POST /router/reload``), and on SIGTERM/SIGINT
forwards it, waits for the workers to drain (``shutdown_grace_period``) and exits
0. Workers share state only through Redis (``router_settings.redis_host``/
``redis_url``); without it each keeps its own.

Each worker has a link to the supervisor: a ``SOCK_SEQPACKET`` socket pair whose
worker end is passed as ``$LLM_ROUTER_SUPERVISOR_FD``. One message per datagram,
``kind`` + space + JSON:

- worker -> supervisor ``beat`` every :data:`HEARTBEAT_INTERVAL` seconds, sent from
  a callback on the serving event loop: a proof that the loop still turns. A worker
  silent for :data:`HEARTBEAT_TIMEOUT` seconds (:data:`STARTUP_TIMEOUT` before its
  first beat) is killed with SIGKILL, logged as an ERROR, and replaced. systemd's
  ``WATCHDOG=1`` (sent by the supervisor) is withheld while no worker is alive, that
  is running and beating (e.g. every worker hung, or crash-looping on start-up), so
  after ``WatchdogSec`` systemd restarts the service.
- supervisor -> worker ``reload <generation>``; worker -> supervisor ``reloaded
  {gen, ok, refused, detail}`` once it has switched (or refused the file).
- worker -> supervisor ``reload-request {id}`` (the endpoint); the supervisor
  reloads every worker and answers ``result {id, workers: [...]}`` when each has
  acknowledged the generation, or after :data:`RELOAD_TIMEOUT` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable, Sequence

import orjson
from prometheus_client import multiprocess

from router import log, systemd

RESTART_MIN_INTERVAL = 1.0
SUPERVISOR_ENV = "LLM_ROUTER_SUPERVISOR"  # the supervisor's pid, for its workers
LINK_ENV = "LLM_ROUTER_SUPERVISOR_FD"  # the worker's end of its link to the supervisor
HEARTBEAT_INTERVAL = 1.0  # a worker's loop sends a beat this often...
HEARTBEAT_TIMEOUT = 3 * HEARTBEAT_INTERVAL  # ...and is killed after this long without one
STARTUP_TIMEOUT = 60.0  # from spawn to the first beat (imports, loading the config, binding)
RELOAD_TIMEOUT = 15.0  # for every worker to acknowledge a reload
# Test-only hook (never set it in production): a worker that manages to delete this
# file (so exactly one does) blocks its event loop for an hour, like a hung worker.
TEST_HANG_ENV = "LLM_ROUTER_TEST_HANG_FILE"
# Test-only hook too: a worker starting while this file exists exits 3 at once (a
# replacement that cannot start, now that a broken file on disk no longer does that).
TEST_FAIL_START_ENV = "LLM_ROUTER_TEST_FAIL_START_FILE"
_PR_SET_PDEATHSIG = 1
_MAX_MESSAGE = 1 << 18


def follow_supervisor() -> None:
    """In a worker: exit (SIGTERM, so in-flight requests drain) when the supervisor dies.

    Without this, a supervisor killed with SIGKILL (or by the OOM killer) leaves its
    workers serving the port on SO_REUSEPORT, beside the next instance, with the old
    configuration. Linux's parent-death signal does it; where it is missing, or the
    supervisor was already gone before it was set, the worker leaves at once.
    """
    pid = os.environ.get(SUPERVISOR_ENV)
    if not pid:
        return
    if os.environ.get(TEST_FAIL_START_ENV) and os.path.exists(os.environ[TEST_FAIL_START_ENV]):
        print("llm-router: this worker may not start (test hook)", file=sys.stderr)
        sys.exit(3)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the check below still covers a supervisor that is already gone
    if os.getppid() != int(pid):
        log.get("SERVER").warning("the supervisor is gone; this worker exits")
        sys.exit(0)


SNAPSHOT_ENV = "LLM_ROUTER_CONFIG_SNAPSHOT_FD"  # a worker's start-up configuration: an fd of its bytes
GENERATION_ENV = "LLM_ROUTER_CONFIG_GENERATION"  # ...and its generation (0: as at start-up)


def encode_snapshot(files: dict[str, bytes | None]) -> bytes:
    """The bytes of a configuration's files (``router.config.read_files``), as handed to workers."""
    return orjson.dumps({k: None if v is None else base64.b64encode(v).decode() for k, v in files.items()})


def decode_snapshot(data: bytes) -> dict[str, bytes | None]:
    return {k: None if v is None else base64.b64decode(v) for k, v in orjson.loads(data).items()}


def write_snapshot(generation: int, data: bytes) -> str:
    """A reload's snapshot, in a file only this user can read (mkstemp: 0600; it holds
    keys), named in the reload message and removed once every worker has answered."""
    fd, path = tempfile.mkstemp(prefix=f"llm-router-reload-{generation}-", suffix=".json")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def read_snapshot(path: str) -> dict[str, bytes | None]:
    with open(path, "rb") as fh:
        return decode_snapshot(fh.read())


def read_snapshot_fd(fd: int) -> dict[str, bytes | None]:
    """A worker's start-up configuration, from the unnamed file the supervisor passed."""
    with os.fdopen(fd, "rb") as fh:
        fh.seek(0)
        return decode_snapshot(fh.read())


def _message(kind: str, payload: Any = None) -> bytes:
    return kind.encode() + b" " + orjson.dumps(payload)


def _parse(data: bytes) -> tuple[str, Any]:
    kind, _, rest = data.partition(b" ")
    try:
        return kind.decode(), orjson.loads(rest) if rest else None
    except (UnicodeDecodeError, orjson.JSONDecodeError):
        return "", None


class SupervisorLink:
    """A worker's end of the link: heartbeats from the loop, reload commands, and
    reload requests for ``POST /router/reload``."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=fd)
        self.sock.setblocking(False)
        self.waiting: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.tasks: set[asyncio.Task] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.hang_file = os.environ.get(TEST_HANG_ENV)  # test-only, see TEST_HANG_ENV

    @classmethod
    def from_env(cls) -> SupervisorLink | None:
        fd = os.environ.get(LINK_ENV)
        return cls(int(fd)) if fd else None

    def start(self, on_reload: Callable[[str | None, int | None], Awaitable[tuple[bool, str]]]) -> None:
        """On the serving loop: beat, and answer the supervisor's reload commands
        (``on_reload(snapshot, generation)``; ``snapshot``: the configuration's bytes,
        ``read_snapshot``)."""
        self.loop = asyncio.get_running_loop()
        self.on_reload = on_reload
        self.loop.add_reader(self.sock.fileno(), self._readable)
        self._beat()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()

    def send(self, kind: str, payload: Any = None) -> bool:
        try:
            return self.sock.send(_message(kind, payload)) > 0
        except OSError:  # full (a supervisor that does not read) or gone: nothing to do here
            return False

    def _beat(self) -> None:
        if self.hang_file:
            try:
                os.unlink(self.hang_file)
                time.sleep(3600)  # test-only: a hung event loop
            except FileNotFoundError:
                pass
        self.send("beat")
        self.timer = self.loop.call_later(HEARTBEAT_INTERVAL, self._beat)

    def _readable(self) -> None:
        while True:
            try:
                data = self.sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the supervisor is gone (follow_supervisor makes us leave)
                self.loop.remove_reader(self.sock.fileno())
                for fut in self.waiting.values():
                    if not fut.done():
                        fut.set_result(None)
                return
            kind, payload = _parse(data)
            if kind == "reload":
                task = self.loop.create_task(self._reload(payload))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
            elif kind == "result" and isinstance(payload, dict):
                fut = self.waiting.get(payload.get("id"))
                if fut is not None and not fut.done():
                    fut.set_result(payload.get("workers"))

    async def _reload(self, payload: Any) -> None:
        generation, snapshot = (payload.get("gen"), payload.get("snapshot")) if isinstance(payload, dict) else (payload, None)
        try:
            ok, detail = await self.on_reload(snapshot, generation if isinstance(generation, int) else None)
            refused = not ok
        except Exception as exc:  # noqa: BLE001 - reported to whoever asked
            log.get("CONFIG").exception("Reload failed")
            ok, refused, detail = False, False, f"{type(exc).__name__}: {exc}"
        self.send("reloaded", {"gen": generation, "ok": ok, "refused": refused, "detail": detail[:_MAX_MESSAGE // 2]})

    async def reload_all(self) -> list[dict] | None:
        """Ask the supervisor to reload every worker; per worker ``{worker, ok, refused,
        detail}`` once all have answered (or timed out), None if the supervisor did not answer."""
        self.next_id += 1
        rid = self.next_id
        fut = self.waiting[rid] = self.loop.create_future()
        try:
            if not self.send("reload-request", {"id": rid}):
                return None
            return await asyncio.wait_for(fut, RELOAD_TIMEOUT + 5)
        except asyncio.TimeoutError:
            return None
        finally:
            self.waiting.pop(rid, None)


class _Watchdog:
    """WATCHDOG=1 from the supervisor (workers inherit WATCHDOG_PID, so they stay silent)."""

    def __init__(self) -> None:
        self.interval, self.last = systemd.watchdog_interval(), 0.0

    def tick(self) -> None:
        if self.interval and time.monotonic() - self.last >= self.interval / 2:
            systemd.notify("WATCHDOG=1")
            self.last = time.monotonic()


def _wait_ready(host: str, port: int, watchdog: _Watchdog, timeout: float = 30.0) -> bool:
    """Until a worker answers on the port (for systemd's READY=1)."""
    import urllib.request

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        watchdog.tick()
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/health/readiness", timeout=1) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def supervise(argv: Sequence[str], workers: int, grace: float, bind: tuple[str, int] = ("127.0.0.1", 4000),
              config: tuple[str, str | None] = ("config.yaml", None), files: dict[str, bytes | None] | None = None) -> int:
    """``config``: the configuration's path and the ``--mappings`` given (or None);
    ``files``: their bytes as validated at start-up. Workers load the configuration the
    supervisor hands them (a reload: the files as read then), never the disk on their
    own, so a worker that replaces a dead or hung one serves what the others serve,
    whatever the disk holds by then."""
    from router.config import read_files

    logger = log.get("SERVER")
    cmd = [sys.executable, "-m", "router", *argv, "--worker"]
    # /metrics aggregates all workers (prometheus_client multiprocess mode).
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="llm-router-metrics-")
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    procs: list[subprocess.Popen | None] = [None] * workers
    links: list[socket.socket | None] = [None] * workers
    started_at = [0.0] * workers
    beat_deadline = [float("inf")] * workers
    last_beat = [0.0] * workers  # or the spawn time, before the first beat
    selector = selectors.DefaultSelector()
    reloads: dict[int, dict[str, Any]] = {}  # generation -> pending slots, results, who asked, deadline
    generation = 0
    # What a worker starting now loads: the bytes every serving worker accepted, kept here
    # (a file in /tmp could be cleaned away by systemd-tmpfiles over weeks of uptime).
    accepted = encode_snapshot(files if files is not None else read_files(*config))
    accepted_gen = 0
    serving_gen = [0] * workers  # the generation each worker's configuration is on
    catch_ups = 0
    stopping = False
    hangup = False

    def unlink(slot: int) -> None:
        sock = links[slot]
        if sock is not None:
            try:
                selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
            links[slot] = None

    def spawn(slot: int) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        snapshot = tempfile.TemporaryFile()  # unnamed: nothing else can see or remove it
        snapshot.write(accepted)
        snapshot.flush()
        env = {**os.environ, "LLM_ROUTER_WORKER": str(slot + 1), "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
               SUPERVISOR_ENV: str(os.getpid()), LINK_ENV: str(theirs.fileno()),
               SNAPSHOT_ENV: str(snapshot.fileno()), GENERATION_ENV: str(accepted_gen)}
        try:
            procs[slot] = subprocess.Popen(cmd, env=env, pass_fds=(theirs.fileno(), snapshot.fileno()))
        finally:
            theirs.close()
            snapshot.close()
        unlink(slot)
        ours.setblocking(False)
        links[slot] = ours
        selector.register(ours, selectors.EVENT_READ, slot)
        serving_gen[slot] = accepted_gen
        started_at[slot] = time.monotonic()
        beat_deadline[slot] = started_at[slot] + STARTUP_TIMEOUT
        last_beat[slot] = started_at[slot]
        logger.info(f"worker {slot + 1} started", pid=procs[slot].pid)

    def send(slot: int, kind: str, payload: Any) -> bool:
        sock = links[slot]
        if sock is None:
            return False
        try:
            return sock.send(_message(kind, payload)) > 0
        except OSError:
            return False

    def alive(slot: int) -> bool:
        p = procs[slot]
        return p is not None and p.poll() is None

    def begin_reload(requester: tuple[int, Any] | None) -> None:
        nonlocal generation
        generation += 1
        if requester is None:
            systemd.reloading("reloading the configuration in every worker")
        data = encode_snapshot(read_files(*config))  # one reading for every worker
        snapshot = write_snapshot(generation, data)
        message = {"gen": generation, "snapshot": snapshot}
        pending = {slot for slot in range(workers) if alive(slot) and send(slot, "reload", message)}
        reloads[generation] = {"gen": generation, "pending": pending, "results": {}, "requester": requester,
                               "snapshot": snapshot, "data": data, "deadline": time.monotonic() + RELOAD_TIMEOUT}
        if not pending:
            finish_reload(generation)

    def catch_up() -> None:
        """Workers on an older configuration than the accepted one reload to it: a
        replacement started (with the then accepted one) while a reload was under way,
        or a worker that missed the reload's deadline."""
        nonlocal catch_ups
        busy = {slot for r in reloads.values() for slot in r["pending"]}
        stale = [slot for slot in range(workers) if alive(slot) and serving_gen[slot] < accepted_gen and slot not in busy]
        if not stale:
            return
        catch_ups += 1
        snapshot = write_snapshot(accepted_gen, accepted)
        message = {"gen": accepted_gen, "snapshot": snapshot}
        pending = {slot for slot in stale if send(slot, "reload", message)}
        logger.info(f"worker(s) {', '.join(str(s + 1) for s in sorted(pending))} catching up with generation {accepted_gen}")
        reloads[-catch_ups] = {"gen": accepted_gen, "pending": pending, "results": {}, "requester": None, "catch_up": True,
                               "snapshot": snapshot, "data": accepted, "deadline": time.monotonic() + RELOAD_TIMEOUT}
        if not pending:
            finish_reload(-catch_ups)

    def finish_reload(key: int) -> None:
        nonlocal accepted, accepted_gen
        r = reloads.pop(key)
        gen = r["gen"]
        for slot in r["pending"]:
            r["results"][slot] = {"ok": False, "refused": False,
                                  "detail": f"no acknowledgement within {RELOAD_TIMEOUT:g} s"}
        rows = [{"worker": slot + 1, **res} for slot, res in sorted(r["results"].items())]
        room = max(1000, _MAX_MESSAGE // 2 // max(1, len(rows)))  # the answer must fit in one message
        rows = [{**row, "detail": row["detail"][:room]} for row in rows]
        ok = bool(rows) and all(row["ok"] for row in rows)
        if any(row["ok"] for row in rows) and gen > accepted_gen:  # what replacements start with from now on
            accepted, accepted_gen = r["data"], gen
        with contextlib.suppress(OSError):
            os.unlink(r["snapshot"])
        if r.get("catch_up"):
            for row in rows:
                if row["ok"]:
                    logger.info(f"worker {row['worker']} caught up with generation {gen}")
                else:
                    logger.error(f"worker {row['worker']} could not switch to generation {gen}; it serves an older "
                                 "configuration", detail=row["detail"])
            return  # no second round: a worker that refused the very bytes the others took is an error, not a loop
        if ok:
            logger.info(f"configuration reloaded in all {len(rows)} running workers", generation=gen)
        elif rows and all(row["refused"] for row in rows):
            logger.warning("every worker refused the new configuration; the old one keeps serving", generation=gen)
        else:
            logger.error(f"configuration reloaded in {sum(row['ok'] for row in rows)} of {workers} workers",
                         generation=gen, problems="; ".join(f"worker {row['worker']}: {row['detail']}"
                                                            for row in rows if not row["ok"]))
        if r["requester"] is None:
            systemd.ready("serving" if ok else "serving (reload refused or incomplete)")
        else:
            slot, rid = r["requester"]
            send(slot, "result", {"id": rid, "workers": rows})
        catch_up()

    def acknowledge(slot: int, gen: Any, result: dict[str, Any]) -> None:
        if result["ok"] and isinstance(gen, int):
            serving_gen[slot] = max(serving_gen[slot], gen)  # late acknowledgements count too
        for key, r in list(reloads.items()):
            if r["gen"] == gen and slot in r["pending"]:
                r["pending"].discard(slot)
                r["results"][slot] = result
                if not r["pending"]:
                    finish_reload(key)

    def receive(slot: int, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(_MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the worker is gone; its exit is handled below
                try:
                    selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
                return
            kind, payload = _parse(data)
            if kind == "beat":
                last_beat[slot] = time.monotonic()
                beat_deadline[slot] = last_beat[slot] + HEARTBEAT_TIMEOUT
            elif kind == "reload-request" and isinstance(payload, dict):
                begin_reload((slot, payload.get("id")))
            elif kind == "reloaded" and isinstance(payload, dict):
                acknowledge(slot, payload.get("gen"), {"ok": bool(payload.get("ok")), "refused": bool(payload.get("refused")),
                                                       "detail": str(payload.get("detail", ""))})

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping, hangup
        if signum == signal.SIGHUP:
            hangup = True  # handled by the loop below: a reload of every worker, acknowledged
            return
        stopping = True
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    watchdog = _Watchdog()
    for slot in range(workers):
        spawn(slot)
    if _wait_ready(*bind, watchdog):
        systemd.ready(f"{workers} workers serving on {bind[0]}:{bind[1]}")
    while not stopping:
        if hangup:
            hangup = False
            begin_reload(None)
        for key, _ in selector.select(0.2):
            receive(key.data, key.fileobj)  # type: ignore[arg-type]
        now = time.monotonic()
        for gen in [g for g, r in reloads.items() if now > r["deadline"]]:
            finish_reload(gen)
        for slot, p in enumerate(procs):
            if alive(slot) and now > beat_deadline[slot]:
                logger.error(f"worker {slot + 1} sent no heartbeat for {now - last_beat[slot]:.1f} s (its event loop is stuck); "
                             "killing it (SIGKILL)", pid=p.pid)
                p.kill()
                beat_deadline[slot] = float("inf")
        if any(alive(slot) and last_beat[slot] > started_at[slot] and now <= beat_deadline[slot] for slot in range(workers)):
            watchdog.tick()  # withheld while no worker is alive (beating): not one that is starting, or crash-looping
        for slot, p in enumerate(procs):
            if p is not None and p.poll() is not None and not stopping:
                logger.warning(f"worker {slot + 1} exited with {p.returncode}; restarting", pid=p.pid)
                multiprocess.mark_process_dead(p.pid, metrics_dir)
                for gen in {r["gen"] for r in reloads.values() if slot in r["pending"]}:
                    acknowledge(slot, gen, {"ok": False, "refused": False, "detail": f"exited with {p.returncode} during the reload"})
                if time.monotonic() - started_at[slot] < RESTART_MIN_INTERVAL:
                    time.sleep(RESTART_MIN_INTERVAL)  # a crash loop must not spin the supervisor
                spawn(slot)
    systemd.stopping("draining the workers")
    deadline = time.monotonic() + grace + 5
    for p in procs:
        if p is None:
            continue
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    for slot in range(workers):
        unlink(slot)
    if own_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    for r in reloads.values():
        with contextlib.suppress(OSError):
            os.unlink(r["snapshot"])
    logger.info("all workers stopped")
    return 0
