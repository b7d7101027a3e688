"""The plugin in a running host: gating, failed attempts, denials, overrides, unpriced
models, span and run totals, migrations. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import time
from decimal import Decimal
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

import synthhost_cost
from synthhost import Denied, ErrorCode, ProviderError, Recovery, Response, Stage, hookimpl
from synthhost.agent import AgentSpec, Step
from synthhost.storage import db
from synthhost_cost.pricing import Override
from synthhost_cost.store import make_override, save_override

pytestmark = pytest.mark.anyio

USAGE = {"input_tokens": 1000, "output_tokens": 500}
GPT_4O = Decimal("0.0075")  # 1000 in at $2.50/MTok + 500 out at $10/MTok


class FastRetry:
    """Retries retryable provider errors at once (the default recovery sleeps)."""

    __name__ = "fastretry"

    @hookimpl
    def register_gate(self, register: Any) -> None:
        register(None, order={"on_failure": 500})

    @hookimpl
    def on_failure(self, call: Any, error: BaseException, attempt: int) -> Recovery | None:
        if isinstance(error, ProviderError) and error.retryable and attempt < call.max_attempts:
            return Recovery("retry", reason="test")
        return None


async def test_flag_off_writes_nothing_and_flag_is_per_workspace(kit: Any) -> None:
    async with kit.host() as host:
        await kit.call(host, "openai", "gpt-4o", USAGE)
        assert await kit.rows(host) == []
        assert "cost_usd" not in (await kit.spans(host))[0]["attributes"]
        kit.enable(host, workspace="w1")
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="w1")
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="w2")
        rows = await kit.rows(host)
    assert [r["workspace_id"] for r in rows] == ["w1"]


async def test_every_failed_attempt_writes_a_zero_cost_row_that_says_so(kit: Any) -> None:
    async with kit.host(FastRetry()) as host:
        kit.enable(host)
        with pytest.raises(ProviderError):
            await kit.call(host, "openai", "gpt-4o", USAGE, echo_fail=["timeout", "timeout", "timeout"])
        rows = await kit.rows(host)
        [span] = await kit.spans(host)
        events = await kit.events(host, "llm_cost_logged")
    assert [r["attempt"] for r in rows] == [1, 2, 3]
    for row in rows:
        assert row["status"] == "failed"
        assert row["error_code"] == ErrorCode.PROVIDER_TIMEOUT
        assert row["total_cost"] == 0 and row["input_cost"] == 0 and row["output_cost"] == 0
        assert row["priced"] is True and row["price_source"] == "no-usage"
        assert row["input_tokens"] == row["output_tokens"] == 0
        assert "without reported usage" in row["note"]
        assert row["span_id"] == span["id"]
    assert span["status"] == "error"
    assert Decimal(span["attributes"]["cost_usd"]) == 0
    # cost observes; recovery plugins decide (cost's on_failure always returns None)
    assert {r["by"] for r in span["attributes"]["recoveries"]} == {"fastretry", "recovery"}
    assert [e["status"] for e in events] == ["error"] * 3


async def test_retried_call_logs_each_attempt_and_the_span_sums_them(kit: Any) -> None:
    async with kit.host(FastRetry()) as host:
        kit.enable(host)
        await kit.call(host, "openai", "gpt-4o", USAGE, echo_fail=["rate_limit"])
        # A failure that carries usage (a stream cut after billing) is priced too.
        await kit.call(host, "openai", "gpt-4o", USAGE, sim_fail_usage={"input_tokens": 1000, "output_tokens": 100})
        rows = await kit.rows(host)
        spans = await kit.spans(host)
    first, second = (
        [r for r in rows if r["span_id"] == spans[0]["id"]],
        [r for r in rows if r["span_id"] == spans[1]["id"]],
    )
    assert [(r["attempt"], r["status"]) for r in first] == [(1, "failed"), (2, "ok")]
    assert first[0]["error_code"] == ErrorCode.PROVIDER_RATE_LIMITED and first[0]["total_cost"] == 0
    assert first[1]["total_cost"] == GPT_4O
    assert Decimal(spans[0]["attributes"]["cost_usd"]) == GPT_4O
    assert [(r["attempt"], r["status"]) for r in second] == [(1, "failed"), (2, "ok")]
    billed_failure = second[0]
    assert billed_failure["input_tokens"] == 1000 and billed_failure["output_tokens"] == 100
    assert billed_failure["total_cost"] == Decimal("0.0035") and billed_failure["price_source"] == "genai-prices"
    assert Decimal(spans[1]["attributes"]["cost_usd"]) == Decimal("0.0035") + GPT_4O


async def test_denied_before_the_provider_writes_no_cost_row(kit: Any) -> None:
    class Limiter:
        __name__ = "limiter"

        @hookimpl
        def register_gate(self, register: Any) -> None:
            register(None, order=Stage.RATE_LIMIT)

        @hookimpl
        def pre_call(self, call: Any) -> None:
            raise Denied(ErrorCode.RATE_LIMITED, "slow down", scope="workspace")

    async with kit.host(Limiter()) as host:
        kit.enable(host)
        with pytest.raises(Denied):
            await kit.call(host, "openai", "gpt-4o", USAGE)
        assert await kit.rows(host) == []  # no provider attempt: nothing billed, no row
        [span] = [s for s in await kit.spans(host) if s["kind"] == "call"]
    assert span["error_code"] == ErrorCode.RATE_LIMITED


async def test_output_rejected_after_costing_is_logged_once_as_billed(kit: Any) -> None:
    class LateGuard:
        __name__ = "lateguard"

        @hookimpl
        def register_gate(self, register: Any) -> None:
            register(None, order={"post_call": Stage.GUARD_OUTPUT})

        @hookimpl
        def post_call(self, call: Any, response: Any) -> None:
            raise Denied(ErrorCode.GUARDRAIL_VIOLATION, "no")

    async with kit.host(LateGuard()) as host:
        kit.enable(host)
        with pytest.raises(Denied):
            await kit.call(host, "openai", "gpt-4o", USAGE)
        [row] = await kit.rows(host)
    assert row["status"] == "ok" and row["total_cost"] == GPT_4O  # the provider did answer and bill


async def test_output_rejected_before_costing_is_priced_when_the_denial_carries_the_response(
    kit: Any,
) -> None:
    """A post_call check ordered before cost rejects the answer, so cost's post_call
    never sees it; on_failure prices it from the denial's ``response``."""

    class EarlyGuard:
        __name__ = "earlyguard"

        @hookimpl
        def register_gate(self, register: Any) -> None:
            register(None, order={"post_call": Stage.COST - 50})

        @hookimpl
        def post_call(self, call: Any, response: Any) -> None:
            denied = Denied(ErrorCode.GUARDRAIL_VIOLATION, "no")
            denied.response = response  # type: ignore[attr-defined]
            raise denied

    async with kit.host(EarlyGuard()) as host:
        kit.enable(host)
        with pytest.raises(Denied):
            await kit.call(host, "openai", "gpt-4o", USAGE)
        [row] = await kit.rows(host)
        [span] = await kit.spans(host)
    assert row["status"] == "ok" and row["error_code"] == ErrorCode.GUARDRAIL_VIOLATION
    assert row["total_cost"] == GPT_4O and row["provider"] == "openai"
    assert Decimal(span["attributes"]["cost_usd"]) == GPT_4O


async def test_a_plugin_answer_instead_of_the_provider_costs_zero(kit: Any) -> None:
    class Cache:
        __name__ = "cache"

        @hookimpl
        def pre_call(self, call: Any) -> Response:
            return Response(text="cached", model=call.request.model, provider="openai")

    async with kit.host(Cache()) as host:
        kit.enable(host)
        await kit.call(host, "openai", "gpt-4o", USAGE)
        [row] = await kit.rows(host)
    assert row["status"] == "ok" and row["total_cost"] == 0 and row["price_source"] == "no-usage"
    assert "answered by plugin cache" in row["note"]


async def test_unknown_model_is_unpriced_with_one_event_per_model_and_workspace(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        for _ in range(3):
            await kit.call(host, "openai", "acme-private-7b", USAGE)
        await kit.call(host, "openai", "acme-private-7b", USAGE, workspace="other")
        await kit.call(host, "openai", "acme-private-13b", USAGE)
        await kit.call(host, "openai", "gpt-4o", USAGE)
        rows = await kit.rows(host)
        events = await kit.events(host, "llm_cost_unpriced")
        with host.engine.connect() as conn:
            runs = [r[0] for r in conn.execute(sa.text("SELECT attributes FROM runs"))]
    unpriced = [r for r in rows if not r["priced"]]
    assert len(unpriced) == 5
    assert all(r["total_cost"] is None and r["input_cost"] is None for r in unpriced)
    assert sorted((e["context"]["model"], e["workspace_id"]) for e in events) == [
        ("acme-private-13b", "default"),
        ("acme-private-7b", "default"),
        ("acme-private-7b", "other"),
    ]
    assert all("acme-private" in e["context"]["reason"] for e in events)
    runs = [r if isinstance(r, dict) else __import__("json").loads(r) for r in runs]
    assert sum(r.get("unpriced_calls", 0) for r in runs) == 5
    assert sum("cost_usd" in r for r in runs) == 1


async def test_an_override_set_through_the_host_applies_to_the_next_call(kit: Any) -> None:
    async with kit.host() as host:
        kit.enable(host)
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="acme")
        row_id = synthhost_cost.set_price(
            host,
            make_override(
                workspace="acme", provider="openai", model="gpt-4o", input_mtok="1", output_mtok="2", note="negotiated"
            ),
        )
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="acme")
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="other")  # not acme's price
        synthhost_cost.set_price(host, Override("*", "openai", "gpt-4o", Decimal("3"), Decimal("4")))
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="other")  # global override
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="acme")  # workspace still wins
        assert synthhost_cost.remove_price(host, id=row_id) == 1
        await kit.call(host, "openai", "gpt-4o", USAGE, workspace="acme")  # global again
        rows = await kit.rows(host)
    got = [(r["workspace_id"], r["price_source"], r["total_cost"]) for r in rows]
    assert got == [
        ("acme", "genai-prices", GPT_4O),
        ("acme", "override", Decimal("0.002")),
        ("other", "genai-prices", GPT_4O),
        ("other", "override", Decimal("0.005")),
        ("acme", "override", Decimal("0.002")),
        ("acme", "override", Decimal("0.005")),
    ]
    assert rows[1]["price_version"] == f"override#{row_id}@always"


async def test_an_override_saved_by_another_process_applies_within_the_refresh(kit: Any, db_url: str) -> None:
    async with kit.host(env={"SYNTHHOST_COST_PRICE_REFRESH_S": "0.1"}) as host:
        kit.enable(host)
        other = db.create_engine(db_url)  # the CLI, another host...
        try:
            save_override(
                other, make_override(workspace=None, provider="openai", model="gpt-4o", input_mtok="1", output_mtok="1")
            )
        finally:
            other.dispose()
        deadline = time.monotonic() + 5
        while synthhost_cost.state_for(host).book.quote("default", "openai", "gpt-4o", 0).source != "override":
            assert time.monotonic() < deadline, "override not picked up"
            await anyio.sleep(0.05)
        await kit.call(host, "openai", "gpt-4o", USAGE)
        [row] = await kit.rows(host)
    assert row["price_source"] == "override" and row["total_cost"] == Decimal("0.0015")


async def test_the_run_total_is_the_sum_of_its_cost_rows(kit: Any) -> None:
    spec = AgentSpec(
        name="twostep",
        model="sim/gpt-4o",
        params={"sim_provider": "openai", "echo_usage": USAGE},
        steps=[
            Step(name="draft", prompt="write"),
            Step(
                name="review",
                prompt="review {{ draft }}",
                model="sim/claude-sonnet-4-5",
                params={
                    "sim_provider": "anthropic",
                    "echo_usage": {
                        "input_tokens": 11_000,
                        "cache_read_tokens": 8000,
                        "cache_write_tokens": 2000,
                        "output_tokens": 500,
                    },
                },
            ),
        ],
    )
    async with kit.host() as host:
        kit.enable(host)
        result = await host.run(spec)
        rows = await kit.rows(host)
    assert result.ok
    assert [(r["agent"], r["step"]) for r in rows] == [("twostep", "draft"), ("twostep", "review")]
    assert all(r["run_id"] == result.run_id for r in rows)
    assert rows[1]["total_cost"] == Decimal("0.0204")
    assert Decimal(result.cost_usd or "nan") == sum(r["total_cost"] for r in rows)


async def test_the_cost_branch_migrates_down_and_up(kit: Any) -> None:
    async with kit.host() as host:
        migrations = host.registry.migrations
        assert "cost" in migrations
        db.downgrade(host.engine, migrations, "cost@base")
        assert not sa.inspect(host.engine).has_table("model_cost_logs")
        assert sa.inspect(host.engine).has_table("runs")  # other branches untouched
        db.upgrade(host.engine, migrations)
        inspector = sa.inspect(host.engine)
        assert inspector.has_table("model_cost_logs") and inspector.has_table("model_price_overrides")
        assert db.is_current(host.engine, migrations)
