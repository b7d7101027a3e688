"""The cost plugin's tables: one ``model_cost_logs`` row per provider attempt, and the
``model_price_overrides`` a workspace (or ``'*'``, every workspace) sets.

Money follows the host convention, ``Numeric(20, 10)`` and :class:`~decimal.Decimal`,
through :class:`Money`: on PostgreSQL it *is* ``NUMERIC(20, 10)``; SQLite has no exact
decimal type (SQLAlchemy would round-trip through float), so there the same column
holds an integer count of 1e-10 units, which SQLite sums exactly. Either way Python
sees ``Decimal`` with 10 places, and ``SUM`` (wrapped in :func:`money_sum`) stays exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from synthhost.storage.models import ts_column
from synthhost_cost.pricing import MONEY_QUANTUM

ALWAYS = datetime(1970, 1, 1, tzinfo=UTC)
"""``valid_from`` of an override with no start (a real value, so the unique key works)."""


class Money(sa.types.TypeDecorator[Decimal]):
    """``NUMERIC(20, 10)``; an integer of 1e-10 units on SQLite (see module doc)."""

    impl = sa.Numeric(20, 10)
    cache_ok = True

    def load_dialect_impl(self, dialect: sa.Dialect) -> sa.types.TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(sa.BigInteger())
        return dialect.type_descriptor(sa.Numeric(20, 10, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        if value is None:
            return None
        amount = (value if isinstance(value, Decimal) else Decimal(str(value))).quantize(MONEY_QUANTUM)
        return int(amount.scaleb(10)) if dialect.name == "sqlite" else amount

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Decimal | None:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return Decimal(int(value)).scaleb(-10)
        return Decimal(value).quantize(MONEY_QUANTUM)


def money_column(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(Money(), nullable=nullable))


def money_sum(column: Any) -> Any:
    """``SUM(column)`` read back through :class:`Money` (exact on both databases)."""
    return sa.type_coerce(sa.func.sum(column), Money())


class ModelCostLog(SQLModel, table=True):
    """One provider attempt's cost. ``total_cost`` is NULL exactly when the model had no
    known price (``priced`` false): an unknown price is never recorded as zero."""

    __tablename__ = "model_cost_logs"
    __table_args__ = (
        sa.Index("ix_model_cost_logs_ws_time", "workspace_id", "created_at"),
        sa.Index("ix_model_cost_logs_run_id", "run_id"),
    )

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    org_id: str | None = Field(default=None, max_length=200)
    run_id: str | None = Field(default=None, max_length=32)
    trace_id: str | None = Field(default=None, max_length=32)
    span_id: str | None = Field(default=None, max_length=32)
    agent: str | None = Field(default=None, max_length=200)
    step: str | None = Field(default=None, max_length=200)
    attempt: int = 1
    status: str = Field(default="ok", max_length=10)  # ok | failed (the provider attempt)
    error_code: str | None = Field(default=None, max_length=64)
    provider: str = Field(max_length=100)  # the provider that answered (or was tried)
    model_requested: str = Field(max_length=200)
    model_billed: str = Field(max_length=200)  # the model the provider reported
    price_provider: str | None = Field(default=None, max_length=100)  # the price's provider id
    price_model: str | None = Field(default=None, max_length=200)  # the price's model id
    input_tokens: int = 0  # the whole prompt, cache reads and writes included
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0  # the whole completion, reasoning included
    reasoning_tokens: int = 0
    input_cost: Decimal | None = money_column()  # includes cache_read_cost + cache_write_cost
    cache_read_cost: Decimal | None = money_column()
    cache_write_cost: Decimal | None = money_column()
    output_cost: Decimal | None = money_column()
    total_cost: Decimal | None = money_column()
    currency: str = Field(default="USD", max_length=3)
    priced: bool = True
    price_source: str | None = Field(default=None, max_length=20)
    price_version: str | None = Field(default=None, max_length=100)
    note: str | None = Field(default=None, max_length=300)
    created_at: datetime = ts_column()


class ModelPriceOverride(SQLModel, table=True):
    """A negotiated, private or fine-tuned model's price, per million tokens. The latest
    ``valid_from`` not after the call wins; a workspace's row beats the global
    (``'*'``) row; both beat the genai-prices database."""

    __tablename__ = "model_price_overrides"
    __table_args__ = (
        sa.UniqueConstraint("workspace_id", "provider", "model", "valid_from", name="uq_model_price_overrides"),
    )

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(max_length=200)
    provider: str = Field(max_length=100)
    model: str = Field(max_length=200)
    input_mtok: Decimal = Field(sa_column=sa.Column(Money(), nullable=False))
    output_mtok: Decimal = Field(sa_column=sa.Column(Money(), nullable=False))
    cache_read_mtok: Decimal | None = money_column()
    cache_write_mtok: Decimal | None = money_column()
    currency: str = Field(default="USD", max_length=3)
    valid_from: datetime = Field(default=ALWAYS, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False))
    note: str | None = Field(default=None, max_length=500)
    created_at: datetime = ts_column()
    updated_at: datetime = ts_column()


COST_LOGS: sa.Table = ModelCostLog.__table__  # type: ignore[attr-defined]
OVERRIDES: sa.Table = ModelPriceOverride.__table__  # type: ignore[attr-defined]
