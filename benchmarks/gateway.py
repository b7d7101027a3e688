"""Latency ``synthhost serve`` adds over ``Host.complete`` in process, and the requests/s
one worker sustains (issue 9). The echo provider at zero latency; SQLite in a temp dir.

For each configuration (``bare``: no plugins; ``production``: the production plugin set
of ``benchmarks/overhead.py --profile production``, Redis rate limiter with 4 scopes, 20
policy rules, guardrails, routing, cost, similarity logging, Langfuse and RudderStack
queued for ``synthhost worker`` processes, ``SYNTHHOST_DELIVERY=worker``):

1. in process: ``Host.complete`` called sequentially (200 warm-up, then ``--count``),
   p50/p95/p99 wall time;
2. through HTTP: ``synthhost serve`` (one worker, a subprocess) driven by an open-loop
   load generator at 200, 500 and 1,000 requests/s (``--rates``; ``--count`` requests
   each, sent on schedule over 64 keep-alive connections); added latency = the HTTP
   percentile minus the in-process one;
3. the maximum sustained requests/s: closed loop, 64 requests in flight, ``--seconds``.

``--stream`` sends ``stream: true`` (with ``stream_options.include_usage``) instead and
also reports the time to the first byte of the answer (the first SSE chunk after the
headers) at each rate; the in-process reference is then ``Host.stream`` to its last
delta.

The client is a minimal HTTP/1.1 client on asyncio streams (an SDK would spend more CPU
than the server on this 2-core machine). Bounded: every phase stops by itself.

    uv run python benchmarks/gateway.py
    uv run python benchmarks/gateway.py --configs bare --rates 200,500 --json
    uv run python benchmarks/gateway.py --database-url postgresql+psycopg://postgres@127.0.0.1/bench
    uv run python benchmarks/gateway.py --stream --configs bare,production

Targets (issue 9, 2 cores): production added p50 <= 300 µs and p95 <= 1 ms at 500
requests/s; bare >= 3,000 requests/s. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import PRODUCTION_OFF, LoopbackReceiver, pct, prepare, profile_env

from synthhost import Host
from synthhost.gateway.keys import create_key
from synthhost.settings import Settings

WORKSPACE = "bench"
BASE = int(time.time() * 1000) % 10**9
STREAM = False  # --stream


def body(n: int) -> bytes:
    payload: dict[str, Any] = {
        "model": "echo/gpt-4o-mini", "user": f"user-{n % 50}",
        "messages": [{"role": "user", "content": f"Summarise quarterly report #{BASE}-{n} in three bullet points."}],
    }
    if STREAM:
        payload.update(stream=True, stream_options={"include_usage": True})
    return json.dumps(payload).encode()


def setup(config: str, env: dict[str, str]) -> str:
    """Limits, policy, flags; returns an API key for the benchmark workspace."""
    prepare(config, env)
    host = Host(Settings.from_env(env), load_entrypoints=True)
    host.migrate()
    host.flags.reload()
    if config != "bare":
        for name in host.registry.flags:
            host.flags.set(name, not name.startswith("disable_") and name not in PRODUCTION_OFF, workspace=WORKSPACE)
    key, _ = create_key(host.engine, WORKSPACE)
    host.engine.dispose()
    return key


async def in_process(env: dict[str, str], count: int) -> dict[str, float]:
    host = Host(Settings.from_env(env), load_entrypoints=True)
    async with host:
        async def one(n: int) -> float:
            started = time.perf_counter()
            kwargs: dict[str, Any] = {
                "model": "echo/gpt-4o-mini", "workspace": WORKSPACE, "user": f"user-{n % 50}",
                "messages": [{"role": "user", "content": f"Summarise quarterly report #{BASE}-x{n} in three bullet "
                              "points."}]}
            if STREAM:
                async with host.stream(**kwargs) as stream:
                    async for _ in stream:
                        pass
            else:
                await host.complete(**kwargs)
            return time.perf_counter() - started

        for i in range(200):
            await one(i)
        await host.writer.flush()
        walls = [await one(200 + i) for i in range(count)]
    return {q: round(pct(walls, v) * 1e6, 1) for q, v in (("p50_us", 0.5), ("p95_us", 0.95), ("p99_us", 0.99))}


class Conn:
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes) -> None:
        self.reader, self.writer, self.head = reader, writer, head

    @classmethod
    async def open(cls, port: int, key: str) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n").encode()
        return cls(reader, writer, head)

    async def request(self, payload: bytes) -> int:
        """Send one request, read the whole answer; ``self.first_byte`` is when the
        answer's first body byte arrived (a chunked stream's first chunk)."""
        self.writer.write(self.head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        status_line = await self.reader.readline()
        length = 0
        chunked = False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
            elif line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if not chunked:
            await self.reader.readexactly(length)
            self.first_byte = time.perf_counter()
            return int(status_line.split()[1])
        self.first_byte = 0.0
        while True:
            size = int((await self.reader.readline()).split(b";")[0], 16)
            if size and not self.first_byte:
                self.first_byte = time.perf_counter()
            await self.reader.readexactly(size + 2)  # the chunk and its CRLF
            if size == 0:
                return int(status_line.split()[1])

    def close(self) -> None:
        self.writer.close()


async def open_loop(port: int, key: str, rate: float, count: int, connections: int = 64) -> dict[str, Any]:
    conns = [await Conn.open(port, key) for _ in range(connections)]
    idle: asyncio.Queue[Conn] = asyncio.Queue()
    for c in conns:
        idle.put_nowait(c)
    for i in range(200):  # warm-up, sequential
        await conns[0].request(body(10**8 + i))
    latencies: list[float] = []
    first_bytes: list[float] = []
    lateness: list[float] = []
    errors = 0

    async def send(conn: Conn, n: int) -> None:
        nonlocal errors
        started = time.perf_counter()
        status = await conn.request(body(n))
        latencies.append(time.perf_counter() - started)
        first_bytes.append(conn.first_byte - started)
        errors += status != 200
        idle.put_nowait(conn)

    tasks = []
    t0 = time.perf_counter() + 0.05
    for i in range(count):
        due = t0 + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await idle.get()
        lateness.append(max(0.0, time.perf_counter() - due))
        tasks.append(asyncio.ensure_future(send(conn, i)))
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t0
    for c in conns:
        c.close()
    out = {"rate": rate, "achieved_per_s": round(count / elapsed, 1), "errors": errors,
           "p50_us": round(pct(latencies, 0.5) * 1e6, 1), "p95_us": round(pct(latencies, 0.95) * 1e6, 1),
           "p99_us": round(pct(latencies, 0.99) * 1e6, 1),
           "send_late_p99_us": round(pct(lateness, 0.99) * 1e6, 1)}
    if STREAM:
        out.update({f"ttfb_{q}": round(pct(first_bytes, v) * 1e6, 1)
                    for q, v in (("p50_us", 0.5), ("p95_us", 0.95), ("p99_us", 0.99))})
    return out


async def closed_loop(port: int, key: str, seconds: float, in_flight: int = 64) -> dict[str, Any]:
    conns = [await Conn.open(port, key) for _ in range(in_flight)]
    done = errors = 0
    stop = time.perf_counter() + seconds

    async def worker(conn: Conn, k: int) -> None:
        nonlocal done, errors
        n = k
        while time.perf_counter() < stop:
            status = await conn.request(body(10**7 * (k + 1) + n))
            n += 1
            done += 1
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(worker(c, k) for k, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for c in conns:
        c.close()
    return {"in_flight": in_flight, "requests": done, "errors": errors, "requests_per_s": round(done / elapsed, 1)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    import urllib.request

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthhost", "serve", "--port", str(port), "--workers", "1",
                             "--no-access-log", "--log-level", "warning"], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("synthhost serve did not start")


def run_config(config: str, args: argparse.Namespace, redis_url: str, receiver: LoopbackReceiver) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix=f"gw-{config}-")
    env = profile_env(config, args.database_url or f"sqlite:///{tmp}/bench.db", redis_url, receiver)
    env.update({"SYNTHHOST_HOME": tmp, "SYNTHHOST_RATELIMIT_PREFIX": f"gwbench:{BASE}:{config}"})
    if config != "bare":
        env["SYNTHHOST_DELIVERY"] = "worker"
    key = setup(config, env)
    reference = anyio.run(in_process, env, args.count)
    proc, port = start_serve({**env, "SYNTHHOST_AUTO_MIGRATE": "0"})
    try:
        rates = []
        for rate in args.rates:
            measured = asyncio.run(open_loop(port, key, rate, args.count))
            for q in ("p50_us", "p95_us", "p99_us"):
                measured[f"added_{q}"] = round(measured[q] - reference[q], 1)
            rates.append(measured)
        sustained = asyncio.run(closed_loop(port, key, args.seconds))
    finally:
        proc.terminate()
        proc.wait(30)
    return {"config": config, "in_process": reference, "rates": rates, "max_sustained": sustained}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="bare,production")
    parser.add_argument("--rates", default="200,500,1000")
    parser.add_argument("--count", type=int, default=2000, help="requests per rate (and in-process calls)")
    parser.add_argument("--seconds", type=float, default=5.0, help="closed-loop duration")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file per configuration")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--stream", action="store_true", help="stream: true, and time to first byte")
    args = parser.parse_args()
    global STREAM
    STREAM = args.stream
    args.rates = [float(r) for r in args.rates.split(",") if r]
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("SYNTHHOST_TEST_REDIS") or "redis://127.0.0.1:6379/0"
    receiver = LoopbackReceiver(0.0)
    try:
        results = [run_config(c, args, redis_url, receiver) for c in args.configs.split(",") if c]
    finally:
        receiver.close()
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        ref = r["in_process"]
        print(f"\n{r['config']}: Host.complete in process p50/p95/p99 "
              f"{ref['p50_us']:.0f} / {ref['p95_us']:.0f} / {ref['p99_us']:.0f} µs")
        print(f"  {'rate/s':>7} {'got/s':>7} {'http p50':>9} {'p95':>7} {'p99':>7} {'added p50':>10} "
              f"{'p95':>7} {'p99':>7} {'errors':>6}")
        for m in r["rates"]:
            print(f"  {m['rate']:>7.0f} {m['achieved_per_s']:>7.0f} {m['p50_us']:>9.0f} {m['p95_us']:>7.0f} "
                  f"{m['p99_us']:>7.0f} {m['added_p50_us']:>10.0f} {m['added_p95_us']:>7.0f} "
                  f"{m['added_p99_us']:>7.0f} {m['errors']:>6}")
            if "ttfb_p50_us" in m:
                print(f"  {'':>7} {'':>7} first byte p50/p95/p99 {m['ttfb_p50_us']:.0f} / {m['ttfb_p95_us']:.0f} / "
                      f"{m['ttfb_p99_us']:.0f} µs")
        s = r["max_sustained"]
        print(f"  max sustained (one worker, {s['in_flight']} in flight): {s['requests_per_s']:.0f} requests/s "
              f"({s['errors']} errors)")


if __name__ == "__main__":
    main()
