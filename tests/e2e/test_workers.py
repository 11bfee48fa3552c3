"""`llm-router serve --workers 2`: one port, two supervised processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

from tests.e2e.test_cli import free_ports, wait_until_up
from tests.e2e.test_lifecycle import read_log_until

ROOT = Path(__file__).resolve().parents[2]
BODY = orjson.dumps({"model": "one", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3})


async def test_two_workers_serve_one_port_a_dead_one_is_restarted_and_sigterm_stops_all(tmp_path):
    sim_port, port = free_ports(2)
    (tmp_path / "c.yaml").write_text(
        f"model_list:\n  - {{model_name: one, litellm_params: {{model: openai/tiny, api_base: 'http://127.0.0.1:{sim_port}/v1'}}, "
        "model_info: {provider: llama_cpp_native}}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    sim = subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(tmp_path / "c.yaml"), "--ttft", "0",
                            "--tokens-per-s", "0"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp_path / "c.yaml"), "--port", str(port),
                              "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = await read_log_until(serve, "worker 2 started")
        assert "2 workers without Redis" in out
        while not all(f"(worker {i})" in out for i in (1, 2)):  # both listening before one is killed
            out += await read_log_until(serve, "listening on", deadline_s=30)
        pids = [int(p) for p in re.findall(r"worker \d started pid=(\d+)", out)]
        async with aiohttp.ClientSession() as s:
            await wait_until_up(s, f"http://127.0.0.1:{sim_port}/health", sim)
            await wait_until_up(s, f"http://127.0.0.1:{port}/health/readiness", serve)
            for _ in range(20):
                async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY) as r:
                    assert r.status == 200
            os.kill(pids[0], signal.SIGKILL)  # a worker dies
            restarted = await read_log_until(serve, "worker 1 started")
            new_pid = int(re.findall(r"worker 1 started pid=(\d+)", restarted)[-1])
            assert new_pid != pids[0] and "worker 1 exited with -9; restarting" in restarted
            for _ in range(20):  # every request still served (the kernel spreads them over the live workers)
                async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY) as r:
                    assert r.status == 200
            async with s.get(f"http://127.0.0.1:{port}/metrics") as r:  # whichever worker answers counts them all
                text = await r.text()
            total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                        if line.startswith("llm_router_requests_total{"))
            assert total == 40
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, serve.wait, 30) == 0
        for pid in (pids[1], new_pid):
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
    finally:
        for p in (serve, sim):
            if p.poll() is None:
                p.kill()
            p.wait()
        if serve.stdout:
            serve.stdout.close()


async def test_workers_exit_when_the_supervisor_is_killed(tmp_path):
    """A supervisor killed outright (SIGKILL, the OOM killer) must not leave its workers
    holding the port beside the next instance."""
    port, = free_ports(1)
    (tmp_path / "c.yaml").write_text(
        "model_list:\n  - {model_name: one, litellm_params: {model: openai/tiny, api_base: 'http://127.0.0.1:9/v1'}, "
        "model_info: {provider: llama_cpp_native}}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp_path / "c.yaml"), "--port", str(port),
                              "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pids: list[int] = []
    try:
        out = await read_log_until(serve, "worker 2 started")
        while not all(f"(worker {i})" in out for i in (1, 2)):
            out += await read_log_until(serve, "listening on", deadline_s=30)
        pids = [int(p) for p in re.findall(r"worker \d started pid=(\d+)", out)]
        assert len(pids) == 2
        serve.kill()
        serve.wait()
        loop = asyncio.get_running_loop()
        end = loop.time() + 30
        while any(_alive(p) for p in pids) and loop.time() < end:
            await asyncio.sleep(0.1)
        assert not any(_alive(p) for p in pids), "workers outlived their supervisor"
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        for p in pids:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
        if serve.stdout:
            serve.stdout.close()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "zombie" not in status.lower()
