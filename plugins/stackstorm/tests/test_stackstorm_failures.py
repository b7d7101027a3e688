"""Whatever goes wrong with StackStorm, the call behaves as if it were not there; flags off
means StackStorm is never called; the API key never leaves the Authorization header."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from synthhost import Denied, hookimpl
from synthhost.call import Call
from synthhost.providers.echo import EchoProvider
from synthhost.registry import RegisterGate
from synthhost_stackstorm.testing import FakeSt2

pytestmark = pytest.mark.anyio

SECRET = "st2-very-secret-key-7c1d9e"


def echo(host: Any) -> EchoProvider:
    provider = host.provider("echo")
    assert isinstance(provider, EchoProvider)
    return provider


async def call_once(host: Any, **params: Any) -> str:
    response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                   params={"echo_fail": ["server_error"], **params})
    return response.text


async def test_stackstorm_down(kit: Any) -> None:
    async with kit.host(env={"STACKSTORM_API_URL": FakeSt2.closed_url()}) as host:
        kit.enable(host)
        assert await call_once(host) == "echo: hi"
        assert echo(host).call_count == 2
        (error,) = await kit.events(host, "stackstorm_error")  # not asked again for reroute/repair
        assert (error["kind"], error["mode"]) == ("unreachable", "retry")
        (span,) = await kit.spans(host)
        assert span["recoveries"][0]["by"] == "recovery"


async def test_unauthorized(kit: Any) -> None:
    async with kit.host(env={"STACKSTORM_API_KEY": "wrong-key-123456"}) as host:
        kit.enable(host)
        assert await call_once(host) == "echo: hi"
        (error,) = await kit.events(host, "stackstorm_error")
        assert error["kind"] == "unauthorized" and error["status_code"] == 401
        assert "Unauthorized - ApiKey" in error["message"]  # st2's faultstring, surfaced
        assert "STACKSTORM_API_KEY" in error["message"]
        assert kit.st2.executions() == []


@pytest.mark.parametrize("status", ["failed", "timeout", "abandoned", "canceled"])
async def test_workflow_did_not_succeed(kit: Any, status: str) -> None:
    kit.st2.script("synthralos.llm_retry", status=status, errors=[{"type": "error", "message": "task classify boom"}])
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        assert await call_once(host) == "echo: hi"
        (error,) = await kit.events(host, "stackstorm_error")
        assert error["kind"] == "failed" and status in error["message"]
        (execution,) = await kit.events(host, "stackstorm_execution")
        assert (execution["st2_status"], execution["status"]) == (status, "error")
        if status == "failed":
            assert "task classify boom" in error["message"]


async def test_our_deadline_cancels_the_execution(kit: Any) -> None:
    kit.st2.script("synthralos.llm_retry", hang=True)
    # Long enough for the POST even on a loaded machine; the workflow hangs past it.
    async with kit.host(env={"STACKSTORM_TIMEOUT": "0.5"}) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry", "enable_stackstorm_reroute")
        assert await call_once(host) == "echo: hi"
        errors = await kit.events(host, "stackstorm_error")
        # llm_retry hit the deadline; reroute_request was then skipped, and said so.
        assert [(e["mode"], e["kind"]) for e in errors] == [("retry", "deadline"), ("reroute", "deadline")]
        assert "spent before asking" in errors[1]["message"]
        (execution,) = kit.st2.executions()  # the budget is spent: reroute_request is not asked
        assert kit.st2.calls("DELETE", f"/executions/{execution['id']}")
        assert execution["status"] == "canceling"


async def test_st2_server_error_on_one_workflow_does_not_stop_the_next(kit: Any) -> None:
    kit.st2.fail_next(503, "Service Unavailable", method="POST", path="/executions")
    async with kit.host() as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry", "enable_stackstorm_reroute")
        response = await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1",
                                       params={"echo_fail": ["server_error"]},
                                       metadata={"fallback_models": ["gpt-4o"]})
        assert response.text == "echo: hi"
        (error,) = await kit.events(host, "stackstorm_error")
        assert (error["kind"], error["mode"], error["status_code"]) == ("server_error", "retry", 503)
        assert echo(host).calls[1].model == "gpt-4o"  # the reroute still happened


async def test_pack_not_installed(kit: Any) -> None:
    async with kit.host(env={"STACKSTORM_PACK": "missing"}) as host:
        kit.enable(host, "enable_stackstorm", "enable_stackstorm_retry")
        assert await call_once(host) == "echo: hi"
        (error,) = await kit.events(host, "stackstorm_error")
        assert error["kind"] == "not_found" and 'Action "missing.llm_retry" cannot be found.' in error["message"]
        ok, detail = await host.registry.health_checks["stackstorm"][1](host)
        assert not ok and "not installed" in detail


async def test_flags_off_means_stackstorm_is_never_called(kit: Any) -> None:
    async with kit.host() as host:
        for flag in ("enable_stackstorm_retry", "enable_stackstorm_reroute", "enable_stackstorm_repair_execution"):
            host.flags.set(flag, True)  # sub-flags on, gate off
        assert await call_once(host) == "echo: hi"
        assert not host.is_active("stackstorm", "w1")
    assert kit.st2.requests == []


async def test_kill_switch(kit: Any) -> None:
    async with kit.host(env={"ENABLE_STACKSTORM": "false"}) as host:
        kit.enable(host)
        assert await call_once(host) == "echo: hi"
        ok, detail = await host.registry.health_checks["stackstorm"][1](host)
        assert ok and "ENABLE_STACKSTORM=false" in detail
    assert kit.st2.requests == []


async def test_not_configured_is_inert_and_says_so_once(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="synthhost.stackstorm")
    async with kit.host(configured=False, env={"STACKSTORM_API_URL": "", "STACKSTORM_API_KEY": ""}) as host:
        kit.enable(host)
        assert await call_once(host) == "echo: hi"
        assert await call_once(host) == "echo: hi"
        ok, detail = await host.registry.health_checks["stackstorm"][1](host)
        assert ok and "not configured" in detail and "STACKSTORM_API_URL" in detail
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "inert" in warnings[0].getMessage()
    assert kit.st2.requests == []


class DenyAll:
    __name__ = "deny_all"

    @hookimpl
    def register_gate(self, register: RegisterGate) -> None:
        register(None, order={"pre_call": 200})

    @hookimpl
    def pre_call(self, call: Call) -> None:
        raise Denied("POLICY_DENIED", "no")


async def test_denials_are_never_sent_to_stackstorm(kit: Any) -> None:
    async with kit.host(DenyAll()) as host:
        kit.enable(host)
        with pytest.raises(Denied):
            await call_once(host)
    assert kit.st2.requests == []


async def test_the_api_key_never_appears_in_events_spans_or_logs(kit: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with FakeSt2(api_key=SECRET) as st2:
        for key in (SECRET, SECRET + "-wrong"):  # accepted, then refused (401)
            emitted: list[dict[str, Any]] = []
            host = kit.host(st2=st2, env={"STACKSTORM_API_KEY": key})
            host._on_emit.append(emitted.append)  # events as emitted, before the store redacts
            async with host:
                kit.enable(host)
                await host.complete(model="echo/m", messages="hi", workspace="w1",
                                    params={"echo_fail": ["server_error"], "max_tokens": 500})
                _, detail = await host.registry.health_checks["stackstorm"][1](host)
                assert key not in detail
                stored = await kit.all_event_rows(host)
                spans = await kit.spans(host)
            assert any(e["event_type"].startswith("stackstorm_") for e in emitted)
            for blob in (repr(emitted), repr(stored), repr(spans), caplog.text, repr(st2.executions())):
                assert SECRET not in blob
            sent = st2.calls("POST", "/executions")[-1].headers
            assert sent["st2-api-key"] == key and "authorization" not in sent  # the St2-Api-Key header, no Bearer
