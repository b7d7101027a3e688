"""One way to finish every run; run events collected without scanning; the bounded wait
for the database."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
import sqlalchemy as sa

from synthhost import hookimpl
from synthhost.agent import parse_agent
from synthhost.errors import StorageUnavailable
from synthhost.trace import Trace

pytestmark = pytest.mark.anyio


class Traces:
    __name__ = "traces_seen"

    def __init__(self) -> None:
        self.traces: list[Trace] = []

    @hookimpl
    def on_trace(self, trace: Trace) -> None:
        self.traces.append(trace)


async def test_complete_and_run_finish_the_same_way(make_host: Any) -> None:
    seen = Traces()
    spec = parse_agent("name: one\nmodel: echo/gpt-4o-mini\nsteps:\n  - name: s\n    prompt: hi\n", "one.yaml")
    async with make_host(seen) as host:
        await host.complete(workspace="w", model="echo/gpt-4o-mini", messages="hi")
        result = await host.run(spec, workspace="w")
        await host.writer.flush()
        with host.engine.connect() as conn:
            runs = {r.id: r for r in conn.execute(sa.text("SELECT id, status, ended_at, attributes FROM runs"))}
            finished = conn.execute(sa.text(
                "SELECT run_id, span_id, status FROM event_logs WHERE event_type = 'run_finished'")).all()
    assert len(seen.traces) == 2 and {t.status for t in seen.traces} == {"ok"}
    standalone, agent = seen.traces
    assert agent.run_id == result.run_id
    for trace in (standalone, agent):
        row = runs[trace.run_id]
        assert row.status == "ok" and row.ended_at is not None  # one upsert, finished
        assert trace.attributes["calls"] == 1 and trace.attributes["tokens"] > 0
    assert sorted(status for _, _, status in finished) == ["success", "success"]
    spans = {(e.run_id, e.span_id) for e in finished}
    # The root of a one-call trace is its call span; of an agent run, the run span.
    assert (standalone.run_id, standalone.spans[0].span_id) in spans
    assert (agent.run_id, agent.run_id) in spans


async def test_a_cancelled_complete_is_recorded_cancelled(make_host: Any) -> None:
    seen = Traces()
    async with make_host(seen) as host:
        with anyio.move_on_after(0.2):
            await host.complete(workspace="w", model="echo/gpt-4o-mini", messages="hi",
                                params={"echo_latency_ms": 30_000})
        await host.writer.flush()
        with host.engine.connect() as conn:
            run = conn.execute(sa.text("SELECT status, error_code FROM runs")).one()
            span = conn.execute(sa.text("SELECT status, error_code FROM spans WHERE kind = 'call'")).one()
    assert tuple(run) == ("cancelled", "CANCELLED") and tuple(span) == ("cancelled", "CANCELLED")
    assert [t.status for t in seen.traces] == ["cancelled"]


async def test_concurrent_runs_get_exactly_their_own_events_without_listeners(make_host: Any) -> None:
    spec = parse_agent("name: two\nmodel: echo/m\nsteps:\n  - name: a\n    prompt: x\n  - name: b\n    prompt: y\n",
                       "two.yaml")
    seen = Traces()
    async with make_host(seen) as host:
        async def one(i: int) -> None:
            await host.run(spec, workspace=f"w{i % 3}")

        async with anyio.create_task_group() as tg:
            for i in range(30):
                tg.start_soon(one, i)
        assert host._on_emit == []  # no per-run listener to scan on every event
        assert host._run_events == {}  # and nothing left behind
        with host.engine.connect() as conn:
            stored = dict(conn.execute(sa.text(
                "SELECT run_id, count(*) FROM event_logs WHERE run_id IS NOT NULL GROUP BY run_id")).all())
    assert len(seen.traces) == 30
    for trace in seen.traces:
        types = [e.event_type for e in trace.events]
        assert types.count("run_started") == 1 and types.count("run_finished") == 1
        assert len(trace.events) == stored[trace.run_id]  # its own events, all of them


async def test_run_events_are_collected_in_o1(make_host: Any) -> None:
    """emit() looks a run up by id: the work per event does not grow with the number of
    runs in progress."""
    spec = parse_agent("name: e\nmodel: echo/m\nsteps:\n  - name: a\n    prompt: x\n", "e.yaml")
    seen = Traces()
    async with make_host(seen) as host:
        fake_runs: dict[str, list[Any]] = {f"other-{i}": [] for i in range(10_000)}
        host._run_events.update(fake_runs)
        await host.run(spec, workspace="w")
        assert all(not events for events in fake_runs.values())
    [trace] = seen.traces
    types = [e.event_type for e in trace.events]
    assert types.count("run_started") == 1 and types.count("run_finished") == 1


async def test_a_run_waits_for_the_database_only_up_to_the_bound(make_host: Any, monkeypatch: Any) -> None:
    spec = parse_agent("name: w\nmodel: echo/m\nsteps:\n  - name: a\n    prompt: x\n", "w.yaml")
    async with make_host(run_flush_timeout_s=0.5) as host:
        async def never(timeout: float | None = None) -> bool:  # failure injection: the database is away
            await anyio.sleep(timeout or 0)
            return False

        monkeypatch.setattr(host.writer, "flush", never)
        with pytest.raises(StorageUnavailable) as info:
            await host.run(spec, workspace="w")
        monkeypatch.undo()
    assert info.value.code == "STORAGE_UNAVAILABLE" and "SYNTHHOST_RUN_FLUSH_TIMEOUT_S" in str(info.value)
