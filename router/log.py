"""Logging: one structlog configuration for the whole process.

Human format (default) prints ``[TAG] event key=value ...`` lines, made for
``journalctl | grep ROUTER``. ``--log-format json`` prints one JSON object per
line. Every logger is bound to a tag: ``ROUTER`` for routing decisions,
``SERVER`` for lifecycle, ``CONFIG`` for configuration.

Under systemd (``JOURNAL_STREAM`` set) every line starts with its syslog
priority, ``<4>`` for a warning: journald takes it as the entry's priority
(``SyslogLevelPrefix=``, on by default) and strips it, so ``journalctl -p warning``
works; the human format also leaves the timestamp to journald.

Records of the standard library's ``logging`` (asyncio, aiohttp, redis) go through
the same renderer, writer and level, tagged with their top-level logger name
(``[ASYNCIO]``, ``[AIOHTTP]``; ``router.simulate.x`` -> ``[SIMULATE]``) and with the
full name as ``logger=``.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import sys
import time
from typing import Any

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
# syslog priorities, as journald reads them from the start of a line (sd-daemon.h's SD_WARNING, ...)
PRIORITY = {"debug": "<7>", "info": "<6>", "warning": "<4>", "error": "<3>", "critical": "<2>"}


def _quote(value: Any) -> str:
    t = type(value)
    text = value if t is str else str(value) if t is int or t is float or t is bool else repr(value)
    if not text or " " in text or '"' in text or "=" in text or "\n" in text:
        return orjson.dumps(text).decode()
    return text


def _human(with_time: bool, journald: bool):
    def render(_: Any, __: str, event: dict[str, Any]) -> str:
        ts = event.pop("timestamp", None)
        level = event.pop("level", "info")
        tag = event.pop("tag", "ROUTER")
        msg = event.pop("event", "")
        exc = event.pop("exception", None)
        prefix = PRIORITY.get(level, "<6>") if journald else ""
        parts = [prefix, f"{ts} " if with_time and ts else "", f"[{tag}] ", msg]
        if level != "info":
            parts.insert(2, f"{level.upper()} ")
        for key, value in event.items():
            if value is not None:
                parts.append(f" {key}={_quote(value)}")
        line = "".join(parts)
        if not exc:
            return line
        if prefix:  # journald reads each line on its own: the traceback keeps the priority
            exc = "\n".join(prefix + part for part in exc.split("\n"))
        return f"{line}\n{exc}"

    return render


def _json(journald: bool):
    def render(_: Any, __: str, event: dict[str, Any]) -> str:
        text = orjson.dumps(event, default=str).decode()
        return PRIORITY.get(event.get("level", "info"), "<6>") + text if journald else text

    return render


class _Stamper:
    """Timestamps at one formatting per second, not one per line (the hot path logs a
    line per request); JSON adds milliseconds."""

    def __init__(self, utc: bool, millis: bool) -> None:
        self.utc, self.millis = utc, millis
        self.second, self.text = -1, ""

    def __call__(self, _: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
        now = time.time()
        second = int(now)
        if second != self.second:
            self.second = second
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second) if self.utc else time.localtime(second))
        event["timestamp"] = f"{self.text}.{int((now - second) * 1000):03d}Z" if self.millis else self.text
        return event


_writer: LineWriter | None = None  # the configured one, flushed at exit


@atexit.register
def _flush_at_exit() -> None:
    if _writer is not None:
        _writer.flush()


class LineWriter:
    """structlog's output: lines to ``file``, flushed once per event-loop iteration
    rather than once per line (the request path logs a line per request; one write
    per loop turn instead of one per line), immediately when no loop runs."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.pending = False

    def msg(self, message: str) -> None:
        self.file.write(message + "\n")
        if self.pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self.pending = True
        loop.call_soon(self.flush)

    def flush(self) -> None:
        self.pending = False
        try:
            self.file.flush()
        except (OSError, ValueError):  # closed, or a broken pipe: nothing to do about it here
            pass

    log = debug = info = warn = warning = err = error = critical = exception = failure = fatal = msg


class _Output:
    """What ``configure`` set up, for ``Lines``: the threshold, the stamp, the renderer, the writer."""

    __slots__ = ("level", "stamper", "render", "writer")

    def __init__(self, level: int, stamper: _Stamper | None, render: Any, writer: LineWriter) -> None:
        self.level, self.stamper, self.render, self.writer = level, stamper, render, writer


_output: _Output | None = None


class Lines:
    """A logger for the request path: the same lines as ``get(tag)``'s, written without
    structlog's processor chain (profiled at about a tenth of the proxy's CPU per
    request). ``debug``/``info``/``warning``/``error`` only; anything else (and any call before
    ``configure``) goes through structlog.
    """

    __slots__ = ("tag", "slow")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.slow = get(tag)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(logging.ERROR, "error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self.slow.exception(event, **fields)

    def _emit(self, level: int, name: str, event: str, fields: dict[str, Any]) -> None:
        out = _output
        if out is None:
            getattr(self.slow, name)(event, **fields)
            return
        if level < out.level:
            return
        # the event dict as structlog builds it: bound context, call fields, event, level
        ev = {"tag": self.tag, **fields, "event": event, "level": name}
        if out.stamper is not None:
            out.stamper(None, name, ev)
        out.writer.msg(out.render(None, name, ev))


_STDLIB_LEVELS = ((logging.CRITICAL, "critical"), (logging.ERROR, "error"), (logging.WARNING, "warning"),
                  (logging.INFO, "info"))


class _StdlibBridge(logging.Handler):
    """The root logger's handler: a standard-library record (asyncio's "Task exception
    was never retrieved", aiohttp's, redis') becomes a line like ours, in the configured
    format, instead of going to Python's last-resort handler as bare text on stderr."""

    exceptions = logging.Formatter()  # for formatException only

    def emit(self, record: logging.LogRecord) -> None:
        out = _output
        if out is None:
            return
        try:
            name = next((n for lvl, n in _STDLIB_LEVELS if record.levelno >= lvl), "debug")
            top, _, rest = record.name.partition(".")
            tag = (rest.partition(".")[0] if top == "router" and rest else top).upper()
            ev: dict[str, Any] = {"tag": tag, "logger": record.name, "event": record.getMessage(), "level": name}
            if record.exc_info:
                ev["exception"] = self.exceptions.formatException(record.exc_info)
            elif record.stack_info:
                ev["exception"] = record.stack_info
            if out.stamper is not None:
                out.stamper(None, name, ev)
            out.writer.msg(out.render(None, name, ev))
        except Exception:  # noqa: BLE001 - logging must not raise; the handler reports it itself
            self.handleError(record)


_bridge = _StdlibBridge()


def configure(fmt: str = "human", level: str = "info", stream: Any = None) -> None:
    """Configure structlog once, at start-up. ``fmt`` is ``human`` or ``json``."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    global _writer, _output
    writer = _writer = LineWriter(stream or sys.stdout)
    processors: list[Any] = [structlog.processors.add_log_level]
    stamper: _Stamper | None = None
    if fmt == "json":
        stamper, render = _Stamper(utc=True, millis=True), _json(under_journald)
    else:
        if not under_journald:  # journald stamps every line itself
            stamper = _Stamper(utc=False, millis=False)
        render = _human(with_time=not under_journald, journald=under_journald)
    processors += [stamper] if stamper else []
    processors += [structlog.processors.format_exc_info, render]
    _output = _Output(LEVELS.get(level, logging.INFO), stamper, render, writer)
    root = logging.getLogger()
    root.setLevel(_output.level)
    if _bridge not in root.handlers:
        root.addHandler(_bridge)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=lambda *_: writer,
        cache_logger_on_first_use=False,
    )


def get(tag: str = "ROUTER") -> Any:
    return structlog.get_logger().bind(tag=tag)
