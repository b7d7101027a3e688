"""Against the real Redis: 4 OS processes x 50 concurrent callers making 5N attempts on
a full bucket admit exactly N, and every bucket holds exactly what was admitted. (Windows
are a day long: the N/W drain during the burst, one call per 540 s, cannot let one more in.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

import synthhost_ratelimit

PACKAGE_DIR = str(Path(synthhost_ratelimit.__file__).parent)

PROCESSES = 4
CALLERS = 50
N = 160
WINDOW_S = 86_400

WORKER = r"""
import asyncio, json, sys, time, types
# Load the limiter modules only (not the plugin, which imports the whole host): these
# processes start faster on a busy machine.
pkg = types.ModuleType("synthhost_ratelimit")
pkg.__path__ = [sys.argv[2]]
sys.modules["synthhost_ratelimit"] = pkg
from synthhost_ratelimit.limits import Limit, ScopeCheck
from synthhost_ratelimit.redis_backend import connect

cfg = json.loads(sys.argv[1])

async def main():
    # markers outlive the test, so it can compare them with what was admitted
    lim = connect(cfg["url"], timeout_s=10.0, prefix=cfg["prefix"], marker_ttl_s=600)
    me = cfg["proc"]
    checks = [ScopeCheck.of(s, k, Limit(**l)) for s, k, l in cfg["checks"]]
    checks = [ScopeCheck.of(c.scope, c.key.replace("{me}", str(me)), Limit(
        None if c.requests < 0 else c.requests, None if c.tokens < 0 else c.tokens,
        c.window_us / 1e6)) for c in checks]
    todo = list(range(cfg["attempts"]))
    admitted, refused = [], 0
    await lim.client.ping()
    # barrier: say ready, wait for the parent's go (every process imported and connected)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started = time.perf_counter()

    async def caller():
        nonlocal refused
        while todo:
            i = todo.pop()
            member = f"p{me}-{i}"
            d = await lim.acquire(checks, member, cfg["weight"])
            if d.allowed:
                admitted.append(member)
            else:
                refused += 1
                assert d.retry_after is not None and 0 < d.retry_after <= cfg["window_s"]

    await asyncio.gather(*(caller() for _ in range(cfg["callers"])))
    elapsed = time.perf_counter() - started
    await lim.aclose()
    print(json.dumps({"admitted": admitted, "refused": refused, "elapsed_s": elapsed}))

asyncio.run(main())
"""


def run_workers(redis_url: str, prefix: str, checks: list[Any], weight: int) -> list[dict[str, Any]]:
    attempts = 5 * N // PROCESSES
    assert attempts * PROCESSES == 5 * N
    procs: list[subprocess.Popen[str]] = []
    try:
        return _drive(procs, redis_url, prefix, checks, weight, attempts)
    finally:
        for proc in procs:  # on failure: no orphans, no open pipes
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


def _drive(procs: list[subprocess.Popen[str]], redis_url: str, prefix: str, checks: list[Any],
           weight: int, attempts: int) -> list[dict[str, Any]]:
    for p in range(PROCESSES):
        cfg = {"url": redis_url, "prefix": prefix, "proc": p, "checks": checks, "weight": weight,
               "attempts": attempts, "callers": CALLERS, "window_s": WINDOW_S}
        procs.append(subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg), PACKAGE_DIR],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready", proc.stderr and proc.stderr.read()
    for proc in procs:  # all at once
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


@pytest.mark.parametrize("bound", ["requests", "tokens"])
def test_ratelimit_processes_admit_exactly_n(bound: str, redis_url: str, rl_prefix: str,
                                            redis_snapshot: Any, read_bucket: Any) -> None:
    weight = 7
    workspace = {"requests": N, "tokens": 100 * N * weight, "window_s": WINDOW_S} if bound == "requests" else {
        "requests": 10 * N, "tokens": N * weight, "window_s": WINDOW_S}
    checks = [
        # one user per process: never the binding scope, but charged only when admitted
        ["user", "ws:w:user:u{me}", {"requests": 10 * N, "tokens": 100 * N * weight, "window_s": WINDOW_S}],
        ["workspace", "ws:w", workspace],
        ["global", "global", {"requests": 3 * N, "tokens": 3 * N * weight, "window_s": WINDOW_S}],
    ]
    results = run_workers(redis_url, rl_prefix, checks, weight)
    admitted = [m for r in results for m in r["admitted"]]
    refused = sum(r["refused"] for r in results)
    assert len(admitted) == N  # never N + 1
    assert len(set(admitted)) == N
    assert refused == 5 * N - N
    # the bursts overlapped: every process was deciding at the same time
    print("burst seconds per process:", [round(r["elapsed_s"], 3) for r in results])

    client = redis.Redis.from_url(redis_url, decode_responses=True)
    assert read_bucket(client, f"{rl_prefix}:ws:w:g") == (N, N * weight)
    assert read_bucket(client, f"{rl_prefix}:global:g") == (N, N * weight)
    per_user = [read_bucket(client, f"{rl_prefix}:ws:w:user:u{p}:g") for p in range(PROCESSES)]
    for p, r in enumerate(results):  # each user holds exactly its own admitted calls
        assert per_user[p] == (len(r["admitted"]), len(r["admitted"]) * weight)
    # a marker for each admitted reservation, none for a refused one
    markers = {k[len(rl_prefix) + 3:] for k in client.scan_iter(match=f"{rl_prefix}:m:*", count=1000)}
    assert markers == set(admitted)

    # one more attempt is refused and leaves every counter exactly as it was
    before = redis_snapshot()
    again = run_one(redis_url, rl_prefix, checks, weight)
    assert again == {"admitted": [], "refused": 1}
    assert redis_snapshot() == before
    client.close()


def run_one(redis_url: str, prefix: str, checks: list[Any], weight: int) -> dict[str, Any]:
    cfg = {"url": redis_url, "prefix": prefix, "proc": 0, "checks": checks, "weight": weight,
           "attempts": 1, "callers": 1, "window_s": WINDOW_S}
    out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg), PACKAGE_DIR], capture_output=True,
                         input="go\n", text=True, timeout=60, check=True)
    result = json.loads(out.stdout.splitlines()[-1])
    return {"admitted": result["admitted"], "refused": result["refused"]}
