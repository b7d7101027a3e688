"""Retry mode: synthralos.llm_retry decides, the host re-sends the REAL request."""

from __future__ import annotations

from typing import Any

import pytest

from synthhost import ProviderError
from synthhost.providers.echo import EchoProvider

pytestmark = pytest.mark.anyio

MESSAGES = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 + 2?"}]


def echo(host: Any) -> EchoProvider:
    provider = host.provider("echo")
    assert isinstance(provider, EchoProvider)
    return provider


async def test_retry_re_executes_the_real_request(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        response = await host.complete(model="echo/gpt-4o-mini", messages=MESSAGES, workspace="w1",
                                       params={"echo_fail": ["server_error"], "temperature": 0.2})
        assert response.text == "echo: What is 2 + 2?"  # the provider's real answer, nothing made up
        calls = list(echo(host).calls)
        assert len(calls) == 2
        assert calls[0].messages == calls[1].messages == MESSAGES  # the same request, not an empty prompt
        assert calls[1].model == "gpt-4o-mini" and calls[1].params["temperature"] == 0.2

        # StackStorm ran the real workflow on the real request.
        (execution,) = kit.st2.executions("synthralos.llm_retry")
        sent = execution["parameters"]
        assert sent["original_request"]["messages"] == MESSAGES
        assert sent["original_request"]["prompt"] == "Answer briefly.\nWhat is 2 + 2?"
        assert sent["original_request"]["model"] == "gpt-4o-mini"
        assert sent["original_request"]["parameters"]["temperature"] == 0.2
        assert (sent["error_code"], sent["status_code"], sent["attempt"], sent["max_attempts"]) == (
            "PROVIDER_ERROR", 500, 1, 3)
        assert execution["status"] == "succeeded"
        assert execution["result"]["output"]["action"] == "retry"

        (event,) = await kit.events(host, "stackstorm_execution")
        assert event["status"] == "success"
        assert (event["mode"], event["decision"], event["action"]) == ("retry", "retry", "synthralos.llm_retry")
        assert event["execution_id"] == execution["id"] and event["st2_status"] == "succeeded"
        assert event["elapsed_s"] >= 0
        (recovery,) = await kit.events(host, "recovery")
        assert recovery["action"] == "retry" and f"synthralos.llm_retry {execution['id']}" in recovery["reason"]
        (span,) = await kit.spans(host)
        assert span["recoveries"][0]["by"] == "stackstorm"
        assert span["stackstorm"][0]["decision"] == "retry"


async def test_failure_webhook_reports_each_failed_attempt(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm")  # monitoring only: no workflow flag
        await host.complete(model="echo/gpt-4o-mini", messages=MESSAGES, workspace="w1", agent="helper",
                            params={"echo_fail": ["timeout", "server_error"]})
        hooks = kit.st2.wait_for(lambda: len(kit.st2.webhooks("synthralos.agent_failure")) >= 2 and
                                 kit.st2.webhooks("synthralos.agent_failure"))
        assert [h["payload"]["attempt"] for h in hooks] == [1, 2]
        first = hooks[0]["payload"]
        assert first["error_code"] == "PROVIDER_TIMEOUT" and first["retryable"] is True
        assert (first["workspace"], first["agent"], first["provider"], first["model"]) == (
            "w1", "helper", "echo", "gpt-4o-mini")
        assert "What is 2 + 2" not in str(hooks)  # monitoring never carries the prompt
        assert kit.st2.executions() == []  # no workflow was asked


async def test_give_up_falls_back_to_the_default_recovery(kit: Any) -> None:
    kit.st2.script("synthralos.llm_retry", output={"action": "give_up", "reason": "ops said no"})
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                       params={"echo_fail": ["server_error"]})
        assert response.text == "echo: hi"
        (event,) = await kit.events(host, "stackstorm_execution")
        assert event["decision"] == "give_up" and event["reason"] == "ops said no"
        (span,) = await kit.spans(host)
        assert span["recoveries"][0]["by"] == "recovery"  # the host's default answered


async def test_not_retryable_errors_are_not_sent_to_llm_retry(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        with pytest.raises(ProviderError) as caught:
            await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                params={"echo_fail": ["auth"]})
        assert caught.value.code == "PROVIDER_AUTH"
        assert kit.st2.executions() == []
        assert echo(host).call_count == 1


async def test_a_retry_answer_cannot_exceed_the_attempt_budget(kit: Any) -> None:
    kit.st2.script("synthralos.llm_retry", output={"action": "retry", "delay_s": 0})
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        with pytest.raises(ProviderError):
            await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1", max_attempts=2,
                                params={"echo_fail": ["server_error", "server_error", "server_error"]})
        assert echo(host).call_count == 2
        assert [e["parameters"]["attempt"] for e in kit.st2.executions("synthralos.llm_retry")] == [1]


async def test_flags_are_per_workspace(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry", workspace="on")
        await host.complete(model="echo/m", messages="hi", workspace="off", params={"echo_fail": ["server_error"]})
        assert kit.st2.requests == []
        await host.complete(model="echo/m", messages="hi", workspace="on", params={"echo_fail": ["server_error"]})
        assert len(kit.st2.executions("synthralos.llm_retry")) == 1
