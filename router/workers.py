"""``llm-router serve --workers N``: N worker processes on one port, supervised.

Each worker is an ordinary ``llm-router serve`` that binds with SO_REUSEPORT, so
the kernel spreads connections over them. The parent only supervises: it
restarts a worker that dies (at most once a second per slot), forwards SIGHUP
(reload) to all, and on SIGTERM/SIGINT forwards it, waits for the workers to
drain (``shutdown_grace_period``) and exits 0. Workers share state only through
Redis (``router_settings.redis_host``/``redis_url``); without it each keeps its own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from prometheus_client import multiprocess

from router import log, systemd

RESTART_MIN_INTERVAL = 1.0
SUPERVISOR_ENV = "LLM_ROUTER_SUPERVISOR"  # the supervisor's pid, for its workers
_PR_SET_PDEATHSIG = 1


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
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the check below still covers a supervisor that is already gone
    if os.getppid() != int(pid):
        log.get("SERVER").warning("the supervisor is gone; this worker exits")
        sys.exit(0)


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


def supervise(argv: Sequence[str], workers: int, grace: float, bind: tuple[str, int] = ("127.0.0.1", 4000)) -> int:
    logger = log.get("SERVER")
    cmd = [sys.executable, "-m", "router", *argv, "--worker"]
    # /metrics aggregates all workers (prometheus_client multiprocess mode).
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="llm-router-metrics-")
    own_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    procs: list[subprocess.Popen | None] = [None] * workers
    started_at = [0.0] * workers
    stopping = False

    def spawn(slot: int) -> None:
        env = {**os.environ, "LLM_ROUTER_WORKER": str(slot + 1), "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
               SUPERVISOR_ENV: str(os.getpid())}
        procs[slot] = subprocess.Popen(cmd, env=env)
        started_at[slot] = time.monotonic()
        logger.info(f"worker {slot + 1} started", pid=procs[slot].pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for p in procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM if signum == signal.SIGINT else signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    watchdog = _Watchdog()
    for slot in range(workers):
        spawn(slot)
    if _wait_ready(*bind, watchdog):
        systemd.ready(f"{workers} workers serving on {bind[0]}:{bind[1]}")
    while not stopping:
        watchdog.tick()
        for slot, p in enumerate(procs):
            if p is not None and p.poll() is not None and not stopping:
                logger.warning(f"worker {slot + 1} exited with {p.returncode}; restarting", pid=p.pid)
                multiprocess.mark_process_dead(p.pid, metrics_dir)
                if time.monotonic() - started_at[slot] < RESTART_MIN_INTERVAL:
                    time.sleep(RESTART_MIN_INTERVAL)  # a crash loop must not spin the supervisor
                spawn(slot)
        time.sleep(0.2)
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
    if own_dir:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    logger.info("all workers stopped")
    return 0
