"""End to end through a real host (SQLite and PostgreSQL for the limits table, the real
Redis for the counters): denials, corrections, refunds, configuration, CLI, outages."""

from __future__ import annotations

import json
from typing import Any

import anyio
import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner

import synthhost_ratelimit as plugin
from synthhost import Denied, ErrorCode, ProviderError, Stage, hookimpl
from synthhost.cli import cli
from synthhost_ratelimit.store import set_limit

pytestmark = pytest.mark.anyio

FLAG = "enable_rate_limiting"


def env_for(redis_url: str | None, prefix: str, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url or "", "SYNTHHOST_RATELIMIT_PREFIX": prefix, **extra}


def configure(host: Any, workspace: str, scope: str, **limits: Any) -> None:
    set_limit(host.engine, workspace, scope, **limits)
    refresher = plugin.state(host).refresher
    assert refresher is not None
    refresher.reload()  # what the refresher thread does every second


# Token limits in these tests use a long window (10**7 s: 0.01 token/s for 100,000) so
# that what drains while a test runs never shows: buckets read as exactly what was charged.
LONG_S = 10**7


def counter(client: redis.Redis, prefix: str, key: str) -> tuple[int, int]:
    """(requests, tokens) held in a scope's bucket, as last stored."""
    from synthhost_ratelimit.local import ceil_div

    raw = client.get(f"{prefix}:{key}:g")
    if raw is None:
        return 0, 0
    assert isinstance(raw, bytes)
    _t, r, rc, _rd, k, kc, _kd = (float(x) for x in raw.split(b","))
    return int(ceil_div(r, rc)) if rc else 0, int(ceil_div(k, kc)) if kc else 0


async def events(host: Any, event_type: str) -> list[dict[str, Any]]:
    await host.writer.flush()
    with host.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT context, status FROM event_logs WHERE event_type = :t"),
                            {"t": event_type}).all()
    out = []
    for context, status in rows:
        ctx = json.loads(context) if isinstance(context, str) else context
        out.append({**ctx, "_status": status})
    return out


class Blocker:
    """An input guardrail that denies calls whose prompt says 'forbidden'."""

    __name__ = "blocker"

    @hookimpl
    def register_gate(self, register: Any) -> None:
        register(None, order={"pre_call": Stage.GUARD_INPUT})

    @hookimpl
    def pre_call(self, call: Any) -> None:
        if "forbidden" in call.request.prompt:
            raise Denied(ErrorCode.GUARDRAIL_VIOLATION, "no")


def settled(host: Any) -> None:
    settler = plugin.state(host).settler
    assert settler is not None and settler.drain(5.0)


async def test_ratelimit_host_denies_and_corrects(make_host: Any, redis_url: str,
                                                  rl_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    async with make_host(plugin, env=env_for(redis_url, rl_prefix)) as host:
        host.flags.set(FLAG, True, workspace="w1")
        configure(host, "w1", "user", requests=2, window_s=60)
        configure(host, "w1", "workspace", tokens=100_000, window_s=LONG_S)
        usage = 0
        for _ in range(2):
            r = await host.complete(model="echo/e1", messages="hello there", workspace="w1",
                                    user="alice", params={"max_tokens": 300})
            usage += r.usage.total_tokens
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/e1", messages="hello there", workspace="w1",
                                user="alice")
        denied = info.value
        assert denied.code == ErrorCode.RATE_LIMITED
        assert denied.details["scope"] == "user" and denied.details["limit"] == 2
        assert denied.details["kind"] == "requests" and denied.details["window_s"] == 60
        assert 29 < denied.details["retry_after"] <= 30  # one call's worth of 2 per minute
        assert host.provider("echo").call_count == 2
        r = await host.complete(model="echo/e1", messages="hi", workspace="w1", user="bob")
        usage += r.usage.total_tokens
        # the estimates (chars/4 + max_tokens) were replaced by the real usage (corrections
        # go out from a thread of their own, after the call returned)
        settled(host)
        assert counter(client, rl_prefix, "ws:w1") == (3, usage)
        assert counter(client, rl_prefix, "ws:w1:user:alice") == (2, 0)  # no token limit: no token bucket
        # the flag is per workspace: w2 is not limited, and nothing is counted for it
        for _ in range(4):
            await host.complete(model="echo/e1", messages="x", workspace="w2", user="alice")
        assert client.exists(f"{rl_prefix}:ws:w2:g") == 0
        limited = await events(host, "rate_limited")
        assert len(limited) == 1
        assert limited[0]["scope"] == "user" and limited[0]["_status"] == "error"
        with host.engine.connect() as conn:
            codes = conn.execute(sa.text("SELECT error_code FROM spans WHERE kind = 'call' "
                                         "AND status = 'error'")).scalars().all()
        assert codes == ["RATE_LIMITED"]
    client.close()


async def test_ratelimit_host_refunds_what_was_not_used(make_host: Any, redis_url: str,
                                                        rl_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url)
    async with make_host(plugin, Blocker(), env=env_for(redis_url, rl_prefix)) as host:
        host.flags.set(FLAG, True, workspace="w1")
        configure(host, "w1", "user", requests=10, tokens=50_000, window_s=LONG_S)
        key = "ws:w1:user:alice"
        # denied by a later pre_call plugin: the provider never ran, nothing is kept
        with pytest.raises(Denied):
            await host.complete(model="echo/e1", messages="forbidden", workspace="w1", user="alice")
        assert counter(client, rl_prefix, key) == (0, 0)
        # the provider failed: the request stays counted, the token estimate is refunded
        with pytest.raises(ProviderError):
            await host.complete(model="echo/e1", messages="hi", workspace="w1", user="alice",
                                params={"echo_fail": ["auth"]})
        settled(host)
        assert counter(client, rl_prefix, key) == (1, 0)
        # a retried call: each attempt is a request; tokens only for the one that answered
        r = await host.complete(model="echo/e1", messages="hi", workspace="w1", user="alice",
                                params={"echo_fail": ["server_error"]}, max_attempts=2)
        assert host.provider("echo").call_count == 3
        settled(host)
        assert counter(client, rl_prefix, key) == (3, r.usage.total_tokens)
    client.close()


async def test_ratelimit_host_config_precedence_and_cli(make_host: Any, db_url: str,
                                                        redis_url: str, rl_prefix: str) -> None:
    def invoke(*args: str) -> Any:
        env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "ratelimit", "REDIS_URL": redis_url,
               "SYNTHHOST_RATELIMIT_PREFIX": rl_prefix}
        return CliRunner().invoke(cli, list(args), env=env)

    async with make_host(plugin, env=env_for(redis_url, rl_prefix,
                                             SYNTHHOST_RATELIMIT_REFRESH_S="0.05")) as host:
        host.flags.set(FLAG, True)
        ok = invoke("ratelimit", "set", "--workspace", "w1", "--scope", "user", "--requests", "1",
                    "--window", "30")
        assert ok.exit_code == 0, ok.output
        assert ok.output == "user limit for workspace w1: 1 req / ∞ tok per 30s\n"
        assert invoke("ratelimit", "set", "--global", "--scope", "agent", "--requests", "5").exit_code == 0
        assert invoke("ratelimit", "set", "--global", "--scope", "org", "--requests", "none").exit_code == 0
        listed = json.loads(invoke("ratelimit", "list", "--workspace", "w1", "--json").output)
        by_scope = {x["scope"]: x for x in listed["limits"]}
        assert (by_scope["user"]["requests"], by_scope["user"]["source"]) == (1, "workspace")
        assert (by_scope["agent"]["requests"], by_scope["agent"]["source"]) == (5, "global")
        assert by_scope["org"]["unlimited"] and by_scope["org"]["source"] == "global"
        assert (by_scope["workspace"]["requests"], by_scope["workspace"]["source"]) == (500, "default")
        assert by_scope["model"]["unlimited"] and by_scope["model"]["source"] == "-"
        rows = json.loads(invoke("ratelimit", "list", "--json").output)
        assert {(r["workspace"], r["scope"]) for r in rows} == {("w1", "user"), ("*", "agent"),
                                                                ("*", "org")}

        # the running host picks the rows up by itself
        with anyio.fail_after(5):
            while len(plugin.state(host).table.rows) != 3:
                await anyio.sleep(0.05)
        assert plugin.state(host).table.for_workspace("w1")["user"].requests == 1
        await host.complete(model="echo/e1", messages="hi", workspace="w1", user="ann", agent="bot")
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/e1", messages="hi", workspace="w1", user="ann")
        assert info.value.details["scope"] == "user"
        await host.complete(model="echo/e1", messages="hi", workspace="w9", user="ann")

        # status runs its own event loop (as the real CLI does): off this test's loop
        status = await anyio.to_thread.run_sync(invoke, "ratelimit", "status", "--workspace", "w1",
                                                "--json")
        assert status.exit_code == 0, status.output
        counters = {(c["scope"], c["id"]): c for c in json.loads(status.output)["counters"]}
        assert counters[("user", "ann")]["requests"] == 1
        assert counters[("user", "ann")]["max_requests"] == 1
        # 500 per minute drains one call in 0.12 s: by now it may have
        assert counters[("workspace", "w1")]["requests"] in (0, 1)
        assert counters[("workspace", "w1")]["max_requests"] == 500
        assert counters[("agent", "bot")]["max_requests"] == 5
        assert ("model", "echo/e1") not in counters  # unlimited scopes keep no counter
        text = await anyio.to_thread.run_sync(invoke, "ratelimit", "status", "--workspace", "w1")
        assert "ann" in text.output and "1/1" in text.output

        assert invoke("ratelimit", "unset", "--workspace", "w1", "--scope", "user").output == (
            "user (w1): removed\n")
        bad = invoke("ratelimit", "set", "--global", "--scope", "user", "--requests", "-3")
        assert bad.exit_code == 2 and "--requests" in bad.output
        assert invoke("ratelimit", "set", "--global", "--scope", "user").exit_code == 2
        assert invoke("ratelimit", "set", "--scope", "nope", "--requests", "1").exit_code == 2


async def test_ratelimit_host_without_redis_limits_per_process(make_host: Any) -> None:
    async with make_host(plugin, env={"REDIS_URL": ""}) as host:
        host.flags.set(FLAG, True, workspace="w1")
        configure(host, "w1", "workspace", requests=3, window_s=60)
        for _ in range(3):
            await host.complete(model="echo/e1", messages="hi", workspace="w1")
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/e1", messages="hi", workspace="w1")
        assert info.value.details["scope"] == "workspace"
        warned = await events(host, "ratelimit_per_process")
        assert len(warned) == 1 and warned[0]["_status"] == "warning"
        ok, detail = await plugin._health(host)
        assert ok and "per process" in detail


async def test_ratelimit_host_redis_outage(make_host: Any, private_redis: Any) -> None:
    env = env_for(private_redis.url, "rl", SYNTHHOST_RATELIMIT_PROBE_S="0.2")
    async with make_host(plugin, env=env) as host:
        host.flags.set(FLAG, True, workspace="w1")
        configure(host, "w1", "workspace", requests=2, window_s=60)
        await host.complete(model="echo/e1", messages="hi", workspace="w1")
        assert (await plugin._health(host))[0]
        private_redis.stop()
        for _ in range(5):  # fail open: above the limit, and no error
            await host.complete(model="echo/e1", messages="hi", workspace="w1")
        assert not (await plugin._health(host))[0]
        degraded = await events(host, "ratelimit_degraded")
        assert len(degraded) == 1 and degraded[0]["mode"] == "open"
        private_redis.start()
        await anyio.sleep(0.3)
        await host.complete(model="echo/e1", messages="hi", workspace="w1")  # charged again
        await host.complete(model="echo/e1", messages="hi", workspace="w1")
        with pytest.raises(Denied):
            await host.complete(model="echo/e1", messages="hi", workspace="w1")
        recovered = await events(host, "ratelimit_recovered")
        assert len(recovered) == 1 and recovered[0]["unchecked_calls"] == 5
        assert len(await events(host, "ratelimit_degraded")) == 1


async def test_ratelimit_host_fail_closed(make_host: Any, private_redis: Any) -> None:
    env = env_for(private_redis.url, "rl", SYNTHHOST_RATELIMIT_FAIL="closed")
    async with make_host(plugin, env=env) as host:
        host.flags.set(FLAG, True)
        private_redis.stop()
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/e1", messages="hi")
        assert info.value.code == ErrorCode.RATE_LIMITED
        assert info.value.details["scope"] == "limiter"
        assert host.provider("echo").call_count == 0


def test_ratelimit_host_under_trio(make_host: Any, redis_url: str, rl_prefix: str) -> None:
    """redis.asyncio cannot run on trio: the same scripts go through a worker thread."""
    client = redis.Redis.from_url(redis_url)

    async def main() -> None:
        async with make_host(plugin, env=env_for(redis_url, rl_prefix)) as host:
            host.flags.set(FLAG, True)
            configure(host, "*", "workspace", requests=2, tokens=10_000, window_s=LONG_S)
            total = 0
            for _ in range(2):
                total += (await host.complete(model="echo/e1", messages="hi")).usage.total_tokens
            with pytest.raises(Denied) as info:
                await host.complete(model="echo/e1", messages="hi")
            assert info.value.details["scope"] == "workspace"
            settled(host)
            assert counter(client, rl_prefix, "ws:default") == (2, total)
            assert (await plugin._health(host))[0]

    anyio.run(main, backend="trio")
    client.close()


def test_ratelimit_host_under_trio_outage(make_host: Any, private_redis: Any) -> None:
    env = env_for(private_redis.url, "rl", SYNTHHOST_RATELIMIT_PROBE_S="0.2")

    async def main() -> None:
        async with make_host(plugin, env=env) as host:
            host.flags.set(FLAG, True)
            configure(host, "*", "workspace", requests=1, window_s=60)
            await host.complete(model="echo/e1", messages="hi")
            private_redis.stop()
            await host.complete(model="echo/e1", messages="hi")  # fail open
            private_redis.start()
            await anyio.sleep(0.3)
            await host.complete(model="echo/e1", messages="hi")  # the new, empty Redis
            with pytest.raises(Denied):
                await host.complete(model="echo/e1", messages="hi")
            assert len(await events(host, "ratelimit_degraded")) == 1
            assert len(await events(host, "ratelimit_recovered")) == 1

    anyio.run(main, backend="trio")
