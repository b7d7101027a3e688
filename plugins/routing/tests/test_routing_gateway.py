"""The ``archgw`` provider against a loopback fake of the Arch gateway / Plano model
listener: what arrives on the wire (model, provider hint, trace headers, key), what comes
back (the resolved upstream model), reroutes inside the gateway, one gateway per region,
and the health check."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import synthhost_routing
from synthhost import ProviderError
from synthhost.host import Host
from synthhost_routing import gateway as gw_module
from synthhost_routing import set_config

pytestmark = pytest.mark.anyio


@pytest.fixture
def gateway_host(make_host: Any, fast_retry: Any) -> Callable[[dict[str, str]], Host]:
    """Routing + the gateway only (no direct anthropic/google providers), zero backoff."""

    def make(env: dict[str, str]) -> Host:
        return make_host(synthhost_routing, fast_retry, env=env)

    return make


async def test_explicit_model_unpinned_when_routing_is_off(gateway_host: Any, gateway: Any) -> None:
    async with gateway_host({"ARCHGW_URL": gateway.url}) as host:
        response = await host.complete(model="archgw/openai/gpt-4o", messages="hi", params={"temperature": 0.2})
    [sent] = gateway.chat_requests()
    assert sent["body"] == {
        "model": "openai/gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
    }
    assert "x-arch-llm-provider-hint" not in sent["headers"]
    assert "authorization" not in sent["headers"]  # provider keys live in the gateway
    assert sent["headers"]["traceparent"].startswith("00-") and len(sent["headers"]["traceparent"]) == 55
    assert len(sent["headers"]["x-request-id"]) == 32
    assert response.model == "gpt-4o-2024-08-06"  # the upstream id the gateway resolved
    assert response.provider == "openai"
    assert response.text == "[openai/gpt-4o] ok"


async def test_alias_is_resolved_by_the_gateway(gateway_host: Any, gateway: Any) -> None:
    async with gateway_host({"ARCHGW_URL": gateway.url}) as host:
        host.flags.set(synthhost_routing.FLAG, True, workspace="w1")
        response = await host.complete(model="archgw/fast", messages="hi", workspace="w1")
    [sent] = gateway.chat_requests()
    assert sent["body"]["model"] == "fast"
    assert "x-arch-llm-provider-hint" not in sent["headers"]  # an alias is the gateway's choice
    assert response.model == "gpt-4o-mini-2024-07-18"
    assert response.provider == "archgw"


async def test_routing_decision_pins_the_gateway_provider(gateway_host: Any, gateway: Any) -> None:
    async with gateway_host({"ARCHGW_URL": gateway.url}) as host:
        host.flags.set(synthhost_routing.FLAG, True, workspace="w1")
        response = await host.complete(model="archgw/openai/gpt-4", messages="x" * 40_000, workspace="w1")
        await host.writer.flush()
    [sent] = gateway.chat_requests()
    # context fit: 10,000 tokens do not fit gpt-4's 8,192; the gateway got gpt-4o, pinned
    assert sent["body"]["model"] == "openai/gpt-4o"
    assert sent["headers"]["x-arch-llm-provider-hint"] == "openai/gpt-4o"
    assert response.model == "gpt-4o-2024-08-06"


async def test_explicit_hint_from_metadata(gateway_host: Any, gateway: Any) -> None:
    async with gateway_host({"ARCHGW_URL": gateway.url}) as host:
        response = await host.complete(
            model="archgw/none", messages="hi", metadata={gw_module.HINT_KEY: "ministral-3b"}
        )
    [sent] = gateway.chat_requests()
    assert sent["headers"]["x-arch-llm-provider-hint"] == "ministral-3b"
    assert response.model == "ministral-3b-latest"


async def test_reroute_switches_upstream_inside_the_gateway(gateway_host: Any, gateway: Any) -> None:
    gateway.fail_next(503)
    async with gateway_host({"ARCHGW_URL": gateway.url}) as host:
        host.flags.set(synthhost_routing.FLAG, True, workspace="w1")
        set_config(host, {"fallback_providers": ["anthropic"]}, workspace="w1")
        response = await host.complete(model="archgw/openai/gpt-4o", messages="hi", workspace="w1")
    first, second = gateway.chat_requests()
    assert (first["body"]["model"], first["headers"]["x-arch-llm-provider-hint"]) == ("openai/gpt-4o", "openai/gpt-4o")
    assert second["body"]["model"] == "anthropic/claude-3-5-sonnet-latest"
    assert second["headers"]["x-arch-llm-provider-hint"] == "anthropic/claude-3-5-sonnet-latest"
    assert (response.provider, response.model) == ("anthropic", "claude-3-5-sonnet-latest")


async def test_key_is_sent_and_never_leaks(gateway_host: Any, gateway: Any) -> None:
    gateway.fail_next(401)
    env = {"ARCHGW_URL": gateway.url, "ARCHGW_API_KEY": "sk-gw-secret-123"}
    async with gateway_host(env) as host:
        host.flags.set(synthhost_routing.FLAG, True, workspace="w1")
        set_config(host, {"fallback_providers": ["anthropic"]}, workspace="w1")
        with pytest.raises(ProviderError) as info:
            await host.complete(model="archgw/openai/gpt-4o", messages="hi", workspace="w1")
        assert repr(host.provider("archgw")).count("sk-gw") == 0
    assert info.value.code == "PROVIDER_AUTH"
    assert "sk-gw-secret-123" not in str(info.value)
    [sent] = gateway.chat_requests()  # not retryable: no reroute
    assert sent["headers"]["authorization"] == "Bearer sk-gw-secret-123"


async def test_one_gateway_per_region(gateway_host: Any, fake_gateway: Any) -> None:
    with fake_gateway() as eu, fake_gateway() as us:
        env = {"ARCHGW_URL": us.url, "ARCHGW_REGION_URLS": f"eu-west-1={eu.url}, us-east-1={us.url}"}
        async with gateway_host(env) as host:
            host.flags.set(synthhost_routing.FLAG, True)
            set_config(host, {"region": {"compliance": ["GDPR"]}}, workspace="eu-ws")
            await host.complete(model="archgw/openai/gpt-4o", messages="hi", workspace="eu-ws")
            assert (len(eu.chat_requests()), len(us.chat_requests())) == (1, 0)
            # a region without a gateway is refused, never sent to another region's gateway
            with pytest.raises(ProviderError) as info:
                await host.complete(
                    model="archgw/openai/gpt-4o",
                    messages="hi",
                    workspace="asia-ws",
                    metadata={"data_residency": "ASIA"},
                )
            assert info.value.code == "PROVIDER_BAD_REQUEST"
            assert "no gateway for region 'ap-southeast-1'" in info.value.message
            assert (len(eu.chat_requests()), len(us.chat_requests())) == (1, 0)
            # no region asked: the default gateway
            await host.complete(model="archgw/openai/gpt-4o", messages="hi", workspace="plain")
            assert len(us.chat_requests()) == 1


async def test_health_check(make_host: Any, gateway: Any, closed_url: str) -> None:
    host = make_host(synthhost_routing, env={"ARCHGW_URL": gateway.url})
    plugin, check = host.registry.health_checks["archgw"]
    assert plugin == "routing"
    ok, detail = await check(host)
    root = gateway.url.removesuffix("/v1")
    assert (ok, detail) == (True, f"{root} ok (5 models)")
    assert [r["path"] for r in gateway.requests] == ["/healthz", "/v1/models"]

    ok, detail = await check(make_host(synthhost_routing, env={"ARCHGW_URL": closed_url}))
    assert not ok and "unreachable (ConnectError)" in detail

    bare = make_host(synthhost_routing, env={"ARCHGW_URL": "", "ARCHGW_REGION_URLS": ""})
    assert await check(bare) == (True, "not configured (ARCHGW_URL unset)")


def test_factory_validates_the_environment(make_host: Any) -> None:
    from synthhost.errors import UsageError

    for env, message in [
        ({"ARCHGW_URL": "localhost:12000"}, "ARCHGW_URL: expected an http:// or https:// URL"),
        ({"ARCHGW_TIMEOUT": "0"}, "ARCHGW_TIMEOUT: expected a positive number"),
        ({"ARCHGW_REGION_URLS": "eu-west-1"}, "ARCHGW_REGION_URLS: expected region=url"),
    ]:
        with pytest.raises(UsageError, match=message):
            gw_module.factory(make_host(synthhost_routing, env=env))
