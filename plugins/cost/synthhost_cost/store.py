"""Reading and writing price overrides (sync; off the call path), and parsing what
people type for them (bad input raises :class:`~synthhost.errors.UsageError`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from synthhost.errors import UsageError
from synthhost.storage.models import utcnow
from synthhost_cost.models import ALWAYS, OVERRIDES
from synthhost_cost.pricing import MONEY_QUANTUM, Override

_CURRENCY = re.compile(r"^[A-Z]{3}$")
MAX_PRICE = Decimal("1E9")  # per million tokens; Numeric(20, 10) holds < 1e10


def parse_price(value: str | Decimal | None, field: str, *, required: bool) -> Decimal | None:
    """A non-negative decimal price per million tokens (at most 10 decimal places)."""
    if value is None or value == "":
        if required:
            raise UsageError(f"{field}: a price per million tokens is required")
        return None
    try:
        price = value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise UsageError(f"{field}: {value!r} is not a decimal number") from None
    if not price.is_finite() or price < 0:
        raise UsageError(f"{field}: {value!r} must be a finite, non-negative number")
    if price >= MAX_PRICE:
        raise UsageError(f"{field}: {value!r} is too large (limit {MAX_PRICE:f} per million tokens)")
    if price != price.quantize(MONEY_QUANTUM):
        raise UsageError(f"{field}: {value!r} has more than 10 decimal places")
    return price


def parse_when(value: str | datetime | None, field: str = "--valid-from") -> datetime | None:
    """An ISO-8601 date or time; naive values are UTC."""
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        when = value
    else:
        try:
            when = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(f"{field}: {value!r} is not an ISO date or time (2026-01-31T00:00Z)") from None
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def make_override(
    *,
    workspace: str | None,
    provider: str,
    model: str,
    input_mtok: str | Decimal | None,
    output_mtok: str | Decimal | None,
    cache_read_mtok: str | Decimal | None = None,
    cache_write_mtok: str | Decimal | None = None,
    currency: str = "USD",
    valid_from: str | datetime | None = None,
    note: str | None = None,
) -> Override:
    """Validate user input into an :class:`Override` (names are stored lower-case)."""
    ws = (workspace or "*").strip()
    prov, name = provider.strip().lower(), model.strip().lower()
    if not ws or len(ws) > 200:
        raise UsageError("--workspace: give a workspace name (or '*' for every workspace)")
    if not prov or len(prov) > 100 or "/" in prov:
        raise UsageError(f"--provider: {provider!r} is not a provider name (e.g. openai)")
    if not name or len(name) > 200:
        raise UsageError(f"--model: {model!r} is not a model name")
    cur = (currency or "USD").strip().upper()
    if not _CURRENCY.match(cur):
        raise UsageError(f"--currency: {currency!r} is not a 3-letter ISO currency code")
    if note is not None and len(note) > 500:
        raise UsageError("--note: at most 500 characters")
    return Override(
        workspace=ws,
        provider=prov,
        model=name,
        input_mtok=parse_price(input_mtok, "--input", required=True),
        output_mtok=parse_price(output_mtok, "--output", required=True),
        cache_read_mtok=parse_price(cache_read_mtok, "--cache-read", required=False),
        cache_write_mtok=parse_price(cache_write_mtok, "--cache-write", required=False),
        currency=cur,
        valid_from=parse_when(valid_from),
        note=note,
    )


def _from_row(row: sa.RowMapping) -> Override:
    valid_from = row["valid_from"]
    if valid_from is not None and valid_from.tzinfo is None:  # SQLite hands back naive UTC
        valid_from = valid_from.replace(tzinfo=UTC)
    return Override(
        workspace=row["workspace_id"],
        provider=row["provider"],
        model=row["model"],
        input_mtok=row["input_mtok"],
        output_mtok=row["output_mtok"],
        cache_read_mtok=row["cache_read_mtok"],
        cache_write_mtok=row["cache_write_mtok"],
        currency=row["currency"],
        valid_from=None if valid_from == ALWAYS else valid_from,
        note=row["note"],
        id=row["id"],
    )


def load_overrides(engine: sa.Engine, workspace: str | None = None) -> list[Override]:
    query = sa.select(OVERRIDES).order_by(
        OVERRIDES.c.workspace_id, OVERRIDES.c.provider, OVERRIDES.c.model, OVERRIDES.c.valid_from
    )
    if workspace is not None:
        query = query.where(OVERRIDES.c.workspace_id.in_([workspace, "*"]))
    with engine.connect() as conn:
        return [_from_row(r) for r in conn.execute(query).mappings()]


def overrides_marker(engine: sa.Engine) -> tuple[int, Any]:
    """A cheap change detector: (row count, latest update). Any insert, update or delete
    changes it."""
    with engine.connect() as conn:
        row = conn.execute(sa.select(sa.func.count(), sa.func.max(OVERRIDES.c.updated_at)).select_from(OVERRIDES)).one()
    return int(row[0]), row[1]


def save_override(engine: sa.Engine, o: Override) -> int:
    """Insert, or replace the row with the same (workspace, provider, model, valid_from).
    Returns the row id."""
    key = (
        (OVERRIDES.c.workspace_id == o.workspace)
        & (OVERRIDES.c.provider == o.provider)
        & (OVERRIDES.c.model == o.model)
        & (OVERRIDES.c.valid_from == (o.valid_from or ALWAYS))
    )
    now = utcnow()
    values = {
        "input_mtok": o.input_mtok,
        "output_mtok": o.output_mtok,
        "cache_read_mtok": o.cache_read_mtok,
        "cache_write_mtok": o.cache_write_mtok,
        "currency": o.currency,
        "note": o.note,
        "updated_at": now,
    }
    with engine.begin() as conn:
        existing = conn.execute(sa.select(OVERRIDES.c.id).where(key)).scalar()
        if existing is not None:
            conn.execute(OVERRIDES.update().where(OVERRIDES.c.id == existing).values(**values))
            return int(existing)
        result = conn.execute(
            OVERRIDES.insert().values(
                workspace_id=o.workspace,
                provider=o.provider,
                model=o.model,
                valid_from=o.valid_from or ALWAYS,
                created_at=now,
                **values,
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]


def delete_overrides(
    engine: sa.Engine,
    *,
    id: int | None = None,
    workspace: str | None = None,
    provider: str | None = None,
    model: str | None = None,
    valid_from: datetime | None = None,
) -> int:
    """Delete by id, or every row of (workspace, provider, model) [at valid_from]."""
    query = OVERRIDES.delete()
    if id is not None:
        query = query.where(OVERRIDES.c.id == id)
    else:
        if not (provider and model):
            raise UsageError("give an override id, or --provider and --model")
        query = query.where(
            OVERRIDES.c.workspace_id == (workspace or "*"),
            OVERRIDES.c.provider == provider.strip().lower(),
            OVERRIDES.c.model == model.strip().lower(),
        )
        if valid_from is not None:
            query = query.where(OVERRIDES.c.valid_from == valid_from)
    with engine.begin() as conn:
        return int(conn.execute(query).rowcount or 0)
