"""The real command line: `llm-router simulate` + `llm-router serve`, then the seed's
"Test Routing" loop from its Routing Debugging section, as an operator runs it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import shipped_copy

ROOT = Path(__file__).resolve().parents[2]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


async def wait_until_up(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, deadline_s: float = 20) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            async with session.get(url) as r:
                if r.status < 500:
                    return
        except aiohttp.ClientConnectionError:
            pass
        await asyncio.sleep(0.05)  # polling for a port to open, bounded by the deadline
    raise AssertionError(f"{url} did not come up in {deadline_s} s")


@pytest.fixture
def processes():
    procs: list[subprocess.Popen] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()


async def test_seed_test_routing_loop_through_the_real_cli(tmp_path, processes):
    ollama, vllm, lcp, native, proxy = free_ports(5)
    cfg = shipped_copy(tmp_path, {11434: ollama, 8001: vllm, 8000: lcp, 8080: native})
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    sim = subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(cfg), "--ttft", "0", "--tokens-per-s", "0"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(sim)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(cfg)],
                             cwd=ROOT, env={**env, "LLM_ROUTER_PORT": str(proxy)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(serve)
    base = f"http://127.0.0.1:{proxy}"
    async with aiohttp.ClientSession() as s:
        for port in (ollama, vllm, lcp, native):
            await wait_until_up(s, f"http://127.0.0.1:{port}/", sim)
        await wait_until_up(s, base + "/health/readiness", serve)

        # curl http://localhost:4000/v1/models | jq '.data[] | {id, object}'
        async with s.get(base + "/v1/models") as r:
            models = {m["id"]: m["object"] for m in (await r.json())["data"]}
        assert models["llama3.1:8b"] == "model" and "llama2-13b-vllm" in models

        # for model in ...; do curl -X POST .../v1/chat/completions -d '{...}' | jq '.model'; done
        # (curl -d sends form content-type; the proxy reads the JSON anyway)
        for model in ("llama3.1:8b", "llama2-13b-vllm", "qwen-coder"):
            data = '{"model": "%s", "messages": [{"role": "user", "content": "Hi"}]}' % model
            async with s.post(base + "/v1/chat/completions", data=data,
                              headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
                assert r.status == 200, await r.text()
                body = await r.json()
            assert body["model"] and body["choices"][0]["message"]["content"]
        async with s.post(base + "/v1/chat/completions",
                          data='{"model": "meta-llama/Llama-2-13b-chat-hf", "messages": [{"role": "user", "content": "Hi"}]}') as r:
            assert r.status == 200 and r.headers["x-router-route"] == "pattern"

    serve.send_signal(signal.SIGTERM)
    out, err = serve.communicate(timeout=15)
    assert serve.returncode == 0, err
    router_lines = [l for l in out.splitlines() if "[ROUTER]" in l]
    # exact match, or "warm provider" when the simulated Ollama has not loaded llama3.1:8b yet
    assert any("[ROUTER] Model: llama3.1:8b -> Provider: " in l and ("(exact match)" in l or "(warm provider)" in l)
               for l in router_lines), out
    assert any("[ROUTER] Model: qwen-coder -> Provider: ollama (deployment id)" in l for l in router_lines), out
    assert any("[ROUTER] Model: meta-llama/Llama-2-13b-chat-hf -> Provider: vllm (pattern match)" in l for l in router_lines), out
    assert "listening on" in out and "Traceback" not in out + err


def test_the_tours_scripts_start_the_right_commands():
    """README's tour starts `scripts/simulate &` then `scripts/serve &`: both make .venv
    if needed (the tour used `.venv/bin/llm-router simulate` before anything had made it)."""
    for script, command in (("simulate", "llm-router simulate"), ("serve", "llm-router serve")):
        r = subprocess.run([str(ROOT / "scripts" / script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0 and r.stdout.startswith(f"usage: {command}"), (script, r.stdout[:200], r.stderr[-500:])


async def test_ollama_port_serves_the_same_api_for_clients_that_hard_code_11434(tmp_path, processes):
    """`serve --ollama-port P`: an Ollama client pointed at P (as at 11434) lists and chats."""
    ollama_sim, proxy, second = free_ports(3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model_list:\n  - model_name: llama3.1:8b\n    litellm_params: "
                   f"{{model: ollama_chat/llama3.1:8b, api_base: 'http://127.0.0.1:{ollama_sim}'}}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JOURNAL_STREAM", None)
    sim = subprocess.Popen([sys.executable, "-m", "router", "simulate", "--config", str(cfg), "--ttft", "0", "--tokens-per-s", "0"],
                           cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(sim)
    serve = subprocess.Popen([sys.executable, "-m", "router", "serve", "--config", str(cfg), "--port", str(proxy),
                              "--ollama-port", str(second)],
                             cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(serve)
    async with aiohttp.ClientSession() as s:
        await wait_until_up(s, f"http://127.0.0.1:{ollama_sim}/", sim)
        await wait_until_up(s, f"http://127.0.0.1:{second}/health/readiness", serve)
        async with s.get(f"http://127.0.0.1:{second}/api/tags") as r:
            assert "llama3.1:8b" in [m["name"] for m in (await r.json())["models"]]
        async with s.post(f"http://127.0.0.1:{second}/api/chat", json={
                "model": "llama3.1:8b", "messages": [{"role": "user", "content": "Hi"}], "stream": False}) as r:
            assert r.status == 200 and (await r.json())["done"] is True
        async with s.get(f"http://127.0.0.1:{proxy}/api/version") as r:
            assert r.status == 200
    serve.send_signal(signal.SIGTERM)
    out, err = serve.communicate(timeout=15)
    assert serve.returncode == 0, err
    assert f"and :{second} (Ollama's API)" in out and "Traceback" not in out + err
