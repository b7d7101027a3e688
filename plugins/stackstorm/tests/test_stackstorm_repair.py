"""Repair mode: synthralos.agent_recovery returns a repaired request; the host re-executes
it; the repair counts as successful only when that re-execution succeeds."""

from __future__ import annotations

from typing import Any

import pytest

from synthhost import ProviderError
from synthhost.providers.echo import EchoProvider

pytestmark = pytest.mark.anyio

REPAIR_FLAGS = ("enable_stackstorm", "enable_stackstorm_repair_execution")


def echo(host: Any) -> EchoProvider:
    provider = host.provider("echo")
    assert isinstance(provider, EchoProvider)
    return provider


async def test_repair_changes_the_request_and_succeeds_only_after_re_execution(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *REPAIR_FLAGS)
        response = await host.complete(model="echo/gpt-4o-mini", messages="write a long essay", workspace="w1",
                                       params={"max_tokens": 512, "echo_fail": ["timeout"]})
        assert response.text == "echo: write a long essay"
        first, second = echo(host).calls
        assert first.params["max_tokens"] == 512 and second.params["max_tokens"] == 256  # the repaired request
        assert second.messages == first.messages
        assert second.params["echo_fail"] == ["timeout"]  # the rest of the request is untouched

        (execution,) = kit.st2.executions("synthralos.agent_recovery")
        assert execution["parameters"]["failure_type"] == "timeout"
        assert execution["parameters"]["original_query"] == "write a long essay"
        (repair,) = await kit.events(host, "stackstorm_repair")
        assert (repair["status"], repair["outcome"], repair["attempt"]) == ("success", "succeeded", 2)
        assert (repair["strategy"], repair["changed"]) == ("reduce_max_tokens", ["params"])
        assert repair["execution_id"] == execution["id"]
        (span,) = await kit.spans(host)
        assert span["stackstorm_repairs"][0]["outcome"] == "succeeded"
        assert "repaired" not in span  # no made-up response: the provider answered


async def test_a_repair_whose_re_execution_fails_is_reported_failed(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *REPAIR_FLAGS)
        with pytest.raises(ProviderError):
            await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1", max_attempts=2,
                                params={"max_tokens": 512, "echo_fail": ["server_error", "server_error"]})
        (repair,) = await kit.events(host, "stackstorm_repair")
        assert (repair["status"], repair["outcome"], repair["attempt"], repair["error_code"]) == (
            "error", "failed", 2, "PROVIDER_ERROR")
        assert echo(host).calls[1].params["max_tokens"] == 256


async def test_a_failed_repair_may_be_followed_by_one_that_works(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *REPAIR_FLAGS)
        await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                            params={"max_tokens": 512, "echo_fail": ["server_error", "server_error"]})
        assert [c.params["max_tokens"] for c in echo(host).calls] == [512, 256, 128]
        repairs = await kit.events(host, "stackstorm_repair")
        assert [(r["outcome"], r["attempt"]) for r in repairs] == [("failed", 2), ("succeeded", 3)]


async def test_repair_fixes_what_a_retry_cannot(kit: Any) -> None:
    # A 400 is not retryable: the default recovery gives up; trimming the history works.
    history = [
        {"role": "system", "content": "Be terse."},
        {"role": "user", "content": "first question " * 50},
        {"role": "assistant", "content": "first answer " * 50},
        {"role": "user", "content": "the real question"},
    ]
    async with kit.host() as host:
        kit.enable(host, *REPAIR_FLAGS)
        response = await host.complete(model="echo/gpt-4o-mini", messages=history, workspace="w1",
                                       params={"echo_fail": ["bad_request"]})
        assert response.text == "echo: the real question"
        assert echo(host).calls[1].messages == [history[0], history[3]]
        (repair,) = await kit.events(host, "stackstorm_repair")
        assert (repair["strategy"], repair["outcome"]) == ("trim_history", "succeeded")


async def test_a_repair_that_changes_nothing_is_refused(kit: Any) -> None:
    kit.st2.script("synthralos.agent_recovery", output=lambda params: {
        "action": "repair", "strategy": "fake",
        "request": {"messages": params["original_request"]["messages"], "params": {}}})
    async with kit.host() as host:
        kit.enable(host, *REPAIR_FLAGS)
        response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                       params={"echo_fail": ["server_error"]})
        assert response.text == "echo: hi"
        (error,) = await kit.events(host, "stackstorm_error")
        assert error["kind"] == "invalid_response" and "identical" in error["message"]
        assert await kit.events(host, "stackstorm_repair") == []


async def test_nothing_to_repair(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, *REPAIR_FLAGS)
        with pytest.raises(ProviderError):
            await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                params={"echo_fail": ["auth"]})
        (event,) = await kit.events(host, "stackstorm_execution")
        assert event["decision"] == "none" and "auth" in event["reason"]
        assert echo(host).call_count == 1


async def test_modes_are_asked_in_order_retry_reroute_repair(kit: Any) -> None:
    kit.st2.script("synthralos.llm_retry", output={"action": "give_up"})
    async with kit.host() as host:
        kit.enable(host)  # every flag
        await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                            params={"max_tokens": 100, "echo_fail": ["server_error"]})
        events = await kit.events(host, "stackstorm_execution")
        assert [(e["mode"], e["decision"]) for e in events] == [("retry", "give_up"), ("reroute", "none"),
                                                                ("repair", "repair")]
        assert echo(host).calls[1].params["max_tokens"] == 64
