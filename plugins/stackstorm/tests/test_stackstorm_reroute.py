"""Reroute mode: synthralos.reroute_request picks an untried route; the provider the host
then calls is the one StackStorm chose, with a model valid for it, never a tried route."""

from __future__ import annotations

from typing import Any

import pytest

from synthhost.providers.echo import EchoProvider

pytestmark = pytest.mark.anyio

ROUTE_FLAGS = ("enable_stackstorm", "enable_stackstorm_reroute")


def provider(host: Any, name: str) -> EchoProvider:
    instance = host.provider(name)
    assert isinstance(instance, EchoProvider)
    return instance


async def test_reroute_to_a_fallback_route_changes_what_the_provider_receives(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *ROUTE_FLAGS)
        response = await host.complete(
            model="echo/gpt-4o-mini", messages="summarise this", workspace="w1",
            params={"echo_fail": ["server_error"]},
            metadata={"fallback_routes": [{"provider": "backup", "model": "gpt-4o", "region": "eu-west-1"}]},
        )
        assert response.text == "echo: summarise this"
        assert provider(host, "echo").call_count == 1
        (sent,) = provider(host, "backup").calls
        assert (sent.provider, sent.model, sent.region) == ("backup", "gpt-4o", "eu-west-1")
        assert sent.messages == [{"role": "user", "content": "summarise this"}]

        (execution,) = kit.st2.executions("synthralos.reroute_request")
        assert execution["parameters"]["tried_routes"] == [{"provider": "echo", "model": "gpt-4o-mini",
                                                            "region": None}]
        (event,) = await kit.events(host, "stackstorm_execution")
        assert event["decision"] == "reroute"
        assert event["to"] == {"provider": "backup", "model": "gpt-4o", "region": "eu-west-1"}
        assert event["from"] == {"provider": "echo", "model": "gpt-4o-mini", "region": None}
        (span,) = await kit.spans(host)
        assert (span["provider"], span["model"], span["requested_model"]) == ("backup", "gpt-4o", "gpt-4o-mini")


async def test_a_provider_switch_takes_a_model_that_provider_serves(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *ROUTE_FLAGS)
        await host.complete(model="echo/gpt-4o", messages="hi", workspace="w1", params={"echo_fail": ["timeout"]},
                            metadata={"fallback_providers": ["anthropic"]})
        (sent,) = provider(host, "anthropic").calls
        assert sent.model == "claude-3-5-sonnet-latest"  # never "gpt-4o" sent to anthropic


async def test_never_reroutes_to_a_tried_route(kit: Any) -> None:
    # StackStorm keeps answering backup/gpt-4o: fine once, refused once it was tried.
    kit.st2.script("synthralos.reroute_request",
                   output={"rerouted": True, "final_provider": "backup", "final_model": "gpt-4o", "reason": "ops"})
    async with kit.host() as host:
        kit.enable(host, *ROUTE_FLAGS)
        response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                       params={"echo_fail": ["server_error", "server_error"]})
        assert response.text == "echo: hi"
        assert provider(host, "echo").call_count == 1
        assert provider(host, "backup").call_count == 2  # rerouted once, then the default retry
        executions = kit.st2.executions("synthralos.reroute_request")
        assert [e["parameters"]["tried_routes"] for e in executions] == [
            [{"provider": "echo", "model": "gpt-4o-mini", "region": None}],
            [{"provider": "echo", "model": "gpt-4o-mini", "region": None},
             {"provider": "backup", "model": "gpt-4o", "region": None}],
        ]
        (error,) = await kit.events(host, "stackstorm_error")
        assert error["kind"] == "invalid_response" and "already tried" in error["message"]
        (span,) = await kit.spans(host)
        assert [r["by"] for r in span["recoveries"]] == ["stackstorm", "recovery"]


@pytest.mark.parametrize(
    ("output", "why"),
    [
        ({"rerouted": True, "final_provider": "echo", "final_model": "gpt-4o-mini"}, "already tried"),
        ({"rerouted": True, "final_provider": "backup"}, "without a model"),
        ({"rerouted": True, "final_provider": "nowhere", "final_model": "x"}, "not registered"),
        ({"rerouted": True, "final_provider": "anthropic", "final_model": "gpt-4o"}, "does not serve"),
        ("not an object", "not an object"),
    ],
)
async def test_unusable_reroutes_are_refused(kit: Any, output: Any, why: str) -> None:
    kit.st2.script("synthralos.reroute_request", output=output)
    async with kit.host() as host:
        kit.enable(host, *ROUTE_FLAGS)
        response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                       params={"echo_fail": ["server_error"]})
        assert response.text == "echo: hi"
        assert provider(host, "echo").call_count == 2  # the default recovery retried the same route
        (error,) = await kit.events(host, "stackstorm_error")
        assert why in error["message"]


async def test_no_route_left_lets_the_default_recovery_decide(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *ROUTE_FLAGS)
        response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                       params={"echo_fail": ["server_error"]})  # no fallbacks configured
        assert response.text == "echo: hi"
        (event,) = await kit.events(host, "stackstorm_execution")
        assert event["decision"] == "none" and "no untried valid route" in event["reason"]
        assert await kit.events(host, "stackstorm_error") == []
