"""Every module of the package imports on its own, in a fresh interpreter (as aiohttp's
suite checks): an import cycle that only works in one import order breaks the first
tool or test that imports the "wrong" module first."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules() -> list[str]:
    out = []
    for path in sorted((ROOT / "router").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        out.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return out


def test_every_module_imports_on_its_own():
    found = modules()
    assert "router.proxy" in found and "router.simulate.backend" in found and len(found) > 30

    def load(name: str) -> tuple[str, int, str]:
        r = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
        return name, r.returncode, r.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = [(name, err) for name, code, err in pool.map(load, found) if code != 0]
    assert not failed, failed
