"""Cost per model turn of a tool agent: every turn is priced on its own call span and
the run's cost and tokens sum them; `synthhost traces show` prints the turns and their
tool calls as a tree."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

import synthhost_cost
from synthhost import hookimpl
from synthhost.agent import AgentSpec
from synthhost.cli import cli

pytestmark = pytest.mark.anyio
USAGE = {"input_tokens": 1000, "output_tokens": 500}
GPT_4O = Decimal("0.0075")  # 1000 in at $2.50/MTok + 500 out at $10/MTok


class Clock:
    __name__ = "acme_clock"

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def now() -> str:
            """The time."""
            return "noon"

        register(now)


SPEC = AgentSpec(name="timekeeper", model="openai/gpt-4o",
                 params={"echo_usage": USAGE, "echo_tool_calls": [[{"name": "now"}], [{"name": "now"}]]},
                 tools=[{"name": "now"}], steps=[{"name": "ask", "prompt": "what time is it?"}])


class EchoAsOpenAI:
    """The echo provider under the name ``openai`` (priced as OpenAI, offline)."""

    __name__ = "acme_echo_openai"

    @hookimpl
    def register_providers(self, register: Any) -> None:
        from synthhost.providers.echo import EchoProvider

        class Priced(EchoProvider):
            async def complete(self, request: Any, *, call: Any) -> Any:
                response = await super().complete(request, call=call)
                response.provider = "openai"
                return response

        register("openai", lambda host: Priced())


async def test_the_run_cost_sums_every_turn(make_host: Any, db_url: str, tmp_path: Any) -> None:
    async with make_host(synthhost_cost, Clock(), EchoAsOpenAI()) as host:
        host.flags.set("track_model_costs", True, workspace="w")
        result = await host.run(SPEC, workspace="w")
        env = {"DATABASE_URL": db_url, "SYNTHHOST_HOME": str(tmp_path / "home"), "SYNTHHOST_LOAD_PLUGINS": "cost"}
        shown = CliRunner().invoke(cli, ["traces", "show", result.run_id, "--workspace", "w"], env=env)
    assert result.ok, result.error_message
    assert Decimal(result.cost_usd or "0") == 3 * GPT_4O  # three turns: tool, tool, answer
    lines = [line.strip() for line in shown.output.splitlines()]
    turns = [line for line in lines if line.startswith("- call openai/gpt-4o")]
    assert [t.split()[5] for t in turns] == ["turn=1", "turn=2", "turn=3"]
    assert all("cost=$0.0075" in t for t in turns)
    assert sum(1 for line in lines if line.startswith("- tool now ok")) == 2
    indent = {line.split("- ")[1].split()[0]: len(line) - len(line.lstrip())
              for line in shown.output.splitlines() if line.strip().startswith("- ")}
    assert indent["tool"] > indent["call"] > indent["step"] > indent["run"]  # run → step → turn → tool
