"""Database down when the process must exit: rows go to a spool file and the next host
replays them — nothing recorded is lost."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from synthhost.storage import spool

pytestmark = pytest.mark.anyio


async def test_rows_survive_a_database_outage_at_shutdown(make_host, tmp_path):
    host = make_host(shutdown_timeout_s=0.5)
    async with host:
        real_engine = host.writer.engine
        # The database goes away: a refused port.
        host.writer.engine = sa.create_engine("postgresql+psycopg://postgres@127.0.0.1:1/gone",
                                              connect_args={"connect_timeout": 1})
        for i in range(5):
            await host.complete(model="echo/m", messages=f"call {i}", workspace="w")
        host.emit("important", workspace="w", n=1)
    files = spool.pending(host.settings.spool_dir)
    assert len(files) == 1
    # Per call: its run row, its span and its run_finished event; plus the extra event.
    assert host.stats["rows_spooled"] == 5 * 3 + 1
    real_engine.dispose()

    again = make_host()
    async with again:
        assert again.stats["spool_files_replayed"] == 1
        assert again.count("spans", kind="call") == 5
        assert again.count("runs") == 5
        assert again.count("event_logs", event_type="important") == 1
        assert again.count("event_logs", event_type="run_finished") == 5
    assert spool.pending(again.settings.spool_dir) == []
