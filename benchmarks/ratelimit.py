"""Rate-limit decisions: latency and throughput with 3 scopes (user, workspace, org),
and Redis memory after 1,000,000 admitted calls on one scope.

    uv run --frozen python benchmarks/ratelimit.py [--redis URL] [--n 5000]
        [--memory-calls 1000000] [--memory-limit-s 240] [--json]

Measures, against the real Redis (``REDIS_URL`` or redis://127.0.0.1:6379/0):

- ``redis_ping``: one PING through redis-py's generic client;
- ``wire_ping``: one PING on the limiter's own connection path: the round-trip floor;
- ``redis_decision``: one decision on 3 scopes with request limits (the defaults'
  shape: one EVALSHA), with ``script_server_us``, the script's run time inside Redis
  (from INFO commandstats: on a shared server, other clients' scripts count too);
- ``redis_decision_tokens``: the same with request and token limits on every scope;
- ``redis_decision_settle``: a decision plus its post-call token correction (what a
  call with a token limit costs: two round trips);
- ``redis_concurrent``: decisions/s with 50 concurrent callers on one event loop;
- ``local_decision``: the in-process limiter;
- ``plugin_pre_call``: the plugin's whole ``pre_call`` (scope resolution, estimate,
  decision) on the in-process limiter;
- ``decision_over_ping_p50``: the decision's p50 as a multiple of PING's p50, both
  measured in this run (on the limiter's own path, and through redis-py's client);
- ``redis_memory``: ``--memory-calls`` real acquires (Redis' clock, unique reservation
  ids, 120 tokens each) admitted on one scope, pipelined on a connection of its own
  (stopping at ``--memory-limit-s`` whatever the count): the INFO ``used_memory`` delta
  right after (reservation markers of the last 5 s included) and once the markers have
  expired, the scope key's MEMORY USAGE, and for comparison what the previous sliding
  log would hold (MEMORY USAGE of a sorted set of 10,000 members of its shape, scaled).
  On a shared Redis, other clients move ``used_memory`` too.

Latencies are per decision, sequential, after a warm-up; p50/p95 in microseconds.
Windows are 1 s so the steady state includes entries leaving the window.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from synthhost_ratelimit.limits import Limit, ScopeCheck
from synthhost_ratelimit.local import LocalLimiter
from synthhost_ratelimit.redis_backend import ACQUIRE, connect

BIG = 10**9
LIMIT = Limit(requests=BIG, tokens=BIG, window_s=1.0)
REQUESTS_ONLY = Limit(requests=BIG, window_s=1.0)


def checks(prefix_ws: str, limit: Limit = LIMIT) -> list[ScopeCheck]:
    return [
        ScopeCheck.of("user", f"ws:{prefix_ws}:user:alice", limit),
        ScopeCheck.of("workspace", f"ws:{prefix_ws}", limit),
        ScopeCheck.of("org", f"org:{prefix_ws}", limit),
    ]


def summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    n = len(samples)
    return {
        "n": n,
        "p50_us": round(samples[n // 2] * 1e6, 1),
        "p95_us": round(samples[int(n * 0.95)] * 1e6, 1),
        "mean_us": round(statistics.fmean(samples) * 1e6, 1),
        "per_s": round(n / sum(samples)),
    }


async def timed(n: int, fn: Callable[[int], Awaitable[Any]]) -> dict[str, float]:
    for i in range(min(500, n)):  # warm-up (script load, connection, caches)
        await fn(-i - 1)
    out = []
    perf = time.perf_counter
    for i in range(n):
        t = perf()
        await fn(i)
        out.append(perf() - t)
    return summary(out)


async def evalsha_stats(lim: Any) -> tuple[int, int]:
    """(calls, µs) of EVALSHA so far (read-only: never resets the server's stats)."""
    stats = (await lim.client.info("commandstats")).get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0)), int(stats.get("usec", 0))


async def bench_redis(url: str, n: int) -> dict[str, Any]:
    prefix = f"rlbench:{uuid.uuid4().hex[:8]}"
    lim = connect(url, timeout_s=5.0, prefix=prefix)
    cs = checks("b")
    results: dict[str, Any] = {}
    try:
        results["redis_ping"] = await timed(n, lambda i: lim.client.ping())
        ping = b"*1\r\n$4\r\nPING\r\n"
        results["wire_ping"] = await timed(n, lambda i: lim._wire.call(lim._acquire, ping))
        for name, limited in (("redis_decision", checks("r", REQUESTS_ONLY)),
                              ("redis_decision_tokens", cs)):
            before = await evalsha_stats(lim)

            def decide(i: int, c: list[ScopeCheck] = limited, tag: str = name) -> Awaitable[Any]:
                return lim.acquire(c, f"{tag}{i}", 120)

            results[name] = await timed(n, decide)
            after = await evalsha_stats(lim)
            calls = after[0] - before[0]
            results[name]["script_server_us"] = round((after[1] - before[1]) / calls, 1)

        async def with_settle(i: int) -> None:
            await lim.acquire(cs, f"s{i}", 120)
            await lim.settle(cs, f"s{i}", 120, 80)

        results["redis_decision_settle"] = await timed(n // 2, with_settle)

        callers, per = 50, max(1, n // 50)

        async def caller(c: int) -> None:
            for i in range(per):
                await lim.acquire(cs, f"c{c}-{i}", 120)

        t = time.perf_counter()
        await asyncio.gather(*(caller(c) for c in range(callers)))
        elapsed = time.perf_counter() - t
        results["redis_concurrent"] = {"callers": callers, "n": callers * per,
                                       "per_s": round(callers * per / elapsed)}
    finally:
        keys = [k async for k in lim.client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await lim.client.delete(*keys)
        await lim.aclose()
    return results


async def bench_local(n: int) -> dict[str, Any]:
    lim = LocalLimiter()
    cs = checks("b")
    results: dict[str, Any] = {"local_decision": await timed(n, lambda i: lim.acquire(cs, f"d{i}", 120))}

    from synthhost.call import Call, Request
    from synthhost_ratelimit.runtime import Config, RateLimiter
    from synthhost_ratelimit.store import LimitTable, Row

    table = LimitTable([Row("*", s, LIMIT) for s in ("user", "workspace", "org")])
    config = Config.from_env({}, None)
    plugin = RateLimiter(config, table, limiter=LocalLimiter(), guard=None, emit=None)
    plugin._warned_local = True

    class NoHost:
        def emit(self, *a: Any, **k: Any) -> str:
            return ""

    request = Request(model="m", messages=[{"role": "user", "content": "hello " * 40}])

    async def pre_call(i: int) -> None:
        call = Call(host=NoHost(), request=request, workspace="w", user="alice",  # type: ignore[arg-type]
                    org="o", span_id=str(i))
        await plugin.pre_call(call)

    results["plugin_pre_call"] = await timed(n, pre_call)
    return results


async def _read_replies(reader: asyncio.StreamReader, buf: bytearray, n: int) -> int:
    """Read ``n`` RESP replies (bulk strings; an error raises); the number admitted."""
    admitted = got = 0
    pos = 0
    while got < n:
        end = buf.find(b"\r\n", pos)
        if end < 0:
            del buf[:pos]
            pos = 0
            buf += await reader.read(1 << 20)
            continue
        kind = buf[pos:pos + 1]
        if kind == b"-":
            raise RuntimeError(bytes(buf[pos:end]).decode())
        if kind != b"$":
            raise RuntimeError(f"unexpected reply {bytes(buf[pos:end])!r}")
        length = int(buf[pos + 1:end])
        if len(buf) < end + 2 + length + 2:
            del buf[:pos]
            pos = 0
            buf += await reader.read(1 << 20)
            continue
        admitted += buf[end + 2:end + 4] == b"1,"
        pos = end + 2 + length + 2
        got += 1
    del buf[:pos]
    return admitted


async def _marker_count(client: Any, prefix: str) -> int:
    # SCAN also frees the expired keys it visits
    n = 0
    async for _ in client.scan_iter(match=f"{prefix}:m:*", count=20_000):
        n += 1
    return n


async def bench_memory(url: str, calls: int, limit_s: float) -> dict[str, Any]:
    from urllib.parse import urlparse

    prefix = f"rlbench:{uuid.uuid4().hex[:8]}"
    lim = connect(url, timeout_s=5.0, prefix=prefix)
    client = lim.client
    # a day-long window: the one key visibly holds every admitted call (115/s drain)
    cs = [ScopeCheck.of("workspace", "ws:mem", Limit(requests=10**7, tokens=10**10, window_s=86_400))]
    bucket = lim.keys_for(cs)[0]
    parsed = urlparse(url)
    reader, writer = await asyncio.open_connection(parsed.hostname or "127.0.0.1", parsed.port or 6379)
    try:
        setup = b""
        if parsed.password:
            setup += b"*2\r\n$4\r\nAUTH\r\n" + b"$%d\r\n%b\r\n" % (len(parsed.password), parsed.password.encode())
        db = (parsed.path or "/0").lstrip("/") or "0"
        setup += b"*2\r\n$6\r\nSELECT\r\n$%d\r\n%b\r\n" % (len(db), db.encode())
        writer.write(setup)
        await writer.drain()
        for _ in range(2 if parsed.password else 1):
            line = await reader.readline()
            if not line.startswith(b"+"):
                raise RuntimeError(line.decode().strip())
        await client.script_load(ACQUIRE)
        base = int((await client.info("memory"))["used_memory"])
        batch, done, admitted = 2000, 0, 0
        buf = bytearray()
        started = time.perf_counter()
        while done < calls and time.perf_counter() - started < limit_s:
            k = min(batch, calls - done)
            writer.write(b"".join(lim.acquire_payload(cs, f"{done + i:x}", 120) for i in range(k)))
            await writer.drain()
            admitted += await _read_replies(reader, buf, k)
            done += k
        elapsed = time.perf_counter() - started
        after = int((await client.info("memory"))["used_memory"])
        key_bytes = int(await client.memory_usage(bucket) or 0)
        markers_live = await _marker_count(client, prefix)
        usage = (await lim.usage(cs))[0]
        await asyncio.sleep(5.5)  # the markers' TTL: then SCAN frees what expired
        markers_left = await _marker_count(client, prefix)
        settled = int((await client.info("memory"))["used_memory"])
        # the previous sliding log's cost: one member "<span id>.<attempt>:<tokens>" per call
        log_key = f"{prefix}:log-sample"
        sample = 10_000
        pipe = client.pipeline(transaction=False)
        t0 = 1_700_000_000_000_000
        for i in range(0, sample, 1000):
            pipe.zadd(log_key, {f"{uuid.uuid4().hex[:16]}.1:120": t0 + j for j in range(i, i + 1000)})
        await pipe.execute()
        log_bytes = int(await client.memory_usage(log_key, samples=0) or 0)
        await client.delete(log_key, bucket)
    finally:
        writer.close()
        await lim.aclose()
    return {
        "calls": done, "admitted": admitted, "seconds": round(elapsed, 1),
        "per_s": round(done / elapsed), "usage_after": list(usage),
        "scope_key_bytes": key_bytes,
        "used_memory_delta_bytes": after - base,
        "markers_live_after": markers_live,
        "used_memory_delta_after_markers_expired_bytes": settled - base,
        "markers_left": markers_left,
        "sliding_log_bytes_per_call": round(log_bytes / sample, 1),
        "sliding_log_equivalent_bytes": round(log_bytes / sample * admitted),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--redis", default=os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--memory-calls", type=int, default=1_000_000,
                        help="admitted calls for the memory figure (0: skip)")
    parser.add_argument("--memory-limit-s", type=float, default=240.0,
                        help="stop the memory run after this long, whatever the count")
    parser.add_argument("--json", action="store_true", help="print JSON")
    args = parser.parse_args()

    results: dict[str, Any] = {"scopes": 3}
    try:
        import hiredis  # noqa: F401

        results["hiredis"] = True
    except ImportError:
        results["hiredis"] = False
    results.update(asyncio.run(bench_redis(args.redis, args.n)))
    results.update(asyncio.run(bench_local(args.n)))
    ping, dec = results["wire_ping"]["p50_us"], results["redis_decision"]["p50_us"]
    results["decision_over_ping_p50"] = round(dec / ping, 2)
    results["decision_over_redis_py_ping_p50"] = round(dec / results["redis_ping"]["p50_us"], 2)
    if args.memory_calls > 0:
        results["redis_memory"] = asyncio.run(bench_memory(args.redis, args.memory_calls, args.memory_limit_s))

    if args.json:
        json.dump(results, sys.stdout, indent=2)
        print()
        return
    print(f"rate-limit decisions, 3 scopes (hiredis: {results['hiredis']})")
    for name in ("redis_ping", "wire_ping", "redis_decision", "redis_decision_tokens",
                 "redis_decision_settle", "local_decision", "plugin_pre_call"):
        r = results[name]
        server = f"   script {r['script_server_us']} µs in Redis" if "script_server_us" in r else ""
        print(f"  {name:<24} p50 {r['p50_us']:>8.1f} µs   p95 {r['p95_us']:>8.1f} µs   "
              f"{r['per_s']:>9,} /s   (n={r['n']}){server}")
    c = results["redis_concurrent"]
    print(f"  {'redis_concurrent':<24} {c['per_s']:>9,} decisions/s with {c['callers']} callers")
    print(f"  decision p50 = {results['decision_over_ping_p50']}x a PING round trip on the same path, "
          f"{results['decision_over_redis_py_ping_p50']}x redis-py's PING")
    m = results.get("redis_memory")
    if m:
        mib = 1 << 20
        print(f"Redis memory, {m['admitted']:,} admitted calls on one scope ({m['calls']:,} sent, "
              f"{m['seconds']} s, {m['per_s']:,}/s pipelined; usage after: {m['usage_after']})")
        print(f"  scope key MEMORY USAGE          {m['scope_key_bytes']:>12,} B")
        print(f"  used_memory delta right after   {m['used_memory_delta_bytes'] / mib:>12.1f} MiB"
              f"   ({m['markers_live_after']:,} reservation markers of the last 5 s alive)")
        print(f"  used_memory delta, markers gone {m['used_memory_delta_after_markers_expired_bytes'] / mib:>12.1f} MiB"
              f"   ({m['markers_left']:,} left)")
        print(f"  sliding log (before) would hold {m['sliding_log_equivalent_bytes'] / mib:>12.1f} MiB"
              f"   ({m['sliding_log_bytes_per_call']} B per call, from a 10,000-member sample)")


if __name__ == "__main__":
    main()
