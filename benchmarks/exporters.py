"""What the Langfuse exporter adds to the call path, and how fast traces drain.

1. Call path: per-call wall time of ``Host.complete`` (echo provider, zero latency) and
   per-run wall time of ``Host.run`` (a one-step agent) on one started host with the
   Langfuse plugin loaded, alternating blocks with ``enable_langfuse_export`` off and on
   (async mode, the default) so both see the same machine state. 200 warm-up calls,
   then ``--count`` counted per setting; p50/p95/p99 µs. "Added" is on minus off. The
   exporter works in the background meanwhile (the outbox thread builds spans and
   sends them to a loopback OTLP receiver running in a separate process), so GIL
   contention from the background export is part of the figure.
2. Drain: after the timed runs, the time until every run's trace was accepted by the
   receiver (outbox ``delivered``), as traces/s.
3. With ``--sync``: the same run timing with ``enable_async_trace_export`` off, where a
   run waits for Langfuse's answer (for contrast; not a call-path target).

    uv run --frozen python benchmarks/exporters.py
    uv run --frozen python benchmarks/exporters.py --count 4000 --sync --json

Target (issue 5): added per-call latency <= 20 µs p50 in async mode. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

import anyio

RECEIVER = """
import sys, time
from synthhost_langfuse.testing import LangfuseReceiver
rx = LangfuseReceiver()
print(rx.port, flush=True)
for line in sys.stdin:
    if line.strip() == "count":
        print(len({s.trace_id for s in rx.spans()}), flush=True)
"""


class Receiver:
    """The loopback OTLP receiver in its own process (its protobuf decoding must not
    compete with the host for the GIL)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def traces(self) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(5)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def stats(samples: list[float]) -> dict[str, float]:
    return {
        "n": len(samples),
        "p50_us": round(pct(samples, 0.50) * 1e6, 1),
        "p95_us": round(pct(samples, 0.95) * 1e6, 1),
        "p99_us": round(pct(samples, 0.99) * 1e6, 1),
    }


async def bench(count: int, block: int, with_sync: bool, db_url: str, receiver: Receiver) -> dict[str, Any]:
    import synthhost_langfuse
    from synthhost import Host
    from synthhost.agent import AgentSpec
    from synthhost.outbox import queue_stats
    from synthhost.settings import Settings

    env = {**os.environ, "DATABASE_URL": db_url, "LANGFUSE_BASE_URL": f"http://127.0.0.1:{receiver.port}",
           "LANGFUSE_PUBLIC_KEY": "pk-lf-bench", "LANGFUSE_SECRET_KEY": "sk-lf-bench", "LANGFUSE_TIMEOUT": "5"}
    host = Host(Settings.from_env(env), plugins=[synthhost_langfuse], load_entrypoints=False)
    spec = AgentSpec(name="bench", model="echo/gpt-4o-mini",
                     steps=[{"name": "only", "prompt": "Summarise the quarterly report."}])
    messages = [{"role": "user", "content": "Summarise the quarterly report in three bullet points."}]
    ws = "bench"
    samples: dict[str, dict[str, list[float]]] = {m: {"complete": [], "run": []} for m in ("off", "on")}
    trace_hook: list[float] = []

    async with host:
        async def complete_once() -> float:
            started = time.perf_counter()
            await host.complete(model="echo/gpt-4o-mini", messages=messages, workspace=ws)
            return time.perf_counter() - started

        async def run_once() -> float:
            started = time.perf_counter()
            await host.run(spec, workspace=ws)
            return time.perf_counter() - started

        for enabled in (False, True):  # warm both settings
            host.flags.set("enable_langfuse_export", enabled, workspace=ws)
            for _ in range(100):
                await complete_once()
                await run_once()
        runs_on = 100
        done = 0
        while done < count:
            for mode in ("off", "on"):
                host.flags.set("enable_langfuse_export", mode == "on", workspace=ws)
                for _ in range(block):
                    samples[mode]["complete"].append(await complete_once())
                for _ in range(block):
                    samples[mode]["run"].append(await run_once())
                if mode == "on":
                    runs_on += block
            done += block
        await host.writer.flush()

        # The hook itself, async mode: what a finished trace costs the caller.
        from synthhost.traces import load_trace

        finished = load_trace(host.engine, (await host.run(spec, workspace=ws)).run_id)
        runs_on += 1
        assert finished is not None
        for _ in range(5000):
            started = time.perf_counter()
            synthhost_langfuse.on_trace(finished, host)
            trace_hook.append(time.perf_counter() - started)

        drain_started = time.perf_counter()
        deadline = drain_started + 300
        while time.perf_counter() < deadline:
            q = queue_stats(host.engine, ["langfuse"])["langfuse"]
            if q["delivered"] >= runs_on:
                break
            await anyio.sleep(0.05)
        drain_s = time.perf_counter() - drain_started
        delivered = queue_stats(host.engine, ["langfuse"])["langfuse"]["delivered"]

        sync_runs: list[float] = []
        if with_sync:
            host.flags.set("enable_langfuse_export", True, workspace=ws)
            host.flags.set("enable_async_trace_export", False, workspace=ws)
            for _ in range(min(count, 500)):
                sync_runs.append(await run_once())
        exporter = synthhost_langfuse.exporter_for(host)
        exported = exporter.stats["exported"] if exporter else 0

    result: dict[str, Any] = {"python": sys.version.split()[0], "database": db_url.split(":", 1)[0]}
    for kind in ("complete", "run"):
        off, on_ = stats(samples["off"][kind]), stats(samples["on"][kind])
        result[kind] = {"off": off, "on": on_,
                        "added_p50_us": round(on_["p50_us"] - off["p50_us"], 1),
                        "added_p95_us": round(on_["p95_us"] - off["p95_us"], 1)}
    result["on_trace_async"] = stats(trace_hook)
    result["drain"] = {"runs": runs_on, "delivered": delivered, "seconds_after_last_run": round(drain_s, 2),
                       "receiver_traces": receiver.traces(), "exported": exported}
    if sync_runs:
        result["run_sync_mode"] = stats(sync_runs)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="counted calls (and runs) per setting")
    parser.add_argument("--block", type=int, default=200, help="calls per alternating off/on block")
    parser.add_argument("--sync", action="store_true", help="also time runs in sync mode")
    parser.add_argument("--database-url", default=None, help="default: a temporary SQLite file")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    receiver = Receiver()
    try:
        result = anyio.run(bench, args.count, args.block, args.sync, url, receiver)
    finally:
        receiver.close()
    if args.json:
        print(json.dumps(result))
        return
    print(f"Langfuse exporter, async mode; db={result['database']} python={result['python']}")
    for kind, label in (("complete", "Host.complete"), ("run", "Host.run (1 step)")):
        r = result[kind]
        print(f"  {label:<18} off p50/p95/p99 {r['off']['p50_us']:.0f}/{r['off']['p95_us']:.0f}/"
              f"{r['off']['p99_us']:.0f} µs   on {r['on']['p50_us']:.0f}/{r['on']['p95_us']:.0f}/"
              f"{r['on']['p99_us']:.0f} µs   added p50 {r['added_p50_us']:+.1f} µs, p95 {r['added_p95_us']:+.1f} µs")
    h = result["on_trace_async"]
    print(f"  on_trace hook (async mode) p50/p95 {h['p50_us']:.2f}/{h['p95_us']:.2f} µs")
    d = result["drain"]
    print(f"  drain: {d['delivered']}/{d['runs']} run traces delivered, {d['seconds_after_last_run']} s after "
          f"the last run; receiver saw {d['receiver_traces']} traces")
    if "run_sync_mode" in result:
        s = result["run_sync_mode"]
        print(f"  sync mode Host.run p50/p95 {s['p50_us']:.0f}/{s['p95_us']:.0f} µs (waits for Langfuse)")


if __name__ == "__main__":
    main()
