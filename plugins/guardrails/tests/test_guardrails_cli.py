"""``synthhost guardrails ...``: apply, show, rm, test; bad input exits 2 on one line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from synthhost.cli import Group
from synthhost_guardrails.cli import guardrails

root = Group("synthhost")
root.add_command(guardrails)

SET = """\
description: support bot
input:
  - {validator: no_secrets, on_fail: fix}
  - {validator: no_pii, on_fail: exception, roles: [user]}
output:
  - {validator: ban_list, on_fail: fix, args: {words: [hate]}}
"""

KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7"


def invoke(*args: str | Path, stdin: str | None = None) -> Result:
    return CliRunner().invoke(root, ["guardrails", *[str(a) for a in args]], input=stdin, catch_exceptions=False)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("Error: ") : -1]


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> Path:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SYNTHHOST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "tester")
    monkeypatch.delenv("SYNTHHOST_WORKSPACE", raising=False)
    path = tmp_path / "guards.yaml"
    path.write_text(SET)
    return path


def test_apply_show_rm(env: Path, tmp_path: Path) -> None:
    shown = invoke("show", "-w", "w1")
    assert shown.exit_code == 0
    assert shown.stdout.startswith("# workspace 'w1': no guard set stored, the built-in default applies\n")
    assert "validator: no_secrets" in shown.stdout

    result = invoke("apply", env, "-w", "w1")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "guard set v1 applied (workspace 'w1'): input: no_secrets->fix, no_pii->exception; output: ban_list->fix\n"
    )
    assert invoke("apply", env, "-w", "w1").stdout == "guard set v1 unchanged (workspace 'w1')\n"

    shown = invoke("show", "-w", "w1")
    assert shown.stdout.startswith("# workspace w1 v1, ")
    assert "by tester" in shown.stdout and "description: support bot" in shown.stdout
    data = json.loads(invoke("show", "-w", "w1", "--json").stdout)
    assert (data["source"], data["version"], data["document"]["output"][0]["args"]) == ("own", 1, {"words": ["hate"]})

    glob = tmp_path / "global.yaml"
    glob.write_text("output: [{validator: non_empty}]\n")
    assert invoke("apply", glob, "--global").stdout.startswith("guard set v1 applied (global): ")
    assert json.loads(invoke("show", "-w", "w2", "--json").stdout)["source"] == "global"
    assert "(inherited)" in invoke("show", "-w", "w2").stdout

    assert invoke("rm", "-w", "w1", "--actor", "ops").stdout == (
        "guard set removed (v2); workspace 'w1' now uses the fallback\n"
    )
    assert json.loads(invoke("show", "-w", "w1", "--json").stdout)["source"] == "global"
    assert "# removed" in invoke("show", "-w", "w1", "--version", "2").stdout
    history = json.loads(invoke("show", "-w", "w1", "--history", "--json").stdout)
    assert [(h["version"], h["created_by"], h["removed"]) for h in history] == [(1, "tester", False), (2, "ops", True)]
    assert "v2" in invoke("show", "-w", "w1", "--history").stdout


def test_errors_exit_2_on_one_line(env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "bad.yaml"

    bad.write_text("input: [{validator: no_such_thing}]\n")
    assert one_line_error(invoke("apply", bad, "-w", "w1")).startswith(
        f"{bad}: input[0].validator: unknown validator 'no_such_thing'"
    )
    bad.write_text("output: [{validator: max_length, args: {max: lots}}]\n")
    assert one_line_error(invoke("apply", bad)).startswith(f"{bad}: output[0] (max_length): args.max: ")
    bad.write_text("output: [{validator: non_empty, on_fail: fix}]\n")
    assert "non_empty cannot fix a text" in one_line_error(invoke("apply", bad))
    bad.write_text("input: [\n")
    assert one_line_error(invoke("apply", bad)).startswith(f"{bad}: line 2: ")
    assert (
        one_line_error(invoke("apply", tmp_path / "missing.yaml"))
        == f"{tmp_path / 'missing.yaml'}: no such file"
    )
    assert one_line_error(invoke("apply", env, "-w", "w1", "--global")) == "--global and --workspace are exclusive"
    assert one_line_error(invoke("show", "-w", "w1", "--version", "7")) == "no guard set version 7 in workspace 'w1'"
    assert one_line_error(invoke("rm", "-w", "nobody")) == "no guard set in workspace 'nobody'"

    monkeypatch.setitem(sys.modules, "guardrails", None)  # Guardrails AI not installed
    bad.write_text("output: [{validator: 'hub:toxic_language', args: {threshold: 0.5}}]\n")
    assert one_line_error(invoke("apply", bad)) == (
        f"{bad}: output[0] (hub:toxic_language): needs Guardrails AI, which is not installed: "
        "pip install 'synthhost-guardrails[guardrails-ai]'"
    )
    bad.write_text("output: [{validator: 'hub:Bad Name!'}]\n")
    assert "invalid validator name" in one_line_error(invoke("test", bad, "--text", "x"))


def test_test_command(env: Path) -> None:
    result = invoke("test", env, "--text", f"use {KEY}, I hate it")
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "input: allow\n"
        "  no_secrets -> fix: 1 found (api_key)\n"
        "  text: use [API_KEY], I hate it\n"
        "output: allow\n"
        "  ban_list -> fix: 1 found (banned)\n"
        "  text: use sk-proj-aB3dE5fG7hJ9kL1mN3pQ5rS7, I [BANNED] it\n"
    )
    denied = json.loads(
        invoke("test", env, "--on", "input", "--json", "--text", "-", stdin="mail a@example.com").stdout
    )
    assert denied["input"]["decision"] == "deny"
    assert denied["input"]["message"] == "guardrail no_pii failed on input (message 0): email"
    assert list(denied) == ["input"]
    clean = invoke("test", env, "--on", "output", "--text", "all good")
    assert clean.stdout == "output: allow\n"
