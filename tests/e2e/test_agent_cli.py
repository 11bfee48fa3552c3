"""Real agent CLIs through the router's front doors, one non-interactive prompt each, in
front of simulated backends: Claude Code (``claude -p``: Anthropic Messages at
``ANTHROPIC_BASE_URL``) and OpenAI's Codex CLI (``codex exec``: the Responses API of a
custom model provider).

They come from the npm registry, pinned, through ``scripts/agent-cli`` into a cache
outside the repository. Under CI the test session installs them (about 12 s on this
machine, 800 MB on disk); elsewhere a test runs only when ``scripts/agent-cli install``
has put its CLI there, and skips saying so otherwise. Without npm or node they skip
everywhere; under CI a failed install fails, since CI can reach the registry.

What each CLI sends was recorded against a logging fake server first (Claude Code
2.1.332, Codex 0.171.0):

* Claude Code: one ``POST /v1/messages?beta=true`` per turn, ``stream: true``, headers
  ``x-api-key`` (or ``Authorization: Bearer`` with ``ANTHROPIC_AUTH_TOKEN``),
  ``anthropic-version: 2023-06-01`` and a long ``anthropic-beta`` list; the body has
  ``system`` blocks with ``cache_control``, a ``role: "system"`` message inside
  ``messages``, ``tools`` (one with ``defer_loading``), ``thinking: {"type":
  "adaptive"}``, ``context_management``, ``output_config``, ``metadata.user_id`` and
  ``max_tokens`` 32000 for a model it does not know. With nonessential traffic
  disabled it calls nothing else (no ``count_tokens``, no side requests to a small
  model in ``-p``). A 5xx or 401 is retried ten times with backoff (minutes) unless
  ``CLAUDE_CODE_MAX_RETRIES=0``; a 404 is retried once without ``stream``; a 400 is
  retried without some betas and without deferred tools; a JSON answer to a stream
  request is retried without ``stream``.
* Codex: one ``POST {base_url}/responses`` per turn, ``stream: true``, ``store: false``
  (the whole history each time, no ``previous_response_id``), ``Authorization: Bearer``
  from the provider's ``env_key``; ``input`` of ``developer``/``user`` messages with
  ``id``s, ``function_call``/``function_call_output`` items after a tool round,
  ``tools`` with ``function``, ``namespace`` and ``web_search`` entries, ``reasoning``,
  ``include: ["reasoning.encrypted_content"]``, ``prompt_cache_key``,
  ``client_metadata``. ``OPENAI_BASE_URL`` is not honoured (it still dials OpenAI's
  WebSocket), hence the provider in ``config.toml``.

The simulator calls the first tool it is offered and, after the tool's result, answers
text that begins "I got the tool result:". So each test is a whole agent turn: the
CLI's request, the simulated model's tool call, the CLI handling it, the request with
its result, and the answer the CLI prints. The tools are narrowed so that no generated
call runs anything: Claude Code with ``--tools Read`` offers its ``DeferredToolPlaceholder``
first (``defer_loading: true``, which it refuses to run), Codex without its shell offers
``request_user_input`` first (unavailable in ``exec``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from router.simulate.core import WORDS

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "agent-cli"
CLI_TIMEOUT_S = 120
# Where each simulated server kind receives a turn: natively, or translated to its chat path.
GENERATION_PATHS = ("/v1/messages", "/v1/responses", "/v1/chat/completions", "/api/chat")
# (model name in the router's config, the simulated backend that serves it, the turns
# an agent takes: two where the simulated server calls tools; llama-cpp-python calls
# none without a function-calling chat_format, so its answer comes in one turn)
MODELS = [("llama2-13b-vllm", "vllm", 2), ("llama3.1:8b", "ollama", 2), ("llama-cpp-default", "llama_cpp_python", 1)]
AFTER_TOOL = "I got the tool result:"


def installed(name: str) -> Path:
    """The CLI's command, installed if need be (under CI), or skip saying why not."""
    if not (shutil.which("npm") and shutil.which("node")):
        pytest.skip(f"{name}: npm and node are needed to install the agent CLIs from the npm registry")
    found = subprocess.run(["bash", str(SCRIPT), "path", name], capture_output=True, text=True, timeout=60)
    if found.returncode == 0:
        return Path(found.stdout.strip())
    if not os.environ.get("CI"):
        pytest.skip(f"{name} is not installed: `scripts/agent-cli install {name}` puts it in the cache "
                    "(CI installs it itself)")
    done = subprocess.run(["bash", str(SCRIPT), "install", name], capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"scripts/agent-cli install {name} failed under CI:\n{done.stderr[-3000:]}")
    return Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def claude() -> Path:
    return installed("claude")


@pytest.fixture(scope="session")
def codex() -> Path:
    return installed("codex")


async def run_cli(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Run a CLI to its end (bounded by CLI_TIMEOUT_S) without blocking the loop the
    router serves it on; its stdin is closed, as in CI."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), CLI_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"{argv[0]} did not finish in {CLI_TIMEOUT_S} s; stderr:\n{err.decode()[-3000:]}") from None
    return await proc.wait(), out.decode(), err.decode()


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal environment: none of the developer's API keys, config or proxies leak in."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8", **extra}


def generations(stack, backend: str) -> int:
    stats = stack.backends[backend].stats
    return sum(stats.requests.get(p, 0) for p in GENERATION_PATHS)


def router_lines(stack, model: str, endpoint: str) -> list[str]:
    return [l for l in stack.log_lines() if f"[ROUTER] Model: {model} -> Provider: " in l and f"endpoint={endpoint}" in l]


def is_simulated_answer(text: str, turns: int) -> bool:
    """The simulator's words: after a tool round, its sentence quoting the result first."""
    if turns == 2:
        if not text.startswith(AFTER_TOOL):
            return False
        text = " ".join(text[len(AFTER_TOOL):].split()[6:])  # the quoted result's first six words
    return bool(text.split()) and set(text.split()) <= set(WORDS)


@pytest.mark.parametrize("model, backend, turns", MODELS)
async def test_claude_code_answers_through_the_router(claude, stack, tmp_path, model, backend, turns):
    work = tmp_path / "work"
    work.mkdir()
    (tmp_path / "home").mkdir()
    env = clean_env(tmp_path / "home", ANTHROPIC_BASE_URL=stack.url, ANTHROPIC_API_KEY="sk-ant-client-key",
                    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",  # no telemetry, update check or HEAD probe
                    CLAUDE_CODE_MAX_RETRIES="0")  # a refused request fails now, not after ten backoffs
    rc, out, err = await run_cli([str(claude), "-p", "What does notes.txt say?", "--model", model,
                                  "--output-format", "json", "--tools", "Read"], env, work)

    assert rc == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    result = orjson.loads(out)
    assert result["is_error"] is False and result["subtype"] == "success"
    assert is_simulated_answer(result["result"], turns), result["result"]
    assert result["num_turns"] == turns
    lines = router_lines(stack, model, "messages")
    assert len(lines) == turns and all("status=200" in l for l in lines), stack.log.getvalue()[-3000:]
    assert generations(stack, backend) == turns
    assert "sk-ant-client-key" not in stack.log.getvalue()


def codex_config(url: str) -> str:
    """A custom provider at the router (Codex's own ``openai`` provider ignores
    ``OPENAI_BASE_URL`` and dials a WebSocket); retries off, so a refusal shows at once."""
    return (f'model_provider = "router"\n'
            f'web_search = "disabled"\n'
            f'[model_providers.router]\n'
            f'name = "llm-router"\n'
            f'base_url = "{url}/v1"\n'
            f'wire_api = "responses"\n'
            f'env_key = "LLM_ROUTER_TEST_KEY"\n'
            f'request_max_retries = 0\n'
            f'stream_max_retries = 0\n')


@pytest.mark.parametrize("model, backend, turns", MODELS)
async def test_codex_answers_through_the_router(codex, stack, tmp_path, model, backend, turns):
    work, home, codex_home = tmp_path / "work", tmp_path / "home", tmp_path / "codex"
    for d in (work, home, codex_home):
        d.mkdir()
    (codex_home / "config.toml").write_text(codex_config(stack.url))
    env = clean_env(home, CODEX_HOME=str(codex_home), LLM_ROUTER_TEST_KEY="sk-codex-client-key")
    # Without the shell (and the goal and sub-agent tools) the first tool offered is
    # request_user_input, which exec answers with an error: the simulated call runs nothing.
    rc, out, err = await run_cli([str(codex), "exec", "--skip-git-repo-check", "--ephemeral", "-m", model,
                                  "--disable", "shell_tool", "--disable", "goals", "--disable", "multi_agent",
                                  "What does notes.txt say?"], env, work)

    assert rc == 0, f"stdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}"
    assert is_simulated_answer(out.strip(), turns), out
    lines = router_lines(stack, model, "responses")
    assert len(lines) == turns and all("status=200" in l for l in lines), stack.log.getvalue()[-3000:]
    assert generations(stack, backend) == turns
    assert "sk-codex-client-key" not in stack.log.getvalue()
