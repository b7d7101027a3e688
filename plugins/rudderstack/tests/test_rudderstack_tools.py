"""Tool calls reach RudderStack as ``tool_called`` / ``tool_failed`` track events,
through the real SDK and the loopback ``/v1/batch`` receiver."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

import synthhost_rudderstack
from synthhost import hookimpl
from synthhost.agent import AgentSpec

pytestmark = pytest.mark.anyio


class Weather:
    __name__ = "acme_weather"

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def weather(city: str) -> str:
            """Today's weather."""
            return f"sunny in {city}"

        register(weather)


SPEC = AgentSpec(name="forecaster", model="echo/m",
                 params={"echo_tool_calls": [[{"name": "weather", "arguments": {"city": "Oslo"}},
                                              {"name": "weather", "arguments": {"town": "Oslo"}}]]},
                 tools=[{"name": "weather"}], steps=[{"name": "s", "prompt": "weather?"}])


async def test_rudderstack_tool_events_are_tracked(make_host: Any, receiver: Any, rudder_env: Any) -> None:
    async with make_host(synthhost_rudderstack, Weather(), env=rudder_env()) as host:
        result = await host.run(SPEC, workspace="w", user="u-1")
        deadline = time.monotonic() + 30
        while not {"tool_called", "tool_failed"} <= {m["event"] for m in receiver.messages()}:
            assert time.monotonic() < deadline, "tool events did not arrive"
            await anyio.sleep(0.02)
    by_event = {m["event"]: m for m in receiver.messages() if m["event"].startswith("tool_")}
    called, failed = by_event["tool_called"], by_event["tool_failed"]
    assert called["properties"]["tool"] == "weather" and called["properties"]["source"] == "plugin"
    assert called["properties"]["run_id"] == result.run_id
    assert failed["properties"]["error_code"] == "TOOL_BAD_ARGUMENTS"
