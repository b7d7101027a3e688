"""Price resolution and arithmetic, without a host."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal

import genai_prices
import pytest
from genai_prices import types as gp
from genai_prices.data import providers

from synthhost.errors import UsageError
from synthhost_cost import pricing
from synthhost_cost.pricing import Override, PriceBook, PricingError, compile_plan, genai_usage
from synthhost_cost.report import parse_since
from synthhost_cost.store import make_override


def _prices() -> list[tuple[str, str, gp.ModelPrice]]:
    out = []
    for p in providers:
        for m in p.models:
            history = [m.prices] if isinstance(m.prices, gp.ModelPrice) else [c.prices for c in m.prices]
            out += [(p.id, m.id, mp) for mp in history]
    return out


def _usages(rnd: random.Random) -> list[tuple[int, int, int, int, int]]:
    out = [(0, 0, 0, 0, 0), (1, 0, 0, 1, 0), (200_001, 50_000, 10_000, 3000, 1000)]
    for _ in range(5):
        i = rnd.choice([1000, 128_001, 200_000, 272_001, rnd.randrange(0, 2_000_000)])
        cr = rnd.randrange(0, i + 1)
        cw = rnd.randrange(0, i - cr + 1)
        o = rnd.randrange(0, 100_000)
        out.append((i, cr, cw, o, rnd.randrange(0, o + 1)))
    return out


def test_every_database_price_compiles_to_a_plan_that_matches_genai_prices_exactly() -> None:
    """Every price genai-prices knows (all providers, every price period), on random
    usages with cache reads/writes, reasoning and tier-crossing prompts: the compiled
    plan's Decimals equal genai-prices' own, exactly (not just to 1e-10)."""
    rnd = random.Random(3)
    prices = _prices()
    assert len(prices) > 1000
    for provider, model, mp in prices:
        plan = pricing.verified_plan(mp)
        assert plan is not None, (provider, model)
        for usage in _usages(rnd):
            theirs = mp.calc_price(genai_usage(usage))
            mine = plan.cost(usage)
            assert (mine.input, mine.output, mine.total) == (
                theirs["input_price"],
                theirs["output_price"],
                theirs["total_price"],
            ), (provider, model, usage)
            assert mine.cache_read + mine.cache_write <= mine.input


def test_a_plan_that_disagrees_with_genai_prices_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    real = compile_plan

    def wrong(mp: gp.ModelPrice) -> pricing.Plan:
        plan = real(mp)
        return pricing.Plan(plan.units[:1])  # drops a unit: disagrees on the probes

    monkeypatch.setattr(pricing, "compile_plan", wrong)
    book = PriceBook()
    quote = book.quote("w", "openai", "gpt-4o", datetime.now(UTC).timestamp())
    assert quote.priced and quote.plan is None and quote.slow is not None  # genai-prices per call
    cost = quote.cost((1000, 0, 0, 500, 0), datetime.now(UTC).timestamp())
    assert cost.total == Decimal("0.0075")


def test_price_history_uses_the_price_in_force_at_the_call() -> None:
    # o3 was $10/$40 per MTok until 2025-06-10, then $2/$8.
    book = PriceBook()
    usage = (1_000_000, 0, 0, 1_000_000, 0)
    before = datetime(2025, 6, 1, tzinfo=UTC)
    after = datetime(2025, 6, 11, tzinfo=UTC)
    for when, total in ((before, Decimal(50)), (after, Decimal(10))):
        quote = book.quote("w", "openai", "o3", when.timestamp())
        assert quote.cost(usage, when.timestamp()).total == total
        expected = genai_prices.calc_price(genai_usage(usage), "o3", provider_id="openai", genai_request_timestamp=when)
        assert expected.total_price == total


def test_unknown_stays_unknown_in_the_cache_never_zero() -> None:
    book = PriceBook()
    for _ in range(3):
        quote = book.quote("w", "openai", "acme-private-7b", 0.0)
        assert not quote.priced and quote.plan is None
        assert "acme-private-7b" in (quote.reason or "")
        with pytest.raises(PricingError):
            quote.cost((1000, 0, 0, 500, 0), 0.0)
    assert not book.quote("w", "nosuchprovider", "gpt-4o", 0.0).priced  # an unknown provider too


def test_echo_is_priced_as_the_model_it_simulates() -> None:
    quote = PriceBook().quote("w", "echo", "gpt-4o-mini", 0.0)
    assert quote.priced and quote.provider_id == "openai"
    assert not PriceBook().quote("w", "echo", "acme-private-7b", 0.0).priced


def test_provider_aliases_resolve_like_genai_prices() -> None:
    book = PriceBook()
    for provider in ("google", "gemini", "vertex"):
        quote = book.quote("w", provider, "gemini-2.5-pro", 0.0)
        assert quote.priced and quote.provider_id == "google" and quote.model_id == "gemini-2.5-pro"


def test_impossible_usage_is_refused_not_mispriced() -> None:
    quote = PriceBook().quote("w", "anthropic", "claude-sonnet-4-5", 0.0)
    with pytest.raises(PricingError):
        quote.cost((100, 500, 0, 10, 0), 0.0)  # more cache reads than prompt tokens


def _ov(ws: str, model: str, inp: str, valid_from: datetime | None = None, oid: int = 1) -> Override:
    return Override(ws, "openai", model, Decimal(inp), Decimal("1"), valid_from=valid_from, id=oid)


def test_overrides_workspace_beats_global_beats_database_and_respect_valid_from() -> None:
    now = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
    later = datetime(2026, 9, 1, tzinfo=UTC)
    book = PriceBook(
        [
            _ov("*", "gpt-4o-mini", "0.1", oid=1),
            _ov("acme", "gpt-4o-mini", "0.05", oid=2),
            _ov("acme", "gpt-4o-mini", "0.01", valid_from=later, oid=3),
        ]
    )
    usage = (1_000_000, 0, 0, 0, 0)
    assert book.quote("acme", "openai", "gpt-4o-mini", now).cost(usage, now).total == Decimal("0.05")
    q_later = book.quote("acme", "openai", "gpt-4o-mini", later.timestamp())
    assert q_later.cost(usage, 0).total == Decimal("0.01") and q_later.version == f"override#3@{later.isoformat()}"
    other = book.quote("other", "openai", "gpt-4o-mini", now)
    assert other.source == "override" and other.cost(usage, now).total == Decimal("0.1")
    # The dated alias of the model takes the model's override; another model does not.
    dated = book.quote("acme", "openai", "gpt-4o-mini-2024-07-18", now)
    assert dated.source == "override" and dated.cost(usage, now).total == Decimal("0.05")
    assert book.quote("acme", "openai", "gpt-4o", now).source == "genai-prices"
    # Cleared overrides: the database again.
    book.set_overrides([])
    assert book.quote("acme", "openai", "gpt-4o-mini", now).cost(usage, now).total == Decimal("0.15")


def test_override_cache_prices_default_to_the_input_price() -> None:
    usage = (1_000_000, 400_000, 100_000, 1_000_000, 300_000)
    plain = PriceBook([Override("*", "acme", "m", Decimal("2"), Decimal("8"))]).quote("w", "acme", "m", 0.0)
    assert plain.cost(usage, 0.0).total == Decimal("10")  # every prompt token at 2, output at 8
    cached = PriceBook([Override("*", "acme", "m", Decimal("2"), Decimal("8"), Decimal("0.5"), Decimal("2.5"))]).quote(
        "w", "acme", "m", 0.0
    )
    cost = cached.cost(usage, 0.0)
    assert cost.cache_read == Decimal("0.2") and cost.cache_write == Decimal("0.25")
    assert cost.input == Decimal("1.0") + Decimal("0.2") + Decimal("0.25")
    assert cost.total == cost.input + Decimal("8")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("input_mtok", "-1", "--input"),
        ("input_mtok", "abc", "--input"),
        ("input_mtok", "NaN", "--input"),
        ("output_mtok", "1e12", "--output"),
        ("output_mtok", "0.00000000001", "10 decimal places"),
        ("cache_read_mtok", "x", "--cache-read"),
        ("currency", "dollars", "--currency"),
        ("valid_from", "next tuesday", "--valid-from"),
        ("provider", "", "--provider"),
    ],
)
def test_bad_override_values_are_usage_errors(field: str, value: str, message: str) -> None:
    args = {"workspace": "w", "provider": "openai", "model": "m", "input_mtok": "1", "output_mtok": "2"}
    args[field] = value
    with pytest.raises(UsageError) as info:
        make_override(**args)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_parse_since() -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    assert parse_since("7d", now) == datetime(2026, 11, 21, 12, tzinfo=UTC)
    assert parse_since("90m", now) == datetime(2026, 11, 28, 10, 30, tzinfo=UTC)
    assert parse_since("2026-11-01") == datetime(2026, 11, 1, tzinfo=UTC)
    with pytest.raises(UsageError):
        parse_since("last week")
