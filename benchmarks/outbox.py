"""The outbox: what it adds to the call path, and how fast it drains to RudderStack.

1. Call-path cost: ``Host.emit`` (event row + outbox rows queued on the batched writer)
   on a started host with the RudderStack exporter configured and active, against the
   same host without exporters; and ``outbox_rows`` alone. 200 warm-up, then 2,000
   counted; p50/p95/p99 µs. The difference is what the outbox adds per event.
2. Throughput: N events already in the outbox (inserted in bulk), then the time for one
   host process to deliver them all through the real rudder-sdk-python transport to a
   loopback ``/v1/batch`` receiver (a separate process, gzip JSON decoded and counted).

    uv run --frozen python benchmarks/outbox.py                       # SQLite, 20 000 events
    uv run --frozen python benchmarks/outbox.py --db postgresql --batch-size 100
    uv run --frozen python benchmarks/outbox.py --json

``--db postgresql`` uses ``SYNTHHOST_TEST_POSTGRES`` (default the local test database)
in a throw-away schema. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import sqlalchemy as sa

import synthhost_rudderstack
from synthhost import Host
from synthhost.outbox import OUTBOX, outbox_rows, queue_stats
from synthhost.settings import Settings
from synthhost.storage.models import EventLog, utcnow

PG_URL = os.environ.get("SYNTHHOST_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

RECEIVER = textwrap.dedent("""
    import gzip, json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    seen = 0
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes
        def do_POST(self):
            global seen
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            seen += len(json.loads(raw)["batch"])
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"OK")
        def do_GET(self):
            body = str(seen).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], Any], n: int) -> dict[str, float]:
    for _ in range(200):
        fn()
    samples = []
    gc.disable()
    try:
        for _ in range(n):
            started = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - started)
    finally:
        gc.enable()
    return {f"p{q}_us": round(pct(samples, q / 100) * 1e6, 2) for q in (50, 95, 99)}


class Database:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.schema: str | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> str:
        if self.kind == "sqlite":
            self._tmp = tempfile.TemporaryDirectory()
            return f"sqlite:///{self._tmp.name}/bench.db"
        self.schema = f"bench_{uuid.uuid4().hex[:10]}"
        with sa.create_engine(PG_URL).begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{self.schema}"')
        sep = "&" if "?" in PG_URL else "?"
        return f"{PG_URL}{sep}options=-csearch_path%3D{self.schema}"

    def __exit__(self, *exc: object) -> None:
        if self.schema is not None:
            engine = sa.create_engine(PG_URL)
            with engine.begin() as conn:
                conn.exec_driver_sql(f'DROP SCHEMA "{self.schema}" CASCADE')
            engine.dispose()
        if self._tmp is not None:
            self._tmp.cleanup()


def start_receiver() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def env_for(url: str, receiver_url: str, batch_size: int) -> dict[str, str]:
    return {
        "DATABASE_URL": url,
        "RUDDERSTACK_WRITE_KEY": "bench-key",
        "RUDDERSTACK_DATA_PLANE_URL": receiver_url,
        "RUDDERSTACK_BATCH_SIZE": str(batch_size),
        "RUDDERSTACK_FLUSH_INTERVAL": "0",
        "SYNTHHOST_LOAD_PLUGINS": "",
    }


async def call_path(url: str, receiver_url: str, n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    bare = Host(Settings.from_env({"DATABASE_URL": url}), load_entrypoints=False)
    async with bare:
        out["emit_without_exporters"] = timed(lambda: bare.emit("bench", workspace="w", n=1), n)
    host = Host(Settings.from_env(env_for(url, receiver_url, 20)), plugins=[synthhost_rudderstack],
                load_entrypoints=False)
    async with host:
        out["emit_with_rudderstack"] = timed(lambda: host.emit("bench", workspace="w", n=1), n)
        event = {"id": "e" * 32, "event_type": "bench", "workspace_id": "w", "created_at": utcnow()}
        out["outbox_rows_alone"] = timed(lambda: outbox_rows(host, event), n)
    out["added_by_outbox_p50_us"] = round(
        out["emit_with_rudderstack"]["p50_us"] - out["emit_without_exporters"]["p50_us"], 2
    )
    return out


def seed(engine: sa.Engine, count: int) -> None:
    events = EventLog.__table__  # type: ignore[attr-defined]
    now = utcnow()
    for start in range(0, count, 5000):
        rows = [
            {"id": uuid.uuid4().hex, "workspace_id": f"w{i % 8}", "user_id": f"u{i % 100}", "org_id": "o",
             "event_type": "llm_cost_logged", "status": "success", "context": {"model": "gpt-4o-mini", "n": i},
             "latency_ms": 1.0, "trace_id": None, "run_id": None, "span_id": None, "created_at": now}
            for i in range(start, min(count, start + 5000))
        ]
        with engine.begin() as conn:
            conn.execute(events.insert(), rows)
            conn.execute(OUTBOX.insert(), [
                {"event_id": r["id"], "exporter": "rudderstack", "state": "pending", "attempts": 0,
                 "next_attempt_at": now, "created_at": now} for r in rows
            ])


async def throughput(url: str, receiver_url: str, count: int, batch_size: int) -> dict[str, Any]:
    host = Host(Settings.from_env(env_for(url, receiver_url, batch_size)), plugins=[synthhost_rudderstack],
                load_entrypoints=False)
    host.migrate()
    seed(host.engine, count)
    started = time.perf_counter()
    async with host:
        while True:
            s = queue_stats(host.engine, ["rudderstack"])["rudderstack"]
            if s["delivered"] >= count:
                break
            await anyio.sleep(0.05)
        elapsed = time.perf_counter() - started
        batches = host._outbox.stats["rudderstack"].get("batches", 0)
    return {
        "events": count,
        "batch_size": batch_size,
        "requests": batches,
        "seconds": round(elapsed, 2),
        "events_per_s": round(count / elapsed, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    receiver, receiver_url = start_receiver()
    try:
        with Database(args.db) as url:
            path = anyio.run(call_path, url, receiver_url, args.calls)
        with Database(args.db) as url:
            drain = anyio.run(throughput, url, receiver_url, args.events, args.batch_size)
        import urllib.request

        received = int(urllib.request.urlopen(receiver_url).read())
    finally:
        receiver.terminate()
        receiver.wait()
    result = {"db": args.db, "call_path": path, "throughput": drain, "receiver_got": received}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"outbox benchmark ({args.db})")
    print("call path, µs per event        p50      p95      p99")
    for key in ("emit_without_exporters", "emit_with_rudderstack", "outbox_rows_alone"):
        row = path[key]
        print(f"  {key:<26} {row['p50_us']:>8} {row['p95_us']:>8} {row['p99_us']:>8}")
    print(f"  added by the outbox (p50)  {path['added_by_outbox_p50_us']:>8}")
    print(
        f"throughput: {drain['events']} events in {drain['seconds']} s = {drain['events_per_s']} events/s "
        f"(batch {drain['batch_size']}, {drain['requests']} requests; receiver counted {received})"
    )


if __name__ == "__main__":
    main()
