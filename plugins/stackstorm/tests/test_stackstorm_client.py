"""The httpx st2api client and the configuration, against the loopback fake."""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
import httpx
import pytest

from synthhost_stackstorm.client import St2Client, St2Error, post_webhook
from synthhost_stackstorm.config import Config, api_base
from synthhost_stackstorm.testing import API_KEY, FakeSt2

pytestmark = pytest.mark.anyio

RETRY_PARAMS = {"original_request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                "failure_reason": "boom", "error_code": "PROVIDER_ERROR", "status_code": 500, "base_delay_s": 0}


def config(st2: FakeSt2, **env: str) -> Config:
    cfg, why = Config.from_env(st2.env(**env))
    assert cfg is not None, why
    return cfg


@pytest.mark.parametrize(
    ("url", "base"),
    [
        ("https://st2/api", "https://st2/api/v1"),
        ("https://st2/api/", "https://st2/api/v1"),
        ("https://st2/api/v1", "https://st2/api/v1"),
        ("https://st2/api/v1/", "https://st2/api/v1"),
        ("http://st2:9101", "http://st2:9101/v1"),
    ],
)
def test_api_url_with_or_without_v1(url: str, base: str) -> None:
    assert api_base(url) == base


def test_configuration_from_the_environment() -> None:
    assert Config.from_env({}) == (None, "not configured (STACKSTORM_API_URL and STACKSTORM_API_KEY unset): inert")
    none, why = Config.from_env({"STACKSTORM_API_URL": "https://st2/api"})
    assert none is None and "STACKSTORM_API_KEY unset" in why
    off, why = Config.from_env({"STACKSTORM_API_URL": "https://st2/api", "STACKSTORM_API_KEY": "k" * 12,
                                "ENABLE_STACKSTORM": "false"})
    assert off is None and "ENABLE_STACKSTORM=false" in why
    bad, why = Config.from_env({"STACKSTORM_API_URL": "st2:9101", "STACKSTORM_API_KEY": "k" * 12})
    assert bad is None and "http://" in why
    cfg, _ = Config.from_env({"STACKSTORM_API_URL": "https://st2/api", "STACKSTORM_API_KEY": "secret-key-1234",
                              "ENABLE_STACKSTORM": "true", "STACKSTORM_TIMEOUT": "abc",
                              "STACKSTORM_POLL_INTERVAL": "0.25", "STACKSTORM_VERIFY_SSL": "false"})
    assert cfg is not None
    assert (cfg.api_url, cfg.timeout_s, cfg.poll_interval_s, cfg.verify) == ("https://st2/api/v1", 120.0, 0.25, False)
    assert cfg.auth_headers() == {"St2-Api-Key": "secret-key-1234"}
    assert "secret-key-1234" not in repr(cfg) and "secret-key-1234" not in cfg.describe()
    token, _ = Config.from_env({"STACKSTORM_API_URL": "https://st2/api", "STACKSTORM_AUTH_TOKEN": "tok-123456789"})
    assert token is not None and token.auth_headers() == {"X-Auth-Token": "tok-123456789"}


async def test_run_polls_through_the_statuses(st2: FakeSt2) -> None:
    async with St2Client(config(st2)) as client:
        execution = await client.run("synthralos.llm_retry", RETRY_PARAMS)
    assert execution.status == "succeeded" and execution.output["action"] == "retry"
    assert execution.action == "synthralos.llm_retry" and execution.elapsed_s >= 0
    assert len(execution.id) == 24 and execution.raw["end_timestamp"]
    assert [entry["status"] for entry in execution.raw["log"]] == ["requested", "scheduled", "running", "succeeded"]
    assert len(st2.calls("GET", f"/executions/{execution.id}")) == 3
    created = st2.calls("POST", "/api/v1/executions")[0]
    assert created.headers["st2-api-key"] == API_KEY and created.headers["content-type"] == "application/json"
    assert created.body == {"action": "synthralos.llm_retry", "parameters": RETRY_PARAMS}


async def test_the_execution_shape(st2: FakeSt2) -> None:
    async with St2Client(config(st2)) as client:
        started = await client.start("synthralos.classify_failure", {"failure_reason": "x"})
    raw = started.raw
    assert raw["status"] == "requested" and raw["result"] == {}
    assert set(raw) >= {"id", "action", "runner", "liveaction", "parameters", "status", "start_timestamp", "context",
                        "result", "log", "web_url"}
    assert raw["action"]["runner_type"] == "python-script" and raw["context"]["user"] == "st2admin"
    assert raw["parameters"]["max_attempts"] == 3  # defaults applied, as st2 does
    async with St2Client(config(st2)) as client:
        done = await client.run("synthralos.classify_failure", {"failure_reason": "timed out"})
    assert set(done.result) == {"exit_code", "result", "stdout", "stderr"}  # the python runner's shape
    assert done.output["category"] == "timeout"


@pytest.mark.parametrize("status", ["failed", "timeout", "canceled", "abandoned"])
async def test_every_unsuccessful_terminal_status_is_an_error(st2: FakeSt2, status: str) -> None:
    st2.script("synthralos.llm_retry", status=status)
    async with St2Client(config(st2)) as client:
        with pytest.raises(St2Error) as caught:
            await client.run("synthralos.llm_retry", RETRY_PARAMS)
    assert caught.value.kind == "failed" and caught.value.execution is not None
    assert caught.value.execution.status == status and status in caught.value.message


async def test_deadline_cancels(st2: FakeSt2) -> None:
    st2.script("synthralos.llm_retry", hang=True)
    async with St2Client(config(st2, STACKSTORM_TIMEOUT="0.05")) as client:
        with pytest.raises(St2Error) as caught:
            await client.run("synthralos.llm_retry", RETRY_PARAMS)
        assert caught.value.kind == "deadline" and "STACKSTORM_TIMEOUT" in caught.value.message
        execution_id = caught.value.execution_id
        assert execution_id is not None
        assert st2.calls("DELETE", f"/executions/{execution_id}")
        assert (await client.get(execution_id)).status == "canceled"  # canceling, then canceled
        assert "cannot be canceled" in await client.cancel(execution_id)


async def test_auth_errors_surface_the_faultstring(st2: FakeSt2) -> None:
    wrong = dataclasses.replace(config(st2), api_key="not-the-key")
    async with St2Client(wrong) as client:
        with pytest.raises(St2Error) as caught:
            await client.run("synthralos.llm_retry", RETRY_PARAMS)
    assert caught.value.kind == "unauthorized" and caught.value.status_code == 401
    assert "Unauthorized - ApiKey" in caught.value.message and "not-the-key" not in caught.value.message
    anonymous = dataclasses.replace(config(st2), api_key=None)
    async with St2Client(anonymous) as client:
        with pytest.raises(St2Error, match="One of Token or API key required"):
            await client.get_action("synthralos.llm_retry")


async def test_token_auth() -> None:
    with FakeSt2(api_key=None, auth_token="tok-abcdef123") as st2:
        cfg, _ = Config.from_env({"STACKSTORM_API_URL": st2.url, "STACKSTORM_AUTH_TOKEN": "tok-abcdef123"})
        assert cfg is not None
        async with St2Client(cfg) as client:
            assert (await client.get_action("synthralos.llm_retry"))["runner_type"] == "orquesta"
        assert st2.requests[-1].headers["x-auth-token"] == "tok-abcdef123"


async def test_rejections(st2: FakeSt2) -> None:
    async with St2Client(config(st2)) as client:
        with pytest.raises(St2Error) as missing:
            await client.run("synthralos.nope", {})
        # st2api's real answer: 400 with its faultstring (not 404); still "not installed".
        assert missing.value.kind == "not_found" and missing.value.status_code == 400
        assert 'Action "synthralos.nope" cannot be found.' in missing.value.message
        assert (st2.requests[-1].method, st2.requests[-1].path) == ("POST", "/api/v1/executions")
        with pytest.raises(St2Error) as extra:
            await client.run("synthralos.llm_retry", {**RETRY_PARAMS, "prompt": "x"})
        assert extra.value.kind == "rejected" and "Additional properties are not allowed" in extra.value.message
        with pytest.raises(St2Error, match="'failure_reason' is a required property"):
            await client.run("synthralos.llm_retry", {"original_request": {}})
        with pytest.raises(St2Error, match="is not of type 'integer'"):
            await client.run("synthralos.llm_retry", {**RETRY_PARAMS, "attempt": "2"})


async def test_direct_st2api_url_and_unreachable(st2: FakeSt2) -> None:
    direct = config(st2, STACKSTORM_API_URL=f"http://127.0.0.1:{st2.port}")  # st2api itself: /v1/...
    async with St2Client(direct) as client:
        assert (await client.run("synthralos.llm_retry", RETRY_PARAMS)).status == "succeeded"
    assert st2.requests[0].path == "/v1/executions"
    down = config(st2, STACKSTORM_API_URL=FakeSt2.closed_url())
    async with St2Client(down) as client:
        with pytest.raises(St2Error) as caught:
            await client.run("synthralos.llm_retry", RETRY_PARAMS)
    assert caught.value.kind == "unreachable"


def test_webhooks(st2: FakeSt2) -> None:
    cfg = config(st2)
    with httpx.Client(base_url=cfg.api_url, headers=cfg.auth_headers()) as http:
        post_webhook(http, "synthralos.agent_failure", {"error_code": "X"})
        assert st2.webhooks() == [{"trigger": "synthralos.agent_failure", "payload": {"error_code": "X"}}]
        response = http.post("/webhooks/st2", json={"payload": {}})
        assert response.status_code == 400 and response.json() == {"faultstring": "Trigger not specified."}
        assert http.post("/webhooks/custom", json={"a": 1}).status_code == 404
        st2.register_webhook("custom")
        accepted = http.post("/webhooks/custom", json={"a": 1})
        assert accepted.status_code == 202 and accepted.json() == {"a": 1}
    with httpx.Client(base_url=cfg.api_url) as anonymous:
        assert anonymous.post("/webhooks/st2", json={"trigger": "t"}).status_code == 401


async def test_health(make_host: Any, st2: FakeSt2) -> None:
    import synthhost_stackstorm

    async with make_host(synthhost_stackstorm, env=st2.env()) as host:
        ok, detail = await synthhost_stackstorm.health(host)
        assert ok and "pack synthralos installed" in detail and st2.url + "/v1" in detail
    async with make_host(synthhost_stackstorm, env=st2.env(STACKSTORM_API_URL=FakeSt2.closed_url())) as host:
        ok, detail = await synthhost_stackstorm.health(host)
        assert not ok and "ConnectError" in detail


async def test_a_cancelled_caller_cancels_the_execution(st2: FakeSt2) -> None:
    st2.script("synthralos.llm_retry", hang=True)
    async with St2Client(config(st2)) as client:
        with anyio.move_on_after(0.05):
            await client.run("synthralos.llm_retry", RETRY_PARAMS)
    (execution,) = st2.executions("synthralos.llm_retry")
    assert execution["status"] == "canceling" and st2.calls("DELETE", f"/executions/{execution['id']}")


async def test_the_double_answers_like_st2api(st2: FakeSt2) -> None:
    """Statuses and faultstrings of st2api for the endpoints the plugin uses."""
    cfg = config(st2)
    async with httpx.AsyncClient(base_url=cfg.api_url, headers=cfg.auth_headers()) as http:
        missing = await http.post("/executions", json={"action": "nopack.nothing", "parameters": {}})
        assert missing.status_code == 400
        assert missing.json() == {"faultstring": 'Action "nopack.nothing" cannot be found.'}
        unknown = await http.get("/executions/5f0000000000000000000000")
        assert unknown.status_code == 404
        assert unknown.json() == {"faultstring": 'Unable to identify resource with id "5f0000000000000000000000".'}
    async with httpx.AsyncClient(base_url=cfg.api_url) as anonymous:
        denied = await anonymous.post("/executions", json={"action": "synthralos.llm_retry"})
        assert denied.status_code == 401 and denied.json()["faultstring"].startswith("Unauthorized")
