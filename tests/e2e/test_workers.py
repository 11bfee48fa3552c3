"""`llm-router serve --workers 2`: one port, two supervised processes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
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
            # Counts land at the end of the loop turn that answered: wait until all 20 are in, or
            # the kill could take the last one with it (a race that failed CI once: 39 == 40).
            deadline, total = time.monotonic() + 10, 0.0
            while total != 20 and time.monotonic() < deadline:
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                    text = await r.text()
                total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                            if line.startswith("llm_router_requests_total{"))
            assert total == 20
            os.kill(pids[0], signal.SIGKILL)  # a worker dies
            restarted = await read_log_until(serve, "worker 1 started")
            new_pid = int(re.findall(r"worker 1 started pid=(\d+)", restarted)[-1])
            assert new_pid != pids[0] and "worker 1 exited with -9; restarting" in restarted
            for _ in range(20):  # every request still served (the kernel spreads them over the live workers)
                async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=BODY) as r:
                    assert r.status == 200
            # Whichever worker answers counts them all. Each worker applies its counts at the end
            # of the loop turn that finished the request, so the other worker's last one may land
            # just after a scrape that arrives first: ask until both are in (bounded).
            deadline, total = time.monotonic() + 10, 0.0
            while total != 40 and time.monotonic() < deadline:
                async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
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


async def _start_two_workers(tmp_path: Path, config: str, **extra_env: str) -> tuple[subprocess.Popen, int, str, list[int]]:
    """`serve --workers 2` on a free port, once both workers listen: (process, port, log so far, worker pids)."""
    port, = free_ports(1)
    (tmp_path / "c.yaml").write_text(config)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra_env}
    env.pop("JOURNAL_STREAM", None)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp_path / "c.yaml"), "--port", str(port),
                              "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = await read_log_until(serve, "worker 2 started", deadline_s=30)
        while not all(f"(worker {i})" in out for i in (1, 2)):
            out += await read_log_until(serve, "listening on", deadline_s=30)
    except BaseException:
        serve.kill()
        serve.wait()
        serve.stdout.close()
        raise
    return serve, port, out, [int(p) for p in re.findall(r"worker \d started pid=(\d+)", out)]


def _stop(serve: subprocess.Popen) -> None:
    if serve.poll() is None:
        serve.kill()
    serve.wait()
    if serve.stdout:
        serve.stdout.close()


UNREACHABLE_BACKEND = ("model_list:\n  - {model_name: one, litellm_params: {model: openai/tiny, api_base: 'http://127.0.0.1:9/v1'}, "
                       "model_info: {provider: llama_cpp_native}}\n")


async def test_a_worker_whose_loop_hangs_is_killed_and_replaced(tmp_path):
    """A worker's event loop stops turning (the test-only hook blocks it in time.sleep):
    the supervisor misses its heartbeats, logs an ERROR, kills it and starts another;
    afterwards every new connection is served (none lands on the hung worker)."""
    hang = tmp_path / "hang"
    serve, port, out, pids = await _start_two_workers(tmp_path, UNREACHABLE_BACKEND, LLM_ROUTER_TEST_HANG_FILE=str(hang))
    try:
        hang.touch()  # the first worker to beat deletes it, and hangs
        killed = await read_log_until(serve, "sent no heartbeat", deadline_s=20)
        line = killed.splitlines()[-1]
        assert "ERROR" in line and "killing it" in line, line
        slot, hung_pid = re.search(r"worker (\d) sent no heartbeat.*pid=(\d+)", line).groups()
        assert int(hung_pid) in pids and not hang.exists()
        restarted = await read_log_until(serve, f"worker {slot} started", deadline_s=20)
        assert f"worker {slot} exited with -9; restarting" in restarted
        new_pid = int(re.findall(rf"worker {slot} started pid=(\d+)", restarted)[-1])
        assert new_pid not in pids
        await read_log_until(serve, f"(worker {slot})", deadline_s=30)  # the replacement listens
        assert not _alive(int(hung_pid))
        timeout = aiohttp.ClientTimeout(total=5)
        for _ in range(20):  # new connections: a hung worker would leave about half of them unanswered
            async with aiohttp.ClientSession(timeout=timeout) as s:
                async with s.get(f"http://127.0.0.1:{port}/health/readiness") as r:
                    assert r.status == 200
        assert serve.poll() is None
    finally:
        _stop(serve)


async def test_reload_endpoint_reloads_every_worker(tmp_path):
    """POST /router/reload reached only the worker that got it: a removed key was still
    accepted on about half of the new connections. Now it answers 200 only once every
    worker has acknowledged the new configuration; an invalid one is still a 400."""
    master, doomed = "sk-master-0001", "sk-doomed-0001"
    keys = f"general_settings: {{master_key: {master}, api_keys: [{{name: doomed, key: {doomed}}}]}}\n"
    serve, port, _, _ = await _start_two_workers(tmp_path, UNREACHABLE_BACKEND + keys)
    base = f"http://127.0.0.1:{port}"

    async def status(path: str, key: str, method: str = "GET") -> tuple[int, dict]:
        async with aiohttp.ClientSession() as s:  # a new connection each time: the kernel picks the worker
            async with s.request(method, base + path, headers={"Authorization": f"Bearer {key}"}) as r:
                return r.status, await r.json()

    try:
        assert [(await status("/v1/models", doomed))[0] for _ in range(10)] == [200] * 10
        (tmp_path / "c.yaml").write_text(UNREACHABLE_BACKEND + f"general_settings: {{master_key: {master}}}\n")
        code, body = await status("/router/reload", master, "POST")
        assert (code, body.get("status")) == (200, "reloaded"), body
        codes = [(await status("/v1/models", doomed))[0] for _ in range(40)]
        assert codes == [401] * 40, codes
        assert body.get("workers") == 2, body
        assert [(await status("/v1/models", master))[0] for _ in range(10)] == [200] * 10

        (tmp_path / "c.yaml").write_text(UNREACHABLE_BACKEND + "general_settings: {master_key: 7}\n  oops: [\n")
        code, body = await status("/router/reload", master, "POST")
        assert code == 400 and body["error"]["code"] == "invalid_config", body
        assert re.search(r"c\.yaml:\d+", body["error"]["message"]), body
        assert [(await status("/v1/models", master))[0] for _ in range(10)] == [200] * 10  # the old one keeps serving
        assert serve.poll() is None
    finally:
        _stop(serve)


async def test_a_replacement_worker_serves_the_accepted_configuration_not_the_disk(tmp_path):
    """A worker that replaces a dead one loaded the file as it was on disk by then: a
    key revoked by a reload but back in a file edited and never reloaded was accepted
    on about half the connections, and an invalid file on disk made the replacement
    crash-loop (exit 2 each second). It now starts with the configuration the other
    workers accepted."""
    master, doomed = "sk-master-0002", "sk-doomed-0002"
    keys = f"general_settings: {{master_key: {master}, api_keys: [{{name: doomed, key: {doomed}}}]}}\n"
    serve, port, _, pids = await _start_two_workers(tmp_path, UNREACHABLE_BACKEND + keys)
    base = f"http://127.0.0.1:{port}"

    async def status(path: str, key: str, method: str = "GET") -> int:
        async with aiohttp.ClientSession() as s:  # a new connection each time: the kernel picks the worker
            async with s.request(method, base + path, headers={"Authorization": f"Bearer {key}"}) as r:
                return r.status

    try:
        (tmp_path / "c.yaml").write_text(UNREACHABLE_BACKEND + f"general_settings: {{master_key: {master}}}\n")
        assert await status("/router/reload", master, "POST") == 200  # generation 1: the key is revoked
        (tmp_path / "c.yaml").write_text(UNREACHABLE_BACKEND + keys)  # edited back, not reloaded
        os.kill(pids[0], signal.SIGKILL)
        out = await read_log_until(serve, "(worker 1)", deadline_s=30)  # the replacement listens
        assert "worker 1 exited with -9; restarting" in out
        assert [await status("/v1/models", doomed) for _ in range(40)] == [401] * 40
        assert [await status("/v1/models", master) for _ in range(10)] == [200] * 10

        (tmp_path / "c.yaml").write_text("model_list: [\n")  # invalid on disk, not reloaded
        new_pid = int(re.findall(r"worker 1 started pid=(\d+)", out)[-1])
        os.kill(new_pid, signal.SIGKILL)
        out = await read_log_until(serve, "(worker 1)", deadline_s=30)
        assert "exited with 2" not in out, out
        assert [await status("/v1/models", master) for _ in range(20)] == [200] * 20
        assert [await status("/v1/models", doomed) for _ in range(20)] == [401] * 20
        assert serve.poll() is None
    finally:
        _stop(serve)


async def test_sighup_to_one_worker_reloads_every_worker(tmp_path):
    """A SIGHUP sent to one worker's pid (as `pkill -HUP -f router` does) reloaded only
    that worker; now it asks the supervisor, which reloads all of them."""
    master, doomed = "sk-master-0003", "sk-doomed-0003"
    keys = f"general_settings: {{master_key: {master}, api_keys: [{{name: doomed, key: {doomed}}}]}}\n"
    serve, port, _, pids = await _start_two_workers(tmp_path, UNREACHABLE_BACKEND + keys)
    try:
        (tmp_path / "c.yaml").write_text(UNREACHABLE_BACKEND + f"general_settings: {{master_key: {master}}}\n")
        os.kill(pids[1], signal.SIGHUP)
        await read_log_until(serve, "configuration reloaded in all 2 running workers", deadline_s=20)
        codes = await _codes_on_new_connections(port, doomed, 40)
        assert codes == [401] * 40, codes
    finally:
        _stop(serve)


async def _codes_on_new_connections(port: int, key: str, n: int) -> list[int]:
    """GET /v1/models with ``key`` n times, each on a new connection (the kernel picks the worker)."""
    codes = []
    for _ in range(n):
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {key}"}) as r:
                codes.append(r.status)
    return codes


def _many_deployments(n: int) -> str:
    rows = "".join(f"  - {{model_name: m{i}, litellm_params: {{model: openai/tiny, api_base: 'http://127.0.0.1:9/v1'}}, "
                   "model_info: {provider: llama_cpp_native}}\n" for i in range(n))
    return "model_list:\n" + rows


async def test_a_worker_replaced_during_a_reload_catches_up_with_it(tmp_path):
    """A worker killed while the others reloaded was replaced with the configuration
    accepted before that reload; when the reload then succeeded in the others, nothing
    brought the replacement along, and the workers served different configurations
    (a revoked key accepted on some connections) until some later restart. Now the
    supervisor reloads the replacement to the generation the others accepted. A
    thousand deployments make the reload slower than the worker's replacement."""
    master, doomed = "sk-master-0004", "sk-doomed-0004"
    body = _many_deployments(1000)
    keys = f"general_settings: {{master_key: {master}, api_keys: [{{name: doomed, key: {doomed}}}]}}\n"
    serve, port, _, pids = await _start_two_workers(tmp_path, body + keys)
    try:
        (tmp_path / "c.yaml").write_text(body + f"general_settings: {{master_key: {master}}}\n")
        serve.send_signal(signal.SIGHUP)
        os.kill(pids[1], signal.SIGKILL)  # while worker 1 is still loading the new file
        # Depending on when the kill lands, the replacement starts on generation 1 or catches up with
        # it: either way both workers must end up on it (config_generation = generation + 1).
        loop = asyncio.get_running_loop()
        end = loop.time() + 60
        while True:
            async with aiohttp.ClientSession() as s:
                try:
                    async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
                        text = await r.text()
                except aiohttp.ClientError:
                    text = ""
            gens = dict(re.findall(r'llm_router_config_generation\{worker="(\d)"\} (\S+)', text))
            if gens == {"1": "2.0", "2": "2.0"}:
                break
            assert loop.time() < end, gens
            await asyncio.sleep(0.2)
        codes = await _codes_on_new_connections(port, doomed, 40)
        assert codes == [401] * 40, codes
        assert serve.poll() is None
    finally:
        _stop(serve)
