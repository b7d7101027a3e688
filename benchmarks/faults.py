"""Fault drill: a constant load through Redis, Langfuse, RudderStack, StackStorm and
PostgreSQL outages, each cut and brought back while calls continue.

Loopback only and bounded. The drill starts its own ``redis-server`` on a spare port,
a fresh PostgreSQL schema, a Langfuse OTLP receiver, a RudderStack ``/v1/batch``
receiver and a loopback st2api, and puts a :class:`synthhost.tcp_proxy.TcpProxy` in
front of each so it can cut it. One host (cost, rate limits on Redis, Langfuse,
RudderStack, StackStorm retry decisions; every 10th call fails its first attempt so
StackStorm is asked) takes ``--rate`` calls/s throughout. Per fault it prints:

- calls failed while the service was down or recovering (must be 0: every dependency
  degrades, none fails a call);
- recovery: from the restore until the service is used again and everything queued
  while it was down has arrived (outbox rows created before the restore delivered, the
  writer's backlog committed, Redis decisions again).

At the end, after a bounded drain: rows lost (successful calls without their cost
row), events lost (events queued for RudderStack the receiver never saw, and runs
whose trace never reached Langfuse). Both must be 0. Prints figures; asserts nothing.

    uv run python benchmarks/faults.py
    uv run python benchmarks/faults.py --rate 50 --down-s 10 --faults redis,postgres --json
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import sqlalchemy as sa

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
WORKSPACE = "drill"
FAULTS = ("redis", "langfuse", "rudderstack", "stackstorm", "postgres")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server of the drill's own (never the shared one)."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.proc = subprocess.Popen([binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", str(workdir)], stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class RudderReceiver:
    """``POST /v1/batch``: records every messageId accepted."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        lock = threading.Lock()
        ids = self.ids

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                with lock:
                    ids.update(m["messageId"] for m in json.loads(raw)["batch"])
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Schema:
    def __init__(self) -> None:
        self.name = f"drill_{uuid.uuid4().hex[:10]}"
        with sa.create_engine(PG_URL).begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{self.name}"')

    def url(self, port: int) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{port}/test?options=-csearch_path%3D{self.name}"

    def drop(self) -> None:
        engine = sa.create_engine(PG_URL)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{self.name}" CASCADE')
        engine.dispose()


class Load:
    """``rate`` calls/s from ``concurrency`` tasks; every outcome kept."""

    def __init__(self, host: Any, rate: float, concurrency: int = 4) -> None:
        self.host = host
        self.rate = rate
        self.concurrency = concurrency
        self.outcomes: list[tuple[float, str, float]] = []  # (started, status, seconds)
        self.injected: set[float] = set()  # started times of calls whose first attempt was made to fail
        self.stop = asyncio.Event()
        self.n = 0

    async def run(self) -> None:
        await asyncio.gather(*(self._task(i) for i in range(self.concurrency)))

    async def _task(self, index: int) -> None:
        from synthhost.errors import SynthhostError

        interval = self.concurrency / self.rate
        next_at = time.monotonic() + index * interval / self.concurrency
        while not self.stop.is_set():
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            self.n += 1
            params = {"echo_fail": ["server_error"]} if self.n % 10 == 0 else {}
            started = time.monotonic()
            try:
                await self.host.complete(model="echo/gpt-4o-mini", workspace=WORKSPACE, params=params,
                                         messages=f"drill call {self.n}: summarise the quarter")
                status = "ok"
            except SynthhostError as exc:
                status = str(getattr(exc, "code", type(exc).__name__))
            except Exception as exc:  # a drill counts what a caller would see, whatever it is
                status = type(exc).__name__
            self.outcomes.append((started, status, time.monotonic() - started))
            if params:
                self.injected.add(started)

    def failed_between(self, t0: float, t1: float) -> Counter[str]:
        return Counter(s for started, s, _ in self.outcomes if t0 <= started <= t1 and s != "ok")


def outbox_backlog(engine: sa.Engine, before: Any) -> int:
    """Outbox rows created before ``before`` (UTC) and not delivered yet."""
    from synthhost.outbox import DELIVERED, OUTBOX

    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(OUTBOX).where(
            OUTBOX.c.created_at <= before, OUTBOX.c.state != DELIVERED)).scalar_one())


async def wait_until(predicate: Callable[[], Any], timeout: float) -> float | None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if await predicate():
                return time.monotonic() - started
        except Exception:  # the database may still be coming back
            pass
        await asyncio.sleep(0.05)
    return None


async def drill(args: argparse.Namespace) -> dict[str, Any]:
    import synthhost_cost
    import synthhost_langfuse
    import synthhost_ratelimit
    import synthhost_rudderstack
    import synthhost_stackstorm
    from synthhost import Host
    from synthhost.settings import Settings
    from synthhost.storage.models import utcnow
    from synthhost.tcp_proxy import TcpProxy
    from synthhost_langfuse.testing import LangfuseReceiver
    from synthhost_stackstorm.plugin import health as st2_health
    from synthhost_stackstorm.testing import FakeSt2

    work = Path(tempfile.mkdtemp(prefix="synthhost-drill-"))
    schema = Schema()
    redis = RedisServer(work)
    langfuse, rudder, st2 = LangfuseReceiver(), RudderReceiver(), FakeSt2().start()
    proxies = {
        "redis": TcpProxy(("127.0.0.1", redis.port)).start(),
        "postgres": TcpProxy(("127.0.0.1", 5432)).start(),
        "langfuse": TcpProxy(("127.0.0.1", langfuse.port)).start(),
        "rudderstack": TcpProxy(("127.0.0.1", rudder.port)).start(),
        "stackstorm": TcpProxy(("127.0.0.1", st2.port)).start(),
    }
    env = {
        "DATABASE_URL": schema.url(proxies["postgres"].port),
        "REDIS_URL": f"redis://127.0.0.1:{proxies['redis'].port}/0",
        "SYNTHHOST_HOME": str(work / "home"), "SYNTHHOST_SPOOL_DIR": str(work / "spool"),
        "SYNTHHOST_FLAG_REFRESH_S": "1",
        "LANGFUSE_BASE_URL": f"http://127.0.0.1:{proxies['langfuse'].port}", "LANGFUSE_TIMEOUT": "2",
        **LangfuseReceiver.keys(),
        "SYNTHHOST_LANGFUSE_RETRY_DELAY_S": "0.2", "SYNTHHOST_LANGFUSE_MAX_RETRY_DELAY_S": "1",
        "RUDDERSTACK_WRITE_KEY": "drill-key", "RUDDERSTACK_DATA_PLANE_URL": f"http://127.0.0.1:{proxies['rudderstack'].port}",
        "RUDDERSTACK_FLUSH_INTERVAL": "100", "RUDDERSTACK_RETRY_DELAY": "200", "RUDDERSTACK_MAX_RETRIES": "2",
        **st2.env(STACKSTORM_API_URL=f"http://127.0.0.1:{proxies['stackstorm'].port}/api",
                  STACKSTORM_TIMEOUT="2", STACKSTORM_HTTP_TIMEOUT="1"),
        "SYNTHHOST_RATELIMIT_PROBE_S": "0.5",
    }
    host = Host(Settings.from_env(env), plugins=[synthhost_cost, synthhost_ratelimit, synthhost_langfuse,
                                                 synthhost_rudderstack, synthhost_stackstorm],
                load_entrypoints=False)
    results: dict[str, Any] = {"rate": args.rate, "down_s": args.down_s, "faults": {}}
    try:
        async with host:
            for flag in ("track_model_costs", "enable_rate_limiting", "enable_langfuse_export", "enable_stackstorm",
                         "enable_stackstorm_retry"):
                host.flags.set(flag, True, workspace=WORKSPACE)
            from synthhost_ratelimit.store import set_limit

            # A limit far above the load: every call is decided on Redis, none refused.
            set_limit(host.engine, WORKSPACE, "workspace", requests=1_000_000, tokens=None, window_s=60.0)
            limiter = synthhost_ratelimit._states[host]
            assert limiter.refresher is not None
            limiter.refresher.reload()
            load = Load(host, args.rate)
            runner = asyncio.create_task(load.run())
            await asyncio.sleep(args.warmup_s)
            for fault in args.faults:
                cut_at = time.monotonic()
                proxies[fault].cut()
                await asyncio.sleep(args.down_s)
                restore_utc = utcnow()
                proxies[fault].restore()

                async def recovered(fault: str = fault, restore_utc: Any = restore_utc) -> bool:
                    if host.writer.pending > 2 * args.rate:  # more than a couple of seconds' rows
                        return False
                    if fault == "redis":
                        return bool(limiter.guard is not None and limiter.guard.healthy)
                    if fault == "stackstorm":
                        ok, _ = await st2_health(host)
                        return bool(ok)
                    return outbox_backlog(host.engine, restore_utc) == 0

                recovery = await wait_until(recovered, args.recovery_timeout_s)
                end = time.monotonic()
                results["faults"][fault] = {
                    "calls": sum(1 for s, _, _ in load.outcomes if cut_at <= s <= end),
                    "calls_failed": sum(load.failed_between(cut_at, end).values()),
                    "failures": dict(load.failed_between(cut_at, end)),
                    "recovery_s": None if recovery is None else round(recovery, 2),
                }
                await asyncio.sleep(args.between_s)
            load.stop.set()
            await runner
            ok_calls = sum(1 for _, s, _ in load.outcomes if s == "ok")
            results["calls"] = len(load.outcomes)
            results["calls_failed"] = len(load.outcomes) - ok_calls
            lat = sorted(d for _, _, d in load.outcomes)
            results["call_p95_ms"] = round(lat[int(0.95 * (len(lat) - 1))] * 1000, 2) if lat else None
            clean = sorted(d for s, _, d in load.outcomes if s not in load.injected)
            results["call_p95_ms_no_injected_failure"] = round(clean[int(0.95 * (len(clean) - 1))] * 1000, 2) \
                if clean else None
            await host.writer.flush(timeout=60)
            drained = await wait_until(
                lambda: asyncio.sleep(0, result=outbox_backlog(host.engine, utcnow()) == 0), args.recovery_timeout_s)
            results["final_drain_s"] = None if drained is None else round(drained, 2)
            with host.engine.connect() as conn:
                # one ok row per call that succeeded (failed attempts have rows of their own)
                cost_rows = int(conn.execute(sa.text(
                    "SELECT count(*) FROM model_cost_logs WHERE status = 'ok'")).scalar_one())
                events = set(conn.execute(sa.text(
                    "SELECT e.id FROM event_logs e JOIN outbox o ON o.event_id = e.id "
                    "WHERE o.exporter = 'rudderstack'")).scalars())
                runs = set(conn.execute(sa.text("SELECT trace_id FROM runs WHERE status = 'ok'")).scalars())
            results["rows_lost"] = max(0, ok_calls - cost_rows)
            results["events_lost"] = len(events - rudder.ids) + len(runs - langfuse.trace_ids())
    finally:
        for proxy in proxies.values():
            proxy.close()
        langfuse.close()
        rudder.close()
        st2.stop()
        redis.close()
        schema.drop()
        shutil.rmtree(work, ignore_errors=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--rate", type=float, default=40.0, help="calls per second throughout")
    parser.add_argument("--down-s", type=float, default=5.0, help="seconds each service stays down")
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--between-s", type=float, default=2.0, help="steady load between faults")
    parser.add_argument("--recovery-timeout-s", type=float, default=60.0, help="bound on each recovery")
    parser.add_argument("--faults", type=lambda s: [f for f in s.split(",") if f], default=list(FAULTS),
                        help=f"comma-separated, in order (default: {','.join(FAULTS)})")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the host's warnings while services are down")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING if args.verbose else logging.CRITICAL)
    unknown = [f for f in args.faults if f not in FAULTS]
    if unknown:
        parser.error(f"--faults: unknown {', '.join(unknown)} (choose from {', '.join(FAULTS)})")
    results = asyncio.run(drill(args))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"load: {results['rate']:g} calls/s, each fault {results['down_s']:g} s down")
    print(f"{'fault':<12} {'calls':>6} {'failed':>7} {'recovery':>9}")
    for fault, r in results["faults"].items():
        rec = "timeout" if r["recovery_s"] is None else f"{r['recovery_s']:.2f} s"
        print(f"{fault:<12} {r['calls']:>6} {r['calls_failed']:>7} {rec:>9}  {r['failures'] or ''}")
    print(f"total: {results['calls']} calls, {results['calls_failed']} failed, call p95 {results['call_p95_ms']} ms "
          f"({results['call_p95_ms_no_injected_failure']} ms without the calls made to fail once)")
    print(f"rows lost: {results['rows_lost']}, events lost: {results['events_lost']} "
          f"(final drain {results['final_drain_s']} s)")


if __name__ == "__main__":
    main()
