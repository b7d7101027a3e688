"""Policy rules over tool calls (``tool.name``, ``tool.source``, ``tool.args``) in a real
host: block one tool, rewrite another's arguments, warn; model-call rules and tool rules
never apply to each other's calls."""

from __future__ import annotations

import json
from typing import Any

import pytest

import synthhost_policy
from synthhost import hookimpl
from synthhost.agent import AgentSpec
from synthhost_policy import apply_policy

pytestmark = pytest.mark.anyio


class Tools:
    __name__ = "acme_shell_tools"

    def __init__(self) -> None:
        self.ran: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def shell(command: str) -> str:
            """Run a shell command."""
            self.ran.append(("shell", {"command": command}))
            return "ran"

        def search(query: str, limit: int = 50) -> str:
            """Search the documents."""
            self.ran.append(("search", {"query": query, "limit": limit}))
            return f"{limit} hits"

        register(shell)
        register(search)


POLICY = json.dumps({"name": "tools", "rules": [
    {"name": "no-shell", "when": 'tool.name == "shell"',
     "actions": [{"type": "block", "message": "shell is not allowed"}]},
    {"name": "cap-search", "when": 'tool.name == "search" && tool.args.limit > 10',
     "actions": [{"type": "modify", "set": {"args.limit": 10}}, {"type": "warn", "message": "search capped"}]},
    {"name": "model-rule", "when": 'request.model == "m"', "actions": [{"type": "warn", "message": "model m"}]},
]}) + "\n"  # text, not a path

SPEC = AgentSpec(
    name="ops", model="echo/m",
    params={"echo_tool_calls": [[{"name": "shell", "arguments": {"command": "rm -rf /"}},
                                 {"name": "search", "arguments": {"query": "q", "limit": 500}}]]},
    tools=[{"name": "shell"}, {"name": "search"}],
    steps=[{"name": "act", "prompt": "do it"}],
)


async def test_policy_blocks_a_tool_and_rewrites_another_s_arguments(make_host: Any) -> None:
    tools = Tools()
    async with make_host(synthhost_policy, tools) as host:
        host.flags.set("enable_policy_engine", True, workspace="w1")
        apply_policy(host, POLICY, workspace="w1")
        result = await host.run(SPEC, workspace="w1")
        host.wait_for_events()
        spans = _tool_spans(host, result.run_id)
        calls = _call_spans(host, result.run_id)
    assert result.ok, result.error_message
    assert tools.ran == [("search", {"query": "q", "limit": 10})]  # shell never ran
    assert result.output == "echo: POLICY_DENIED: shell is not allowed; 10 hits"
    assert spans["shell"].error_code == "POLICY_DENIED"
    assert spans["shell"].attributes["denial"]["rule"] == "no-shell"
    assert spans["search"].attributes["policy.warnings"] == ["search capped"]
    assert spans["search"].attributes["input"] == {"query": "q", "limit": 10}
    # the model rule applied to both model turns and to no tool call
    assert all(c.attributes.get("policy.warnings") == ["model m"] for c in calls) and len(calls) == 2
    assert "policy.decisions" not in spans["shell"].attributes or all(
        d["rule"] != "model-rule" for d in spans["shell"].attributes["policy.decisions"])


def _tool_spans(host: Any, run_id: str) -> dict[str, Any]:
    return {s.name: s for s in _spans(host, run_id) if s.kind == "tool"}


def _call_spans(host: Any, run_id: str) -> list[Any]:
    return [s for s in _spans(host, run_id) if s.kind == "call"]


def _spans(host: Any, run_id: str) -> list[Any]:
    from sqlmodel import Session, select

    from synthhost.storage.models import Span

    with Session(host.engine) as session:
        return list(session.exec(select(Span).where(Span.run_id == run_id)))


def test_policy_test_decides_for_a_tool_call(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from synthhost.cli import cli

    path = tmp_path / "tools.json"
    path.write_text(POLICY)
    runner = CliRunner()
    search = json.dumps({"tool": {"name": "search", "args": {"query": "q", "limit": 500}}})
    shown = runner.invoke(cli, ["policy", "test", str(path), "--context", search])
    assert shown.exit_code == 0, shown.output
    assert shown.output.splitlines() == [
        "policy set tools: 2 active rules for tool 'search'",
        "  cap-search: modify args.limit=10",
        "  cap-search: warn: search capped",
        "decision: allow",
        '  tool.args: {"query": "q", "limit": 500} -> {"query": "q", "limit": 10}',
    ]
    shell = runner.invoke(cli, ["policy", "test", str(path), "--context", '{"tool": {"name": "shell"}}', "--json"])
    assert json.loads(shell.output)["decision"] == "block"
    model = runner.invoke(cli, ["policy", "test", str(path), "--context", '{"request": {"model": "m"}}'])
    assert "model-rule: warn: model m" in model.output and "no-shell" not in model.output
