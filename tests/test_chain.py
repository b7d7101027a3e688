"""The call chain: order, denial, isolation, fail-closed, recovery, gating."""

from __future__ import annotations

import pytest

from synthhost import Denied, ErrorCode, ProviderError, Recovery, Response, Stage, Usage, hookimpl

pytestmark = pytest.mark.anyio


class Recorder:
    """A tiny plugin that records which hooks it saw, in a shared log."""

    def __init__(self, name: str, log: list[str], order: int, flag: str | None = None) -> None:
        self.__name__ = name
        self.log = log
        self.order = order
        self.flag = flag

    @hookimpl
    def register_flags(self, register):
        if self.flag:
            register(self.flag, default=False)

    @hookimpl
    def register_gate(self, register):
        register(self.flag, order=self.order)

    @hookimpl
    def pre_call(self, call):
        self.log.append(f"{self.__name__}.pre")

    @hookimpl
    def post_call(self, call, response):
        self.log.append(f"{self.__name__}.post")


class AsyncRecorder(Recorder):
    @hookimpl
    async def pre_call(self, call):
        self.log.append(f"{self.__name__}.pre")

    @hookimpl
    async def post_call(self, call, response):
        self.log.append(f"{self.__name__}.post")


async def test_sync_and_async_impls_run_in_stage_order_not_registration_order(make_host):
    log: list[str] = []
    # Registered in the opposite order of their stages.
    late = AsyncRecorder("late", log, 500)
    early = Recorder("early", log, 100)
    middle = AsyncRecorder("middle", log, 300)
    async with make_host(late, early, middle) as host:
        await host.complete(model="echo/m", messages="hi")
    assert log == ["early.pre", "middle.pre", "late.pre", "early.post", "middle.post", "late.post"]


async def test_denial_stops_the_chain_and_the_provider(make_host):
    log: list[str] = []

    class Blocker:
        __name__ = "blocker"

        @hookimpl
        def register_gate(self, register):
            register(None, order=Stage.POLICY)

        @hookimpl
        def pre_call(self, call):
            log.append("blocker.pre")
            raise Denied(ErrorCode.POLICY_DENIED, "no", rule="r1")

    after = Recorder("after", log, Stage.RATE_LIMIT)
    async with make_host(Blocker(), after) as host:
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="hi")
        assert info.value.code == "POLICY_DENIED"
        assert log == ["blocker.pre"]
        assert host.provider("echo").call_count == 0
        await host.writer.flush()
    span_status = host.count("spans", status="error", error_code="POLICY_DENIED")
    assert span_status == 1


async def test_crash_is_isolated_recorded_and_counted(make_host):
    class Crasher:
        __name__ = "crasher"

        @hookimpl
        def pre_call(self, call):
            raise RuntimeError("boom")

        @hookimpl
        async def post_call(self, call, response):
            raise ValueError("bad")

    async with make_host(Crasher()) as host:
        response = await host.complete(model="echo/m", messages="hi")
        assert response.text == "echo: hi"
        assert host.stats["plugin_errors.crasher"] == 2
        await host.writer.flush()
        assert host.count("event_logs", event_type="plugin_error") == 2


async def test_fail_closed_plugin_denies(make_host):
    class Strict:
        __name__ = "strict"

        @hookimpl
        def register_gate(self, register):
            register(None, fail_closed=True)

        @hookimpl
        def pre_call(self, call):
            raise RuntimeError("cannot decide")

    async with make_host(Strict()) as host:
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/m", messages="hi")
        assert info.value.code == ErrorCode.PLUGIN_ERROR
        assert host.provider("echo").call_count == 0


async def test_fail_closed_by_environment(make_host):
    class Flaky:
        __name__ = "flaky"

        @hookimpl
        def pre_call(self, call):
            raise RuntimeError("x")

    async with make_host(Flaky(), env={"SYNTHHOST_FAIL_CLOSED": "flaky"}) as host:
        with pytest.raises(Denied):
            await host.complete(model="echo/m", messages="hi")


async def test_short_circuit_response_skips_provider(make_host):
    class Cache:
        __name__ = "cache"

        @hookimpl
        def pre_call(self, call):
            return Response("cached", call.request.model, "cache", Usage(1, 1))

    async with make_host(Cache()) as host:
        response = await host.complete(model="echo/m", messages="hi")
        assert response.text == "cached"
        assert host.provider("echo").call_count == 0


async def test_default_recovery_retries_retryable_errors(make_host):
    async with make_host() as host:
        response = await host.complete(
            model="echo/m", messages="hi",
            params={"echo_fail": ["rate_limit", "server_error"]}, max_attempts=3,
        )
        assert response.text == "echo: hi"
        assert host.provider("echo").call_count == 3
        await host.writer.flush()
        assert host.count("event_logs", event_type="recovery") == 2


async def test_non_retryable_errors_are_not_retried(make_host):
    async with make_host() as host:
        with pytest.raises(ProviderError) as info:
            await host.complete(model="echo/m", messages="hi", params={"echo_fail": ["auth"]})
        assert info.value.code == ErrorCode.PROVIDER_AUTH
        assert host.provider("echo").call_count == 1


async def test_retries_stop_at_max_attempts(make_host):
    async with make_host() as host:
        with pytest.raises(ProviderError):
            await host.complete(model="echo/m", messages="hi", max_attempts=2,
                                params={"echo_fail": ["timeout"] * 5})
        assert host.provider("echo").call_count == 2


async def test_first_recovery_answer_wins_and_reroutes(make_host):
    class Router:
        __name__ = "router"

        @hookimpl
        def on_failure(self, call, error, attempt):
            if attempt == 1:
                return Recovery("reroute", changes={"model": "backup"}, reason="fallback")
            return None

    async with make_host(Router()) as host:
        response = await host.complete(model="echo/primary", messages="hi",
                                       params={"echo_fail": ["server_error"]})
        assert response.model == "backup"
        calls = list(host.provider("echo").calls)
        assert [c.model for c in calls] == ["primary", "backup"]


async def test_gate_applies_per_workspace(make_host):
    log: list[str] = []
    gated = Recorder("gated", log, 100, flag="enable_gated_thing")
    async with make_host(gated) as host:
        host.flags.set("enable_gated_thing", True, workspace="on")
        await host.complete(model="echo/m", messages="a", workspace="off")
        assert log == []
        await host.complete(model="echo/m", messages="a", workspace="on")
        assert log == ["gated.pre", "gated.post"]
        assert host.is_active("gated", "on") and not host.is_active("gated", "off")
        # A change through the host is seen by the very next call.
        host.flags.set("enable_gated_thing", False, workspace="on")
        await host.complete(model="echo/m", messages="a", workspace="on")
        assert log == ["gated.pre", "gated.post"]


async def test_workspaces_with_the_same_active_set_share_one_chain(make_host):
    gated = Recorder("gated", [], 100, flag="enable_gated_thing")
    async with make_host(gated) as host:
        a = host.chains.for_workspace("a")
        b = host.chains.for_workspace("b")
        assert a is b
        host.flags.set("enable_gated_thing", True, workspace="c")
        assert host.chains.for_workspace("c") is not host.chains.for_workspace("a")


async def test_predicate_gate(make_host):
    log: list[str] = []

    class Either(Recorder):
        @hookimpl
        def register_flags(self, register):
            register("flag_a")
            register("flag_b")

        @hookimpl
        def register_gate(self, register):
            register(lambda f: f["flag_a"] or f["flag_b"])

    async with make_host(Either("either", log, 100)) as host:
        await host.complete(model="echo/m", messages="a", workspace="w")
        assert log == []
        host.flags.set("flag_b", True)  # global row
        await host.complete(model="echo/m", messages="a", workspace="w")
        assert log == ["either.pre", "either.post"]


async def test_unknown_provider_is_a_clear_error(make_host):
    from synthhost.errors import UnknownProvider

    async with make_host() as host:
        with pytest.raises(UnknownProvider, match="unknown provider 'nope'"):
            await host.complete(model="nope/m", messages="hi")


async def test_plugin_error_messages_never_carry_secrets(make_host, caplog):
    secret = "sk-live-abcdefghijklmnop"

    class Leaky:
        __name__ = "leaky"

        @hookimpl
        def pre_call(self, call):
            raise RuntimeError(f"auth failed with key {secret}")

    async with make_host(Leaky(), env={"OPENAI_API_KEY": secret}) as host:
        await host.complete(model="echo/m", messages="hi")
        await host.writer.flush()
        with host.engine.connect() as conn:
            import sqlalchemy as sa

            contexts = [str(r[0]) for r in conn.execute(sa.text("SELECT context FROM event_logs"))]
    assert any("auth failed" in c for c in contexts)
    assert not any(secret in c for c in contexts)
    assert "auth failed" in caplog.text and secret not in caplog.text
