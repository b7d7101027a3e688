"""``synthhost policy ...``: apply, list, show, history, rm, test; errors exit 2 on one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from synthhost.cli import Group
from synthhost_policy.cli import policy

root = Group("synthhost")
root.add_command(policy)

SET = """\
name: limits
priority: 10
rules:
  - name: free-premium
    when: request.metadata.tier == "free" && request.model == "gpt-4o"
    actions:
      - {type: route, set: {model: gpt-4o-mini}}
      - {type: warn, message: downgraded}
  - name: huge
    when: request.prompt_tokens > 1000
    actions: [{type: block, message: prompt too long}]
"""


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(root, ["policy", *[str(a) for a in args]], catch_exceptions=False)


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
    path = tmp_path / "limits.yaml"
    path.write_text(SET)
    return path


def test_apply_list_show_history_rm(env: Path, tmp_path: Path) -> None:
    result = invoke("apply", env, "-w", "w1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "limits v1 applied (workspace w1): created with 2 rules: free-premium, huge\n"
    assert invoke("apply", env, "-w", "w1").stdout == "limits v1 unchanged (workspace w1)\n"
    env.write_text(SET.replace("priority: 10", "priority: 20"))
    assert "limits v2 applied (workspace w1): priority 10 -> 20" in invoke("apply", env, "-w", "w1").stdout

    listed = json.loads(invoke("list", "-w", "w1", "--json").stdout)
    assert [(i["name"], i["version"], i["priority"], i["rules"], i["scope"]) for i in listed] == [
        ("limits", 2, 20, 2, "w1")
    ]
    assert json.loads(invoke("list", "-w", "w2", "--json").stdout) == []  # other workspaces: none
    assert "limits  v2" in invoke("list", "-w", "w1").stdout

    shown = invoke("show", "limits", "-w", "w1", "--version", "1")
    assert shown.exit_code == 0
    assert shown.stdout.startswith("# limits v1 (w1), ")
    assert "by tester" in shown.stdout and "priority: 10" in shown.stdout
    assert json.loads(invoke("show", "limits", "-w", "w1", "--json").stdout)["document"]["priority"] == 20

    assert invoke("rm", "limits", "-w", "w1", "--actor", "ops").stdout == "limits removed (v3)\n"
    assert invoke("list", "-w", "w1").stdout == "no policy sets\n"
    assert "removed" in invoke("list", "-w", "w1", "--all").stdout
    assert invoke("show", "limits", "-w", "w1").stdout.endswith("# removed\n")

    history = json.loads(invoke("history", "limits", "-w", "w1", "--json").stdout)
    assert [(h["version"], h["action"], h["actor"]) for h in history] == [
        (1, "apply", "tester"),
        (2, "apply", "tester"),
        (3, "rm", "ops"),
    ]
    assert "v3   rm" in invoke("history", "limits", "-w", "w1").stdout


def test_global_sets_need_global(env: Path, tmp_path: Path) -> None:
    glob = tmp_path / "glob.yaml"
    glob.write_text("workspace: '*'\n" + SET)
    assert "apply it with --global" in one_line_error(invoke("apply", glob, "-w", "w1"))
    assert invoke("apply", glob, "--global").stdout.startswith("limits v1 applied (global)")
    assert invoke("apply", env, "--global").stdout == "limits v1 unchanged (global)\n"
    listed = json.loads(invoke("list", "-w", "w1", "--json").stdout)
    assert [(i["name"], i["scope"]) for i in listed] == [("limits", "global")]
    message = one_line_error(invoke("rm", "limits", "-w", "w1"))
    assert message == "no policy set 'limits' in workspace 'w1' (a global set has that name: use --global)"
    assert invoke("rm", "limits", "--global").exit_code == 0
    assert "exclusive" in one_line_error(invoke("list", "--global", "-w", "w1"))


def test_usage_errors_exit_2_on_one_line(env: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("workspace: w2\n" + SET)
    assert one_line_error(invoke("apply", other, "-w", "w1")) == (
        "the file names workspace 'w2' but this command acts on workspace 'w1'; "
        "a workspace's sets can only be changed from that workspace"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(SET.replace("request.prompt_tokens > 1000", "request.prompt_tokens >> 1000"))
    assert one_line_error(invoke("apply", bad, "-w", "w1")).startswith(
        f"{bad}:10:34: rules[1].when: invalid CEL expression at 1:24: Syntax error:"
    )
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(SET.replace("priority: 10", "priority: 10\nstrict: true"))
    assert one_line_error(invoke("apply", unknown)) == f"{unknown}:3: strict: unknown field"
    assert one_line_error(invoke("apply", tmp_path / "nope.yaml")).startswith(f"{tmp_path / 'nope.yaml'}: no such file")
    assert one_line_error(invoke("show", "nope", "-w", "w1")) == "no policy set 'nope' in workspace 'w1'"
    assert one_line_error(invoke("history", "nope")) == "no policy set 'nope' in workspace 'default'"
    assert "use --global" in one_line_error(invoke("list", "-w", "*"))


def test_several_errors_are_reported_one_per_line(env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SET.replace("priority: 10", "priority: high").replace("type: block", "type: deny"))
    result = invoke("apply", bad)
    assert result.exit_code == 2
    lines = result.stderr.removeprefix("Error: ").splitlines()
    assert lines == [
        f"{bad}:2: priority: Input should be a valid integer, unable to parse string as an integer",
        f"{bad}:11: rules[1].actions[0].type: Input should be 'block', 'route', 'modify', 'warn' or 'log'",
    ]


def test_the_default_workspace_comes_from_the_environment(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTHHOST_WORKSPACE", "team-a")
    assert invoke("apply", env).stdout.startswith("limits v1 applied (workspace team-a)")


# -- test: no call, no database ----------------------------------------------------------------


@pytest.fixture
def no_db(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/none")
    path = tmp_path / "limits.yaml"
    path.write_text(SET)
    return path


def test_policy_test_shows_the_decision_without_a_database(no_db: Path, tmp_path: Path) -> None:
    request: dict[str, object] = {"model": "gpt-4o", "prompt": "hi", "metadata": {"tier": "free"}}
    context = {"request": request}
    result = invoke("test", no_db, "--context", json.dumps(context))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "policy set limits: 2 active rules",
        '  free-premium: route model="gpt-4o-mini"',
        "  free-premium: warn: downgraded",
        "decision: allow",
        '  request.model: "gpt-4o" -> "gpt-4o-mini"',
    ]
    request["prompt_tokens"] = 5000
    ctx_file = tmp_path / "ctx.json"
    ctx_file.write_text(json.dumps(context))
    data = json.loads(invoke("test", no_db, "--context", f"@{ctx_file}", "--json").stdout)
    assert data["decision"] == "block" and data["message"] == "prompt too long"
    assert [d["action"] for d in data["decisions"]] == ["route", "warn", "block"]
    assert data["warnings"] == ["downgraded"]
    quiet = invoke("test", no_db, "--context", '{"request": {"model": "m"}}')
    assert quiet.stdout.endswith("decision: allow (no rule matched)\n")


def test_policy_test_context_errors(no_db: Path) -> None:
    assert one_line_error(invoke("test", no_db, "--context", '{"request": {"modle": "x"}}')) == (
        "--context: request.modle: unknown field"
    )
    assert one_line_error(invoke("test", no_db, "--context", "{oops")).startswith(
        "--context: invalid JSON at line 1 column 2"
    )
    assert one_line_error(invoke("test", no_db, "--context", "missing.json")).startswith(
        "--context: not JSON and not a readable file"
    )
