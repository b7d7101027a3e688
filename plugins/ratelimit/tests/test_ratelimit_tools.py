"""The ``tool`` scope: requests per tool name per workspace, on real Redis and in
process; a refused tool call is a tool result the model reads, and model-call scopes
never count tool calls."""

from __future__ import annotations

from typing import Any

import pytest

import synthhost_ratelimit as plugin
from synthhost import hookimpl
from synthhost.agent import AgentSpec
from synthhost.call import new_id
from synthhost_ratelimit.store import set_limit

pytestmark = pytest.mark.anyio


class Pinger:
    __name__ = "acme_pinger"

    def __init__(self) -> None:
        self.pings = 0

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def ping() -> str:
            """Ping."""
            self.pings += 1
            return "pong"

        def other() -> str:
            """Another tool."""
            return "ok"

        register(ping)
        register(other)


SPEC = AgentSpec(name="pinger", model="echo/m",
                 params={"echo_tool_calls": [[{"name": "ping"}, {"name": "ping"}, {"name": "ping"},
                                              {"name": "other"}]]},
                 tools=[{"name": "ping"}, {"name": "other"}], steps=[{"name": "s", "prompt": "go"}])


@pytest.mark.parametrize("backend", ["redis", "local"])
async def test_the_tool_scope_limits_each_tool_by_name(make_host: Any, redis_url: str, backend: str) -> None:
    pinger = Pinger()
    prefix = f"rltool{new_id()}"  # fresh counters on the shared Redis
    env = {"REDIS_URL": redis_url if backend == "redis" else "", "SYNTHHOST_RATELIMIT_PREFIX": prefix}
    async with make_host(plugin, pinger, env=env) as host:
        host.flags.set("enable_rate_limiting", True)
        set_limit(host.engine, "w", "tool", requests=2, window_s=3600)
        set_limit(host.engine, "w", "workspace", requests=2, window_s=3600)
        refresher = plugin.state(host).refresher
        assert refresher is not None
        refresher.reload()
        result = await host.run(SPEC, workspace="w")
    assert result.ok, result.error_message  # two model turns fit the workspace's 2: tool calls are not counted
    assert pinger.pings == 2
    output = (result.output or "").removeprefix("echo: ")
    assert output.count("pong") == 2 and output.endswith("; ok")  # the three pings ran concurrently
    assert output.count("RATE_LIMITED: tool rate limit exceeded (2 requests per 3600s)") == 1
