"""agent.yaml's tool fields: line-accurate one-line errors (exit 2), checks that need the
host (a python tool that does not import, a tool nobody registered), and agents sent over
HTTP refused host-side code."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from synthhost.agent import parse_agent
from synthhost.cli import cli
from synthhost.errors import UsageError
from synthhost.gateway.runs_api import _refuse_host_side_code

HEAD = "name: a\nmodel: echo/m\n"
STEPS = "steps:\n  - name: s\n    prompt: hi\n"


@pytest.mark.parametrize(("body", "expected"), [
    ("tools:\n  - {python: nope}\n", "4: tools[0].python: python must be 'package.module:function', got 'nope'"),
    ("tools:\n  - name: x\n    http: {url: 'https://evil.example/x', allow_hosts: [api.example]}\n",
     "5: tools[0].http: url host 'evil.example' is not in allow_hosts (api.example)"),
    ("tools:\n  - name: x\n    http: {url: 'https://{host}/x', allow_hosts: [a]}\n",
     "5: tools[0].http.url: placeholders may fill the path or query, never the host"),
    ("tools:\n  - mcp: {command: [srv], url: 'http://x/mcp'}\n",
     "4: tools[0].mcp: give exactly one of command (stdio) or url (streamable HTTP)"),
    ("tools:\n  - mcp: {command: [srv], bogus: 1}\n",
     "4: tools[0].mcp.bogus: unknown field 'bogus' (known: command, url, env, tools)"),
    ("tools:\n  - {python: 'a:b', mcp: {command: [x]}}\n", "4: tools[0]: a tool has one source, got python and mcp"),
    ("tools:\n  - {description: what}\n", "4: tools[0]: a tool needs a name (a registered tool) or a source"),
    ("tools:\n  - {name: 'bad name'}\n", "4: tools[0].name: tool name must be 1-64 letters"),
    ("max_turns: 0\n", "3: max_turns: should be greater than or equal to 1"),
    ("output_schema: {type: 12}\n", "3: output_schema: not a valid JSON Schema at type"),
    ("output_retries: 99\n", "3: output_retries: should be less than or equal to 10"),
])
def test_bad_tool_fields_point_at_their_line(body: str, expected: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_agent(HEAD + body + STEPS, "agent.yaml")
    assert info.value.message.startswith(f"agent.yaml:{expected}"), info.value.message
    assert "\n" not in info.value.message


def test_step_level_fields_point_at_the_step() -> None:
    text = HEAD + "steps:\n  - name: s\n    prompt: hi\n    tools:\n      - {name: x, timeout_s: -1}\n"
    with pytest.raises(UsageError) as info:
        parse_agent(text, "agent.yaml")
    assert info.value.message.startswith("agent.yaml:7: steps[0].tools[0].timeout_s: should be greater than 0")


@pytest.mark.parametrize(("body", "expected"), [
    ("tools:\n  - python: acme_missing_module:f\n",
     "4: tools[0].python: cannot import 'acme_missing_module'"),
    ("tools:\n  - name: weather\n", "4: tools[0].name: no plugin registered a tool 'weather' (registered: none)"),
    ("output_schema: 'acme_missing_module:Model'\n", "3: output_schema: cannot import 'acme_missing_module'"),
])
def test_run_checks_tools_against_the_host_and_exits_2(tmp_path: Path, body: str, expected: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + body + STEPS)
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "SYNTHHOST_HOME": str(tmp_path / "home"),
           "SYNTHHOST_LOAD_PLUGINS": ""}
    result = CliRunner().invoke(cli, ["run", str(path)], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.strip() == f"Error: {path}:{expected}" or result.stderr.strip().startswith(
        f"Error: {path}:{expected}"), result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("tool", ["{python: 'os:getcwd'}", "{mcp: {command: [sh]}}",
                                  "{name: x, http: {url: 'https://a.example/', allow_hosts: [a.example]}}"])
def test_an_agent_sent_over_http_may_not_bring_host_side_code(tool: str) -> None:
    spec = parse_agent(HEAD + f"tools: [{tool}]\n" + STEPS, "spec")
    with pytest.raises(UsageError, match="refused in an agent sent over HTTP"):
        _refuse_host_side_code(spec)


def test_an_agent_sent_over_http_may_name_registered_tools() -> None:
    spec = parse_agent(HEAD + "tools: [{name: weather}]\n" + STEPS, "spec")
    _refuse_host_side_code(spec)
    schema_ref = parse_agent(HEAD + textwrap.dedent("""\
        steps:
          - {name: s, prompt: hi, output_schema: 'pkg.mod:Model'}
        """), "spec")
    with pytest.raises(UsageError, match=r"steps\[0\].output_schema: a 'module:Model' reference is refused"):
        _refuse_host_side_code(schema_ref)




def test_run_prints_the_answer_as_it_streams_on_a_terminal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthhost.cli import run as run_module

    printed: list[str] = []
    real_echo = run_module.click.echo

    def spy(message: Any = None, *args: Any, **kwargs: Any) -> None:
        if not kwargs.get("err"):
            printed.append(str(message))
        real_echo(message, *args, **kwargs)

    monkeypatch.setattr(run_module, "_isatty", lambda stream: True)
    monkeypatch.setattr(run_module.click, "echo", spy)
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + "steps:\n  - {name: s, prompt: three little words}\n")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "SYNTHHOST_HOME": str(tmp_path / "home"),
           "SYNTHHOST_LOAD_PLUGINS": ""}
    result = CliRunner().invoke(cli, ["run", "--no-progress", str(path)], env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout == "echo: three little words\n"
    assert printed[:4] == ["echo: ", "three ", "little ", "words"]  # piece by piece, not once at the end


def test_run_no_stream_prints_the_answer_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from synthhost.cli import run as run_module

    monkeypatch.setattr(run_module, "_isatty", lambda stream: True)
    path = tmp_path / "agent.yaml"
    path.write_text(HEAD + "steps:\n  - {name: s, prompt: three little words}\n")
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}", "SYNTHHOST_HOME": str(tmp_path / "home"),
           "SYNTHHOST_LOAD_PLUGINS": ""}
    printed: list[str] = []
    real_echo = run_module.click.echo

    def spy(message: Any = None, *args: Any, **kwargs: Any) -> None:
        printed.append(str(message))
        real_echo(message, *args, **kwargs)

    monkeypatch.setattr(run_module.click, "echo", spy)
    result = CliRunner().invoke(cli, ["run", "--no-progress", "--no-stream", str(path)], env=env)
    assert result.exit_code == 0 and result.stdout == "echo: three little words\n"
    assert "echo: " not in printed  # not piece by piece
