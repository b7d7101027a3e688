"""The outbox: what it adds to the call path, how fast one process drains it to
RudderStack and to Langfuse, and whether the backlog stays bounded under steady load.

1. Call-path cost (``--call-path``): ``Host.emit`` (event row + outbox rows queued on the
   batched writer) on a started host with the RudderStack exporter configured and
   active, against the same host without exporters; and ``outbox_rows`` alone. 200
   warm-up, then 2,000 counted; p50/p95/p99 µs.
2. Throughput (default): real calls (``host.complete`` on the echo provider with the
   cost, RudderStack and Langfuse plugins on, delivery off) fill the outbox; then one
   host process that delivers only RudderStack, and then one that delivers only
   Langfuse, drain it through the real SDK transports (rudder-sdk-python's
   ``/v1/batch`` post; the Langfuse SDK's OTLP span exporter) to a loopback receiver
   in a subprocess that sleeps ``--receiver-delay-ms`` (default 5) per request and
   decodes and counts what arrived. Figures: events/s and traces/s, requests, and the
   receiver's count.
3. Steady state (``--steady RATE``): a host makes ``RATE`` calls/s for ``--duration``
   seconds (the same plugin set; delivery ``--delivery worker``: ``--workers`` separate
   delivering processes, as production is advised to run, or ``inline``: threads in the
   calling process), both exporters delivering, and the script prints the pending
   backlog (pending + retrying + in flight) per exporter every second, then how long the
   rest takes to drain (bounded by ``--drain-s``). A backlog that levels off means the
   outbox keeps up.

    uv run --frozen python benchmarks/outbox.py                             # SQLite
    uv run --frozen python benchmarks/outbox.py --db postgresql
    uv run --frozen python benchmarks/outbox.py --steady 1000 --duration 30
    uv run --frozen python benchmarks/outbox.py --steady 1000 --duration 30 --workers 2
    uv run --frozen python benchmarks/outbox.py --db postgresql --steady 1000 --delivery inline
    uv run --frozen python benchmarks/outbox.py --call-path --json

``--db postgresql`` uses ``SYNTHHOST_TEST_POSTGRES`` (default the local test database)
in a throw-away schema. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import ast
import gc
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable
from typing import Any

import anyio
import sqlalchemy as sa

PG_URL = os.environ.get("SYNTHHOST_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
PLUGINS = "cost,rudderstack,langfuse"
WORKSPACE = "bench"

# Both receivers in one subprocess (its decoding must not compete with the measured
# process for the GIL): RudderStack /v1/batch (gzip JSON: events counted) and Langfuse
# OTLP (gzip protobuf: spans and distinct traces counted). GET returns the counts.
RECEIVER = textwrap.dedent(r"""
    import gzip, json, sys, threading, time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    delay = float(sys.argv[1]) / 1000.0
    lock = threading.Lock()
    counts = {"rudderstack_requests": 0, "rudderstack_events": 0,
              "langfuse_requests": 0, "langfuse_spans": 0, "langfuse_traces": 0}
    traces = set()
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in two writes
        def do_POST(self):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.headers.get("Content-Encoding") == "gzip":
                raw = gzip.decompress(raw)
            if delay:
                time.sleep(delay)
            if self.path.endswith("/v1/batch"):
                n = len(json.loads(raw)["batch"])
                with lock:
                    counts["rudderstack_requests"] += 1
                    counts["rudderstack_events"] += n
                body, ctype = b"OK", "text/plain"
            else:
                req = ExportTraceServiceRequest()
                req.ParseFromString(raw)
                ids = [s.trace_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
                with lock:
                    counts["langfuse_requests"] += 1
                    counts["langfuse_spans"] += len(ids)
                    traces.update(ids)
                    counts["langfuse_traces"] = len(traces)
                body, ctype = b"", "application/x-protobuf"
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def do_GET(self):
            with lock:
                body = repr(counts).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a):
            pass
    ThreadingHTTPServer.daemon_threads = True
    ThreadingHTTPServer.handle_error = lambda *a: None  # clients closing at exit
    ThreadingHTTPServer.request_queue_size = 256
    server = ThreadingHTTPServer(("127.0.0.1", 0), H)
    print(server.server_address[1], flush=True)
    server.serve_forever()
""")

# A delivering process for ``--steady --delivery worker``: a host that makes no calls.
DELIVERER = textwrap.dedent("""
    import json, sys, anyio
    from synthhost import Host
    from synthhost.settings import Settings
    env, seconds = json.loads(sys.argv[1]), float(sys.argv[2])
    async def main():
        async with Host(Settings.from_env(env), load_entrypoints=True):
            await anyio.sleep(seconds)
    anyio.run(main)
""")


class Receiver:
    def __init__(self, delay_ms: float) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(delay_ms)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def counts(self) -> dict[str, int]:
        with urllib.request.urlopen(self.url) as r:
            return dict(ast.literal_eval(r.read().decode()))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


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


def env_for(url: str, receiver_url: str, *, plugins: str = PLUGINS, delivery: str = "inline") -> dict[str, str]:
    # Exporter tuning from the environment (RUDDERSTACK_BATCH_SIZE=..., SYNTHHOST_LANGFUSE_CONCURRENCY=...).
    tuning = {k: v for k, v in os.environ.items()
              if k.startswith(("RUDDERSTACK_BATCH", "RUDDERSTACK_CONCURRENCY", "RUDDERSTACK_FLUSH",
                               "SYNTHHOST_LANGFUSE_", "SYNTHHOST_OUTBOX_"))}
    return {
        **tuning,
        "DATABASE_URL": url,
        "SYNTHHOST_LOAD_PLUGINS": plugins,
        "SYNTHHOST_DELIVERY": delivery,
        "RUDDERSTACK_WRITE_KEY": "bench-key",
        "RUDDERSTACK_DATA_PLANE_URL": receiver_url,
        "LANGFUSE_BASE_URL": receiver_url,
        "LANGFUSE_PUBLIC_KEY": f"pk-lf-{uuid.uuid4().hex[:8]}",
        "LANGFUSE_SECRET_KEY": "sk-lf-bench",
    }


def pending(stats: dict[str, Any]) -> int:
    return int(stats["pending"] + stats["retrying"] + stats["in_flight"])


# -- 1. call path --------------------------------------------------------------------------


async def call_path(url: str, receiver_url: str, n: int) -> dict[str, Any]:
    import synthhost_rudderstack
    from synthhost import Host
    from synthhost.outbox import outbox_rows
    from synthhost.settings import Settings
    from synthhost.storage.models import utcnow

    out: dict[str, Any] = {}
    bare = Host(Settings.from_env({"DATABASE_URL": url}), load_entrypoints=False)
    async with bare:
        out["emit_without_exporters"] = timed(lambda: bare.emit("bench", workspace="w", n=1), n)
    env = env_for(url, receiver_url, plugins="rudderstack")
    host = Host(Settings.from_env(env), plugins=[synthhost_rudderstack], load_entrypoints=False)
    async with host:
        out["emit_with_rudderstack"] = timed(lambda: host.emit("bench", workspace="w", n=1), n)
        event = {"id": "e" * 32, "event_type": "bench", "workspace_id": "w", "created_at": utcnow()}
        out["outbox_rows_alone"] = timed(lambda: outbox_rows(host, event), n)
    out["added_by_outbox_p50_us"] = round(
        out["emit_with_rudderstack"]["p50_us"] - out["emit_without_exporters"]["p50_us"], 2
    )
    return out


# -- 2. throughput -------------------------------------------------------------------------


def _calling_host(env: dict[str, str]) -> Any:
    from synthhost import Host
    from synthhost.settings import Settings

    return Host(Settings.from_env(env), load_entrypoints=True)


def _switch_on(host: Any) -> None:
    for name in host.registry.flags:
        if not name.startswith("disable_"):
            host.flags.set(name, True, workspace=WORKSPACE)


async def _call(host: Any, n: int) -> None:
    messages = [{"role": "user", "content": f"Summarise quarterly report #{n} in three bullet points."}]
    await host.complete(model="echo/gpt-4o-mini", messages=messages, workspace=WORKSPACE, user=f"user-{n % 50}")


async def fill(url: str, receiver_url: str, calls: int) -> dict[str, int]:
    """``calls`` real calls with delivery off: their outbox rows wait, pending."""
    from synthhost.outbox import queue_stats

    host = _calling_host(env_for(url, receiver_url, delivery="off"))
    async with host:
        _switch_on(host)
        for n in range(calls):
            await _call(host, n)
            if n % 200 == 0:
                await anyio.sleep(0)
        await host.writer.flush()
        stats = queue_stats(host.engine, ["rudderstack", "langfuse"])
    return {name: pending(s) for name, s in stats.items()}


async def drain(url: str, receiver: Receiver, exporter: str, count: int, timeout_s: float) -> dict[str, Any]:
    """One host process delivering only ``exporter`` until ``count`` rows are delivered."""
    from synthhost.outbox import queue_stats

    before = receiver.counts()
    env = env_for(url, receiver.url)
    # Same plugins (their migrations), but only this exporter configured.
    for key in ("LANGFUSE_PUBLIC_KEY",) if exporter == "rudderstack" else ("RUDDERSTACK_WRITE_KEY",):
        env.pop(key)
    host = _calling_host(env)
    started = time.perf_counter()
    delivered = 0
    first: tuple[float, int] | None = None  # (when, how many) the first deliveries were seen
    async with host:
        while time.perf_counter() - started < timeout_s:
            # The lane's own counter: polling the database would compete with the lane.
            delivered = int(host._outbox.stats.get(exporter, {}).get("delivered", 0))
            if first is None and delivered:
                first = (time.perf_counter(), delivered)
            if delivered >= count:
                break
            await anyio.sleep(0.01)
        ended = time.perf_counter()
        lane = dict(host._outbox.stats.get(exporter, {}))
        delivered = int(queue_stats(host.engine, [exporter])[exporter]["delivered"])  # the database's word
    elapsed = ended - started
    # The rate once delivering (start-up, imports and the SDK's first use excluded).
    rate = (delivered - first[1]) / (ended - first[0]) if first and ended > first[0] else 0.0
    after = receiver.counts()
    unit = "events" if exporter == "rudderstack" else "traces"
    got = {k[len(exporter) + 1:]: after[k] - before.get(k, 0) for k in after if k.startswith(exporter)}
    return {
        "exporter": exporter, unit: delivered, "seconds": round(elapsed, 2),
        f"{unit}_per_s": round(rate, 1), f"{unit}_per_s_with_startup": round(delivered / elapsed, 1),
        "outbox_batches": lane.get("batches", 0),
        "receiver": got, "complete": delivered >= count,
    }


# -- 3. steady state -----------------------------------------------------------------------


async def steady(url: str, receiver: Receiver, rate: float, duration: float, delivery: str,
                 drain_s: float, workers: int = 1) -> dict[str, Any]:
    from synthhost.outbox import queue_stats

    env = env_for(url, receiver.url, delivery="worker" if delivery == "worker" else "inline")
    host = _calling_host(env)
    host.migrate()
    deliverers: list[subprocess.Popen[str]] = []
    if delivery == "worker":
        deliver_env = {**env, "SYNTHHOST_DELIVERY": "inline"}
        deliverers = [
            subprocess.Popen([sys.executable, "-c", DELIVERER, json.dumps(deliver_env), str(duration + drain_s + 30)],
                             text=True)
            for _ in range(workers)
        ]
    samples: list[dict[str, Any]] = []
    late: list[float] = []
    names = ["rudderstack", "langfuse"]
    try:
        async with host:
            _switch_on(host)
            started = time.perf_counter()
            total = int(rate * duration)

            async def sample() -> None:
                while True:
                    await anyio.sleep(1.0)
                    s = queue_stats(host.engine, names)
                    row = {"t": round(time.perf_counter() - started, 1),
                           **{n: pending(s[n]) for n in names},
                           **{f"{n}_delivered": int(s[n]["delivered"]) for n in names}}
                    samples.append(row)
                    print(f"  t={row['t']:>5.1f}s  pending rudderstack {row['rudderstack']:>7}  "
                          f"langfuse {row['langfuse']:>7}   delivered {row['rudderstack_delivered']:>7} / "
                          f"{row['langfuse_delivered']:>7}", flush=True)

            async with anyio.create_task_group() as tg:
                tg.start_soon(sample)
                # Open loop: call n starts at n / rate (a late call starts at once).
                sem = anyio.Semaphore(256)

                async def one(n: int) -> None:
                    async with sem:
                        await _call(host, n)

                async with anyio.create_task_group() as calls:
                    for n in range(total):
                        due = started + n / rate
                        now = time.perf_counter()
                        if due > now:
                            await anyio.sleep(due - now)
                        elif now - due > 0.001:
                            late.append(now - due)
                        calls.start_soon(one, n)
                called = time.perf_counter() - started
                await host.writer.flush()
                print(f"  calls done: {total} in {called:.1f} s; draining (up to {drain_s:.0f} s)", flush=True)
                drain_started = time.perf_counter()
                while time.perf_counter() - drain_started < drain_s:
                    s = queue_stats(host.engine, names)
                    if all(pending(s[n]) == 0 for n in names):
                        break
                    await anyio.sleep(0.2)
                drained = time.perf_counter() - drain_started
                tg.cancel_scope.cancel()
            final = queue_stats(host.engine, names)
    finally:
        for deliverer in deliverers:
            deliverer.terminate()
        for deliverer in deliverers:
            deliverer.wait(30)
    during = [r for r in samples if r["t"] <= duration + 0.5]
    half = during[len(during) // 2:] if during else []
    return {
        "rate": rate, "duration_s": duration, "delivery": delivery,
        "delivering_processes": workers if delivery == "worker" else 1, "calls": total,
        "call_seconds": round(called, 2), "achieved_calls_per_s": round(total / called, 1),
        "late_calls": len(late),
        "max_pending": {n: max((r[n] for r in during), default=0) for n in names},
        "second_half_max_pending": {n: max((r[n] for r in half), default=0) for n in names},
        "end_pending": {n: pending(final[n]) for n in names},
        "drain_s": round(drained, 2),
        "delivered": {n: int(final[n]["delivered"]) for n in names},
        "parked": {n: int(final[n]["parked"]) for n in names},
        "samples": samples,
    }


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--calls", type=int, default=10_000,
                        help="calls that fill the outbox for the throughput figures (2 RudderStack "
                             "events and 1 Langfuse trace each)")
    parser.add_argument("--receiver-delay-ms", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=120.0, help="bound on each drain")
    parser.add_argument("--call-path", action="store_true", help="also measure Host.emit's cost")
    parser.add_argument("--steady", type=float, default=0.0, metavar="RATE",
                        help="steady-state mode: calls per second (instead of the throughput figures)")
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--drain-s", type=float, default=60.0)
    parser.add_argument("--delivery", choices=["worker", "inline"], default="worker")
    parser.add_argument("--workers", type=int, default=1, help="delivering processes (--delivery worker)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    receiver = Receiver(args.receiver_delay_ms)
    result: dict[str, Any] = {"db": args.db, "receiver_delay_ms": args.receiver_delay_ms}
    try:
        if args.call_path:
            with Database(args.db) as url:
                result["call_path"] = anyio.run(call_path, url, receiver.url, 2000)
        if args.steady:
            print(f"steady state ({args.db}): {args.steady:.0f} calls/s for {args.duration:.0f} s, "
                  f"delivery {args.delivery} ({args.workers if args.delivery == 'worker' else 1} delivering "
                  f"process(es)), receiver +{args.receiver_delay_ms:g} ms/request", flush=True)
            with Database(args.db) as url:
                result["steady"] = anyio.run(steady, url, receiver, args.steady, args.duration, args.delivery,
                                             args.drain_s, args.workers)
        else:
            with Database(args.db) as url:
                filled = anyio.run(fill, url, receiver.url, args.calls)
                result["filled"] = filled
                result["rudderstack"] = anyio.run(drain, url, receiver, "rudderstack", filled["rudderstack"],
                                                  args.timeout_s)
                result["langfuse"] = anyio.run(drain, url, receiver, "langfuse", filled["langfuse"],
                                               args.timeout_s)
    finally:
        receiver.close()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    report(result)


def report(result: dict[str, Any]) -> None:
    print(f"outbox benchmark ({result['db']}, receiver +{result['receiver_delay_ms']:g} ms per request)")
    path = result.get("call_path")
    if path:
        print("call path, µs per event        p50      p95      p99")
        for key in ("emit_without_exporters", "emit_with_rudderstack", "outbox_rows_alone"):
            row = path[key]
            print(f"  {key:<26} {row['p50_us']:>8} {row['p95_us']:>8} {row['p99_us']:>8}")
        print(f"  added by the outbox (p50)  {path['added_by_outbox_p50_us']:>8}")
    for name, unit in (("rudderstack", "events"), ("langfuse", "traces")):
        d = result.get(name)
        if d:
            rx = d["receiver"]
            print(f"{name:<12} {d[f'{unit}_per_s']:>8} {unit}/s once delivering ({d[unit]} {unit} in "
                  f"{d['seconds']} s with start-up = {d[f'{unit}_per_s_with_startup']}/s; "
                  f"{d['outbox_batches']} outbox batches, {rx.get('requests', 0)} requests; receiver counted "
                  f"{rx.get('events', rx.get('traces', 0))}){'' if d['complete'] else '  [timed out]'}")
    s = result.get("steady")
    if s:
        print(f"steady: {s['calls']} calls at {s['achieved_calls_per_s']} calls/s (target {s['rate']:g}; "
              f"{s['late_calls']} started late), delivery {s['delivery']}, "
              f"{s['delivering_processes']} delivering process(es)")
        for n in ("rudderstack", "langfuse"):
            print(f"  {n:<12} max pending {s['max_pending'][n]:>7}  (second half {s['second_half_max_pending'][n]:>7})"
                  f"  at end {s['end_pending'][n]:>7}  delivered {s['delivered'][n]:>7}  parked {s['parked'][n]}")
        print(f"  drained {s['drain_s']} s after the last call")


if __name__ == "__main__":
    main()
