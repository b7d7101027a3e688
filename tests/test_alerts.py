"""``deploy/prometheus/alerts.yml``: valid for Prometheus (``promtool check rules``), its
unit tests pass (``promtool test rules``), and every metric it names is one ``serve``
exports (so a renamed metric cannot silently disarm an alert)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from synthhost.gateway.keys import create_key
from tests.gateway_server import serving

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        message = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("CI"):
            pytest.fail(message + " - CI requires it", pytrace=False)
        pytest.skip(message)
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([_promtool(), "check", "rules", str(RULES / "alerts.yml")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 11 rules found" in result.stdout


def test_promtool_unit_tests_fire_every_alert() -> None:
    result = subprocess.run([_promtool(), "test", "rules", "alerts_test.yml"], cwd=RULES, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES / "alerts_test.yml").read_text()))
    rules = {r["alert"] for g in yaml.safe_load((RULES / "alerts.yml").read_text())["groups"] for r in g["rules"]}
    assert tested == rules


def test_every_metric_in_the_rules_is_exported(make_host: Any) -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())
    exprs = " ".join(r["expr"] for g in rules["groups"] for r in g["rules"])
    named = set(re.findall(r"\b(synthhost_[a-z_]+)", exprs))
    host = make_host()
    with serving(host) as url:
        key, _ = create_key(host.engine, "a")
        httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                   json={"model": "echo/m", "messages": [{"role": "user", "content": "x"}]}).raise_for_status()
        text = httpx.get(url + "/metrics").text
    declared = set(re.findall(r"^# TYPE (\S+) (\S+)", text, re.M))
    exported: set[str] = set()
    for name, kind in declared:
        exported.add(name)
        if kind == "counter":
            exported.add(name + "_total")
        if kind == "histogram":
            exported.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
    assert named and named <= exported, sorted(named - exported)
