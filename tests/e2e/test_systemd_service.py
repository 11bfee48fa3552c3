"""systemd integration: `llm-router serve` speaks sd_notify to a fake NOTIFY_SOCKET,
the unit that scripts/install-service renders passes `systemd-analyze verify`, and
the installer is idempotent (run against a temp HOME and a fake systemctl)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import stat
import struct
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import pytest

from tests.e2e.test_cli import free_ports

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "scripts" / "install-service"
SYSTEMD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "INVOCATION_ID")


# --- `llm-router serve` and the notify protocol -------------------------------------------

class Notifications:
    """A fake systemd notify socket (abstract namespace, so no path-length limits)
    and the datagrams it received, with the sender's pid from SCM_CREDENTIALS —
    what systemd checks for ``NotifyAccess=main``."""

    def __init__(self) -> None:
        self.name = f"llm-router-e2e-{uuid.uuid4().hex}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind("\0" + self.name)
        self.sock.setblocking(False)
        self.seen: list[str] = []
        self.senders: set[int] = set()

    async def next(self, timeout: float) -> str | None:
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        loop.add_reader(self.sock.fileno(), lambda: readable.done() or readable.set_result(None))
        try:
            await asyncio.wait_for(readable, timeout)
        except TimeoutError:
            return None
        finally:
            loop.remove_reader(self.sock.fileno())
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(struct.calcsize("3i")))
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                self.senders.add(struct.unpack("3i", payload[:struct.calcsize("3i")])[0])
        self.seen.append(data.decode())
        return self.seen[-1]

    async def expect(self, field: str, proc: subprocess.Popen, deadline_s: float = 10) -> str:
        """The next datagram carrying ``field`` (e.g. ``READY=1``), skipping watchdog pings."""
        loop = asyncio.get_running_loop()
        end = loop.time() + deadline_s
        while loop.time() < end:
            msg = await self.next(0.1)
            if msg is not None and field in msg.split("\n"):
                return msg
            if msg is None and proc.poll() is not None:
                break
        raise AssertionError(f"no {field} within {deadline_s} s (exit code {proc.poll()}); received {self.seen}")


@pytest.fixture
def notifications() -> Iterator[Notifications]:
    n = Notifications()
    yield n
    n.sock.close()


async def start_serve(tmp_path: Path, notifications: Notifications, *args: str, main_pid_watchdog: bool = False,
                      **env: str) -> tuple[subprocess.Popen, str, Path]:
    (port,) = free_ports(1)
    cfg = tmp_path / "config.yaml"
    cfg.write_text("model_list:\n"
                   "  - {model_name: one, litellm_params: {model: openai/tiny, api_base: 'http://127.0.0.1:9/v1'}}\n"
                   "router_settings: {shutdown_grace_period: 5, num_retries: 0}\n")
    base_env = {k: v for k, v in os.environ.items() if k not in SYSTEMD_ENV}
    log = tmp_path / "serve.log"
    with log.open("w") as out:  # the child keeps its own descriptor
        cmd = [sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(port), *args]
        if main_pid_watchdog:  # as systemd does: WATCHDOG_PID is the main process (exec keeps the pid)
            cmd = ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *cmd]
        proc = subprocess.Popen(cmd,
                                cwd=ROOT, env={**base_env, "PYTHONUNBUFFERED": "1", "NOTIFY_SOCKET": "@" + notifications.name, **env},
                                stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}", log


@pytest.fixture
async def serve_factory(tmp_path, notifications) -> AsyncIterator:
    procs: list[subprocess.Popen] = []

    async def make(*args: str, **env: Any) -> tuple[subprocess.Popen, str, Path]:
        proc, base, log = await start_serve(tmp_path, notifications, *args, **env)
        procs.append(proc)
        return proc, base, log

    yield make
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


async def readiness(session: aiohttp.ClientSession, base: str) -> int | None:
    try:
        async with session.get(base + "/health/readiness") as r:
            return r.status
    except aiohttp.ClientConnectionError:
        return None


async def await_ready(n: Notifications, proc: subprocess.Popen, base: str, session: aiohttp.ClientSession) -> str:
    """READY=1 must arrive, and only once /health/readiness answers: so, asked right
    after READY=1, it answers at the first attempt. A router that serves for 5 s
    without READY=1 fails (systemd would time the start out)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    serving_since = None
    while loop.time() < end:
        msg = await n.next(0.1)
        if msg is not None and "READY=1" in msg.split("\n"):
            assert await readiness(session, base) == 200, "READY=1 came before /health/readiness answered"
            return msg
        assert proc.poll() is None, f"serve exited with {proc.returncode}"
        if serving_since is None and await readiness(session, base) == 200:
            serving_since = loop.time()
        if serving_since is not None and loop.time() - serving_since > 5:
            break
    raise AssertionError(f"no READY=1 (serving: {serving_since is not None}); received {n.seen}")


async def test_ready_after_bind_reload_and_stop(serve_factory, notifications):
    proc, base, log = await serve_factory()
    async with aiohttp.ClientSession() as s:
        ready = await await_ready(notifications, proc, base, s)
        assert any(line.startswith("STATUS=") for line in ready.split("\n")), ready
        assert not [m for m in notifications.seen[:-1] if "READY=1" in m.split("\n")], "READY=1 sent twice"

        proc.send_signal(signal.SIGHUP)  # systemctl reload: RELOADING=1, then READY=1 when it is over
        reloading = await notifications.expect("RELOADING=1", proc)
        assert any(line.startswith("MONOTONIC_USEC=") for line in reloading.split("\n"))
        await notifications.expect("READY=1", proc)
        assert await readiness(s, base) == 200

    proc.send_signal(signal.SIGTERM)  # systemctl stop
    await notifications.expect("STOPPING=1", proc)
    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 15) == 0, log.read_text()
    assert notifications.senders == {proc.pid}  # NotifyAccess=main


async def test_a_refused_reload_still_ends_with_ready(serve_factory, notifications, tmp_path):
    proc, base, _ = await serve_factory()
    async with aiohttp.ClientSession() as s:
        await await_ready(notifications, proc, base, s)
        (tmp_path / "config.yaml").write_text("model_list: [oops\n")
        proc.send_signal(signal.SIGHUP)
        await notifications.expect("RELOADING=1", proc)
        await notifications.expect("READY=1", proc)  # else systemd shows it "reloading" forever
        assert await readiness(s, base) == 200


async def test_watchdog_pings_from_the_serving_loop(serve_factory, notifications):
    # WatchdogSec=0.4 s: a ping every 0.2 s
    proc, base, _ = await serve_factory(main_pid_watchdog=True, WATCHDOG_USEC="400000")
    async with aiohttp.ClientSession() as s:
        await await_ready(notifications, proc, base, s)
    loop = asyncio.get_running_loop()
    start = loop.time()
    for _ in range(4):
        await notifications.expect("WATCHDOG=1", proc, deadline_s=2)
    assert loop.time() - start < 2.5
    assert notifications.senders == {proc.pid}


async def test_workers_the_supervisor_notifies(serve_factory, notifications):
    """--workers 2: systemd (NotifyAccess=main) listens to the supervisor only, so
    READY=1 and STOPPING=1 come from it, never from a worker."""
    proc, base, log = await serve_factory("--workers", "2", main_pid_watchdog=True)
    async with aiohttp.ClientSession() as s:
        await await_ready(notifications, proc, base, s)
    loop = asyncio.get_running_loop()
    end = loop.time() + 10
    while not all(f"(worker {n})" in log.read_text() for n in (1, 2)):  # READY comes when one answers
        assert loop.time() < end, log.read_text()
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGHUP)  # each worker reloads, and none of them may notify
    await notifications.expect("RELOADING=1", proc)  # from the supervisor, then READY=1 once every worker
    await notifications.expect("READY=1", proc)  # has acknowledged the new configuration
    assert log.read_text().count("Configuration reloaded") == 2, log.read_text()
    await notifications.next(0.2)  # anything a worker might have sent
    proc.send_signal(signal.SIGTERM)
    await notifications.expect("STOPPING=1", proc)
    assert await asyncio.get_running_loop().run_in_executor(None, proc.wait, 20) == 0, log.read_text()
    assert notifications.senders == {proc.pid}, notifications.seen


async def test_workers_watchdog_pings_come_from_the_supervisor(serve_factory, notifications):
    proc, base, _ = await serve_factory("--workers", "2", main_pid_watchdog=True, WATCHDOG_USEC="1000000")
    async with aiohttp.ClientSession() as s:
        await await_ready(notifications, proc, base, s)
    for _ in range(3):
        await notifications.expect("WATCHDOG=1", proc, deadline_s=2)
    assert notifications.senders == {proc.pid}


async def test_workers_watchdog_is_withheld_while_no_worker_is_alive(serve_factory, notifications, tmp_path):
    """The supervisor pinged for ever, even with no worker serving; now WATCHDOG=1 means
    some worker's event loop is turning (it beats), so systemd restarts a service whose
    workers are all gone: here both are killed and their replacements cannot start."""
    doomed = tmp_path / "no-start"
    proc, base, log = await serve_factory("--workers", "2", main_pid_watchdog=True, WATCHDOG_USEC="1000000",
                                          LLM_ROUTER_TEST_FAIL_START_FILE=str(doomed))
    async with aiohttp.ClientSession() as s:
        await await_ready(notifications, proc, base, s)
    loop = asyncio.get_running_loop()
    end = loop.time() + 20
    while not all(f"(worker {n})" in log.read_text() for n in (1, 2)):
        assert loop.time() < end, log.read_text()
        await asyncio.sleep(0.05)
    await notifications.expect("WATCHDOG=1", proc, deadline_s=2)
    doomed.touch()  # replacements exit 3 at start (a broken config file on disk no longer does that)
    for pid in re.findall(r"worker \d started pid=(\d+)", log.read_text()):
        os.kill(int(pid), signal.SIGKILL)
    end = loop.time() + 20
    while not all(f"worker {n} exited with 3" in log.read_text() for n in (1, 2)):
        assert loop.time() < end, log.read_text()
        await asyncio.sleep(0.05)
    while await notifications.next(0.01) is not None:  # what was sent before
        pass
    pings = []
    end = loop.time() + 3  # six pings were due in this window
    while loop.time() < end:
        msg = await notifications.next(0.1)
        if msg is not None and "WATCHDOG=1" in msg.split("\n"):
            pings.append(msg)
    assert not pings and proc.poll() is None, log.read_text()


# --- the unit -----------------------------------------------------------------------------

def render(*args: str, env: dict[str, str] | None = None) -> str:
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "XDG_CONFIG_HOME"}
    out = subprocess.run([str(INSTALL), "--print", *args], capture_output=True, text=True, check=True, env=env)
    return out.stdout


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_rendered_user_unit():
    unit = render("--user")
    d = directives(unit)
    assert re.search(r"@[A-Z]+@|^@", unit, re.MULTILINE) is None  # every placeholder and tag resolved
    assert d["Type"] == ["notify"] and d["NotifyAccess"] == ["main"]
    assert d["ExecStart"] == [f"{ROOT}/.venv/bin/llm-router serve"]
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert d["Restart"] == ["on-failure"] and d["RestartSec"] == ["2"]
    assert d["WatchdogSec"] == ["30"]
    assert float(d["TimeoutStopSec"][0]) > 30  # the default shutdown_grace_period
    assert d["WorkingDirectory"] == [str(ROOT)]
    assert f"LLM_ROUTER_CONFIG={ROOT}/config/litellm-unified.yaml" in d["Environment"]
    assert d["EnvironmentFile"] == [f"-{Path.home()}/.config/llm-router/env"]
    assert d["SyslogIdentifier"] == ["llm-router"]
    assert d["WantedBy"] == ["default.target"] and d["Alias"] == ["llm-router.service"]
    assert d["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert d["NoNewPrivileges"] == ["yes"] and d["LockPersonality"] == ["yes"]
    # directives the user manager cannot apply stay out of a user unit
    for key in ("User", "ProtectHome", "ProtectControlGroups", "ProtectProc", "CapabilityBoundingSet", "PrivateDevices"):
        assert key not in d, key


def test_rendered_unit_sandbox_and_system_variants():
    sandboxed = directives(render("--user"))
    if "ProtectSystem" in sandboxed:  # user namespaces available here
        assert sandboxed["PrivateUsers"] == ["yes"] and sandboxed["ProtectSystem"] == ["strict"]
        assert sandboxed["PrivateTmp"] == ["yes"] and sandboxed["ProtectKernelTunables"] == ["yes"]
    plain = directives(render("--user", "--no-sandbox"))
    for key in ("PrivateUsers", "ProtectSystem", "PrivateTmp", "ProtectKernelTunables"):
        assert key not in plain
    assert plain["NoNewPrivileges"] == ["yes"] and plain["SystemCallFilter"]

    system = directives(render("--system", "--name", "llm-router"))
    assert system["User"] == [ROOT.owner()]
    assert system["EnvironmentFile"] == ["-/etc/llm-router/env"]
    assert system["WantedBy"] == ["multi-user.target"] and system["Alias"] == ["litellm.service"]
    assert "PrivateUsers" not in system
    assert system["ProtectSystem"] == ["strict"] and system["ProtectHome"] == ["read-only"]
    assert system["After"] == ["network-online.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
@pytest.mark.parametrize("args", [("--user",), ("--user", "--no-sandbox"), ("--user", "--name", "llm-router"),
                                  ("--system",), ("--system", "--no-sandbox")])
def test_systemd_analyze_verify(args, tmp_path):
    name = "llm-router" if "llm-router" in args else "litellm"
    unit = tmp_path / f"{name}.service"
    unit.write_text(render(*args))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    cmd = ["systemd-analyze", *(["--user"] if "--user" in args else []), "verify", str(unit)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_LEVEL": "notice"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    # unknown or misspelt directives are only warned about: there must be none
    assert out.stderr.strip() == "", out.stderr


# --- scripts/install-service ---------------------------------------------------------------

FAKE_SYSTEMCTL = textwrap.dedent("""\
    #!/usr/bin/env bash
    # systemctl stand-in: logs each call, keeps enabled/active flags as files
    state="$FAKE_SYSTEMCTL_STATE"
    echo "$*" >> "$state/calls"
    [ "${1:-}" = --user ] && shift
    cmd="$1"; shift
    now=0; [ "${1:-}" = --now ] && { now=1; shift; }
    unit="${1:-}"
    case "$cmd" in
      show-environment) [ -z "${FAKE_NO_MANAGER:-}" ] || { echo "Failed to connect to bus" >&2; exit 1; } ;;
      daemon-reload) ;;
      is-enabled) [ -e "$state/enabled.$unit" ] && { echo enabled; exit 0; }; echo disabled; exit 1 ;;
      is-active) [ -e "$state/active.$unit" ] && { echo active; exit 0; }; echo inactive; exit 3 ;;
      enable) touch "$state/enabled.$unit"; [ $now = 1 ] && touch "$state/active.$unit"; true ;;
      disable) rm -f "$state/enabled.$unit"; [ $now = 1 ] && rm -f "$state/active.$unit"; true ;;
      start|restart) touch "$state/active.$unit" ;;
      stop) rm -f "$state/active.$unit" ;;
      *) echo "fake systemctl: unexpected $cmd" >&2; exit 1 ;;
    esac
    """)


class Installer:
    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.home.mkdir()
        self.state = tmp / "systemctl"
        self.state.mkdir()
        fake = tmp / "systemctl-fake"
        fake.write_text(FAKE_SYSTEMCTL)
        fake.chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if k not in ("XDG_CONFIG_HOME", "SYSTEMCTL")}
        self.env.update(HOME=str(self.home), SYSTEMCTL=str(fake), FAKE_SYSTEMCTL_STATE=str(self.state))
        self.unit_dir = self.home / ".config" / "systemd" / "user"
        self.env_file = self.home / ".config" / "llm-router" / "env"

    def run(self, *args: str, expect: int = 0, **env: str) -> str:
        (self.state / "calls").write_text("")
        out = subprocess.run([str(INSTALL), *args], capture_output=True, text=True, env={**self.env, **env})
        assert out.returncode == expect, out.stdout + out.stderr
        return out.stdout + out.stderr

    def calls(self) -> list[str]:
        return (self.state / "calls").read_text().splitlines()

    def changes(self) -> list[str]:
        """The systemctl calls that change something (not is-enabled / is-active)."""
        return [c for c in self.calls() if not c.split()[1].startswith(("is-", "show-environment"))]


@pytest.fixture
def installer(tmp_path) -> Installer:
    return Installer(tmp_path)


def test_help():
    out = subprocess.run([str(INSTALL), "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for option in ("--user", "--system", "--name", "--dry-run", "--no-sandbox", "litellm", "llm-router"):
        assert option in out.stdout
    bad = subprocess.run([str(INSTALL), "--name", "other"], capture_output=True, text=True)
    assert bad.returncode == 2 and "litellm or llm-router" in bad.stderr


def test_dry_run_changes_nothing_and_says_what_it_would_do(installer):
    out = installer.run("--dry-run", "--user")
    assert list(installer.home.iterdir()) == []  # nothing written
    assert installer.changes() == []  # only queries reached systemctl
    unit = installer.unit_dir / "litellm.service"
    assert f"would write {unit}:" in out
    assert f"    ExecStart={ROOT}/.venv/bin/llm-router serve" in out
    assert "    Type=notify" in out and "    Alias=llm-router.service" in out
    assert f"would create {installer.env_file} (mode 600)" in out
    assert "would run: " + installer.env["SYSTEMCTL"] + " --user daemon-reload" in out
    assert "would run: " + installer.env["SYSTEMCTL"] + " --user enable --now litellm.service" in out


def test_install_is_idempotent(installer):
    out = installer.run("--user")
    unit = installer.unit_dir / "litellm.service"
    assert unit.read_text() == render("--user", env=installer.env)
    assert f"EnvironmentFile=-{installer.env_file}" in unit.read_text()
    assert installer.changes() == ["--user daemon-reload", "--user enable --now litellm.service"]
    assert stat.S_IMODE(installer.env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(installer.env_file.parent.stat().st_mode) == 0o700
    assert "LLM_ROUTER_MASTER_KEY" in installer.env_file.read_text()
    assert "logs: journalctl --user -u litellm.service -f" in out

    before = unit.stat().st_mtime_ns, installer.env_file.stat().st_mtime_ns
    out = installer.run("--user")
    assert installer.changes() == []
    assert f"unchanged: {unit}" in out and "already enabled" in out and "already running" in out
    assert (unit.stat().st_mtime_ns, installer.env_file.stat().st_mtime_ns) == before
    dry = installer.run("--user", "--dry-run")
    assert "would" not in dry

    installer.env_file.write_text("LLM_ROUTER_MASTER_KEY=sk-mine\n")
    installer.env_file.chmod(0o644)
    unit.write_text(unit.read_text() + "# a local edit\n")  # drifted from the template
    installer.run("--user")
    assert installer.changes() == ["--user daemon-reload", "--user restart litellm.service"]
    assert "# a local edit" not in unit.read_text()
    assert installer.env_file.read_text() == "LLM_ROUTER_MASTER_KEY=sk-mine\n"  # kept
    assert stat.S_IMODE(installer.env_file.stat().st_mode) == 0o600  # but made private

    (installer.state / "active.litellm.service").unlink()  # stopped by hand: started again
    installer.run("--user")
    assert installer.changes() == ["--user start litellm.service"]


def test_no_start_only_enables(installer):
    installer.run("--user", "--no-start")
    assert installer.changes() == ["--user daemon-reload", "--user enable litellm.service"]


def test_switching_the_name_replaces_the_earlier_install(installer):
    installer.run("--user")
    out = installer.run("--user", "--name", "llm-router")
    assert not (installer.unit_dir / "litellm.service").exists()
    unit = (installer.unit_dir / "llm-router.service").read_text()
    assert "Alias=litellm.service" in unit and "journalctl --user -u llm-router.service" in out
    assert installer.changes() == ["--user disable --now litellm.service", "--user daemon-reload",
                                   "--user enable --now llm-router.service"]


def test_a_foreign_litellm_unit_is_kept_as_a_backup(installer):
    installer.unit_dir.mkdir(parents=True)
    foreign = "[Service]\nExecStart=/usr/bin/litellm --config /etc/litellm.yaml\n"
    (installer.unit_dir / "litellm.service").write_text(foreign)
    (installer.state / "enabled.litellm.service").touch()
    (installer.state / "active.litellm.service").touch()
    installer.run("--user")
    backups = list(installer.unit_dir.glob("litellm.service.bak.*"))
    assert len(backups) == 1 and backups[0].read_text() == foreign
    assert "Type=notify" in (installer.unit_dir / "litellm.service").read_text()
    assert installer.changes() == ["--user disable --now litellm.service", "--user daemon-reload",
                                   "--user enable --now litellm.service"]


def test_system_dry_run(installer):
    out = installer.run("--system", "--dry-run")
    assert "would write /etc/systemd/system/litellm.service:" in out
    assert f"    User={ROOT.owner()}" in out and "    EnvironmentFile=-/etc/llm-router/env" in out
    assert "would run: " + installer.env["SYSTEMCTL"] + " daemon-reload" in out
    assert list(installer.home.iterdir()) == []


def test_no_user_manager_is_a_clear_error_before_any_change(installer):
    out = installer.run("--user", expect=1, FAKE_NO_MANAGER="1")
    assert "cannot reach your systemd user manager" in out and "loginctl enable-linger" in out
    assert list(installer.home.iterdir()) == [] and installer.changes() == []
