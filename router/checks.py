"""Checked reads of configuration values, shared by both configuration files.

Each getter records an error (or warning) at the key's file and line in the
``Source`` and returns a default, so one load reports every problem at once.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote, urlsplit

from router.yamlsource import Path, Source

_MISSING = object()
_ENV_PREFIX = "os.environ/"
_NUMBER = re.compile(r"^\s*\d{1,30}(\.\d{1,30})?\s*$")


def get(src: Source, m: Mapping[str, Any], key: str, path: Path, kind: str, default: Any = None, required: bool = False) -> Any:
    """``m[key]`` checked against ``kind``; errors are recorded and ``default`` returned.

    LiteLLM's ``os.environ/NAME`` works for every key; an unset variable is an
    error, except for ``secret`` keys, where it only warns (no key is sent).
    Numbers written as strings (``"60"``, or from the environment) are accepted.
    """
    value = m.get(key, _MISSING)
    if isinstance(value, str) and value.startswith(_ENV_PREFIX):
        name = value[len(_ENV_PREFIX):]
        try:
            value = os.environ.get(name)
        except ValueError:  # a name the OS cannot hold (a lone surrogate): never set
            value = None
        if value is None:
            if kind == "secret":
                src.warn(path + (key,), f"environment variable {name} is not set; no value is used")
            else:
                src.error(path + (key,), f"environment variable {name} is not set")
            return default
    if value is _MISSING or value is None:
        if required:
            src.error(path + (key,), "is required")
        return default
    if kind in ("int", "num", "pos") and isinstance(value, str) and _NUMBER.match(value):
        value = float(value) if "." in value else int(value)
    if isinstance(value, str) and not _encodable(value):
        src.error(path + (key,), f"is not valid Unicode (a lone surrogate such as \"\\ud800\"): {value[:60]!r}")
        return default
    if kind == "secret" and isinstance(value, str) and _UNSENDABLE.search(value):
        # never shown: it is a secret. A trailing newline from a file is the usual cause.
        src.error(path + (key,), "contains a line break or control character, which cannot be sent in an HTTP header "
                                 "(a trailing newline from the file or variable it came from?)")
        return default
    ok, converted = _CONVERT[kind](value)
    if not ok:
        src.error(path + (key,), f"must be {_KIND_NAMES[kind]}, got {type(value).__name__} {_short(value)}")
        return default
    return converted


def _is_number(v: Any) -> bool:
    # Finite only: YAML's .inf (or a 400-digit integer) is no timeout or size anyone means.
    if isinstance(v, bool):
        return False
    return (isinstance(v, int) and abs(v) < 1e300) or (isinstance(v, float) and math.isfinite(v))


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 100 else text[:90] + "...(" + str(len(text)) + " chars)"


def _encodable(v: str) -> bool:
    try:
        v.encode()
    except UnicodeEncodeError:
        return False
    return True


_UNSENDABLE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # in a header value: line breaks, NUL and friends (tab is allowed)


_CONVERT: dict[str, Callable[[Any], tuple[bool, Any]]] = {
    "str": lambda v: (isinstance(v, str) and v != "", v),
    "secret": lambda v: (isinstance(v, str) and v != "", v),
    "int": lambda v: (isinstance(v, int) and not isinstance(v, bool) and v >= 0, v),
    "num": lambda v: (_is_number(v) and v >= 0, float(v) if _is_number(v) else v),
    "pos": lambda v: (_is_number(v) and v > 0, float(v) if _is_number(v) else v),
    "bool": lambda v: (isinstance(v, bool), v),
    "list": lambda v: (isinstance(v, list), v),
    "map": lambda v: (isinstance(v, dict), v),
    "strlist": lambda v: (isinstance(v, list) and all(isinstance(x, str) for x in v), tuple(v) if isinstance(v, list) else v),
}
_KIND_NAMES = {
    "str": "a non-empty string",
    "secret": "a non-empty string",
    "int": "a non-negative integer",
    "num": "a non-negative number",
    "pos": "a number greater than 0",
    "bool": "true or false",
    "list": "a list",
    "map": "a mapping",
    "strlist": "a list of strings",
}


def unknown_keys(src: Source, m: Mapping[str, Any], path: Path, known: set[str], ignored: set[str] = frozenset()) -> None:
    for key in m:
        if key in known:
            continue
        if key in ignored:
            src.warn(path + (key,), "LiteLLM setting not supported by llm-router; ignored")
        else:
            src.warn(path + (key,), "unknown key; ignored")


UNIX_PATH_MAX = 107  # bytes of a unix socket path (sun_path is 108 with its NUL, on Linux)


def check_url(src: Source, path: Path, url: str | None, wire: str | None = None) -> str | None:
    """Validate an api_base; return it without a trailing slash (``None`` if invalid).
    ``unix:///absolute/path.sock`` is a unix socket, for OpenAI-compatible servers
    (``wire`` "openai"; Ollama cannot listen on one)."""
    if url is None:
        return None
    if url.startswith("unix:"):
        return _check_unix(src, path, url, wire)
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # "http://[::1": invalid IPv6 URL
        src.error(path, f"must be an http(s) URL or unix:///path/to.sock, got {url!r} ({exc})")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        src.error(path, f"must be an http(s) URL or unix:///path/to.sock, got {url!r}")
        return None
    try:
        parts.port
    except ValueError:
        src.error(path, f"invalid port in {url!r}")
        return None
    if parts.username is not None or parts.password is not None:
        src.error(path, "must not carry credentials (user:password@); put the key in api_key")
        return None
    return url.rstrip("/")


def _check_unix(src: Source, path: Path, url: str, wire: str | None) -> str | None:
    sock = url[len("unix://"):].rstrip("/") if url.startswith("unix://") else None
    if sock is None or (sock and not sock.startswith("/")):
        src.error(path, f"a unix socket must be given by its absolute path, as unix:///run/llm/vllm.sock (three slashes), got {url!r}")
        return None
    if not sock:
        src.error(path, f"names no socket path: write unix:///run/llm/vllm.sock, got {url!r}")
        return None
    if "\0" in sock:
        src.error(path, "the socket path contains a NUL character")
        return None
    if any(c in sock for c in "?#") or not sock.isprintable() or sock != sock.strip():
        src.error(path, f"a socket path has no query, fragment, control characters or surrounding spaces: got {url!r}")
        return None
    if len(sock.encode()) > UNIX_PATH_MAX:
        src.error(path, f"the socket path is {len(sock.encode())} bytes long; unix sockets allow at most {UNIX_PATH_MAX}")
        return None
    if sock.endswith("/v1"):
        src.error(path, f"the whole path is the socket and requests go to /v1/... on it: write unix://{sock[:-3]}, not {url!r}")
        return None
    if wire == "ollama":
        src.error(path, "Ollama cannot listen on a unix socket; unix:// is for OpenAI-compatible servers "
                        "(vLLM --uds, llama-server --host /path.sock): give Ollama's http://host:port")
        return None
    return "unix://" + sock


def api_root(url: str, wire: str) -> str:
    """Where a wire format's paths hang off ``url``: for OpenAI-compatible servers a
    bare ``http://host:port`` gets ``/v1`` (what vLLM and llama.cpp serve), a URL
    with a path is used as given (the OpenAI SDK's rule); Ollama's is the root.
    ``unix:///path.sock`` becomes ``http+unix://%2Fpath.sock/v1`` (the socket
    percent-encoded in place of host:port, as requests-unixsocket writes it), so the
    request paths append to it as to any URL and ``router.h1`` connects to the socket."""
    if url.startswith("unix://"):
        return "http+unix://" + quote(url[len("unix://"):], safe="") + ("/v1" if wire == "openai" else "")
    if wire == "openai" and urlsplit(url).path.strip("/") == "":
        return url + "/v1"
    return url


def unix_socket(api_base: str) -> str | None:
    """The socket path of a unix api_base (either form), else None."""
    if api_base.startswith("unix://"):
        return api_base[len("unix://"):]
    if api_base.startswith("http+unix://"):
        return unquote(urlsplit(api_base).netloc)
    return None


def shown(api_base: str) -> str:
    """An api_base as people wrote it: ``unix:///run/llm/vllm.sock`` rather than its
    percent-encoded ``http+unix://`` form (for /health, explain, error messages, logs)."""
    sock = unix_socket(api_base) if api_base.startswith("http+unix://") else None
    return api_base if sock is None else "unix://" + sock


def http_url(url: str) -> str:
    """``url`` for an HTTP client connected to the socket itself (aiohttp's UnixConnector):
    ``http+unix://%2F…sock/v1/models`` → ``http://localhost/v1/models``; others unchanged."""
    if not url.startswith("http+unix://"):
        return url
    parts = urlsplit(url)
    return parts._replace(scheme="http", netloc="localhost").geturl()
