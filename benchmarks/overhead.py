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

Profiles (issue 15): ``--profile production`` turns on the production plugin set: the
Redis rate limiter with 4 scopes (``REDIS_URL``, default the local Redis), 20 CEL policy
rules that all evaluate (none matches), the default guard set, routing, cost,
similarity *logging*, and Langfuse and RudderStack delivering to a loopback receiver this
script starts in a subprocess (``--receiver-delay-ms`` adds latency per request).
``production`` and ``all`` run as recommended for production: the measured process
serves with ``SYNTHHOST_DELIVERY=worker`` and a ``synthhost worker`` subprocess on the same
database delivers the outbox and logs similarity (started and stopped each round).
``--profile all`` also runs ``production+check``: the similarity check with 10,000
known prompts in the workspace. In the same run, interleaved round by round (``--rounds``),
the script measures the bare host, production with delivery off
(``SYNTHHOST_DELIVERY=off``: rows are queued, nobody delivers), ``production-inline``
(delivery and similarity logging in threads of the measured process) and Redis PING, and prints
each figure with its ratio to the floor and the targets' pass/fail, and the event loop
thread's CPU time per call (sequential/concurrent: on a shared machine it moves much less
with other load than the wall times do). Every configuration runs with the start-up heap
frozen (``SYNTHHOST_GC_FREEZE=1``), as ``synthhost serve`` does. Every configuration
gets its own host (started and stopped each round) and its own SQLite file.

    uv run python benchmarks/overhead.py --profile production
    uv run python benchmarks/overhead.py --profile all --rounds 5 --json
    uv run python benchmarks/overhead.py --profile production --calls 1000000 --rss-every 100000
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
    if "--profile" in sys.argv or any(a.startswith("--profile=") for a in sys.argv):
        profiles_main()
        return
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


# -- production / all profiles (issue 15) ------------------------------------------------

RECEIVER = r"""
import sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
delay = float(sys.argv[1]) / 1000.0
counts = {"rudderstack": 0, "langfuse": 0}
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        counts["rudderstack" if self.path.endswith("/v1/batch") else "langfuse"] += 1
        if delay:
            time.sleep(delay)
        body = b"OK" if self.path.endswith("/v1/batch") else b""
        self.send_response(200)
        if not body:
            self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        body = repr(counts).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 256
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""

PRODUCTION_OFF = {"enable_prompt_similarity_check", "enable_stackstorm", "enable_stackstorm_retry",
                  "enable_stackstorm_reroute", "enable_stackstorm_repair_execution"}
PRODUCTION_PLUGINS = "cost,policy,ratelimit,guardrails,routing,similarity,langfuse,rudderstack"
KNOWN_PROMPTS = 10_000


class LoopbackReceiver:
    """RudderStack ``/v1/batch`` and Langfuse OTLP in one subprocess (its work must not
    compete with the measured host for the GIL): answers 200 after ``delay_ms``."""

    def __init__(self, delay_ms: float) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-c", RECEIVER, str(delay_ms)], stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.url = f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def counts(self) -> dict[str, int]:
        import ast
        import urllib.request

        with urllib.request.urlopen(self.url) as r:
            return dict(ast.literal_eval(r.read().decode()))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)


def profile_env(config: str, url: str, redis_url: str, receiver: LoopbackReceiver) -> dict[str, str]:
    # Every configuration runs as `synthhost serve` would: the start-up heap frozen.
    env = {"SYNTHHOST_GC_FREEZE": "1", **os.environ, "DATABASE_URL": url, "SYNTHHOST_SIMILARITY_ACTION": "flagged"}
    if config == "bare":
        env["SYNTHHOST_LOAD_PLUGINS"] = ""
        return env
    env.update({
        "SYNTHHOST_LOAD_PLUGINS": PRODUCTION_PLUGINS, "REDIS_URL": redis_url,
        "RUDDERSTACK_WRITE_KEY": "bench-write-key", "RUDDERSTACK_DATA_PLANE_URL": receiver.url,
        "LANGFUSE_BASE_URL": receiver.url, "LANGFUSE_PUBLIC_KEY": "pk-lf-bench",
        "LANGFUSE_SECRET_KEY": "sk-lf-bench",
    })
    if config == "production-nodelivery":
        env["SYNTHHOST_DELIVERY"] = "off"
    elif config in WORKER_DELIVERED:
        env["SYNTHHOST_DELIVERY"] = "worker"  # a `synthhost worker` subprocess delivers
    return env


WORKER_DELIVERED = {"production", "all"}
"""Configurations whose exporters and similarity logging run in a ``synthhost worker``
process (the recommended production deployment); ``production-inline`` delivers from
threads of the measured process itself."""


class Worker:
    """``synthhost worker`` on the configuration's database, for one round."""

    def __init__(self, env: dict[str, str]) -> None:
        import subprocess

        self.proc = subprocess.Popen([sys.executable, "-m", "synthhost", "worker"], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()  # "worker: delivering to ..." once it is up
        if not line.startswith("worker:"):
            raise SystemExit(f"synthhost worker did not start: {line}{self.proc.stderr.read()}")

    def close(self) -> None:
        import signal

        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except Exception:
            self.proc.kill()


def prepare(config: str, env: dict[str, str]) -> None:
    """Once per database: limits, the policy set, the known prompts."""
    if config == "bare":
        return
    _raise_limits(env)
    host = Host(Settings.from_env(env), load_entrypoints=True)
    host.migrate()
    _apply_policy(env)
    if config == "all":
        _known_prompts(host, KNOWN_PROMPTS)
    host.engine.dispose()


def _apply_policy(env: dict[str, str]) -> None:
    from click.testing import CliRunner

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from policy import policy_yaml  # benchmarks/policy.py: the 20 typical rules

    from synthhost.cli import cli

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(policy_yaml())
    result = CliRunner().invoke(cli, ["policy", "apply", f.name, "--workspace", "bench"], env=env)
    if result.exit_code != 0:
        raise SystemExit(f"could not apply the policy: {result.output}")


def _known_prompts(host: Host, n: int) -> None:
    import random

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from similarity import prompts  # benchmarks/similarity.py: the synthetic prompt mix

    from synthhost.call import new_id
    from synthhost.storage.models import utcnow
    from synthhost_similarity.admin import REFS
    from synthhost_similarity.embedders import make_embedder
    from synthhost_similarity.models import vector_to_bytes
    from synthhost_similarity.store import text_hash

    embedder = make_embedder(host.settings.env)
    texts = prompts(n, random.Random(15))
    vectors = embedder.embed(texts)
    rows = [{"id": new_id(), "workspace_id": "bench", "kind": "known", "text": t, "text_hash": text_hash(t),
             "embedder": embedder.name, "dim": int(v.shape[-1]), "vector": vector_to_bytes(v),
             "created_at": utcnow()} for t, v in zip(texts, vectors, strict=True)]
    with host.engine.begin() as conn:
        conn.execute(REFS.insert(), rows)


def ping_samples(redis_url: str, count: int) -> list[float]:
    import redis

    client = redis.Redis.from_url(redis_url)
    for _ in range(100):
        client.ping()
    out = []
    for _ in range(count):
        t0 = time.perf_counter()
        client.ping()
        out.append(time.perf_counter() - t0)
    client.close()
    return out


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def profile_round(config: str, env: dict[str, str], warmup: int, count: int,
                        concurrency: int) -> dict[str, Any]:
    host = Host(Settings.from_env(env), load_entrypoints=True)
    workspace = "bench"
    async with host:
        if config != "bare":
            for name in host.registry.flags:
                on = not name.startswith("disable_") and name not in PRODUCTION_OFF
                if config == "all" and name == "enable_prompt_similarity_check":
                    on = True
                host.flags.set(name, on, workspace=workspace)
        counter = iter(range(10**9))
        base = int(time.time() * 1000) % 10**9

        async def one() -> float:
            n = next(counter)
            messages = [{"role": "user", "content": f"Summarise quarterly report #{base}-{n} in three bullet points."}]
            started = time.perf_counter()
            await host.complete(model="echo/gpt-4o-mini", messages=messages, workspace=workspace,
                                user=f"user-{n % 50}", org="org-1")
            return time.perf_counter() - started

        for _ in range(warmup):
            await one()
        await host.writer.flush()
        cpu = time.thread_time()
        sequential = [await one() for _ in range(count)]
        cpu_sequential = (time.thread_time() - cpu) / count
        concurrent: list[float] = []
        remaining = count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                concurrent.append(await one())

        started, cpu = time.perf_counter(), time.thread_time()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker)
        elapsed = time.perf_counter() - started
        cpu_concurrent = (time.thread_time() - cpu) / count
        stats = dict(host.stats)
    # The event loop thread's CPU time per call (user + system): what the call path costs
    # this process, much less moved by other load on the machine than wall time.
    return {"sequential": sequential, "concurrent": concurrent, "elapsed": elapsed, "stats": stats,
            "cpu_sequential": cpu_sequential, "cpu_concurrent": cpu_concurrent}


def _us(values: list[float], q: float) -> float:
    return round(pct(values, q) * 1e6, 1)


def profiles_main() -> None:
    parser = argparse.ArgumentParser(description="issue 15 profiles: production and all, against bare and PING")
    parser.add_argument("--profile", choices=("production", "all"), required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--count", type=int, default=1000, help="calls per configuration per round")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--receiver-delay-ms", type=float, default=0.0)
    parser.add_argument("--calls", type=int, default=0, help="RSS mode: this many production calls in one host")
    parser.add_argument("--rss-every", type=int, default=100_000)
    parser.add_argument("--off", default="", help="comma list of flags to leave off in every profile "
                        "(attribution: e.g. --off enable_similarity_logging)")
    parser.add_argument("--switch-interval-ms", type=float, default=None,
                        help="sys.setswitchinterval for the run (default: Python's 5 ms)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.switch_interval_ms is not None:
        sys.setswitchinterval(args.switch_interval_ms / 1000)
    PRODUCTION_OFF.update(f for f in args.off.split(",") if f)
    redis_url = os.environ.get("REDIS_URL") or os.environ.get("SYNTHHOST_TEST_REDIS") or "redis://127.0.0.1:6379/0"
    tmp = tempfile.mkdtemp()
    receiver = LoopbackReceiver(args.receiver_delay_ms)
    try:
        run = rss_run if args.calls else compare
        result = run(args, redis_url, tmp, receiver)
        result["receiver_requests"] = receiver.counts()
    finally:
        receiver.close()
    if args.json:
        print(json.dumps(result))


def compare(args: argparse.Namespace, redis_url: str, tmp: str, receiver: LoopbackReceiver) -> dict[str, Any]:
    configs = (["bare", "production", "production-inline", "production-nodelivery"]
               + (["all"] if args.profile == "all" else []))
    envs = {c: profile_env(c, f"sqlite:///{tmp}/{c}.db", redis_url, receiver) for c in configs}
    for c in configs:
        prepare(c, envs[c])
    seq: dict[str, list[float]] = {c: [] for c in configs}
    conc: dict[str, list[float]] = {c: [] for c in configs}
    rate: dict[str, list[float]] = {c: [] for c in configs}
    cpu: dict[str, list[tuple[float, float]]] = {c: [] for c in configs}
    pings: list[float] = []
    last_stats: dict[str, Any] = {}
    for r in range(args.rounds):
        pings += ping_samples(redis_url, args.count)
        order = configs if r % 2 == 0 else configs[::-1]
        for c in order:
            worker = Worker(envs[c]) if c in WORKER_DELIVERED else None
            try:
                out = anyio.run(profile_round, c, envs[c], args.warmup, args.count, args.concurrency)
            finally:
                if worker is not None:
                    worker.close()
            seq[c] += out["sequential"]
            conc[c] += out["concurrent"]
            rate[c].append(len(out["concurrent"]) / out["elapsed"])
            cpu[c].append((out["cpu_sequential"], out["cpu_concurrent"]))
            last_stats[c] = {k: v for k, v in out["stats"].items() if "dropped" in k or "error" in k
                             or k.startswith("rows_")}
            if not args.json:
                print(f"round {r + 1} {c:<22} seq p50 {_us(out['sequential'], .5):>7} µs  "
                      f"p95 {_us(out['sequential'], .95):>7} µs  {rate[c][-1]:>7.0f} calls/s at "
                      f"{args.concurrency}  loop CPU {out['cpu_sequential'] * 1e6:6.1f}/"
                      f"{out['cpu_concurrent'] * 1e6:6.1f} µs/call", flush=True)
    ping50 = _us(pings, 0.5)
    res: dict[str, Any] = {"profile": args.profile, "rounds": args.rounds, "count": args.count,
                           "python": sys.version.split()[0], "ping_p50_us": ping50,
                           "ping_p95_us": _us(pings, 0.95), "configs": {}}
    for c in configs:
        res["configs"][c] = {
            "p50_us": _us(seq[c], .5), "p95_us": _us(seq[c], .95), "p99_us": _us(seq[c], .99),
            f"concurrent_{args.concurrency}_p50_us": _us(conc[c], .5),
            f"concurrent_{args.concurrency}_p95_us": _us(conc[c], .95),
            "calls_per_s": round(statistics.median(rate[c]), 1), "stats": last_stats[c],
            "loop_cpu_us_per_call": round(statistics.median(x[0] for x in cpu[c]) * 1e6, 1),
            f"concurrent_{args.concurrency}_loop_cpu_us_per_call":
                round(statistics.median(x[1] for x in cpu[c]) * 1e6, 1),
        }
    cf = res["configs"]
    bare, prod, off = cf["bare"], cf["production"], cf["production-nodelivery"]
    budget = bare["p50_us"] + 1.5 * ping50 + 60
    targets = [
        ("production p50 <= bare p50 + 1.5 x PING + 60 µs", prod["p50_us"], round(budget, 1)),
        ("production p95 <= 2 x its p50", prod["p95_us"], 2 * prod["p50_us"]),
        (f"production calls/s at {args.concurrency} in flight >= 6000", -prod["calls_per_s"], -6000),
        ("delivery on (worker) p95 <= 1.1 x delivery off p95", prod["p95_us"], round(1.1 * off["p95_us"], 1)),
    ]
    if "all" in cf:
        targets += [
            ("all p50 <= production p50 + 80 µs", cf["all"]["p50_us"], prod["p50_us"] + 80),
            ("all p95 <= 2 x its p50", cf["all"]["p95_us"], 2 * cf["all"]["p50_us"]),
        ]
    res["targets"] = [{"target": t, "value": abs(v), "limit": abs(lim), "pass": v <= lim}
                      for t, v, lim in targets]
    if not args.json:
        print(f"\nRedis PING p50 {ping50} µs p95 {res['ping_p95_us']} µs "
              f"({args.rounds} rounds x {args.count} sequential calls per configuration)")
        for c in configs:
            r = cf[c]
            print(f"  {c:<22} p50 {r['p50_us']:>7} µs ({r['p50_us'] / bare['p50_us']:5.1f}x bare, "
                  f"{r['p50_us'] / ping50:4.1f}x PING)  p95 {r['p95_us']:>7} µs  p99 {r['p99_us']:>7} µs  "
                  f"{r['calls_per_s']:>7.0f} calls/s at {args.concurrency} (p95 "
                  f"{r[f'concurrent_{args.concurrency}_p95_us']} µs)  loop CPU/call {r['loop_cpu_us_per_call']}"
                  f"/{r[f'concurrent_{args.concurrency}_loop_cpu_us_per_call']} µs (sequential/concurrent)"
                  f"  {r['stats']}")
        for t in res["targets"]:
            print(f"  [{'PASS' if t['pass'] else 'FAIL'}] {t['target']}: {t['value']} vs {t['limit']}")
    return res


def rss_run(args: argparse.Namespace, redis_url: str, tmp: str, receiver: LoopbackReceiver) -> dict[str, Any]:
    config = "all" if args.profile == "all" else "production"
    env = profile_env(config, f"sqlite:///{tmp}/{config}.db", redis_url, receiver)
    prepare(config, env)
    samples: list[dict[str, Any]] = []

    async def run() -> None:
        host = Host(Settings.from_env(env), load_entrypoints=True)
        async with host:
            for name in host.registry.flags:
                on = not name.startswith("disable_") and (name not in PRODUCTION_OFF
                                                         or (config == "all" and "similarity" in name))
                host.flags.set(name, on, workspace="bench")
            done = 0
            started = time.perf_counter()

            async def worker(n: int) -> None:
                nonlocal done
                while done < args.calls:
                    i = done
                    done += 1
                    await host.complete(model="echo/gpt-4o-mini", workspace="bench", user=f"user-{i % 50}",
                                        messages=[{"role": "user", "content": f"Summarise report #{i} now."}])
                    if (i + 1) % args.rss_every == 0:
                        s = {"calls": i + 1, "rss_mib": round(rss_mib(), 1),
                             "seconds": round(time.perf_counter() - started, 1),
                             "writer_pending": host.writer.pending,
                             "similarity_logged": host.stats.get("similarity.logged", 0)}
                        samples.append(s)
                        if not args.json:
                            print(f"  {s}", flush=True)

            async with anyio.create_task_group() as tg:
                for n in range(args.concurrency):
                    tg.start_soon(worker, n)
            samples.sort(key=lambda s: s["calls"])

    worker = Worker(env) if config in WORKER_DELIVERED else None
    try:
        anyio.run(run)
    finally:
        if worker is not None:
            worker.close()
    out: dict[str, Any] = {"profile": config, "calls": args.calls, "samples": samples}
    ref = next((s for s in samples if s["calls"] >= 100_000), samples[0] if samples else None)
    if ref is not None and samples:
        growth = (samples[-1]["rss_mib"] - ref["rss_mib"]) / ref["rss_mib"] * 100
        out["rss_growth_pct"] = round(growth, 1)
        if not args.json:
            print(f"RSS {ref['rss_mib']} MiB at {ref['calls']} -> {samples[-1]['rss_mib']} MiB at "
                  f"{samples[-1]['calls']} calls: {growth:+.1f} % "
                  f"[{'PASS' if abs(growth) <= 5 else 'FAIL'} within ±5 %]")
    return out


if __name__ == "__main__":
    main()
