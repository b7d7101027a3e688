"""Soak: ``--minutes`` (30) of mixed traffic with the production plugin set, printing
every ``--interval-s`` (60) what would show a leak: RSS, open file descriptors,
PostgreSQL connections of this process, Redis memory, outbox depth and the writer's
backlog. All should be flat after the warm-up; the last line compares the first
sample after ``--warmup-min`` with the last one.

Loopback only and bounded: a fresh PostgreSQL schema, a ``redis-server`` of its own,
the Langfuse, RudderStack and st2api receivers in a process of their own (so RSS and
file descriptors are the host's alone). The host
loads every installed plugin (cost, similarity, policy, rate limits, guardrails,
routing, Langfuse, RudderStack, StackStorm) with their flags on for five workspaces;
calls vary in workspace, user and prompt, every 20th fails its first attempt (so
recovery and StackStorm run) and every 50th repeats an earlier prompt. Prints figures;
asserts nothing.

    uv run python benchmarks/soak.py
    uv run python benchmarks/soak.py --minutes 5 --interval-s 30 --rate 100 --json

Every prompt but each 50th is new, so the similarity library grows until it holds
``--max-references`` logged prompts per workspace (1,000 by default here, reached in the
warm-up); after that it evicts the oldest, and memory must stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from faults import PG_URL, RedisServer, Schema

WORKSPACES = [f"soak{i}" for i in range(5)]

# The receivers run in a process of their own: their memory (and GIL) is not the host's.
# They forget what arrived every few seconds, so that process stays small too.
RECEIVERS = """
import json, sys, threading, time
sys.path.insert(0, sys.argv[1])
from faults import RudderReceiver
from synthhost_langfuse.testing import LangfuseReceiver
from synthhost_stackstorm.testing import FakeSt2
lf, rs, st2 = LangfuseReceiver(), RudderReceiver(), FakeSt2().start()
def forget():
    while True:
        time.sleep(5)
        with lf._lock:
            lf.requests.clear()
        rs.ids.clear()
        with st2._lock:
            st2.requests.clear()
threading.Thread(target=forget, daemon=True).start()
print(json.dumps({"LANGFUSE_BASE_URL": lf.url, **LangfuseReceiver.keys(), "RUDDERSTACK_WRITE_KEY": "soak-key",
                  "RUDDERSTACK_DATA_PLANE_URL": f"http://127.0.0.1:{rs.port}", **st2.env(STACKSTORM_TIMEOUT="5")}),
      flush=True)
sys.stdin.read()
"""


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def sample(host: Any, app: str, redis_port: int, calls: int, started: float) -> dict[str, Any]:
    import redis

    from synthhost.outbox import queue_stats

    with sa.create_engine(PG_URL).connect() as conn:
        connections = int(conn.execute(sa.text(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = :app"), {"app": app}).scalar_one())
    client = redis.Redis(port=redis_port)
    redis_mb = round(int(client.info("memory")["used_memory"]) / 1e6, 2)
    client.close()
    depth = sum(s["pending"] + s["retrying"] + s["in_flight"] for s in queue_stats(host.engine).values())
    return {"minute": round((time.monotonic() - started) / 60, 2), "calls": calls, "rss_mb": rss_mb(),
            "fds": len(os.listdir("/proc/self/fd")), "db_connections": connections, "redis_mb": redis_mb,
            "outbox_depth": depth, "writer_backlog": host.writer.pending}


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    from synthhost import Host
    from synthhost.errors import SynthhostError
    from synthhost.settings import Settings

    work = Path(tempfile.mkdtemp(prefix="synthhost-soak-"))
    schema, redis_server = Schema(), RedisServer(work)
    receivers = subprocess.Popen([sys.executable, "-c", RECEIVERS, str(Path(__file__).resolve().parent)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert receivers.stdout is not None
    services = json.loads(receivers.stdout.readline())
    app = f"synthhost-soak-{uuid.uuid4().hex[:8]}"
    env = {
        "DATABASE_URL": f"{schema.url(5432)}&application_name={app}",
        "REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/0",
        "SYNTHHOST_HOME": str(work / "home"), "SYNTHHOST_SPOOL_DIR": str(work / "spool"),
        "SYNTHHOST_SIMILARITY_MAX_REFERENCES": str(args.max_references),
        **services,
    }
    samples: list[dict[str, Any]] = []
    failed = 0
    baseline = None
    top: list[str] = []
    if args.tracemalloc:
        tracemalloc.start(1)
    try:
        async with Host(Settings.from_env(env), load_entrypoints=True) as host:
            for ws in WORKSPACES:
                for flag in host.registry.flags:
                    if not flag.startswith("disable_") and flag != "enable_prompt_similarity_check":
                        host.flags.set(flag, True, workspace=ws)
            started = time.monotonic()
            next_sample = started
            interval = 1.0 / args.rate
            next_call = started
            n = 0
            deadline = started + args.minutes * 60
            while time.monotonic() < deadline:
                if time.monotonic() >= next_sample:
                    if args.tracemalloc and baseline is None and time.monotonic() - started >= args.warmup_min * 60:
                        baseline = tracemalloc.take_snapshot()
                    samples.append(sample(host, app, redis_server.port, n, started))
                    s = samples[-1]
                    if not args.json:
                        print(f"{s['minute']:>6.1f} min  {s['calls']:>8} calls  rss {s['rss_mb']:>7} MB  "
                              f"fds {s['fds']:>4}  db conns {s['db_connections']:>3}  redis {s['redis_mb']:>6} MB  "
                              f"outbox {s['outbox_depth']:>6}  writer {s['writer_backlog']:>6}", flush=True)
                    next_sample += args.interval_s
                await asyncio.sleep(max(0.0, next_call - time.monotonic()))
                next_call += interval
                n += 1
                prompt = f"soak prompt {n % 1000 if n % 50 == 0 else n}: summarise item {n} for the weekly report"
                params = {"echo_fail": ["server_error"]} if n % 20 == 0 else {}
                try:
                    await host.complete(model="echo/gpt-4o-mini", messages=prompt, params=params,
                                        workspace=WORKSPACES[n % len(WORKSPACES)], user=f"user-{n % 37}")
                except SynthhostError:
                    failed += 1
            samples.append(sample(host, app, redis_server.port, n, started))
            if baseline is not None:
                growth = tracemalloc.take_snapshot().compare_to(baseline, "lineno")
                top = [f"{g.size_diff / 1e6:+.2f} MB {g.count_diff:+d} blocks {g.traceback}" for g in growth[:10]]
    finally:
        receivers.communicate(timeout=10)  # closing its stdin ends it
        redis_server.close()
        schema.drop()
        shutil.rmtree(work, ignore_errors=True)
    warm = [s for s in samples if s["minute"] >= args.warmup_min] or samples
    first, last = warm[0], warm[-1]
    growth = {k: round(last[k] - first[k], 2) for k in ("rss_mb", "fds", "db_connections", "redis_mb",
                                                       "outbox_depth")}
    percent = {k: round(100 * (last[k] - first[k]) / first[k], 1) if first[k] else None
               for k in ("rss_mb", "fds", "db_connections", "redis_mb")}
    return {"minutes": args.minutes, "rate": args.rate, "max_references": args.max_references,
            "calls": samples[-1]["calls"], "failed": failed, "growth_after_warmup_percent": percent,
            "samples": samples, "growth_after_warmup": growth, "allocations_grown": top}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--interval-s", type=float, default=60.0, help="seconds between samples")
    parser.add_argument("--warmup-min", type=float, default=2.0, help="minutes before the flatness baseline")
    parser.add_argument("--rate", type=float, default=50.0, help="calls per second")
    parser.add_argument("--max-references", type=int, default=1000,
                        help="SYNTHHOST_SIMILARITY_MAX_REFERENCES for the soak (default 1,000 per workspace, so "
                             "the similarity library reaches its bound during the warm-up; at the production "
                             "default of 100,000 it is still filling after 30 minutes, by design)")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also print the 10 allocation sites that grew most after the warm-up (slower)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = asyncio.run(soak(args))
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{out['calls']} calls in {out['minutes']:g} min at {out['rate']:g}/s, {out['failed']} failed")
    print("growth from the first sample after warm-up to the last: "
          + ", ".join(f"{k} {v:+g}" for k, v in out["growth_after_warmup"].items()))
    print("as a share of the first sample after warm-up: "
          + ", ".join(f"{k} {v:+g} %" for k, v in out["growth_after_warmup_percent"].items() if v is not None))
    for line in out["allocations_grown"]:
        print(f"  {line}")


if __name__ == "__main__":
    main()
