"""Metrics an alert can use: process, build, config generation, Redis sharing; one process and --workers."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from typing import AsyncIterator

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from router import __version__
from router.app import PROXY, reload_config
from tests.e2e.test_cli import free_ports, wait_until_up
from tests.e2e.test_lifecycle import read_log_until
from tests.e2e.test_metrics import scrape, value
from tests.e2e.test_shared import redis_url, wait_for  # noqa: F401  (redis_url: the fixture)

ROOT = Path(__file__).resolve().parents[2]
PROCESS = ("process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds", "process_max_fds",
           "process_start_time_seconds", "process_cpu_seconds_total")


def names(samples) -> set[str]:
    return {n for n, _ in samples}


async def test_one_process_exports_process_build_and_config_generation_metrics(stack):
    m = await scrape(stack.url)
    for name in PROCESS:
        assert value(m, name) > 0, name
    assert abs(value(m, "process_start_time_seconds") - time.time()) < 600
    assert value(m, "llm_router_build_info", version=__version__) == 1
    assert value(m, "llm_router_config_generation") == 1
    assert "llm_router_redis_sharing_up" not in names(m)  # no Redis configured: nothing to alert on
    assert (await reload_config(stack.app))[0]
    assert (await reload_config(stack.app))[0]
    assert value(await scrape(stack.url), "llm_router_config_generation") == 3


@pytest.fixture
async def prefix(redis_url) -> AsyncIterator[str]:
    """A key prefix of our own, its keys deleted after the routers stopped (listed before make_stack)."""
    prefix = f"llm-router-test:{uuid.uuid4().hex[:8]}:"
    yield prefix
    client = aioredis.from_url(redis_url)
    keys = [k async for k in client.scan_iter(match=prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_redis_sharing_up_is_1_while_sharing_works_and_0_when_redis_is_unreachable(prefix, make_stack, redis_url):
    up = await make_stack(extra_router=f"redis_url: {redis_url}\n          redis_key_prefix: '{prefix}'")
    deadline = time.monotonic() + 5
    while value(await scrape(up.url), "llm_router_redis_sharing_up") != 1:
        assert time.monotonic() < deadline, "sharing_up never became 1"
        await asyncio.sleep(0.1)
    dead_port, = free_ports(1)
    down = await make_stack(extra_router=f"redis_url: redis://127.0.0.1:{dead_port}")
    await asyncio.sleep(1.0)
    m = await scrape(down.url)
    assert "llm_router_redis_sharing_up" in names(m) and value(m, "llm_router_redis_sharing_up") == 0


def by_worker(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, s.labels.get("worker", ""))] = s.value
            assert "pid" not in s.labels, s
    return out


async def test_under_workers_process_metrics_are_per_worker_slot_and_a_restart_shows(tmp_path):
    sim_port, port = free_ports(2)
    (tmp_path / "c.yaml").write_text(
        f"model_list:\n  - {{model_name: one, litellm_params: {{model: openai/tiny, api_base: 'http://127.0.0.1:{sim_port}/v1'}}, "
        "model_info: {provider: llama_cpp_native}}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(tmp_path / "c.yaml"), "--port", str(port),
                              "--workers", "2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        out = await read_log_until(serve, "worker 2 started", deadline_s=30)
        while not all(f"(worker {i})" in out for i in (1, 2)):
            out += await read_log_until(serve, "listening on", deadline_s=30)
        pids = [int(p) for p in re.findall(r"worker \d started pid=(\d+)", out)]
        async with aiohttp.ClientSession() as s:
            await wait_until_up(s, f"http://127.0.0.1:{port}/health/readiness", serve)

            async def get() -> dict[tuple[str, str], float]:
                async with s.get(url) as r:
                    return by_worker(await r.text())

            m = await get()
            for w in ("1", "2"):  # both workers, whichever answered the scrape
                for name in PROCESS:
                    assert m.get((name, w), 0) > 0, (name, w, sorted(m))
                assert m[("llm_router_config_generation", w)] == 1
            assert m[("llm_router_build_info", "")] == 1
            assert {w for n, w in m if n == "process_resident_memory_bytes"} == {"1", "2"}  # not the supervisor
            serve.send_signal(signal.SIGHUP)  # reload: every worker's generation goes to 2
            deadline = time.monotonic() + 10
            while True:
                m = await get()
                if all(m.get(("llm_router_config_generation", w)) == 2 for w in ("1", "2")):
                    break
                assert time.monotonic() < deadline, "generation never reached 2 in both workers"
                await asyncio.sleep(0.2)
            before = await get()
            os.kill(pids[0], signal.SIGKILL)
            await read_log_until(serve, "worker 1 started", deadline_s=15)
            deadline = time.monotonic() + 15
            while True:
                m = await get()
                started = m.get(("process_start_time_seconds", "1"))
                if started is not None and started > before[("process_start_time_seconds", "1")]:
                    break
                assert time.monotonic() < deadline, "worker 1's start time never changed after its restart"
                await asyncio.sleep(0.2)
            assert m[("process_start_time_seconds", "2")] == before[("process_start_time_seconds", "2")]
            assert {w for n, w in m if n == "process_start_time_seconds"} == {"1", "2"}  # one series per slot, not per pid
            assert m[("process_cpu_seconds_total", "1")] >= before[("process_cpu_seconds_total", "1")]  # counts on
            assert m[("llm_router_config_generation", "1")] == 2  # the new worker started on the accepted generation
        serve.send_signal(signal.SIGTERM)
        assert await asyncio.get_running_loop().run_in_executor(None, serve.wait, 30) == 0
    finally:
        if serve.poll() is None:
            serve.kill()
        serve.wait()
        if serve.stdout:
            serve.stdout.close()


async def test_a_model_group_whose_every_deployment_cools_down_shows_0_healthy_deployments(stack):
    m = await scrape(stack.url)
    assert value(m, "llm_router_model_group_healthy_deployments", model_group="llama2-13b-vllm") == 1
    assert value(m, "llm_router_model_group_healthy_deployments", model_group="general_chat") == 0  # an alias, not a group
    state = stack.app[PROXY].state
    state["llama2-13b-vllm"].health.cooled_elsewhere(time.time(), time.time() + 60, "test")
    m = await scrape(stack.url)
    assert value(m, "llm_router_model_group_healthy_deployments", model_group="llama2-13b-vllm") == 0
    assert value(m, "llm_router_model_group_healthy_deployments", model_group="llama3.1:8b") == 1
