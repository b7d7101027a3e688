"""The routing plugin in a real host, on SQLite and PostgreSQL: every decision is applied
to the call that follows (the provider receives the routed model and region), recorded
on the span and as an event; failures reroute over untried routes only."""

from __future__ import annotations

from typing import Any

import pytest

import synthhost_routing
from synthhost import Denied, ProviderError, Recovery, hookimpl, tokens
from synthhost.host import Host
from synthhost.providers.echo import EchoProvider
from synthhost_routing import PROMPT_TOO_LONG, set_config

pytestmark = pytest.mark.anyio


def echo(host: Host, name: str = "echo") -> EchoProvider:
    provider = host.provider(name)
    assert isinstance(provider, EchoProvider)
    return provider


def big(tokens: int) -> str:
    """A prompt of ``tokens`` tokens for tiktoken (" the" is one token) and ~chars/4."""
    return " the" * tokens


async def test_flag_off_changes_nothing(kit: Any) -> None:
    async with kit.host() as host:
        await host.complete(model="echo/gpt-4", messages=big(10_000), workspace="w1")
        assert echo(host).calls[-1].model == "gpt-4"
        assert "route" not in (await kit.spans(host))[-1]["attributes"]


async def test_defaults_apply_context_fit_to_the_real_call(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        response = await host.complete(model="echo/gpt-4", messages=big(10_000), workspace="w1")
        assert echo(host).calls[-1].model == "gpt-4o"  # what the provider received
        assert response.model == "gpt-4o"
        span = (await kit.spans(host))[-1]["attributes"]
        assert span["model"] == "gpt-4o" and span["requested_model"] == "gpt-4"
        route = span["route"]
        assert route["changed"] is True
        assert route["original_model"] == "gpt-4"
        assert route["factors"]["prompt_tokens"] == 10_000 + tokens.PER_MESSAGE + tokens.PER_REPLY
        assert route["factors"]["context_window"] == 128_000
        assert "context" in route["reason"]
        [event] = await kit.events(host, "route_decided")
        assert event["context"]["model"] == "gpt-4o" and event["context"]["original_model"] == "gpt-4"
        # a call that needs no change: on the span, no event
        await host.complete(model="echo/gpt-4", messages="short", workspace="w1")
        assert echo(host).calls[-1].model == "gpt-4"
        assert (await kit.spans(host))[-1]["attributes"]["route"]["changed"] is False
        assert len(await kit.events(host, "route_decided")) == 1


async def test_team_plan_keeps_gpt_4o_mini_and_replaces_what_it_does_not_list(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"plan": "team"}, workspace="w1")
        await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1")
        assert echo(host).calls[-1].model == "gpt-4o-mini"
        await host.complete(model="echo/o3", messages="hi", workspace="w1")
        assert echo(host).calls[-1].model == "gpt-4o"
        # workspaces are isolated: w2 has no plan
        kit.enable(host, "w2")
        await host.complete(model="echo/o3", messages="hi", workspace="w2")
        assert echo(host).calls[-1].model == "o3"


async def test_region_reaches_the_provider_and_gdpr_stays_in_the_eu(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"region": {"compliance": ["GDPR"], "default": "us-east-1"}}, workspace="w1")
        await host.complete(
            model="echo/gpt-4o", messages="hi", workspace="w1", metadata={"preferred_region": "us-east-1"}
        )
        assert echo(host).calls[-1].region == "eu-west-1"
        await host.complete(model="google/gemini-1.5-pro", messages="hi", workspace="w1")
        assert echo(host, "google").calls[-1].region == "europe-west4"  # Google's name for an EU region
        # a caller cannot move the workspace out of the EU
        await host.complete(model="echo/gpt-4o", messages="hi", workspace="w1", metadata={"data_residency": "US"})
        assert echo(host).calls[-1].region == "eu-west-1"
        span = (await kit.spans(host))[0]["attributes"]
        assert span["region"] == "eu-west-1"
        assert span["route"]["factors"]["compliance"] == ["GDPR"]
        assert span["route"]["warnings"] == [
            "preferred region us-east-1 ignored: outside EU (compliance)",
            "default region us-east-1 ignored: outside EU (compliance)",
        ]
        assert all(
            r.startswith("eu-") and r not in ("eu-west-2", "eu-central-2") for r in span["route"]["fallback_regions"]
        )


async def test_an_over_limit_prompt_is_denied_before_the_provider(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"max_prompt_tokens": 1000}, workspace="w1")
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/gpt-4o", messages=big(1001), workspace="w1")
        assert info.value.code == PROMPT_TOO_LONG
        assert echo(host).call_count == 0
        [span] = await kit.spans(host)
        assert span["error_code"] == "PROMPT_TOO_LONG"
        assert span["attributes"]["denial"]["max_prompt_tokens"] == 1000


async def test_a_failure_reroutes_to_the_other_providers_model(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"fallback_providers": ["anthropic"]}, workspace="w1")
        response = await host.complete(
            model="echo/gpt-4o", messages="hi", workspace="w1", params={"echo_fail": ["server_error"]}
        )
        assert [r.model for r in echo(host).calls] == ["gpt-4o"]
        # the provider switch took Anthropic's model name, not "gpt-4o"
        assert [r.model for r in echo(host, "anthropic").calls] == ["claude-3-5-sonnet-latest"]
        assert response.text.startswith("echo: hi")
        span = (await kit.spans(host))[-1]["attributes"]
        assert span["provider"] == "anthropic" and span["attempts"] == 2
        [reroute] = span["route"]["reroutes"]
        assert reroute["error"] == "PROVIDER_ERROR"
        assert reroute["to"] == {"provider": "anthropic", "model": "claude-3-5-sonnet-latest", "region": None}
        assert span["recoveries"][0]["by"] == "routing" and span["recoveries"][0]["action"] == "reroute"
        [event] = await kit.events(host, "recovery")
        assert event["context"]["action"] == "reroute"


async def test_no_reroute_loop(kit: Any) -> None:
    """a → b → (a was tried) no reroute: the default recovery retries b until attempts run out."""
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"fallbacks": {"model-a": ["model-b"], "model-b": ["model-a"]}}, workspace="w1")
        with pytest.raises(ProviderError):
            await host.complete(
                model="echo/model-a",
                messages="hi",
                workspace="w1",
                params={"echo_fail": ["server_error"] * 6},
                max_attempts=5,
            )
        assert [r.model for r in echo(host).calls] == ["model-a", "model-b", "model-b", "model-b", "model-b"]
        recoveries = (await kit.spans(host))[-1]["attributes"]["recoveries"]
        assert [(r["by"], r["action"]) for r in recoveries] == [
            ("routing", "reroute"),
            ("recovery", "retry"),
            ("recovery", "retry"),
            ("recovery", "retry"),
            ("recovery", "give_up"),
        ]


@pytest.mark.parametrize("kind", ["auth", "bad_request"])
async def test_no_reroute_for_errors_that_cannot_be_retried(kit: Any, kind: str) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"fallback_providers": ["anthropic"]}, workspace="w1")
        with pytest.raises(ProviderError):
            await host.complete(model="echo/gpt-4o", messages="hi", workspace="w1", params={"echo_fail": [kind]})
        assert echo(host).call_count == 1 and echo(host, "anthropic").call_count == 0


async def test_reroute_after_and_max_attempts(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"fallback_providers": ["anthropic"], "reroute_after": 2}, workspace="w1")
        await host.complete(
            model="echo/gpt-4o", messages="hi", workspace="w1", params={"echo_fail": ["timeout", "timeout"]}
        )
        assert [r.model for r in echo(host).calls] == ["gpt-4o", "gpt-4o"]  # retried once, then left
        assert [r.model for r in echo(host, "anthropic").calls] == ["claude-3-5-sonnet-latest"]
        # one attempt allowed: nothing to reroute to
        with pytest.raises(ProviderError):
            await host.complete(
                model="echo/gpt-4o", messages="hi", workspace="w1", params={"echo_fail": ["timeout"]}, max_attempts=1
            )
        assert echo(host, "anthropic").call_count == 1


async def test_gdpr_reroute_to_another_provider_stays_in_the_eu(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(host, {"region": {"compliance": ["GDPR"]}, "fallback_providers": ["google"]}, workspace="w1")
        await host.complete(model="echo/gpt-4o", messages="hi", workspace="w1", params={"echo_fail": ["rate_limit"]})
        assert echo(host).calls[-1].region == "eu-west-1"
        sent = echo(host, "google").calls[-1]
        assert (sent.model, sent.region) == ("gemini-1.5-pro", "europe-west4")


async def test_region_failover_then_fallback_models(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        set_config(
            host,
            {
                "region": {"data_residency": "EU", "allowed": ["eu-west-1", "eu-central-1"]},
                "region_failover": True,
                "fallbacks": {"gpt-4o": ["gpt-4o-mini"]},
            },
            workspace="w1",
        )
        await host.complete(
            model="echo/gpt-4o",
            messages="hi",
            workspace="w1",
            params={"echo_fail": ["server_error", "server_error"]},
        )
        sent = [(r.model, r.region) for r in echo(host).calls]
        assert sent == [("gpt-4o", "eu-west-1"), ("gpt-4o", "eu-central-1"), ("gpt-4o-mini", "eu-central-1")]


async def test_config_changes_apply_at_once_and_from_other_processes(kit: Any, make_host: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        await host.complete(model="echo/o3", messages="hi", workspace="w1")
        assert echo(host).calls[-1].model == "o3"
        # another process (another host on the same database) changes the config
        other = make_host(synthhost_routing)
        other.migrate()
        set_config(other, {"plan": "free"}, workspace="w1")
        assert synthhost_routing.runtime(host).poll_once() is True
        await host.complete(model="echo/o3", messages="hi", workspace="w1")
        assert echo(host).calls[-1].model == "gpt-4o-mini"
        assert synthhost_routing.routing_for(host, "w1").plan == "free"


class RerouteToO3:
    """Another plugin rerouting to a model the plan does not allow."""

    __name__ = "reroute_to_o3"

    @hookimpl
    def register_gate(self, register: Any) -> None:
        register(None, order={"on_failure": 500})

    @hookimpl
    def on_failure(self, call: Any, error: BaseException, attempt: int) -> Recovery | None:
        return Recovery("reroute", changes={"model": "o3"}, reason="test") if attempt == 1 else None


async def test_another_plugins_reroute_is_held_to_the_rules(kit: Any) -> None:
    async with kit.host(RerouteToO3()) as host:
        kit.enable(host)
        set_config(host, {"plan": "team"}, workspace="w1")
        await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w1", params={"echo_fail": ["timeout"]})
        assert [r.model for r in echo(host).calls] == ["gpt-4o-mini", "gpt-4o"]  # not o3
        route = (await kit.spans(host))[-1]["attributes"]["route"]
        [adjustment] = route["adjustments"]
        assert (adjustment["attempt"], adjustment["original_model"], adjustment["model"]) == (2, "o3", "gpt-4o")
