"""One validated workspace-name type: the CLI, Host and the flag store refuse names that
are not workspaces, and the global scope needs an explicit --global."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from synthhost.cli import cli
from synthhost.errors import UsageError
from synthhost.workspace import is_valid_workspace

BAD = ["", "*", "a\nb", "tab\there", "x" * 10_000, "-leading", "sp ace", "bell\x07", "ünïcode", "a/b"]


@pytest.fixture
def invoke(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'x.db'}")
    monkeypatch.setenv("SYNTHHOST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYNTHHOST_LOAD_PLUGINS", "")
    runner = CliRunner()
    return lambda *args: runner.invoke(cli, list(args))


@pytest.mark.parametrize("name", ["acme", "a", "team-1.prod_eu", "X" * 64])
def test_good_names(name: str) -> None:
    assert is_valid_workspace(name)


@pytest.mark.parametrize("name", [*BAD, "x" * 65])
def test_bad_names(name: str) -> None:
    assert not is_valid_workspace(name)


@pytest.mark.parametrize("name", BAD)
@pytest.mark.parametrize("command", [
    ["flags", "set", "enable_cron_backoff", "on", "--workspace"],
    ["flags", "unset", "enable_cron_backoff", "--workspace"],
    ["flags", "list", "--workspace"],
    ["traces", "list", "--workspace"],
    ["plugins", "--workspace"],
    ["run", "examples/hello.yaml", "--workspace"],
])
def test_the_cli_refuses_names_that_are_not_workspaces(invoke: Any, command: list[str], name: str) -> None:
    if name == "*" and command[:2] in (["flags", "set"], ["flags", "unset"]):
        return  # the kill switch (issue 14): test_star_is_the_kill_switch_never_the_global_row
    result = invoke(*command, name)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "--workspace" in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "workspace" in errors[0]  # click's usage hint, then one error line


def test_star_is_the_kill_switch_never_the_global_row(invoke: Any) -> None:
    forced = invoke("flags", "set", "enable_cron_backoff", "off", "--workspace", "*")
    assert forced.exit_code == 0 and "every workspace (forced)" in forced.output and "(global)" not in forced.output
    listed = {f["name"]: f for f in json.loads(invoke("flags", "list", "--workspace", "acme", "--json").output)}
    assert listed["enable_cron_backoff"]["source"] == "forced"
    assert "removed" in invoke("flags", "unset", "enable_cron_backoff", "--workspace", "*").output
    assert "was not set" in invoke("flags", "unset", "enable_cron_backoff", "--global").output


def test_the_global_scope_needs_an_explicit_flag(invoke: Any) -> None:
    neither = invoke("flags", "set", "enable_cron_backoff", "on")
    assert neither.exit_code == 2 and "--global" in neither.output
    both = invoke("flags", "set", "enable_cron_backoff", "on", "--workspace", "acme", "--global")
    assert both.exit_code == 2 and "choose one" in both.output
    ok = invoke("flags", "set", "enable_cron_backoff", "on", "--global")
    assert ok.exit_code == 0 and "(global)" in ok.output


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["", "*", "a\nb", "x" * 10_000])
async def test_host_refuses_them_too(make_host: Any, name: str) -> None:
    async with make_host() as host:
        with pytest.raises(UsageError):
            await host.complete(workspace=name, model="echo/m", messages="hi")
        with pytest.raises(UsageError):
            host.flags.set("enable_cron_backoff", True, workspace=name if name != "*" else "")
        host.flags.set("enable_cron_backoff", True, workspace=None)  # the API's explicit global
        assert host.flags.is_enabled("anyone", "enable_cron_backoff")


@pytest.mark.parametrize("command", [
    ["ratelimit", "set", "--scope", "user", "--requests", "5"],
    ["ratelimit", "unset", "--scope", "user"],
    ["costs", "price", "set", "--provider", "openai", "--model", "m", "--input", "1", "--output", "1"],
])
def test_plugin_commands_need_global_for_the_global_scope(invoke: Any, command: list[str]) -> None:
    neither = invoke(*command)
    assert neither.exit_code == 2 and "--global" in neither.output
    star = invoke(*command, "--workspace", "*")
    assert star.exit_code == 2 and "global" in star.output


@pytest.mark.parametrize("command", [["policy", "list"], ["guardrails", "show"], ["routing", "show"]])
@pytest.mark.parametrize("name", ["*", "a\nb", "x" * 200])
def test_plugin_scopes_refuse_bad_names(invoke: Any, command: list[str], name: str) -> None:
    result = invoke(*command, "--workspace", name)
    assert result.exit_code == 2 and "Traceback" not in result.output
