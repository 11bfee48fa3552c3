"""The status page (``/ui``) in a real headless Chromium, driven over the DevTools
protocol (aiohttp websockets), against a running proxy in front of simulated
backends; plus its JSON (``/ui/data``) and the recent-decisions ring.

Chromium is Debian's ``chromium`` package (scripts/test installs it under CI).
Outside CI a machine without it skips the browser tests; under CI they fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import re
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest

from router import log
from router.config import load_config
from router.simulate import SimulatedBackend
from router.stats import RecentDecisions
from tests.conftest import start_proxy

KEY = "sk-ui-test-key"
CHAT = "/v1/chat/completions"
CHROMIUM = "/usr/bin/chromium"
# Headless, no sandbox (we run as root), and nothing but loopback: background
# services off, every host name unresolvable, every other request to a dead proxy.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--disable-domain-reliability",
    "--disable-client-side-phishing-detection", "--no-first-run", "--no-default-browser-check",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9",
    "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--window-size=1280,900",
]


def chromium() -> str:
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: scripts/test installs Debian's chromium package under CI "
                        "(apt-get install -y chromium)")
        pytest.skip("no chromium (apt-get install chromium) for the browser tests")
    return path


class Page:
    """One headless Chromium showing one page, and JavaScript evaluated in it."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, log_file: Path) -> None:
        self.ws, self.log_file, self._id = ws, log_file, 0

    async def eval(self, expression: str) -> Any:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": "Runtime.evaluate",
                                 "params": {"expression": expression, "returnByValue": True}})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 10)
            if msg.get("id") == self._id:
                break
        result = msg["result"]
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """The first truthy value of ``expression``, polled every 0.1 s."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                value = await self.eval(expression)
            except AssertionError:  # e.g. the page is still loading
                value = None
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                text = await self.eval("document.body.innerText")
                raise AssertionError(f"timed out waiting for {expression!r}; the page shows:\n{text}")
            await asyncio.sleep(0.1)

    async def text(self, selector: str) -> str | None:
        return await self.eval(f"document.querySelector({json.dumps(selector)})?.textContent ?? null")


@contextlib.asynccontextmanager
async def browser(url: str, profile: Path) -> AsyncIterator[Page]:
    binary = chromium()
    profile.mkdir()
    log_file = profile.parent / "chromium.log"
    with open(log_file, "wb") as err:
        proc = await asyncio.create_subprocess_exec(binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", url,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=err, stderr=err,
                                                    start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            if proc.returncode is not None:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"Chromium did not open its DevTools port; its log:\n{log_file.read_text()[-3000:]}")
        assert proc.returncode is None, f"Chromium exited; its log:\n{log_file.read_text()[-3000:]}"
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as session:
            for _ in range(100):
                async with session.get(f"http://127.0.0.1:{port}/json/list") as resp:
                    pages = [t for t in await resp.json() if t["type"] == "page"]
                if pages:
                    break
                await asyncio.sleep(0.1)
            async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield Page(ws, log_file)
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # any helper process of this browser left behind


@dataclass
class UiStack:
    url: str
    primary: SimulatedBackend
    backup: SimulatedBackend
    session: aiohttp.ClientSession

    async def chat(self, model: str = "primary") -> aiohttp.ClientResponse:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        async with self.session.post(self.url + CHAT, json=body, headers={"Authorization": f"Bearer {KEY}"}) as resp:
            await resp.read()
            return resp


@pytest.fixture
async def ui_stack(tmp_path) -> AsyncIterator[UiStack]:
    """primary (a vLLM) falling back to backup (a llama-cpp-python) behind a proxy with a
    master key; two failures cool primary down for 30 s (the monitor probes only at start)."""
    primary, backup = SimulatedBackend("vllm", ["m"]), SimulatedBackend("llama_cpp_python", ["m"])
    for sim in (primary, backup):
        await sim.start()
        sim.faults.paths = (CHAT,)
    (tmp_path / "c.yaml").write_text(f"""
model_list:
  - {{model_name: primary, litellm_params: {{model: hosted_vllm/m, api_base: "{primary.base_url}/v1"}}, model_info: {{id: primary-1}}}}
  - {{model_name: backup, litellm_params: {{model: openai/m, api_base: "{backup.base_url}/v1"}}, model_info: {{id: backup-1, provider: llama_cpp_python}}}}
router_settings:
  num_retries: 0
  allowed_fails: 1
  cooldown_time: 30
  monitor_interval: 60
  fallbacks: [{{primary: [backup]}}]
general_settings: {{master_key: {KEY}}}
""")
    (tmp_path / "model-mappings.yaml").write_text("{}\n")
    log.configure("human", "info", stream=io.StringIO())
    runner, url = await start_proxy(load_config(str(tmp_path / "c.yaml")))
    try:
        async with aiohttp.ClientSession() as session:
            yield UiStack(url, primary, backup, session)
    finally:
        await runner.cleanup()
        for sim in (primary, backup):
            await sim.stop()
        log.configure()


def row(dep_id: str, cls: str) -> str:
    return f'tr[data-id="{dep_id}"] td.{cls}'


async def test_page_shows_a_cooldown_and_its_countdown_live(ui_stack, tmp_path):
    async with browser(f"{ui_stack.url}/ui#key={KEY}", tmp_path / "profile") as page:
        await page.wait_for(f"document.querySelector('{row('primary-1', 'state')}')?.textContent === 'healthy'")
        assert await page.text(row("backup-1", "provider")) == "llama_cpp_python"
        assert await page.text(row("primary-1", "cooldown-left")) == ""
        assert await page.eval("location.hash") == ""  # the key left the address bar
        assert KEY not in await page.eval("document.documentElement.outerHTML")

        ui_stack.primary.faults.status = 500
        for _ in range(2):  # allowed_fails 1: the second failure cools primary down
            resp = await ui_stack.chat()
            assert resp.status == 200 and resp.headers["x-router-deployment"] == "backup-1"

        # No reload: the page's own polling shows it.
        await page.wait_for(f"document.querySelector('{row('primary-1', 'state')}').textContent === 'cooldown'")
        countdown = await page.wait_for(f"document.querySelector('{row('primary-1', 'cooldown-left')}').textContent")
        first = float(re.fullmatch(r"(\d+\.\d) s", countdown).group(1))
        assert 20 < first <= 30
        await page.wait_for(f"parseFloat(document.querySelector('{row('primary-1', 'cooldown-left')}').textContent) "
                            f"<= {first - 0.5}", timeout=5)  # it counts down
        assert await page.text(row("primary-1", "error-rate")) == "100%"
        assert await page.text(row("primary-1", "healthy")) == "no"
        assert await page.text(row("backup-1", "state")) == "healthy"
        assert await page.text(row("backup-1", "error-rate")) == "0%"

        recent = await page.wait_for("document.getElementById('recent').innerText.includes('primary-1 → backup-1') "
                                     "&& document.getElementById('recent').innerText")
        assert "backup-1 (llama_cpp_python)" in recent and "primary" in recent


async def test_page_asks_for_the_master_key_and_keeps_it_out_of_the_page(ui_stack, tmp_path):
    async with browser(f"{ui_stack.url}/ui", tmp_path / "profile") as page:
        await page.wait_for("!document.getElementById('login').hidden")
        assert "master key" in await page.text("#status")
        assert await page.eval("document.getElementById('deployments').children.length") == 0

        submit = "document.getElementById('key').value = {}; document.getElementById('login').requestSubmit()"
        await page.eval(submit.format(json.dumps("sk-wrong")))
        await page.wait_for("document.getElementById('status').textContent.includes('refused')")
        await page.eval(submit.format(json.dumps(KEY)))
        await page.wait_for(f"document.querySelector('{row('primary-1', 'state')}')?.textContent === 'healthy'")
        assert await page.eval("document.getElementById('login').hidden") is True
        assert await page.eval("document.getElementById('key').value") == ""
        assert KEY not in await page.eval("document.documentElement.outerHTML")
        assert await page.eval("sessionStorage.getItem('llm-router-ui-key')") == KEY  # this tab only


async def test_ui_data_json_and_the_page_itself(ui_stack):
    s, auth = ui_stack.session, {"Authorization": f"Bearer {KEY}"}
    async with s.get(ui_stack.url + "/ui/data") as resp:
        assert resp.status == 401  # the data needs the master key
    async with s.get(ui_stack.url + "/ui") as resp:  # the page holds no data: open
        assert resp.status == 200 and resp.content_type == "text/html"
        html = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    assert not re.search(r"(src|href)=\"(?!data:)", html) and "http:" not in html and "https:" not in html

    ui_stack.primary.faults.status = 500
    assert (await ui_stack.chat()).status == 200  # primary fails, backup serves
    async with s.get(ui_stack.url + "/ui/data", headers=auth) as resp:
        assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
        data = await resp.json()
    deps = {d["id"]: d for d in data["deployments"]}
    assert set(deps) >= {"primary-1", "backup-1"}
    p = deps["primary-1"]
    assert (p["provider"], p["state"], p["requests"], p["failures"], p["error_rate"], p["in_flight"]) == \
        ("vllm", "healthy", 1, 1, 1.0, 0)
    assert p["cooldown_left_s"] is None and p["ttft_p95_ms"] is None and p["last_error"]
    assert deps["backup-1"]["error_rate"] == 0.0 and deps["backup-1"]["latency_p95_ms"] > 0

    assert (await ui_stack.chat()).status == 200  # the second failure: cooldown
    async with s.get(ui_stack.url + "/ui/data", headers=auth) as resp:
        data = await resp.json()
    p = next(d for d in data["deployments"] if d["id"] == "primary-1")
    assert p["state"] == "cooldown" and 25 < p["cooldown_left_s"] <= 30
    newest = data["recent"][0]
    assert {k: newest[k] for k in ("model", "route", "deployment", "provider", "status", "attempts", "fallback")} == \
        {"model": "primary", "route": "exact", "deployment": "backup-1", "provider": "llama_cpp_python",
         "status": 200, "attempts": 2, "fallback": "primary-1,backup-1"}
    assert len(data["recent"]) == 2 and newest["request_id"] and newest["latency_ms"] > 0


def test_recent_decisions_keeps_the_newest_first_and_is_bounded():
    ring = RecentDecisions(size=3)
    for i in range(5):
        ring.record(f"r{i}", "m" * 500, "alias", "d", "ollama", 200, 1.5, 1)
    ring.record("r5", "x", None, None, None, 404, 0.3, 0, error="ModelNotFound")
    snap = ring.snapshot()
    assert len(ring) == 3 and [r["request_id"] for r in snap] == ["r5", "r4", "r3"]
    assert snap[0]["route_label"] is None and snap[0]["error"] == "ModelNotFound"
    assert snap[1]["route_label"] == "alias" and len(snap[1]["model"]) == 200
