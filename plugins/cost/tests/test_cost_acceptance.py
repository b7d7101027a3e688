"""Issue 3 acceptance: through a real host call, the logged cost equals genai-prices'
own ``calc_price`` figure to 1e-10 dollars, on SQLite and PostgreSQL, for OpenAI,
Anthropic and Google models (cached tokens, reasoning tokens, long-context tiers,
dated names) and an unknown model (no cost, never $0)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import genai_prices
import pytest

pytestmark = pytest.mark.anyio

TOLERANCE = Decimal("1E-10")

# id: (provider, requested model, billed model or None, usage)
CASES: dict[str, tuple[str, str, str | None, dict[str, int]]] = {
    "openai-gpt-4o": ("openai", "gpt-4o", None, {"input_tokens": 1000, "output_tokens": 500}),
    "openai-gpt-4o-mini": ("openai", "gpt-4o-mini", None, {"input_tokens": 10_000, "output_tokens": 2000}),
    "openai-gpt-4.1-80pct-cached": (
        "openai",
        "gpt-4.1",
        None,
        {"input_tokens": 1000, "cache_read_tokens": 800, "output_tokens": 500},
    ),
    "openai-gpt-4.1-mini": ("openai", "gpt-4.1-mini", None, {"input_tokens": 50_000, "output_tokens": 1000}),
    "openai-o3-reasoning": (
        "openai",
        "o3",
        None,
        {"input_tokens": 2000, "output_tokens": 3000, "reasoning_tokens": 2500},
    ),
    "openai-o4-mini": ("openai", "o4-mini", None, {"input_tokens": 1000, "output_tokens": 500}),
    "openai-gpt-5-cached-reasoning": (
        "openai",
        "gpt-5",
        None,
        {"input_tokens": 10_000, "cache_read_tokens": 4000, "output_tokens": 5000, "reasoning_tokens": 3000},
    ),
    # Dated names: their own model's price, never a shorter name's (the original priced
    # gpt-4o-mini-2024-07-18 as gpt-4o, 16x too much).
    "openai-dated-gpt-4o-mini-2024-07-18": (
        "openai",
        "gpt-4o-mini-2024-07-18",
        None,
        {"input_tokens": 100_000, "output_tokens": 10_000},
    ),
    "openai-dated-gpt-4o-2024-05-13-own-price": (
        "openai",
        "gpt-4o-2024-05-13",
        None,
        {"input_tokens": 1000, "output_tokens": 500},
    ),
    "openai-billed-dated-name": (
        "openai",
        "gpt-4o",
        "gpt-4o-2024-08-06",
        {"input_tokens": 3000, "output_tokens": 700},
    ),
    "anthropic-sonnet-4.5": ("anthropic", "claude-sonnet-4-5", None, {"input_tokens": 1000, "output_tokens": 500}),
    "anthropic-sonnet-4.5-cache-read-write": (
        "anthropic",
        "claude-sonnet-4-5",
        None,
        {"input_tokens": 11_000, "cache_read_tokens": 8000, "cache_write_tokens": 2000, "output_tokens": 500},
    ),
    "anthropic-sonnet-4.5-long-context-tier": (
        "anthropic",
        "claude-sonnet-4-5",
        None,
        {"input_tokens": 250_000, "output_tokens": 1000},
    ),
    "anthropic-dated-sonnet-4.5-20250929": (
        "anthropic",
        "claude-sonnet-4-5-20250929",
        None,
        {"input_tokens": 4000, "output_tokens": 900},
    ),
    "anthropic-haiku-4.5": ("anthropic", "claude-haiku-4-5", None, {"input_tokens": 1000, "output_tokens": 500}),
    "anthropic-opus-4.5": ("anthropic", "claude-opus-4-5", None, {"input_tokens": 5000, "output_tokens": 1000}),
    "google-gemini-2.5-pro": ("google", "gemini-2.5-pro", None, {"input_tokens": 1000, "output_tokens": 500}),
    "google-gemini-2.5-pro-long-context-tier": (
        "google",
        "gemini-2.5-pro",
        None,
        {"input_tokens": 250_000, "output_tokens": 1000},
    ),
    "google-gemini-2.5-pro-40pct-cached": (
        "google",
        "gemini-2.5-pro",
        None,
        {"input_tokens": 10_000, "cache_read_tokens": 4000, "output_tokens": 500},
    ),
    "google-gemini-2.5-flash-thinking": (
        "google",
        "gemini-2.5-flash",
        None,
        {"input_tokens": 10_000, "output_tokens": 2000, "reasoning_tokens": 1500},
    ),
    "google-gemini-2.5-flash-lite": (
        "google",
        "gemini-2.5-flash-lite",
        None,
        {"input_tokens": 1000, "output_tokens": 500},
    ),
    "openai-unknown-model": ("openai", "acme-private-7b", None, {"input_tokens": 1000, "output_tokens": 500}),
}


def genai_figure(provider: str, model: str, usage: dict[str, int]) -> Any:
    """genai-prices' own answer (None when it knows no price)."""
    gp_usage = genai_prices.Usage(
        input_tokens=usage.get("input_tokens", 0),
        cache_read_tokens=usage.get("cache_read_tokens", 0),
        cache_write_tokens=usage.get("cache_write_tokens", 0),
        output_tokens=usage.get("output_tokens", 0),
        output_reasoning_tokens=usage.get("reasoning_tokens", 0),
    )
    try:
        return genai_prices.calc_price(gp_usage, model, provider_id=provider, genai_request_timestamp=datetime.now(UTC))
    except LookupError:
        return None


def close(a: Decimal, b: Decimal) -> bool:
    return abs(a - b) <= TOLERANCE


def test_there_are_at_least_15_priced_cases_across_three_providers() -> None:
    priced = [c for c in CASES.values() if genai_figure(c[0], c[2] or c[1], c[3]) is not None]
    assert len(priced) >= 15
    assert {c[0] for c in priced} == {"openai", "anthropic", "google"}


@pytest.mark.parametrize("case", list(CASES))
async def test_logged_cost_equals_genai_prices(kit: Any, case: str) -> None:
    provider, model, billed, usage = CASES[case]
    extra = {"sim_model": billed} if billed else {}
    async with kit.host() as host:
        kit.enable(host)
        await kit.call(host, provider, model, usage, **extra)
        expected = genai_figure(provider, billed or model, usage)
        [row] = await kit.rows(host)
        [span] = await kit.spans(host)
        [event] = await kit.events(host, "llm_cost_logged")

    assert row["status"] == "ok" and row["attempt"] == 1
    assert row["provider"] == provider
    assert row["model_requested"] == model
    assert row["model_billed"] == (billed or model)
    for key in ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"):
        assert row[key] == usage.get(key, 0), key
    assert row["currency"] == "USD"
    cost_attrs = span["attributes"]["cost"]
    if expected is None:  # unknown: no cost at all, never zero
        assert row["priced"] is False
        assert row["total_cost"] is None and row["input_cost"] is None and row["output_cost"] is None
        assert row["price_source"] is None
        assert "cost_usd" not in span["attributes"]
        assert cost_attrs["priced"] is False and cost_attrs["total_cost"] is None
        assert event["context"]["total_cost"] is None
        return
    assert row["priced"] is True
    assert row["price_source"] == "genai-prices"
    assert row["price_version"] == f"genai-prices {genai_prices.__version__}"
    assert row["price_model"] == expected.model.id
    assert row["price_provider"] == expected.provider.id
    assert close(row["total_cost"], expected.total_price), (row["total_cost"], expected.total_price)
    assert close(row["input_cost"], expected.input_price)
    assert close(row["output_cost"], expected.output_price)
    assert row["total_cost"] > 0
    # The span and the event carry the row's figures.
    assert Decimal(span["attributes"]["cost_usd"]) == row["total_cost"]
    assert Decimal(cost_attrs["total_cost"]) == row["total_cost"]
    assert Decimal(event["context"]["total_cost"]) == row["total_cost"]
    assert Decimal(event["context"]["input_cost"]) == row["input_cost"]
    assert Decimal(event["context"]["output_cost"]) == row["output_cost"]
    assert event["context"]["cost_log_id"] == row["id"]


async def test_dated_name_never_takes_a_shorter_names_price(kit: Any) -> None:
    usage = {"input_tokens": 1_000_000, "output_tokens": 0}
    async with kit.host() as host:
        kit.enable(host)
        await kit.call(host, "openai", "gpt-4o-mini-2024-07-18", usage)
        await kit.call(host, "openai", "gpt-4o-2024-05-13", usage)
        await kit.call(host, "openai", "gpt-4o-2099-01-01", usage)  # a date genai-prices doesn't know
        mini, old, future = await kit.rows(host)
    assert mini["total_cost"] == Decimal("0.15")  # gpt-4o-mini's $0.15/MTok, not gpt-4o's $2.50
    assert old["total_cost"] == Decimal("5")  # its own $5/MTok, not gpt-4o's current $2.50
    assert future["priced"] is False and future["total_cost"] is None  # unknown, not gpt-4o
