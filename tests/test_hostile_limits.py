"""Unbounded work from a small input is refused, fast, with a one-line error naming the
file and field: alias bombs, deep nesting, huge or endless files, runaway templates,
infinite retry delays."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from synthhost import agent
from synthhost.agent import TemplateRenderError, load_agent, parse_agent, render_step
from synthhost.errors import UsageError

BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(12))


def agent_text(prompt: str, **extra: str) -> str:
    lines = ["name: t", "model: echo/m"] + [f"{k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + f"\nsteps:\n  - name: s\n    prompt: {prompt!r}\n"


def test_an_alias_bomb_is_refused_before_it_is_built() -> None:
    with pytest.raises(UsageError, match=r"bomb\.yaml:\d+: YAML syntax error: more than 100 aliases"):
        parse_agent(BOMB + agent_text("x"), "bomb.yaml")


def test_deep_nesting_is_refused() -> None:
    deep = "x: " + "[" * 500 + "]" * 500 + "\n"
    with pytest.raises(UsageError, match=r"deep\.yaml:1: YAML syntax error: nested deeper than 64 levels"):
        parse_agent(deep, "deep.yaml")


def test_a_huge_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text(agent_text("x") + "# " + "x" * (agent.MAX_FILE_BYTES + 10) + "\n")
    with pytest.raises(UsageError, match=r"big\.yaml: larger than 1024 KiB"):
        load_agent(big)


def test_dev_zero_and_pipes_are_not_agent_files() -> None:
    with pytest.raises(UsageError, match="/dev/zero: not a regular file"):
        load_agent("/dev/zero")


def test_synthhost_run_dev_zero_exits_2_at_once() -> None:
    done = subprocess.run([sys.executable, "-m", "synthhost", "run", "/dev/zero"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SYNTHHOST_LOAD_PLUGINS": ""})
    assert done.returncode == 2 and "not a regular file" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("template", [
    "{{ 'a' * 10000000000 }}",
    "{{ ['a'] * 10000000000 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{% for i in range(10000) %}{% for j in range(10000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "{{ 10 ** 100000000 }}",
])
def test_runaway_templates_stop_with_a_template_error(template: str) -> None:
    spec = parse_agent(agent_text(template), "t.yaml")
    with pytest.raises(TemplateRenderError) as info:
        render_step(spec.steps[0], {})
    assert info.value.code == "TEMPLATE_ERROR" and "TemplateBudgetExceeded" in str(info.value)


@pytest.mark.parametrize("field", ["initial_delay_s", "max_delay_s"])
@pytest.mark.parametrize("value", [".inf", ".nan", "100000"])
def test_retry_delays_are_bounded(field: str, value: str) -> None:
    other = "max_delay_s: 3600" if field == "initial_delay_s" else "initial_delay_s: 0"
    text = agent_text("x", retry=f"{{{field}: {value}, {other}}}")
    with pytest.raises(UsageError) as info:
        parse_agent(text, "r.yaml")
    assert f"retry.{field}" in str(info.value) and "\n" not in str(info.value)


def test_a_normal_agent_is_unaffected(tmp_path: Any) -> None:
    spec = parse_agent(agent_text("{% for i in range(3) %}{{ i }}{% endfor %} {{ 'ab' * 3 }}"), "ok.yaml")
    assert render_step(spec.steps[0], {}) == (None, "012 ababab")


@pytest.mark.parametrize("loader", ["policy", "guardrails", "routing", "models"])
def test_every_user_yaml_refuses_alias_bombs(loader: str, tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMB)
    with pytest.raises(Exception) as info:
        if loader == "policy":
            from synthhost_policy.document import load_policy_file

            load_policy_file(path)
        elif loader == "guardrails":
            from synthhost_guardrails.guardset import load_file

            load_file(path)
        elif loader == "routing":
            from synthhost.limits import safe_load

            safe_load(path.read_text())
        else:
            from synthhost.models import ModelList

            ModelList.load(path)
    assert "more than 100 aliases" in str(info.value)


@pytest.mark.parametrize("device", ["/dev/zero", "/dev/full"])
def test_user_files_that_are_devices_are_refused(device: str) -> None:
    from synthhost.limits import read_text_file

    with pytest.raises(UsageError, match="not a regular file"):
        read_text_file(device)
