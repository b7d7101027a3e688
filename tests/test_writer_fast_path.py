"""The batched writer's prepared statements and the redactor's fast check: the same
rows reach the database, on SQLite and PostgreSQL, as through SQLAlchemy's generic
``executemany``, and the fast redactor answers exactly what ``redact`` answers."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from synthhost.storage.db import create_engine
from synthhost.storage.writer import BatchedWriter, _Prepared
from synthhost.traces import Redactor, redact

META = sa.MetaData()
TYPED = sa.Table(
    "typed_rows", META,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("n", sa.Integer),
    sa.Column("flag", sa.Boolean),
    sa.Column("amount", sa.Numeric(20, 10)),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("doc", sa.JSON),
    sa.Column("note", sa.String(50)),
)
DEFAULTED = sa.Table(
    "defaulted_rows", META,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(20), default=lambda: "python-side"),
)


def _rows(n: int) -> list[dict[str, Any]]:
    at = datetime(2026, 12, 5, 13, 0, 0, 123456, tzinfo=UTC)
    return [{"id": f"r{i:04d}", "n": i, "flag": i % 2 == 0, "amount": Decimal("0.0000027000") * i,
             "at": at, "doc": {"i": i, "tags": ["a", "b"], "nested": {"x": None}} if i % 3 else None,
             "note": None if i % 5 else f"note {i}"} for i in range(70)]


def test_prepared_rows_read_back_as_written(db_url: str) -> None:
    engine = create_engine(db_url)
    META.create_all(engine)
    columns = tuple(_rows(1)[0])
    assert _Prepared.build(engine.dialect, TYPED.insert(), columns) is not None
    writer = BatchedWriter(engine)
    writer.start()
    try:
        for row in _rows(70):
            writer.submit_values(TYPED, row)
        assert writer.flush_sync(30)
    finally:
        writer.close()
    with engine.connect() as conn:
        got = [dict(r._mapping) for r in conn.execute(sa.select(TYPED).order_by(TYPED.c.id))]
    assert len(got) == 70
    for row, back in zip(_rows(70), got, strict=True):
        at = back.pop("at")
        assert (at if at.tzinfo else at.replace(tzinfo=UTC)) == row.pop("at")
        assert back == row
    engine.dispose()


def test_python_side_defaults_take_the_generic_path(db_url: str) -> None:
    engine = create_engine(db_url)
    META.create_all(engine)
    assert _Prepared.build(engine.dialect, DEFAULTED.insert(), ("id",)) is None
    writer = BatchedWriter(engine)
    writer.start()
    try:
        writer.submit_values(DEFAULTED, {"id": "d1"})
        assert writer.flush_sync(30)
    finally:
        writer.close()
    with engine.connect() as conn:
        assert conn.execute(sa.select(DEFAULTED.c.kind)).scalar_one() == "python-side"
    engine.dispose()


SECRETS = ["hunter2-secret-value", 'we"ird\\secret', "münchen-secret-1"]
WORDS = ["hello", "sk-abcdefgh12345", "Bearer abc.def", "bearer lower", "pk-lf-123", "input_tokens",
         "hunter2-secret-value", "prefix hunter2-secret-value suffix", 'we"ird\\secret', "münchen-secret-1",
         "Bearer\nsplit", "", "token", "a\u2028b"]
KEYS = ["name", "api_key", "API-Key", "x_token", "tokens", "Authorization", "password", "secret_key",
        "input_tokens", "passwd", "monkey", "secretive", "usage"]


def _value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(6 if depth < 3 else 3)
    if kind == 0:
        return rng.choice(WORDS)
    if kind == 1:
        return rng.choice([1, 2.5, None, True, Decimal("1.5")])
    if kind == 2:
        return rng.choice(WORDS) + " " + rng.choice(WORDS)
    if kind in (3, 4):
        return {rng.choice(KEYS): _value(rng, depth + 1) for _ in range(rng.randrange(4))}
    return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_the_fast_redactor_agrees_with_redact() -> None:
    rng = random.Random(20261205)
    for secrets in (SECRETS[:1], SECRETS, []):
        fast = Redactor(secrets)
        for _ in range(3000):
            value = _value(rng)
            assert fast(value) == redact(value, secrets), value
