"""The tiny random-weight GGUF model from scripts/make_tiny_gguf.py: deterministic, and
llama-cpp-python loads it and generates readable words with it (in the .venv-llamacpp venv)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.realbackend

ROOT = Path(__file__).resolve().parents[2]
MAKE_TINY_GGUF = ROOT / "scripts" / "make_tiny_gguf.py"

# Runs in the llamacpp venv: load the model, generate, print the results as ASCII-only JSON.
GENERATE = r"""
import json, sys
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=256, seed=1234, verbose=False)
completion = llm.create_completion("the router sends a request to", max_tokens=16)
chat = llm.create_chat_completion(messages=[{"role": "user", "content": "hello, which model are you?"}],
                                  max_tokens=16)
print(json.dumps({"completion": completion, "chat": chat}))
"""

# One generated token is one word (" router") or one punctuation mark, never a byte or letter.
PIECE = re.compile(r" [a-z]+|[.,]")


def make_model(python: Path, path: Path, *args: str) -> bytes:
    subprocess.run([str(python), str(MAKE_TINY_GGUF), str(path), *args], check=True, timeout=60, capture_output=True)
    return path.read_bytes()


def generate(python: Path, model: Path) -> dict:
    proc = subprocess.run([str(python), "-c", GENERATE, str(model)], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return json.loads(proc.stdout)


def assert_words(text: str, n_tokens: int) -> None:
    assert text.strip(), "empty generation"
    text.encode("utf-8")  # a lone surrogate from a broken byte sequence would raise here
    assert "\ufffd" not in text
    assert PIECE.sub("", text) == "", f"not made of words: {text!r}"
    assert len(PIECE.findall(text)) == n_tokens, f"{n_tokens} tokens but {text!r}"


# llamacpp_python (skips when .venv-llamacpp is missing) and tiny_model come from conftest.py.
def test_same_seed_gives_identical_bytes(llamacpp_python: Path, tmp_path: Path) -> None:
    a = make_model(llamacpp_python, tmp_path / "a.gguf", "--seed", "7")
    b = make_model(llamacpp_python, tmp_path / "b.gguf", "--seed", "7")
    c = make_model(llamacpp_python, tmp_path / "c.gguf", "--seed", "8")
    assert a[:4] == b"GGUF"
    assert a == b
    assert a != c
    assert len(a) < 1_000_000


def test_llama_cpp_generates_words(llamacpp_python: Path, tiny_model: Path) -> None:
    out = generate(llamacpp_python, tiny_model)

    completion = out["completion"]["choices"][0]
    assert completion["finish_reason"] == "length"
    assert out["completion"]["usage"]["completion_tokens"] == 16
    assert_words(completion["text"], 16)

    chat = out["chat"]["choices"][0]
    assert chat["message"]["role"] == "assistant"
    assert chat["finish_reason"] == "length"
    assert_words(chat["message"]["content"], out["chat"]["usage"]["completion_tokens"])


def test_eos_bias_stops_generation_at_once(llamacpp_python: Path, tmp_path: Path) -> None:
    model = tmp_path / "stopper.gguf"
    make_model(llamacpp_python, model, "--eos-bias", "60")
    out = generate(llamacpp_python, model)
    for result in (out["completion"], out["chat"]):
        assert result["choices"][0]["finish_reason"] == "stop"
        assert result["usage"]["completion_tokens"] <= 1
