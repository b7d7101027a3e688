"""Per-call host overhead against the echo provider at zero latency.

Measured the way reference/litellm.md §9 measured LiteLLM, so the figures compare:
sequential calls (200 warm-up, then 2,000 counted), wall time per call, p50/p95/p99 µs
and calls/s; then the same number of calls at a fixed concurrency (64 in flight).
Overhead = time inside ``Host.complete`` minus time inside the provider.

    uv run python benchmarks/overhead.py                      # bare host
    uv run python benchmarks/overhead.py --plugins cost,policy,ratelimit
    uv run python benchmarks/overhead.py --plugins all --json

``--plugins`` loads those installed plugins and switches on every flag they declare
(except ``disable_*`` ones) for the benchmark workspace. So that every call goes the
whole way, each prompt is unique (a counter), similarity acts by flagging, and the rate
limits are raised far above what the run needs (the checks still run). Without
``REDIS_URL`` the rate limiter runs in process; set it to measure the Redis path.
Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

import anyio

from synthhost import Host
from synthhost.settings import Settings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Timed:
    """Wraps the provider to measure the time spent inside it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.spent = 0.0

    async def complete(self, request: Any, *, call: Any) -> Any:
        started = time.perf_counter()
        try:
            return await self.inner.complete(request, call=call)
        finally:
            self.spent += time.perf_counter() - started


def summary(wall: list[float], overhead: list[float], elapsed: float) -> dict[str, float]:
    return {
        "calls": len(wall),
        "calls_per_s": round(len(wall) / elapsed, 1),
        "wall_p50_us": round(pct(wall, 0.50) * 1e6, 1),
        "wall_p95_us": round(pct(wall, 0.95) * 1e6, 1),
        "wall_p99_us": round(pct(wall, 0.99) * 1e6, 1),
        "overhead_p50_us": round(pct(overhead, 0.50) * 1e6, 1),
        "overhead_p95_us": round(pct(overhead, 0.95) * 1e6, 1),
        "overhead_p99_us": round(pct(overhead, 0.99) * 1e6, 1),
        "overhead_mean_us": round(statistics.fmean(overhead) * 1e6, 1),
    }


async def bench(plugins: str, warmup: int, count: int, concurrency: int, url: str) -> dict[str, Any]:
    env = {**os.environ, "DATABASE_URL": url, "SYNTHHOST_LOAD_PLUGINS": "" if plugins == "none" else plugins,
           "SYNTHHOST_SIMILARITY_ACTION": "flagged"}
    if plugins == "all":
        env.pop("SYNTHHOST_LOAD_PLUGINS")
    if "ratelimit" in plugins or plugins == "all":
        _raise_limits(env)
    host = Host(Settings.from_env(env), load_entrypoints=True)
    workspace = "bench"
    async with host:
        for name in host.registry.flags:
            if plugins != "none" and not name.startswith("disable_"):
                host.flags.set(name, True, workspace=workspace)
        timed = Timed(host.provider("echo"))
        host._providers["echo"] = timed  # type: ignore[assignment]
        counter = iter(range(10**9))

        async def one() -> tuple[float, float]:
            n = next(counter)
            messages = [{"role": "user", "content": f"Summarise quarterly report #{n} in three bullet points."}]
            before = timed.spent
            started = time.perf_counter()
            await host.complete(model="echo/gpt-4o-mini", messages=messages, workspace=workspace,
                                user=f"user-{n % 50}")
            wall = time.perf_counter() - started
            return wall, wall - (timed.spent - before)

        for _ in range(warmup):
            await one()
        await host.writer.flush()
        wall, overhead = [], []
        started = time.perf_counter()
        for _ in range(count):
            w, o = await one()
            wall.append(w)
            overhead.append(o)
        sequential = summary(wall, overhead, time.perf_counter() - started)
        await host.writer.flush()

        # Fixed concurrency: `concurrency` workers share `count` calls.
        wall, overhead = [], []
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                w, o = await one()
                wall.append(w)
                overhead.append(o)

        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        concurrent = summary(wall, overhead, time.perf_counter() - started)
        flushed = time.perf_counter()
        await host.writer.flush()
        flush_ms = (time.perf_counter() - flushed) * 1000
        active = sorted(host.chains.active(workspace))
    return {
        "plugins": plugins, "active": active, "python": sys.version.split()[0],
        "database": url.split(":", 1)[0], "sequential": sequential,
        f"concurrent_{concurrency}": concurrent, "final_flush_ms": round(flush_ms, 1),
        "rows_committed": host.stats["rows_committed"], "plugin_errors": host.stats["plugin_errors"],
    }


def _raise_limits(env: dict[str, str]) -> None:
    """Limits far above the run: every scope is still checked on every call."""
    from click.testing import CliRunner

    from synthhost.cli import cli

    for scope in ("user", "workspace", "org", "global"):
        result = CliRunner().invoke(cli, ["ratelimit", "set", "--workspace", "bench", "--scope", scope,
                                          "--requests", "100000000", "--tokens", "none"], env=env)
        if result.exit_code != 0:
            raise SystemExit(f"could not raise the {scope} limit: {result.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--plugins", default="none", help="none, all, or a comma list of plugin names")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    result = anyio.run(bench, args.plugins, args.warmup, args.count, args.concurrency, url)
    if args.json:
        print(json.dumps(result))
        return
    print(f"plugins={result['plugins']} active={','.join(result['active'])} db={result['database']} "
          f"python={result['python']}")
    for mode in ("sequential", f"concurrent_{args.concurrency}"):
        r = result[mode]
        print(f"  {mode:<14} {r['calls_per_s']:>8.0f} calls/s  wall p50/p95/p99 "
              f"{r['wall_p50_us']:.0f}/{r['wall_p95_us']:.0f}/{r['wall_p99_us']:.0f} µs  "
              f"overhead p50/p95/p99 {r['overhead_p50_us']:.0f}/{r['overhead_p95_us']:.0f}/"
              f"{r['overhead_p99_us']:.0f} µs")
    print(f"  final flush {result['final_flush_ms']} ms, rows committed {result['rows_committed']}, "
          f"plugin errors {result['plugin_errors']}")


if __name__ == "__main__":
    main()
