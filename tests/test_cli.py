"""The command line: flags, plugins, db — exit codes and one-line errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synthhost.cli import cli

DEFAULT_PLUGIN_NAMES = {"echo", "openai", "anthropic", "gemini", "recovery", "scheduler", "retention", "checks"}


@pytest.fixture
def invoke(db_url):
    def run(*args: str, **env: str):
        full = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost", **env}
        return CliRunner().invoke(cli, list(args), env=full)

    return run


def test_flags_set_list_unset(invoke):
    result = invoke("flags", "set", "track_model_costs", "on", "--workspace", "acme")
    assert result.exit_code == 0, result.output
    listed = json.loads(invoke("flags", "list", "--workspace", "acme", "--json").output)
    by_name = {f["name"]: f for f in listed}
    assert by_name["track_model_costs"]["enabled"] is True
    assert by_name["track_model_costs"]["source"] == "workspace"
    other = json.loads(invoke("flags", "list", "--workspace", "zzz", "--json").output)
    assert {f["name"]: f["enabled"] for f in other}["track_model_costs"] is False
    assert invoke("flags", "unset", "track_model_costs", "--workspace", "acme").exit_code == 0
    again = json.loads(invoke("flags", "list", "--workspace", "acme", "--json").output)
    assert {f["name"]: f["source"] for f in again}["track_model_costs"] == "default"


def test_unknown_flag_exits_2_with_a_suggestion(invoke):
    result = invoke("flags", "set", "track_model_cost", "on", "--global")
    assert result.exit_code == 2
    assert result.output == "Error: unknown flag 'track_model_cost' (did you mean 'track_model_costs'?)\n"


def test_bad_flag_value_exits_2(invoke):
    result = invoke("flags", "set", "track_model_costs", "maybe", "--global")
    assert result.exit_code == 2 and "not on/off" in result.output


def test_plugins_lists_distribution_hooks_gate_and_activity(invoke):
    invoke("flags", "set", "track_model_costs", "on", "--workspace", "acme")
    rows = {r["name"]: r for r in json.loads(invoke("plugins", "--workspace", "acme", "--json").output)}
    # The allow-list loaded only `cost` besides the defaults.
    assert set(rows) == {*DEFAULT_PLUGIN_NAMES, "cost"}
    cost = rows["cost"]
    assert cost["distribution"] == "synthhost-cost" and cost["version"]
    assert cost["gate"] == "track_model_costs" and cost["active"] is True
    assert "post_call" in cost["hooks"]
    off = {r["name"]: r for r in json.loads(invoke("plugins", "--workspace", "other", "--json").output)}
    assert off["cost"]["active"] is False and off["echo"]["active"] is True


def test_empty_allow_list_loads_no_installed_plugin(invoke):
    rows = json.loads(invoke("plugins", "--json", SYNTHHOST_LOAD_PLUGINS="").output)
    assert {r["name"] for r in rows} == DEFAULT_PLUGIN_NAMES


def test_db_commands(invoke):
    assert invoke("db", "upgrade").exit_code == 0
    current = invoke("db", "current")
    assert (current.exit_code == 0 and "0001_host" not in current.output) or "head" in current.output
    down = invoke("db", "downgrade", "base")
    assert down.exit_code == 0, down.output
    assert "now at base" in down.output
    up = invoke("db", "upgrade")
    assert up.exit_code == 0 and "upgraded" in up.output


def test_health(invoke):
    result = invoke("health", "--json")
    checks = {c["name"]: c for c in json.loads(result.output)}
    assert checks["database"]["ok"] is True
