"""Guardrails on tool calls in a real host: a secret in a tool's result is masked before
the model's next turn (the default guard set); an ``exception`` validator over the
arguments blocks the call."""

from __future__ import annotations

from typing import Any

import pytest

import synthhost_guardrails
from synthhost import hookimpl
from synthhost.agent import AgentSpec
from synthhost_guardrails import FLAG, apply_guards

pytestmark = pytest.mark.anyio
KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7"


class Vault:
    __name__ = "acme_vault"

    def __init__(self) -> None:
        self.emails: list[str] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def read_config(service: str) -> dict[str, str]:
            """Read a service's configuration."""
            return {"service": service, "api_key": KEY}

        def send_email(to: str, body: str) -> str:
            """Send an email."""
            self.emails.append(to)
            return "sent"

        register(read_config)
        register(send_email)


def spec(calls: list[dict[str, Any]]) -> AgentSpec:
    return AgentSpec(name="ops", model="echo/m", params={"echo_tool_calls": [calls]},
                     tools=[{"name": "read_config"}, {"name": "send_email"}],
                     steps=[{"name": "act", "prompt": "do it"}])


async def test_a_secret_in_a_tool_result_is_masked_before_the_next_turn(make_host: Any) -> None:
    async with make_host(synthhost_guardrails, Vault()) as host:
        host.flags.set(FLAG, True)
        result = await host.run(spec([{"name": "read_config", "arguments": {"service": "billing"}}]), workspace="w")
        next_turn = host.provider("echo").calls[1]
    assert result.ok, result.error_message
    sent = next_turn.messages[-1]["content"]
    assert KEY not in sent and '"service": "billing"' in sent
    assert KEY not in (result.output or "")


async def test_an_exception_validator_blocks_a_tool_call_by_its_arguments(make_host: Any) -> None:
    vault = Vault()
    async with make_host(synthhost_guardrails, vault) as host:
        host.flags.set(FLAG, True)
        apply_guards(host, "input: [{validator: no_pii, on_fail: exception}]\n", workspace="w")
        result = await host.run(spec([{"name": "send_email", "arguments": {"to": "jane.doe@example.com",
                                                                           "body": "hi"}}]), workspace="w")
    assert result.ok and vault.emails == []
    assert (result.output or "").startswith("echo: GUARDRAIL_VIOLATION:")
