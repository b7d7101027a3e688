"""Tool calls reach Langfuse as ``tool`` observations under the turn (generation) that
asked for them, through the real SDK and the loopback OTLP receiver."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import synthhost_langfuse
from synthhost import hookimpl
from synthhost.agent import AgentSpec
from synthhost.host import Host
from synthhost_langfuse.testing import LangfuseReceiver

MakeHost = Callable[..., Host]


class Lookup:
    __name__ = "acme_lookup"

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def lookup(order: str) -> dict[str, str]:
            """Look an order up."""
            return {"order": order, "status": "shipped"}

        register(lookup)


SPEC = AgentSpec(
    name="orders", model="echo/gpt-4o-mini",
    params={"echo_tool_calls": [[{"name": "lookup", "arguments": {"order": "A-1"}},
                                 {"name": "missing", "arguments": {}}]]},
    tools=[{"name": "lookup"}],
    steps=[{"name": "answer", "prompt": "Where is A-1?"}],
)


@pytest.mark.anyio
async def test_langfuse_tool_calls_are_tool_observations(make_host: MakeHost, receiver: LangfuseReceiver,
                                                         langfuse_env: dict[str, str]) -> None:
    host = make_host(synthhost_langfuse, Lookup(), env=langfuse_env)
    await host.start()
    try:
        host.flags.set("enable_langfuse_export", True, workspace="w1")
        result = await host.run(SPEC, workspace="w1")
        assert result.ok, result.error_message
        assert receiver.wait_for(lambda: result.trace_id in receiver.trace_ids())
        spans = receiver.trace(result.trace_id)
    finally:
        await host.stop()
    gens = sorted((s for s in spans.values() if s.type == "generation"), key=lambda s: s.start_ns)
    tools = {s.name: s for s in spans.values() if s.type == "tool"}
    assert len(gens) == 2 and set(tools) == {"lookup", "missing"}
    assert {t.parent_id for t in tools.values()} == {gens[0].span_id}  # under the turn that asked
    assert tools["lookup"].json("langfuse.observation.input") == {"order": "A-1"}
    assert tools["lookup"].json("langfuse.observation.output") == {"order": "A-1", "status": "shipped"}
    assert tools["missing"].attributes["langfuse.observation.level"] == "ERROR"
    assert "UNKNOWN_TOOL" in tools["missing"].attributes["langfuse.observation.status_message"]
