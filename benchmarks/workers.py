"""Durable runs over 1, 2 and 4 ``synthhost worker`` processes (synthhost.durable).

For each worker count: a fresh database (a throw-away PostgreSQL schema, or a SQLite
file with ``--db sqlite``), that many worker processes (``--concurrency`` runs each),
then ``--runs`` durable runs of ``--steps`` steps enqueued as fast as one process can
(echo provider at ``--latency-ms`` per call, no plugins). Figures: runs/s from the
first enqueue to the last run finished, queue wait p50/p95 (enqueue to the run's first
model call, from the echo provider's call log), and on PostgreSQL the rows written
(inserted, updated, deleted: synthhost's tables and DBOS') per step and per run.
``--tool-calls K`` makes every step an agent loop of K turns that each call a (no-op)
python tool, then a final answer: 2K+1 DBOS steps (K+1 model turns, K tool calls) per
agent step, and the writes are also given per DBOS step.

    uv run --frozen python benchmarks/workers.py                     # PostgreSQL, 1/2/4 workers
    uv run --frozen python benchmarks/workers.py --workers 1,2 --runs 400 --json
    uv run --frozen python benchmarks/workers.py --db sqlite
    uv run --frozen python benchmarks/workers.py --preload       # a full queue: execution only
    uv run --frozen python benchmarks/workers.py --workers 1 --runs 100 --tool-calls 2

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

PG_URL = os.environ.get("SYNTHHOST_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def agent_yaml(steps: int, tool_calls: int = 0) -> str:
    lines = "".join(f"  - name: s{i}\n    prompt: \"step {i} of {{{{ n }}}}\"\n" for i in range(1, steps + 1))
    tools = ""
    if tool_calls:
        script = ", ".join(f"[{{name: noop, arguments: {{n: {t}}}}}]" for t in range(tool_calls))
        tools = f"params: {{echo_tool_calls: [{script}]}}\ntools:\n  - {{python: 'bench_tools:noop'}}\n"
    return (f"name: bench\nworkspace: bench\nmodel: echo/bench\n{tools}inputs:\n  n: {{default: '0'}}\n"
            f"steps:\n{lines}")


BENCH_TOOLS = '''def noop(n: int) -> int:
    """Return n."""
    return n
'''


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def pg_writes(engine: sa.Engine, schema: str) -> int:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(sa.text(
            "SELECT coalesce(sum(n_tup_ins + n_tup_upd + n_tup_del), 0) FROM pg_stat_user_tables "
            "WHERE schemaname = :s"), {"s": schema}).scalar() or 0)


def one(workers: int, args: argparse.Namespace) -> dict[str, Any]:
    from synthhost import durable
    from synthhost.agent import parse_agent
    from synthhost.host import Host
    from synthhost.settings import Settings

    tmp = Path(tempfile.mkdtemp(prefix="synthhost-workers-"))
    schema = None
    admin = None
    if args.db == "postgresql":
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    else:
        url = f"sqlite:///{tmp / 'bench.db'}"
    log = tmp / "calls.jsonl"
    env = {**os.environ, "DATABASE_URL": url, "SYNTHHOST_HOME": str(tmp / "home"), "SYNTHHOST_LOAD_PLUGINS": "",
           "SYNTHHOST_ECHO_LATENCY_MS": str(args.latency_ms), "SYNTHHOST_ECHO_CALL_LOG": str(log),
           "SYNTHHOST_QUEUE_POLL_S": str(args.poll_s), "SYNTHHOST_DBOS_LOG_LEVEL": "ERROR"}
    host = Host(Settings.from_env({k: v for k, v in env.items() if k != "SYNTHHOST_ECHO_CALL_LOG"}),
                load_entrypoints=False)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        import anyio

        anyio.run(host.start)
        (tmp / "bench_tools.py").write_text(BENCH_TOOLS)
        (tmp / "bench.yaml").write_text(agent_yaml(args.steps, args.tool_calls))
        spec = parse_agent(agent_yaml(args.steps, args.tool_calls), str(tmp / "bench.yaml"))
        preloaded: dict[str, float] = {}
        if args.preload:  # the whole queue first: execution throughput without the producer
            durable.enqueue(host, spec, inputs={"n": "warm-up"})
            preloaded = {durable.enqueue(host, spec, inputs={"n": str(n)}): time.time() for n in range(args.runs)}
        for i in range(workers):
            out = open(tmp / f"worker{i}.log", "wb")  # noqa: SIM115 - the process owns it
            procs.append(subprocess.Popen([sys.executable, "-m", "synthhost", "worker", "--concurrency",
                                           str(args.concurrency)], env=env, stdout=out, stderr=subprocess.STDOUT))
        for i in range(workers):
            while "durable runs from" not in (tmp / f"worker{i}.log").read_text(errors="replace"):
                if procs[i].poll() is not None:
                    raise SystemExit((tmp / f"worker{i}.log").read_text())
                time.sleep(0.05)
        if not args.preload:
            durable.enqueue(host, spec, inputs={"n": "warm-up"})  # the client's connection, DBOS' schema
            time.sleep(1)
        before = pg_writes(admin, schema) if admin is not None and schema and not args.preload else 0
        enqueued: dict[str, float] = dict(preloaded)

        def producer() -> None:
            for n in range(args.runs):
                t = time.time()
                enqueued[durable.enqueue(host, spec, inputs={"n": str(n)})] = t

        started = time.time()
        if not args.preload:
            thread = threading.Thread(target=producer)
            thread.start()
            thread.join()
        enqueue_s = time.time() - started
        ids = list(enqueued)
        while True:
            with host.engine.connect() as conn:
                done = conn.execute(sa.select(sa.func.count()).select_from(durable.RUNS).where(
                    durable.RUNS.c.id.in_(ids), durable.RUNS.c.status.in_(durable.FINISHED))).scalar()
            if done == len(ids):
                break
            time.sleep(0.02)
        elapsed = time.time() - started
        first_call: dict[str, float] = {}
        for line in log.read_text().splitlines():
            c = json.loads(line)
            first_call.setdefault(c["run"], c["t"])
        waits = [(first_call[r] - t) * 1000 for r, t in enqueued.items() if r in first_call]
        if args.preload:  # from the first call: the workers' start-up is not throughput
            elapsed = time.time() - min(first_call[r] for r in enqueued if r in first_call)
        result: dict[str, Any] = {
            "workers": workers, "concurrency": args.concurrency, "runs": args.runs, "steps": args.steps,
            "latency_ms": args.latency_ms, "runs_per_s": round(args.runs / elapsed, 1),
            "enqueue_per_s": None if args.preload else round(args.runs / enqueue_s, 1),
            "wait_p50_ms": round(statistics.median(waits), 1), "wait_p95_ms": round(pct(waits, 0.95), 1),
        }
        if admin is not None and schema and not args.preload:
            time.sleep(1.5)  # statistics reach pg_stat_user_tables when a session goes idle
            writes = pg_writes(admin, schema) - before
            result["row_writes_per_run"] = round(writes / args.runs, 1)
            result["row_writes_per_step"] = round(writes / (args.runs * args.steps), 1)
            if args.tool_calls:
                result["row_writes_per_dbos_step"] = round(
                    writes / (args.runs * args.steps * (2 * args.tool_calls + 1)), 1)
        return result
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(60)
        anyio.run(host.stop)
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--workers", default="1,2,4", help="worker counts to measure (comma-separated)")
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--tool-calls", type=int, default=0,
                        help="tool-calling turns per step (each turn and tool call its own DBOS step)")
    parser.add_argument("--concurrency", type=int, default=16, help="runs each worker executes at once")
    parser.add_argument("--poll-s", type=float, default=0.05, help="SYNTHHOST_QUEUE_POLL_S of the workers")
    parser.add_argument("--preload", action="store_true",
                        help="enqueue every run before the workers start (execution throughput; waits then "
                             "include the workers' start-up)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = [one(int(n), args) for n in args.workers.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    loop = f" ({args.tool_calls} tool-calling turns each)" if args.tool_calls else ""
    print(f"{args.runs} runs x {args.steps} steps{loop}, echo {args.latency_ms:g} ms, concurrency {args.concurrency}"
          f" per worker, {args.db}, {os.cpu_count()} CPUs")
    for r in results:
        line = (f"{r['workers']} worker(s): {r['runs_per_s']:>7} runs/s  queue wait p50 {r['wait_p50_ms']:>8} ms"
                f"  p95 {r['wait_p95_ms']:>8} ms")
        if r["enqueue_per_s"]:
            line += f"  (enqueue {r['enqueue_per_s']}/s)"
        if "row_writes_per_step" in r:
            line += f"  rows written: {r['row_writes_per_step']}/step, {r['row_writes_per_run']}/run"
        if "row_writes_per_dbos_step" in r:
            line += f", {r['row_writes_per_dbos_step']}/DBOS step (turn or tool call)"
        print(line)


if __name__ == "__main__":
    main()
