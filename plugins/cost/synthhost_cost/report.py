"""``synthhost costs report``: totals per model, agent or day, summed in SQL.

Each ``model_cost_logs`` row is one provider attempt, so ``attempts`` counts rows,
``failed`` the attempts that got no answer, and ``unpriced`` the rows with no known
price; ``cost`` sums the priced rows only (an unpriced row adds nothing to it and is
counted instead: the figure is a lower bound whenever ``unpriced`` is not zero).
Totals are computed by their own query, not by adding the groups, so tests can check
that the groups add up to the totals and to the rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import sqlalchemy as sa

from synthhost.errors import UsageError
from synthhost_cost.models import COST_LOGS, money_sum
from synthhost_cost.pricing import ZERO
from synthhost_cost.store import parse_when

GroupBy = Literal["model", "agent", "day"]
TOKEN_FIELDS = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
)
_RELATIVE = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(value: str | None, now: datetime | None = None) -> datetime | None:
    """``7d``, ``24h``, ``30m``, ``2w`` (before now) or an ISO date/time (UTC if naive)."""
    if value is None or value == "":
        return None
    match = _RELATIVE.match(value.strip().lower())
    if match:
        amount, unit = int(match.group(1)), _UNITS[match.group(2)]
        return (now or datetime.now(UTC)) - timedelta(**{unit: amount})
    try:
        return parse_when(value, "--since")
    except UsageError:
        raise UsageError(f"--since: {value!r} is neither a duration (7d, 24h, 30m) nor an ISO date") from None


@dataclass(slots=True)
class Totals:
    key: str
    currency: str
    attempts: int = 0
    ok: int = 0
    failed: int = 0
    unpriced: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    cost: Decimal = ZERO

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "currency": self.currency,
            "attempts": self.attempts,
            "ok": self.ok,
            "failed": self.failed,
            "unpriced": self.unpriced,
            **self.tokens,
            "cost": f"{self.cost:f}",
        }


@dataclass(slots=True)
class Report:
    by: GroupBy
    workspace: str | None
    since: datetime | None
    groups: list[Totals]
    totals: list[Totals]  # one per currency

    def to_dict(self) -> dict[str, Any]:
        return {
            "by": self.by,
            "workspace": self.workspace,
            "since": self.since.isoformat() if self.since else None,
            "groups": [g.to_dict() for g in self.groups],
            "totals": [t.to_dict() for t in self.totals],
        }


def _day(dialect: str) -> Any:
    col = COST_LOGS.c.created_at
    if dialect == "postgresql":
        # literal constants: PostgreSQL must see the same expression in GROUP BY
        return sa.func.to_char(sa.func.timezone(sa.literal_column("'UTC'"), col), sa.literal_column("'YYYY-MM-DD'"))
    return sa.func.strftime(sa.literal_column("'%Y-%m-%d'"), col)  # SQLite stores UTC


def _measures() -> list[Any]:
    c = COST_LOGS.c
    return [
        sa.func.count().label("attempts"),
        sa.func.sum(sa.case((c.status == "ok", 1), else_=0)).label("ok"),
        sa.func.sum(sa.case((c.status == "failed", 1), else_=0)).label("failed"),
        sa.func.sum(sa.case((c.priced.is_(False), 1), else_=0)).label("unpriced"),
        *[sa.func.sum(getattr(c, f)).label(f) for f in TOKEN_FIELDS],
        money_sum(c.total_cost).label("cost"),
    ]


def _totals(key: str, row: Any) -> Totals:
    return Totals(
        key=key,
        currency=row.currency,
        attempts=int(row.attempts or 0),
        ok=int(row.ok or 0),
        failed=int(row.failed or 0),
        unpriced=int(row.unpriced or 0),
        tokens={f: int(getattr(row, f) or 0) for f in TOKEN_FIELDS},
        cost=row.cost if row.cost is not None else ZERO,
    )


def cost_report(
    engine: sa.Engine,
    *,
    workspace: str | None = None,
    since: datetime | None = None,
    by: GroupBy = "model",
) -> Report:
    c = COST_LOGS.c
    if by == "model":
        keys: list[Any] = [c.provider, c.model_billed]
    elif by == "agent":
        keys = [sa.func.coalesce(c.agent, sa.literal_column("'-'"))]
    elif by == "day":
        keys = [_day(engine.dialect.name)]
    else:
        raise UsageError(f"--by: {by!r} is not one of model, agent, day")
    labelled = [k.label(f"k{i}") for i, k in enumerate(keys)]
    where = []
    if workspace is not None:
        where.append(c.workspace_id == workspace)
    if since is not None:
        where.append(c.created_at >= since)
    grouped = (
        sa.select(*labelled, c.currency, *_measures())
        .where(*where)
        .group_by(*keys, c.currency)
        .order_by(*keys, c.currency)
    )
    overall = sa.select(c.currency, *_measures()).where(*where).group_by(c.currency).order_by(c.currency)
    with engine.connect() as conn:
        groups = [
            _totals("/".join(str(getattr(r, f"k{i}")) for i in range(len(keys))), r) for r in conn.execute(grouped)
        ]
        totals = [_totals("total", r) for r in conn.execute(overall)]
    if by in ("model", "agent"):
        groups.sort(key=lambda g: (-g.cost, g.key))  # biggest spend first
    return Report(by, workspace, since, groups, totals)


def render_table(report: Report) -> str:
    head = [
        report.by,
        "attempts",
        "failed",
        "unpriced",
        "input",
        "cached",
        "output",
        "reasoning",
        "cost",
    ]
    rows = [
        [
            t.key if t.currency == "USD" else f"{t.key} ({t.currency})",
            str(t.attempts),
            str(t.failed),
            str(t.unpriced),
            str(t.tokens["input_tokens"]),
            str(t.tokens["cache_read_tokens"] + t.tokens["cache_write_tokens"]),
            str(t.tokens["output_tokens"]),
            str(t.tokens["reasoning_tokens"]),
            f"{t.cost:f}",
        ]
        for t in [*report.groups, *report.totals]
    ]
    if not report.groups:
        return "no cost rows" + (f" for workspace {report.workspace}" if report.workspace else "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    sep = "  ".join("-" * w for w in widths)
    n = len(report.groups)
    out = [line(head), sep, *(line(r) for r in rows[:n]), sep, *(line(r) for r in rows[n:])]
    if any(t.unpriced for t in report.totals):
        out.append("(unpriced attempts have no known price: cost is a lower bound)")
    return "\n".join(out)
