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
    assert line.startswith("<6>[ROUTER] Model: llama3.1:8b -> Provider: ollama (exact match) ")


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
    # the two loggers run a moment apart: their timestamps (JSON keeps one under journald too) may differ
    strip = lambda text: re.sub(r'(^(?:<\d>)?|"timestamp":")[0-9T:.Z-]+', r"\1", text, flags=re.M)  # noqa: E731
    assert strip(out["lean"]) == strip(out["structlog"])
    assert len(out["lean"].splitlines()) == 2 and "filtered out" not in out["lean"]


def cooldown_line(fmt: str, monkeypatch, make=log.Lines) -> str:
    """The proxy's cooldown warning (proxy.py's state-transition line), as written."""
    monkeypatch.setattr(log.time, "time", lambda: 1767323045.25)  # 2026-01-02T03:04:05.250Z
    buf = io.StringIO()
    log.configure(fmt, "info", stream=buf)
    try:
        make("ROUTER").warning("Deployment llama2-13b-vllm (vllm): healthy -> cooldown", deployment="llama2-13b-vllm",
                               provider="vllm", reason="4 failures in 60 s (allowed_fails 3)", for_s=60.0)
    finally:
        log.configure()
    return buf.getvalue()


@pytest.mark.parametrize("make", [log.Lines, log.get], ids=["lean", "structlog"])
def test_under_journald_a_warning_starts_with_its_syslog_priority_which_journald_strips(make, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    assert cooldown_line("human", monkeypatch, make) == (
        '<4>WARNING [ROUTER] Deployment llama2-13b-vllm (vllm): healthy -> cooldown deployment=llama2-13b-vllm '
        'provider=vllm reason="4 failures in 60 s (allowed_fails 3)" for_s=60.0\n')
    assert cooldown_line("json", monkeypatch, make) == (
        '<4>{"tag":"ROUTER","deployment":"llama2-13b-vllm","provider":"vllm","reason":"4 failures in 60 s (allowed_fails 3)",'
        '"for_s":60.0,"event":"Deployment llama2-13b-vllm (vllm): healthy -> cooldown","level":"warning",'
        '"timestamp":"2026-01-02T03:04:05.250Z"}\n')


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_outside_journald_lines_carry_no_priority_prefix(fmt, monkeypatch):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    line = cooldown_line(fmt, monkeypatch)
    assert line.startswith("2026-01-02T" if fmt == "human" else "{")


@pytest.mark.parametrize("fmt", ["human", "json"])
@pytest.mark.parametrize("make", [log.Lines, log.get], ids=["lean", "structlog"])
def test_under_journald_each_level_gets_its_priority(fmt, make, monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    buf = io.StringIO()
    log.configure(fmt, "debug", stream=buf)
    try:
        logger = make("SERVER")
        logger.debug("d")
        logger.info("i")
        logger.warning("w")
        logger.error("e")
    finally:
        log.configure()
    lines = buf.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>"]
    if fmt == "human":
        assert lines == ["<7>DEBUG [SERVER] d", "<6>[SERVER] i", "<4>WARNING [SERVER] w", "<3>ERROR [SERVER] e"]
    else:
        assert [orjson.loads(line[3:])["level"] for line in lines] == ["debug", "info", "warning", "error"]


def test_under_journald_every_line_of_a_traceback_keeps_the_error_priority(monkeypatch):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    buf = io.StringIO()
    log.configure("human", "info", stream=buf)
    try:
        try:
            raise ValueError("boom")
        except ValueError:
            log.Lines("ROUTER").exception("Internal error", request_id="r1")
    finally:
        log.configure()
    lines = buf.getvalue().splitlines()
    assert lines[0] == "<3>ERROR [ROUTER] Internal error request_id=r1"
    assert lines[1] == "<3>Traceback (most recent call last):" and lines[-1] == "<3>ValueError: boom"
    assert all(line.startswith("<3>") for line in lines)


def test_asyncios_own_error_report_is_one_json_line_with_level_and_priority(monkeypatch):
    """The event loop's "Task exception was never retrieved" (its default exception
    handler logs to the ``asyncio`` logger): a JSON line, not bare text on stderr."""
    import asyncio
    import logging

    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    buf = io.StringIO()
    log.configure("json", "info", stream=buf)
    try:
        loop = asyncio.new_event_loop()
        try:
            loop.call_exception_handler({"message": "Task exception was never retrieved", "exception": ValueError("boom")})
        finally:
            loop.close()
        logging.getLogger("redis.connection").info("below the configured level? no: info is shown")
        logging.getLogger("redis.connection").debug("below the configured level")
    finally:
        log.configure()
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("<") for line in lines)
    assert lines[0][:3] == "<3>" and lines[1][:3] == "<6>"
    first, second = (orjson.loads(line[3:]) for line in lines)
    assert (first["tag"], first["logger"], first["level"]) == ("ASYNCIO", "asyncio", "error")
    assert first["event"].startswith("Task exception was never retrieved")
    assert "ValueError: boom" in first["exception"] and "timestamp" in first
    assert (second["tag"], second["logger"], second["level"]) == ("REDIS", "redis.connection", "info")


def test_an_aiohttp_warning_reads_like_our_lines_in_the_human_format(monkeypatch):
    import logging

    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    buf = io.StringIO()
    log.configure("human", "warning", stream=buf)
    try:
        logging.getLogger("aiohttp.server").warning("Error handling request from %s", "127.0.0.1")
        logging.getLogger("aiohttp.access").info("not shown at warning")
        logging.getLogger("router.simulate.backend").error("simulated backend failed")
    finally:
        log.configure()
    assert buf.getvalue() == ("<4>WARNING [AIOHTTP] Error handling request from 127.0.0.1 logger=aiohttp.server\n"
                              "<3>ERROR [SIMULATE] simulated backend failed logger=router.simulate.backend\n")


@pytest.mark.parametrize("fmt", ["human", "json"])
def test_router_logs_script_filters_both_formats(fmt, tmp_path, monkeypatch):
    import subprocess
    from pathlib import Path

    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    buf = io.StringIO()
    log.configure(fmt, "info", stream=buf)
    try:
        router = log.Lines("ROUTER")
        router.info("Model: a -> Provider: ollama (exact match)", request_id="r1", endpoint="chat", status=200)
        router.info("Model: b -> Provider: vllm (pattern match)", request_id="r2", endpoint="chat", status=200)
        router.warning("Fallback triggered: ollama -> vllm", request_id="r3", reason="UpstreamUnavailable")
        log.get("SERVER").info("listening on http://127.0.0.1:4000", request_id="r3")
    finally:
        log.configure()
    log_file = tmp_path / "router.log"
    log_file.write_text(buf.getvalue())
    script = str(Path(__file__).resolve().parents[2] / "scripts" / "router-logs")

    def run(*args: str) -> list[str]:
        done = subprocess.run(["bash", script, "--file", str(log_file), *args], capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    rid = (lambda line: orjson.loads(line)["request_id"]) if fmt == "json" else (lambda line: line.split("request_id=")[1].split()[0])
    assert [rid(line) for line in run()] == ["r1", "r2", "r3"]
    assert [rid(line) for line in run("--model", "a")] == ["r1"]
    assert [rid(line) for line in run("--provider", "vllm")] == ["r2", "r3"]
    assert [rid(line) for line in run("--request-id", "r3")] == ["r3"]
