"""Price resolution and exact cost arithmetic (no I/O, no host).

Prices come from the ``genai-prices`` database; a workspace may override them (see
:class:`Override`). Money is :class:`~decimal.Decimal` from end to end.

Hot path. ``genai_prices.calc_price`` re-derives the price units, validates them and
decomposes the usage on every call (tens of µs). We do that work once per resolved price
(a :class:`Plan`): the priced units in genai-prices' own order, each with its rate per
token and the priced units it must subtract (genai-prices' "leaf" decomposition: a
cache-read token is billed once, at the cache-read rate, not again as input). A plan
runs genai-prices' arithmetic on plain ints and Decimals, so its figures are the same
Decimals. Each compiled plan is checked against genai-prices itself on probe usages;
a plan that disagrees (a future genai-prices unit we do not mirror) is discarded and
that price is computed by ``genai-prices`` on every call instead: slower, never wrong.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final, NamedTuple

import genai_prices
from genai_prices import data_snapshot
from genai_prices import types as gp

GENAI_VERSION: Final = genai_prices.__version__
MONEY_QUANTUM: Final = Decimal("1E-10")
"""Rows store ``Numeric(20, 10)``: costs are rounded (half-even) to 1e-10 dollars once,
and that rounded figure is what the row, the span and the event all carry."""
ZERO: Final = Decimal(0)
DB_CACHE_SIZE: Final = 4096  # (provider, model) look-ups kept; cleared when full

# Our usage fields, as the genai-prices usage keys they report.
_FIELD_OF_USAGE_KEY: Final[Mapping[str, int]] = {
    "input_tokens": 0,
    "cache_read_tokens": 1,
    "cache_write_tokens": 2,
    "output_tokens": 3,
    "output_reasoning_tokens": 4,
}
_REQUESTS: Final = -1  # the per-request unit: its count is always 1


class PricingError(ValueError):
    """The usage cannot be priced with this price (e.g. more cached than input tokens)."""


class Cost(NamedTuple):  # a tuple: built twice per call, and a frozen dataclass is slow
    """One call's cost, split as genai-prices splits it: ``input`` includes the cache
    read and cache write costs (also given on their own); ``total`` can exceed
    ``input + output`` when a model charges per request."""

    input: Decimal
    output: Decimal
    total: Decimal
    cache_read: Decimal = ZERO
    cache_write: Decimal = ZERO

    def quantized(self) -> Cost:
        q = MONEY_QUANTUM
        return Cost(
            self.input.quantize(q) if self.input else ZERO_Q,
            self.output.quantize(q) if self.output else ZERO_Q,
            self.total.quantize(q) if self.total else ZERO_Q,
            self.cache_read.quantize(q) if self.cache_read else ZERO_Q,
            self.cache_write.quantize(q) if self.cache_write else ZERO_Q,
        )


ZERO_Q: Final = ZERO.quantize(MONEY_QUANTUM)
ZERO_COST: Final = Cost(ZERO_Q, ZERO_Q, ZERO_Q, ZERO_Q, ZERO_Q)


# What a unit's price adds to besides the total (genai-prices' "direction").
_OTHER, _INPUT, _CACHE_READ, _CACHE_WRITE, _OUTPUT = range(5)


@dataclass(frozen=True, slots=True)
class _Unit:
    source: int  # index into the usage tuple, or _REQUESTS
    rate: Decimal | None  # price per unit (price / per); None when tiered
    tiers: tuple[tuple[int, Decimal], ...]  # (start, price per unit), highest first
    base_rate: Decimal
    kind: int  # _INPUT, _CACHE_READ, _CACHE_WRITE, _OUTPUT or _OTHER
    descendants: tuple[int, ...]  # indexes (into leaf order) of priced descendant units


@dataclass(frozen=True, slots=True)
class Plan:
    """A compiled price: ``units`` in genai-prices' leaf order (most specific first),
    without the units we never report (audio, images, searches...): their count is
    always 0, so they would add nothing and subtract nothing."""

    units: tuple[_Unit, ...]

    def cost(self, usage: tuple[int, int, int, int, int]) -> Cost:
        """Exact cost of ``usage`` = (input, cache_read, cache_write, output, reasoning)."""
        leaves: list[int] = []
        total = inp = out = cread = cwrite = ZERO
        for unit in self.units:
            src = unit.source
            leaf = usage[src] if src >= 0 else 1
            for d in unit.descendants:
                leaf -= leaves[d]
            if leaf < 0:
                raise PricingError("more cached/reasoning tokens than input/output tokens")
            leaves.append(leaf)
            if not leaf:
                continue
            rate = unit.rate
            if rate is None:  # long-context tiers: the whole prompt's size picks the rate
                rate = unit.base_rate
                for start, tier_rate in unit.tiers:
                    if usage[0] > start:
                        rate = tier_rate
                        break
            price = rate * leaf
            total += price
            kind = unit.kind
            if kind == _OUTPUT:
                out += price
            elif kind:
                inp += price
                if kind == _CACHE_READ:
                    cread += price
                elif kind == _CACHE_WRITE:
                    cwrite += price
        return Cost(inp, out, total, cread, cwrite)


def _registry() -> Any:
    from genai_prices.units import _get_registry

    return _get_registry()


def compile_plan(model_price: gp.ModelPrice) -> Plan:
    """Mirror genai-prices' ``ModelPrice.calc_price`` for our five usage fields."""
    from genai_prices.validation import validate_priced_units

    registry = _registry()
    priced: list[tuple[Any, Decimal | gp.TieredPrices]] = []
    for key, value in model_price.__dict__.items():
        if key.startswith("_") or value is None:
            continue
        try:
            unit = registry.unit_for_price_key(key)
        except KeyError:
            continue  # genai-prices ignores unknown price keys too (with a warning)
        priced.append((unit, value))
    validate_priced_units(tuple(u for u, _ in priced), registry)
    # genai-prices' leaf order: most dimensions first, then by usage key.
    order = sorted(priced, key=lambda p: (-len(p[0].dimensions), p[0].usage_key))
    kept = [
        (unit, price) for unit, price in order if unit.usage_key == "requests" or unit.usage_key in _FIELD_OF_USAGE_KEY
    ]
    units: list[_Unit] = []
    for i, (unit, price) in enumerate(kept):
        dims = unit.dimensions.items()
        descendants = tuple(j for j in range(i) if dims <= kept[j][0].dimensions.items())
        source = _REQUESTS if unit.usage_key == "requests" else _FIELD_OF_USAGE_KEY[unit.usage_key]
        per = Decimal(unit.per)
        if isinstance(price, gp.TieredPrices):
            rate = None
            base = price.base / per
            tiers = tuple((t.start, t.price / per) for t in reversed(price.tiers))
        else:
            rate, base, tiers = price / per, price / per, ()
        direction = unit.dimensions.get("direction")
        token_type = unit.dimensions.get("token_type")
        if direction == "output":
            kind = _OUTPUT
        elif direction == "input":
            kind = {"cache_read": _CACHE_READ, "cache_write": _CACHE_WRITE}.get(token_type, _INPUT)
        else:
            kind = _OTHER
        units.append(_Unit(source, rate, tiers, base, kind, descendants))
    return Plan(tuple(units))


def genai_usage(usage: tuple[int, int, int, int, int]) -> gp.Usage:
    return gp.Usage(
        input_tokens=usage[0],
        cache_read_tokens=usage[1],
        cache_write_tokens=usage[2],
        output_tokens=usage[3],
        output_reasoning_tokens=usage[4],
    )


def _probes(model_price: gp.ModelPrice) -> list[tuple[int, int, int, int, int]]:
    starts: set[int] = set()
    for value in model_price.__dict__.values():
        if isinstance(value, gp.TieredPrices):
            starts.update(t.start for t in value.tiers)
    probes = [(1_234_567, 234_567, 12_345, 765_432, 54_321), (1_000, 0, 0, 500, 0), (0, 0, 0, 0, 0)]
    for s in sorted(starts):
        probes += [(s, s // 3, s // 7, 1_001, 333), (s + 1, s // 3, s // 7, 1_001, 333)]
    return probes


SIMULATED_PROVIDER = "echo"


def verified_plan(model_price: gp.ModelPrice) -> Plan | None:
    """A compiled plan that reproduces genai-prices exactly on the probes, else None."""
    try:
        plan = compile_plan(model_price)
        for probe in _probes(model_price):
            mine = plan.cost(probe)
            theirs = model_price.calc_price(genai_usage(probe))
            if (mine.input, mine.output, mine.total) != (
                theirs["input_price"],
                theirs["output_price"],
                theirs["total_price"],
            ):
                return None
    except Exception:
        return None
    return plan


# -- overrides ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Override:
    """A workspace's (or ``'*'``: every workspace's) price for a provider's model, in
    ``currency`` per million tokens. ``None`` cache prices bill those tokens at the input
    price; reasoning tokens are output tokens. Valid from ``valid_from`` (UTC; ``None``:
    always) until a later override of the same key starts."""

    workspace: str
    provider: str
    model: str
    input_mtok: Decimal
    output_mtok: Decimal
    cache_read_mtok: Decimal | None = None
    cache_write_mtok: Decimal | None = None
    currency: str = "USD"
    valid_from: datetime | None = None
    note: str | None = None
    id: int | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.workspace, self.provider.lower(), self.model.lower())

    def model_price(self) -> gp.ModelPrice:
        return gp.ModelPrice(
            input_mtok=self.input_mtok,
            output_mtok=self.output_mtok,
            cache_read_mtok=self.cache_read_mtok,
            cache_write_mtok=self.cache_write_mtok,
        )

    @property
    def version(self) -> str:
        start = self.valid_from.isoformat() if self.valid_from else "always"
        return f"override#{self.id}@{start}"


@dataclass(slots=True)
class _OverrideSeries:
    starts: list[float]  # valid_from as epoch seconds, ascending (-inf for None)
    entries: list[tuple[Override, Plan]]

    def at(self, ts: float) -> tuple[Override, Plan] | None:
        i = bisect.bisect_right(self.starts, ts) - 1
        return self.entries[i] if i >= 0 else None


def _epoch(value: datetime | None) -> float:
    if value is None:
        return float("-inf")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


def index_overrides(overrides: Iterable[Override]) -> dict[tuple[str, str, str], _OverrideSeries]:
    grouped: dict[tuple[str, str, str], list[Override]] = {}
    for o in overrides:
        grouped.setdefault(o.key, []).append(o)
    index: dict[tuple[str, str, str], _OverrideSeries] = {}
    for key, items in grouped.items():
        items.sort(key=lambda o: (_epoch(o.valid_from), o.id or 0))
        entries = []
        for o in items:
            plan = compile_plan(o.model_price())  # four plain prices: always compilable
            entries.append((o, plan))
        index[key] = _OverrideSeries([_epoch(o.valid_from) for o in items], entries)
    return index


# -- resolution --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """How one call is priced. ``plan is None`` and ``priced`` false: no known price.
    ``model_price`` set instead of ``plan``: compute with genai-prices on each call."""

    priced: bool
    source: str | None  # "genai-prices" | "override" | None
    version: str | None
    provider_id: str | None  # genai-prices provider id or the override's provider
    model_id: str | None  # the price's model (genai-prices id or the override's name)
    currency: str = "USD"
    plan: Plan | None = None
    slow: tuple[gp.ModelInfo, gp.Provider] | None = None
    reason: str | None = None  # why unpriced

    def cost(self, usage: tuple[int, int, int, int, int], ts: float) -> Cost:
        if self.plan is not None:
            return self.plan.cost(usage).quantized()
        if self.slow is not None:
            model, provider = self.slow
            try:
                calc = model.calc_price(
                    genai_usage(usage),
                    provider,
                    genai_request_timestamp=datetime.fromtimestamp(ts, UTC),
                )
            except ValueError as exc:
                raise PricingError(str(exc)) from exc
            return Cost(calc.input_price, calc.output_price, calc.total_price).quantized()
        raise PricingError("no price")


@dataclass(slots=True)
class _DbEntry:
    provider: gp.Provider | None
    model: gp.ModelInfo | None
    reason: str | None = None
    static_quote: Quote | None = None  # when the model has a single, timeless price
    quotes: dict[int, Quote] = field(default_factory=dict)  # id(ModelPrice) -> quote


class PriceBook:
    """Resolves ``(workspace, provider, model, time)`` to a :class:`Quote`.

    Database look-ups are cached per ``(provider, model)``, including misses (a miss
    stays a miss: it is never turned into a zero price). Overrides are an in-memory
    index replaced as a whole by :meth:`set_overrides`, so a reload never races a read.
    """

    def __init__(self, overrides: Iterable[Override] = ()) -> None:
        self._db: dict[tuple[str, str], _DbEntry] = {}
        self._snapshot: data_snapshot.DataSnapshot | None = None
        self._version = f"genai-prices {GENAI_VERSION}"
        # (every overridden (provider, model), the index): one attribute, swapped whole,
        # so a reload in another thread never shows a half-updated pair.
        self._ov: tuple[frozenset[tuple[str, str]], dict[tuple[str, str, str], _OverrideSeries]]
        self._ov = (frozenset(), {})
        self.set_overrides(overrides)

    # overrides
    def set_overrides(self, overrides: Iterable[Override]) -> None:
        index = index_overrides(overrides)
        self._ov = (frozenset((p, m) for (_, p, m) in index), index)

    @property
    def overrides(self) -> list[Override]:
        return [o for series in self._ov[1].values() for o, _ in series.entries]

    def clear(self) -> None:
        self._db.clear()

    # database
    def _entry(self, provider: str, model: str) -> _DbEntry:
        snapshot = data_snapshot.get_snapshot()
        if snapshot is not self._snapshot:  # genai-prices' UpdatePrices swapped the data
            self._db.clear()
            self._snapshot = snapshot
            self._version = f"genai-prices {GENAI_VERSION}" + (
                f" data@{snapshot.timestamp.isoformat(timespec='seconds')}" if snapshot.from_auto_update else ""
            )
        key = (provider, model)
        entry = self._db.get(key)
        if entry is None:
            if len(self._db) >= DB_CACHE_SIZE:  # unbounded model names must not grow memory
                self._db.clear()
            try:
                # The offline echo provider simulates real models: price "echo/gpt-4o"
                # as genai-prices infers from the model name alone.
                lookup = None if provider == SIMULATED_PROVIDER else provider
                prov, info = snapshot.find_provider_model(model, None, lookup, None)
            except LookupError as exc:
                entry = _DbEntry(None, None, str(exc))
            else:
                entry = _DbEntry(prov, info)
                if isinstance(info.prices, gp.ModelPrice):
                    entry.static_quote = self._db_quote(prov, info, info.prices)
            self._db[key] = entry
        return entry

    def _db_quote(self, prov: gp.Provider, info: gp.ModelInfo, price: gp.ModelPrice) -> Quote:
        plan = verified_plan(price)
        return Quote(
            True,
            "genai-prices",
            self._version,
            prov.id,
            info.id,
            "USD",
            plan,
            None if plan is not None else (info, prov),
        )

    def _db_quote_at(self, entry: _DbEntry, ts: float) -> Quote:
        if entry.static_quote is not None:
            return entry.static_quote
        if entry.model is None or entry.provider is None:
            return Quote(False, None, None, None, None, reason=entry.reason)
        price = entry.model.get_prices(datetime.fromtimestamp(ts, UTC))
        quote = entry.quotes.get(id(price))
        if quote is None:  # the ModelPrice objects live as long as the snapshot
            quote = entry.quotes[id(price)] = self._db_quote(entry.provider, entry.model, price)
        return quote

    def quote(self, workspace: str, provider: str, model: str, ts: float) -> Quote:
        provider = provider.lower()
        model = model.lower()
        entry = self._entry(provider, model)
        overridden, index = self._ov
        if overridden:
            names: Sequence[str] = (model,)
            if entry.model is not None and entry.model.id != model:
                names = (model, entry.model.id)  # a dated alias also takes its model's override
            for ws in (workspace, "*"):
                for name in names:
                    if (provider, name) not in overridden:
                        continue
                    series = index.get((ws, provider, name))
                    hit = series.at(ts) if series is not None else None
                    if hit is not None:
                        o, plan = hit
                        return Quote(True, "override", o.version, provider, o.model, o.currency, plan)
        return self._db_quote_at(entry, ts)
