"""docs/prometheus-alerts.yml: valid rules (promtool), each alert unit-tested, and only metrics that exist."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from router.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs/prometheus-alerts.yml"
TESTS = ROOT / "tests/unit/prometheus-alerts.test.yml"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",), "info": ("_info",)}


def exported() -> set[str]:
    """Every series name the router's registry can export (a Redis-sharing one included)."""
    m = Metrics()
    m.sharing(True)
    return {f.name + s for f in m.registry.collect() for s in SUFFIXES.get(f.type, ("",))}


def test_every_alert_names_only_metrics_the_router_exports():
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    names = exported()
    for rule in rules:
        expr = rule["expr"]
        used = set(re.findall(r"\b((?:llm_router|process)_[a-z0-9_]+)\b", expr))
        assert used, rule["alert"]
        assert used <= names, (rule["alert"], used - names)
        assert expr.count("(") == expr.count(")"), rule["alert"]
    wanted = {"LLMRouterModelGroupDown", "LLMRouterDeploymentCooldownLong", "LLMRouterHighErrorRatio", "LLMRouterSlowTTFT",
              "LLMRouterHighFallbackRate", "LLMRouterRedisSharingDown", "LLMRouterRestarted", "LLMRouterMemoryGrowth"}
    assert wanted <= {r["alert"] for r in rules}


def promtool() -> str:
    found = os.environ.get("LLM_ROUTER_PROMTOOL") or shutil.which("promtool")
    if not found:
        if os.environ.get("CI"):
            pytest.fail("promtool is needed under CI (scripts/test extracts it from Debian's prometheus package)")
        pytest.skip("no promtool (Debian's prometheus package; or set LLM_ROUTER_PROMTOOL)")
    return found


def test_promtool_accepts_the_rules_and_every_alert_fires_on_its_unit_test():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run([tool, "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120)
    assert unit.returncode == 0, unit.stdout + unit.stderr
    tested = set(re.findall(r"alertname: (\w+)", TESTS.read_text()))
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    assert alerts <= tested, alerts - tested
