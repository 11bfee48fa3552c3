"""Logging: one structlog configuration for the whole process.

Human format (default) prints ``[TAG] event key=value ...`` lines, made for
``journalctl | grep ROUTER``; under systemd (``JOURNAL_STREAM`` set) the
timestamp is left to journald. ``--log-format json`` prints one JSON object per
line. Every logger is bound to a tag: ``ROUTER`` for routing decisions,
``SERVER`` for lifecycle, ``CONFIG`` for configuration.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import orjson
import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if not isinstance(value, (int, float)) else str(value)
    if text == "" or any(c in text for c in " \"=\n"):
        return orjson.dumps(text).decode()
    return text


def _human(with_time: bool):
    def render(_: Any, __: str, event: dict[str, Any]) -> str:
        ts = event.pop("timestamp", None)
        level = event.pop("level", "info")
        tag = event.pop("tag", "ROUTER")
        msg = event.pop("event", "")
        exc = event.pop("exception", None)
        parts = [f"{ts} " if with_time and ts else "", f"[{tag}] ", msg]
        if level not in ("info",):
            parts.insert(1, f"{level.upper()} ")
        for key, value in event.items():
            if value is not None:
                parts.append(f" {key}={_quote(value)}")
        line = "".join(parts)
        return f"{line}\n{exc}" if exc else line

    return render


def _json(_: Any, __: str, event: dict[str, Any]) -> str:
    return orjson.dumps(event, default=str).decode()


def configure(fmt: str = "human", level: str = "info", stream: Any = None) -> None:
    """Configure structlog once, at start-up. ``fmt`` is ``human`` or ``json``."""
    under_journald = bool(os.environ.get("JOURNAL_STREAM"))
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if fmt == "json":
        processors += [structlog.processors.TimeStamper(fmt="iso", utc=True), structlog.processors.format_exc_info, _json]
    else:
        processors += [structlog.processors.TimeStamper(fmt="%Y-%m-%dT%H:%M:%S", utc=False),
                       structlog.processors.format_exc_info, _human(with_time=not under_journald)]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def get(tag: str = "ROUTER") -> Any:
    return structlog.get_logger().bind(tag=tag)
