"""Tool failures through StackStorm: with ``enable_stackstorm_retry`` the pack's real
``llm_retry`` workflow decides whether a failed tool call is tried again; bad arguments
are never sent (the same call would fail again)."""

from __future__ import annotations

from typing import Any

import pytest

from synthhost import hookimpl
from synthhost.agent import AgentSpec

pytestmark = pytest.mark.anyio


class Wobbly:
    __name__ = "acme_wobbly"

    def __init__(self) -> None:
        self.tries = 0

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def fetch(key: str) -> str:
            """Fetch a value; the first try fails."""
            self.tries += 1
            if self.tries == 1:
                raise ConnectionError("upstream reset")
            return f"value of {key}"

        register(fetch)


SPEC = AgentSpec(name="fetcher", model="echo/m",
                 params={"echo_tool_calls": [[{"name": "fetch", "arguments": {"key": "k1"}},
                                              {"name": "fetch", "arguments": {"nope": 1}}]]},
                 tools=[{"name": "fetch"}], steps=[{"name": "s", "prompt": "go"}])


async def test_a_failed_tool_is_retried_when_llm_retry_says_so(kit: Any) -> None:
    wobbly = Wobbly()
    async with kit.host(wobbly) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        result = await host.run(SPEC, workspace="w1")
        (execution,) = kit.st2.executions("synthralos.llm_retry")
        events = await kit.events(host, "stackstorm_execution")
    assert result.ok, result.error_message
    assert result.output is not None and result.output.startswith("echo: value of k1; invalid arguments")
    assert wobbly.tries == 2
    sent = execution["parameters"]
    assert sent["original_request"] == {"tool": "fetch", "source": "plugin", "arguments": {"key": "k1"},
                                        "model": "tool:fetch"}
    assert sent["error_code"] == "PROVIDER_ERROR" and "upstream reset" in sent["failure_reason"]
    assert execution["result"]["output"]["action"] == "retry"
    assert [(e["mode"], e["decision"]) for e in events] == [("tool_retry", "retry")]


async def test_tool_retry_is_off_without_its_flag(kit: Any) -> None:
    wobbly = Wobbly()
    async with kit.host(wobbly) as host:
        kit.enable(host, "enable_stackstorm")
        result = await host.run(SPEC, workspace="w1")
    assert wobbly.tries == 1 and "ConnectionError: upstream reset" in (result.output or "")
    assert kit.st2.executions("synthralos.llm_retry") == []


BAD_ARGS = AgentSpec(name="fixer", model="echo/m",
                     params={"echo_tool_calls": [[{"name": "fetch", "arguments": {"nope": 1}}]]},
                     tools=[{"name": "fetch"}], steps=[{"name": "s", "prompt": "go"}])
REPAIR = {"action": "repair", "request": {"arguments": {"key": "k2"}}, "reason": "key was missing"}


async def test_bad_tool_arguments_are_repaired_by_agent_recovery(kit: Any) -> None:
    wobbly = Wobbly()
    wobbly.tries = 1  # its next try succeeds
    async with kit.host(wobbly) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_repair_execution")
        kit.st2.script("synthralos.agent_recovery", output=REPAIR)
        result = await host.run(BAD_ARGS, workspace="w1")
        (execution,) = kit.st2.executions("synthralos.agent_recovery")
        events = await kit.events(host, "stackstorm_execution")
    assert result.ok, result.error_message
    assert result.output == "echo: value of k2"  # the model read the repaired call's result
    assert wobbly.tries == 2
    sent = execution["parameters"]
    assert sent["failure_type"] == "tool_failure"
    assert sent["original_request"] == {"tool": "fetch", "source": "plugin", "arguments": {"nope": 1},
                                        "model": "tool:fetch"}
    assert sent["failure_details"]["error_code"] == "TOOL_BAD_ARGUMENTS"
    assert [(e["mode"], e["decision"], e["changed"]) for e in events] == [("tool_repair", "repair", ["key", "nope"])]


async def test_a_repair_that_changes_nothing_is_refused_and_the_failure_stands(kit: Any) -> None:
    wobbly = Wobbly()
    async with kit.host(wobbly) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_repair_execution")
        kit.st2.script("synthralos.agent_recovery", output={"action": "repair", "request": {"arguments": {"nope": 1}}})
        result = await host.run(BAD_ARGS, workspace="w1")
        errors = await kit.events(host, "stackstorm_error")
    assert wobbly.tries == 0 and "invalid arguments" in (result.output or "")
    assert [e["mode"] for e in errors] == ["tool_repair"] and "identical" in errors[0]["message"]


async def test_tool_repair_is_off_without_its_flag(kit: Any) -> None:
    wobbly = Wobbly()
    async with kit.host(wobbly) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        kit.st2.script("synthralos.agent_recovery", output=REPAIR)
        result = await host.run(BAD_ARGS, workspace="w1")
    assert wobbly.tries == 0 and "invalid arguments" in (result.output or "")
    assert kit.st2.executions("synthralos.agent_recovery") == []


async def test_the_packs_own_agent_recovery_declines_a_tool_repair(kit: Any) -> None:
    wobbly = Wobbly()
    async with kit.host(wobbly) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_repair_execution")
        result = await host.run(BAD_ARGS, workspace="w1")  # the real workflow: nothing to shorten
        (execution,) = kit.st2.executions("synthralos.agent_recovery")
        events = await kit.events(host, "stackstorm_execution")
    assert wobbly.tries == 0 and "invalid arguments" in (result.output or "")
    assert execution["status"] == "succeeded"
    assert [(e["mode"], e["decision"]) for e in events] == [("tool_repair", "none")]
