"""Packaging hygiene: what setup.cfg declares matches what the code and tests use."""

from __future__ import annotations

import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from router.server import GuardedServer, Runner
from router.upstream import EventStream

ROOT = Path(__file__).resolve().parents[2]
CFG = configparser.ConfigParser()
CFG.read(ROOT / "setup.cfg")
# Imported only by tests that need a separate environment (tests/realbackend: .venv-llamacpp).
OWN_ENVIRONMENT = {"llama_cpp"}


def _requirements(text: str) -> dict[str, str]:
    out = {}
    for line in text.strip().splitlines():
        m = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", line)
        if m:
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


INSTALL = _requirements(CFG["options"]["install_requires"])
TEST = _requirements(CFG["options.extras_require"]["test"])


def test_license_file_matches_the_declared_license():
    assert CFG["metadata"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 llm-router contributors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text


def test_redis_floor_has_aclose():
    # router/cache.py and router/shared.py call ``aclose()``, added in redis 5.0.1.
    assert re.search(r">=\s*5\.0\.1\b|>=\s*5\.0\.[2-9]|>=\s*5\.[1-9]|>=\s*[6-9]", INSTALL["redis"]), INSTALL["redis"]


def _third_party_imports(folder: Path) -> dict[str, Path]:
    stdlib = sys.stdlib_module_names
    found: dict[str, Path] = {}
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in stdlib and top not in {"router", "tests", "conftest"} and not (ROOT / "tests" / top).exists() \
                        and not any((p / f"{top}.py").exists() for p in (ROOT / "tests").rglob("*") if p.is_dir()):
                    found.setdefault(top, path)
    return found


@pytest.mark.parametrize("folder, declared", [("router", INSTALL), ("tests", {**INSTALL, **TEST})])
def test_every_import_is_declared(folder, declared):
    dists = packages_distributions()
    missing = []
    for module, path in sorted(_third_party_imports(ROOT / folder).items()):
        if module in OWN_ENVIRONMENT:
            continue
        names = {d.lower().replace("_", "-") for d in dists.get(module, [module])}
        if not names & set(declared):
            missing.append(f"{module} (imported by {path.relative_to(ROOT)})")
    assert not missing, f"not declared in setup.cfg: {missing}"


def test_aiohttp_range_is_the_tested_one():
    # The private hooks below are only known to work with the aiohttp this range allows;
    # widening it needs this module to pass against the new versions first.
    assert re.fullmatch(r">=3\.14,<3\.15", INSTALL["aiohttp"].replace(" ", "")), INSTALL["aiohttp"]


async def test_private_aiohttp_hooks_exist_and_behave():
    """router/server.py and router/upstream.py lean on aiohttp internals: ``AppRunner._make_server``,
    ``Server._loop`` / ``_kwargs``, ``RequestHandler._manager`` and ``StreamResponse._send_headers_immediately``."""
    assert web.StreamResponse._send_headers_immediately is True  # type: ignore[attr-defined]
    assert web.Response._send_headers_immediately is False  # type: ignore[attr-defined]
    assert EventStream._send_headers_immediately is False  # type: ignore[attr-defined]
    from router.config import Limits

    app = web.Application()
    runner = Runner(app, Limits())
    await runner.setup()
    try:
        server = runner.server
        assert isinstance(server, GuardedServer)
        assert server._loop is not None and isinstance(server._kwargs, dict)  # type: ignore[attr-defined]
        handler = server()
        assert isinstance(handler, RequestHandler) and handler._manager is server  # type: ignore[attr-defined]
    finally:
        await runner.cleanup()
