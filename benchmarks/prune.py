"""Retention under load: prune ``--rows`` (1,000,000) past-retention ``event_logs`` rows
on PostgreSQL while calls continue, and compare the call latency before and during.

A fresh schema; the old rows are generated in the database (``generate_series``), 40
days old, over ``--workspaces`` workspaces; one host (cost tracking on, so every call
queues rows for the batched writer) makes sequential calls with the echo provider.
Calls are paced at ``--rate`` per second (500). Phases: ``--calls`` counted calls
before (after 200 warm-up), then calls for as long as
:func:`synthhost.retention.prune` runs in a worker thread (batches of ``--batch``). Prints
rows/s, the prune's wall time, and call p50/p95/p99 (µs) before and during; the writer's
backlog during the prune shows whether commits waited behind the deletes. Asserts
nothing.

    uv run python benchmarks/prune.py
    uv run python benchmarks/prune.py --rows 200000 --batch 10000 --json
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
import uuid
from typing import Any

import anyio
import sqlalchemy as sa

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6, 1)


def figures(samples: list[float]) -> dict[str, Any]:
    return {"calls": len(samples), "p50_us": pct(samples, 0.50), "p95_us": pct(samples, 0.95),
            "p99_us": pct(samples, 0.99)}


def seed(url: str, rows: int, workspaces: int) -> float:
    started = time.monotonic()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(
            "INSERT INTO event_logs (id, workspace_id, event_type, status, context, created_at) "
            "SELECT md5(i::text), 'ws' || (i % :w), 'call_finished', 'success', "
            "json_build_object('n', i), now() - interval '40 days' - (i || ' seconds')::interval "
            "FROM generate_series(1, :n) AS i"), {"n": rows, "w": workspaces})
        conn.execute(sa.text("ANALYZE event_logs"))
    engine.dispose()
    return time.monotonic() - started


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    import synthhost_cost
    from synthhost import Host
    from synthhost.retention import prune
    from synthhost.settings import Settings

    schema = f"prune_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    url = f"{PG_URL}?options=-csearch_path%3D{schema}"
    out: dict[str, Any] = {"rows": args.rows, "batch": args.batch, "rate": args.rate}
    try:
        host = Host(Settings.from_env({"DATABASE_URL": url, "SYNTHHOST_HOME": f"/tmp/{schema}"}),
                    plugins=[synthhost_cost], load_entrypoints=False)
        host.migrate()
        out["seed_s"] = round(seed(url, args.rows, args.workspaces), 2)
        specs = {"event_logs": host.registry.retention["event_logs"]}
        env = {"SYNTHHOST_RETENTION_EVENT_LOGS_DAYS": "30"}
        async with host:
            host.flags.set("track_model_costs", True, workspace="bench")
            backlog: list[int] = []

            interval = 1.0 / args.rate
            next_at = [time.perf_counter()]

            async def call(i: int) -> float:
                # Paced: a production-like rate the writer keeps up with, so its backlog
                # shows what the deletes cost the commits, not the benchmark's own flood.
                await anyio.sleep(max(0.0, next_at[0] - time.perf_counter()))
                next_at[0] = max(next_at[0] + interval, time.perf_counter() - 1.0)
                started = time.perf_counter()
                await host.complete(model="echo/gpt-4o-mini", messages=f"prune bench {i}", workspace="bench")
                return time.perf_counter() - started

            for i in range(200):
                await call(i)
            before: list[float] = []
            for i in range(args.calls):
                before.append(await call(i))
                if i % 50 == 0:
                    backlog.append(host.writer.pending)
            out["before"] = figures(before)
            out["writer_backlog_max_before"] = max(backlog, default=0)
            backlog.clear()
            done = threading.Event()
            result: list[Any] = []

            def run_prune() -> None:
                started = time.monotonic()
                result.extend(prune(host.engine, env, specs, batch=args.batch, policies={}))
                result.append(time.monotonic() - started)
                done.set()

            thread = threading.Thread(target=run_prune, name="bench-prune")
            thread.start()
            during: list[float] = []
            i = 0
            while not done.is_set():
                during.append(await call(i))
                if i % 50 == 0:
                    backlog.append(host.writer.pending)
                i += 1
            thread.join()
            out["during"] = figures(during)
            pruned, seconds = result[0], result[-1]
            out["pruned_rows"] = pruned.rows
            out["prune_s"] = round(seconds, 2)
            out["rows_per_s"] = round(pruned.rows / seconds) if seconds else None
            out["writer_backlog_max_during"] = max(backlog, default=0)
            await host.writer.flush()
        host.engine.dispose()
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="past-retention rows to prune")
    parser.add_argument("--batch", type=int, default=5_000, help="rows per delete transaction")
    parser.add_argument("--calls", type=int, default=2_000, help="counted calls before the prune")
    parser.add_argument("--workspaces", type=int, default=100)
    parser.add_argument("--rate", type=float, default=500.0, help="calls per second (paced, sequential)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = anyio.run(bench, args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"seeded {out['rows']:,} rows in {out['seed_s']} s")
    print(f"pruned {out['pruned_rows']:,} rows in {out['prune_s']} s ({out['rows_per_s']:,} rows/s, "
          f"batches of {out['batch']:,})")
    for phase in ("before", "during"):
        f = out[phase]
        print(f"calls {phase:<6}: {f['calls']:>6} calls  p50 {f['p50_us']:>8} µs  p95 {f['p95_us']:>8} µs  "
              f"p99 {f['p99_us']:>8} µs")
    print(f"calls at {out['rate']:g}/s; writer backlog at most {out['writer_backlog_max_before']} rows before, "
          f"{out['writer_backlog_max_during']} during the prune")


if __name__ == "__main__":
    main()
