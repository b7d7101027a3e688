"""Spool replay after every plugin's tables are known (issue: replay ran before the
plugins' startup hooks, so rows of lazily defined plugin tables were dropped and the
spool file deleted anyway)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import SQLModel

from synthhost.storage import spool

# Importing them here only gives the test their table definitions; the host that
# replays runs in a fresh process, where plugins define their tables when they start.
import synthhost_cost.models  # noqa: F401  # isort: skip
import synthhost_guardrails.models  # noqa: F401  # isort: skip
import synthhost_policy.models  # noqa: F401  # isort: skip
import synthhost_ratelimit.models  # noqa: F401  # isort: skip
import synthhost_routing.models  # noqa: F401  # isort: skip
import synthhost_similarity.models  # noqa: F401  # isort: skip

PLUGIN_TABLES = ["model_cost_logs", "prompt_similarity_logs", "prompt_references", "similarity_settings",
                 "policy_sets", "policy_audit", "guardrail_sets", "routing_configs", "ratelimit_limits"]


def _value(column: sa.Column[Any], i: int) -> Any:
    """A valid, distinctive value for ``column`` in row ``i``."""
    if column.name == "workspace_id":
        return f"ws{i}"
    if type(column.type).__name__ == "Money":  # the cost plugin's exact money type
        return Decimal("0.0001234567") + i  # 10 decimal places, as stored
    try:
        py = column.type.python_type
    except NotImplementedError:
        py = dict
    if py is bool:
        return i % 2 == 0
    if py is int:
        return 100 + i
    if py is float:
        return 1.5 + i
    if py is Decimal:
        scale = getattr(column.type, "scale", None) or 2
        return (Decimal(1) / Decimal(7) + i).quantize(Decimal(1).scaleb(-scale))
    if py is datetime:
        return datetime(2026, 12, 1, 12, 0, i, tzinfo=UTC)
    if py in (dict, list):
        return {"k": i, "nested": ["a", i]}
    if py is bytes:
        return bytes([i, 0, 255])
    length = getattr(column.type, "length", None) or 64
    return f"{column.name}-{i}"[:length]


def sample_rows(table: sa.Table, n: int = 3) -> list[dict[str, Any]]:
    return [{c.name: _value(c, i) for c in table.columns if not (c.autoincrement is True and c.primary_key)}
            for i in range(n)]


def run_host(db_url: str, spool_dir: Path, home: Path) -> None:
    """A real host start and stop in a fresh process: plugins from entry points."""
    code = ("import anyio\nfrom synthhost import Host\n"
            "async def main():\n    async with Host.from_env():\n        pass\nanyio.run(main)\n")
    env = {**os.environ, "DATABASE_URL": db_url, "SYNTHHOST_SPOOL_DIR": str(spool_dir),
           "SYNTHHOST_HOME": str(home), "SYNTHHOST_LOAD_PLUGINS": "cost,similarity,policy,ratelimit,routing,guardrails"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def migrate(db_url: str, spool_dir: Path, home: Path) -> None:
    run_host(db_url, spool_dir, home)  # an empty spool: just the migrations of every plugin


def test_rows_of_every_plugin_table_survive_the_spool(db_url: str, tmp_path: Path) -> None:
    spool_dir, home = tmp_path / "spool", tmp_path / "home"
    migrate(db_url, spool_dir, home)
    tables = SQLModel.metadata.tables
    items = []
    expected: dict[str, list[dict[str, Any]]] = {}
    for name in PLUGIN_TABLES:
        rows = expected[name] = sample_rows(tables[name])
        items += [(tables[name], row, None) for row in rows]
    path = spool.write(spool_dir, items)
    assert path.exists()

    run_host(db_url, spool_dir, home)

    assert spool.pending(spool_dir) == []
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            for name, rows in expected.items():
                table = tables[name]
                got = [dict(r._mapping) for r in conn.execute(sa.select(table))]
                assert len(got) == len(rows), name
                for want in rows:
                    pk = [c.name for c in table.primary_key.columns if c.name in want]
                    match = [g for g in got if all(g[k] == want[k] for k in pk)]
                    assert len(match) == 1, (name, want)
                    for key, value in want.items():
                        stored = match[0][key]
                        if isinstance(value, datetime):
                            stored = stored if stored.tzinfo else stored.replace(tzinfo=UTC)
                        assert stored == value, (name, key)
    finally:
        engine.dispose()


def test_rows_of_an_unknown_table_stay_in_the_spool_and_are_reported(db_url: str, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    spool_dir, home = tmp_path / "spool", tmp_path / "home"
    migrate(db_url, spool_dir, home)
    orphan = sa.Table("acme_audit_rows", sa.MetaData(), sa.Column("id", sa.String, primary_key=True))
    cost = SQLModel.metadata.tables["model_cost_logs"]
    spool.write(spool_dir, [(orphan, {"id": "a1"}, None), (orphan, {"id": "a2"}, None),
                            *[(cost, row, None) for row in sample_rows(cost, 2)]])
    run_host(db_url, spool_dir, home)

    [kept] = spool.pending(spool_dir)
    lines = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [(r["table"], r["values"]["id"]) for r in lines] == [("acme_audit_rows", "a1"), ("acme_audit_rows", "a2")]
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(cost)).scalar_one() == 2
            [event] = conn.execute(sa.text(
                "SELECT context FROM event_logs WHERE event_type = 'spool_rows_kept'")).all()
    finally:
        engine.dispose()
    context = event[0] if isinstance(event[0], dict) else json.loads(event[0])
    assert context["rows"] == 2 and context["tables"] == {"acme_audit_rows": 2}

    from synthhost.cli import cli

    for k, v in {"DATABASE_URL": db_url, "SYNTHHOST_SPOOL_DIR": str(spool_dir), "SYNTHHOST_HOME": str(home)}.items():
        monkeypatch.setenv(k, v)
    result = CliRunner().invoke(cli, ["health", "--json"])
    assert result.exit_code == 1
    [check] = [r for r in json.loads(result.output) if r["name"] == "spool"]
    assert check["ok"] is False and "acme_audit_rows: 2" in check["detail"]
