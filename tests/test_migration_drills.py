"""Rollback drills: every migration branch (the host's and each installed plugin's)
steps down revision by revision and back up, on SQLite and PostgreSQL, with data present
in every branch; what other branches hold is never touched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from synthhost.host import Host
from synthhost.storage import db

pytestmark = pytest.mark.anyio

ALL_FLAGS_OFF = ("disable_",)


def tables(engine: sa.Engine) -> set[str]:
    return {t for t in sa.inspect(engine).get_table_names() if t != "alembic_version"}


def counts(engine: sa.Engine, names: set[str]) -> dict[str, int]:
    with engine.connect() as conn:
        return {t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar_one()) for t in sorted(names)}


def branches(host: Host) -> dict[str, list[str]]:
    """Branch label -> its revisions, base first."""
    cfg = db.alembic_config(str(host.engine.url), host.registry.migrations)
    script = ScriptDirectory.from_config(cfg)
    out: dict[str, list[str]] = {}
    for head in script.get_heads():
        chain = [rev for rev in script.iterate_revisions(head, "base")]
        labels = {label for rev in chain for label in rev.branch_labels}
        assert len(labels) == 1, f"branch of {head} has labels {labels}"
        out[labels.pop()] = [rev.revision for rev in reversed(chain)]
    return out


async def seed(host: Host) -> None:
    """Rows in as many tables as a few real calls with every plugin on produce."""
    async with host:
        for name in host.registry.flags:
            if not name.startswith(ALL_FLAGS_OFF) and "stackstorm" not in name and "similarity_check" not in name:
                host.flags.set(name, True, workspace="drill")
        for i in range(3):
            await host.complete(model="echo/gpt-4o-mini", messages=f"drill prompt number {i}", workspace="drill",
                                user="u1", org="o1")
        host.emit("drill_event", workspace="drill", n=1)
    from synthhost.retention import GLOBAL, set_policy

    set_policy(host.engine, host.registry.retention, "drill", GLOBAL, 90)  # 0005's table has a row too


async def test_every_migration_branch_steps_down_and_up_with_data(make_host: Callable[..., Host]) -> None:
    import synthhost_cost
    import synthhost_guardrails
    import synthhost_policy
    import synthhost_ratelimit
    import synthhost_routing
    import synthhost_similarity

    host = make_host(synthhost_cost, synthhost_guardrails, synthhost_policy, synthhost_ratelimit,
                     synthhost_routing, synthhost_similarity)
    host.migrate()
    await seed(host)
    engine, migrations = host.engine, host.registry.migrations
    everything = tables(engine)
    before = counts(engine, everything)
    assert sum(1 for n in before.values() if n) >= 8, before  # the drill runs with real data
    found = branches(host)
    assert {"synthhost", "cost", "similarity", "policy", "ratelimit", "routing", "guardrails"} <= set(found)
    for label, revisions in found.items():
        # step down one revision at a time (the base's own step drops the branch)
        dropped: set[str] = set()
        for target in [*reversed(revisions[:-1]), f"{label}@base"]:
            db.downgrade(engine, migrations, target)
            now = tables(engine)
            assert now <= everything, f"{label} -> {target} created {now - everything}"
            dropped = everything - now
        assert dropped, f"{label}@base left every table in place"
        others = everything - dropped
        assert counts(engine, others) == {t: before[t] for t in sorted(others)}, f"{label}: other branches changed"
        # and up again: the same tables, other branches' rows untouched
        db.upgrade(engine, migrations)
        assert tables(engine) == everything
        assert counts(engine, others) == {t: before[t] for t in sorted(others)}
        assert db.is_current(engine, migrations)
        before.update(counts(engine, dropped))  # the re-created tables start empty
    # all the way down and up
    db.downgrade(engine, migrations, "base")
    assert tables(engine) == set()
    db.upgrade(engine, migrations)
    assert tables(engine) == everything and db.is_current(engine, migrations)
    # and the host works on the re-created schema
    await seed(host)
    assert counts(engine, {"model_cost_logs"})["model_cost_logs"] == 3
