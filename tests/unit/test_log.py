"""Log formats: human [TAG] lines for journalctl | grep ROUTER, or one JSON object per line."""

from __future__ import annotations

import io
import re

import orjson
import pytest

from router import log


def emit(fmt: str, **env) -> str:
    buf = io.StringIO()
    log.configure(fmt, "info", stream=buf)
    try:
        log.get("ROUTER").info("Model: llama3.1:8b -> Provider: ollama (exact match)", request_id="r1", latency_ms=1.5,
                               detail="two words")
        log.get("ROUTER").debug("not shown at info")
    finally:
        log.configure()
    return buf.getvalue()


def test_human_lines_start_with_a_timestamp_then_the_tag_and_quote_values_with_spaces(monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    line, = emit("human").splitlines()
    stamp, rest = line.split(" ", 1)
    assert stamp[:4].isdigit() and "T" in stamp
    assert rest == '[ROUTER] Model: llama3.1:8b -> Provider: ollama (exact match) request_id=r1 latency_ms=1.5 detail="two words"'


def test_under_journald_the_timestamp_is_left_to_journald(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    line, = emit("human").splitlines()
    assert line.startswith("[ROUTER] Model: llama3.1:8b -> Provider: ollama (exact match) ")


def test_json_format_is_one_object_per_line():
    line, = emit("json").splitlines()
    data = orjson.loads(line)
    assert data["event"] == "Model: llama3.1:8b -> Provider: ollama (exact match)"
    assert (data["tag"], data["request_id"], data["level"], data["latency_ms"]) == ("ROUTER", "r1", "info", 1.5)
    assert "timestamp" in data


@pytest.mark.parametrize("fmt", ["human", "json"])
@pytest.mark.parametrize("journald", [False, True])
def test_the_request_paths_lean_logger_writes_the_same_lines_as_structlog(fmt, journald, monkeypatch):
    if journald:
        monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    else:
        monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    fields = dict(request_id="r1", endpoint="chat", status=200, latency_ms=1.5, detail='say "hi" = x', empty="", none=None,
                  flag=True, ratio=0.25)
    out = {}
    for name, make in (("structlog", log.get), ("lean", log.Lines)):
        buf = io.StringIO()
        log.configure(fmt, "warning", stream=buf)
        try:
            logger = make("ROUTER")
            logger.info("filtered out at warning")
            logger.warning("Model: m -> Provider: p (exact match)", **fields)
            logger.error("Rejected request for model m", error="BadRequest")
        finally:
            log.configure()
        out[name] = buf.getvalue()
    strip = (lambda text: text) if journald else (lambda text: re.sub(r'(^|"timestamp":")[0-9T:.Z-]+', r"\1", text, flags=re.M))
    assert strip(out["lean"]) == strip(out["structlog"])
    assert len(out["lean"].splitlines()) == 2 and "filtered out" not in out["lean"]
