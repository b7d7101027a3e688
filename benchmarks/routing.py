"""Routing plugin: per-call decision cost.

Two figures per scenario, on real :class:`synthhost.Call` objects:

- ``decide``: the pure decision (length, plan tier, context window, region);
- ``pre_call``: the plugin's hook as the host runs it: config look-up (one dict access),
  the decision, applying it to ``call.request``, the span attribute, and the
  ``route_decided`` event when something changed (queued to the batched writer).

Scenarios: ``defaults`` (flag on, nothing configured, nothing to change: the common
case), ``context`` (a 10,000-token prompt on gpt-4 moves to gpt-4o), ``full`` (team plan
replacing a model, GDPR region choice with a conflicting preference, fallbacks set).
Then ``next_route``: choosing the reroute target after a failure (off the hot path).
Each call has its own prompt. 200 warm-up calls, then ``--iterations`` counted.

    uv run --frozen python benchmarks/routing.py [--iterations N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

import synthhost_routing
from synthhost import Host
from synthhost.call import Call, Request
from synthhost.settings import Settings
from synthhost_routing.decide import decide, next_route

PROMPT = "Summarise the following report in three bullet points. " * 12
FULL = {
    "plan": "team",
    "region": {"compliance": ["GDPR"], "preferred": "eu-central-1"},
    "fallbacks": {"gpt-4o": ["gpt-4o-mini"]},
    "fallback_providers": ["anthropic", "google"],
}
SCENARIOS: dict[str, tuple[str, str, int, dict[str, Any]]] = {
    # workspace, model, prompt tokens (0: the short prompt), call metadata
    "defaults": ("w-defaults", "gpt-4o-mini", 0, {}),
    "context": ("w-defaults", "gpt-4", 10_000, {}),
    "full": ("w-full", "o3", 0, {"preferred_region": "us-east-1", "user_region": "EU"}),
}


def make_call(host: Host, scenario: str, i: int) -> Call:
    workspace, model, tokens, metadata = SCENARIOS[scenario]
    text = ("x" * (tokens * 4)) if tokens else PROMPT
    messages = [
        {"role": "system", "content": "You are concise."},
        {"role": "user", "content": f"{text} Report #{i}." + " more" * (i % 7)},
    ]
    request = Request(model=model, provider="echo", messages=messages, params={"temperature": 0.7})
    return Call(host=host, request=request, workspace=workspace, user=f"user-{i % 50}", metadata=dict(metadata))


def measure(fn: Callable[[Call], Any], calls: list[Call], warm: list[Call]) -> dict[str, float]:
    for call in warm:
        fn(call)
    samples = []
    gc.disable()
    try:
        for call in calls:
            t0 = time.perf_counter_ns()
            fn(call)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    samples.sort()
    return {
        "p50_us": round(samples[len(samples) // 2], 2),
        "p95_us": round(samples[int(len(samples) * 0.95)], 2),
        "p99_us": round(samples[int(len(samples) * 0.99)], 2),
        "mean_us": round(statistics.fmean(samples), 2),
    }


def run(iterations: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="synthhost-bench-routing-"))
    env = {
        "DATABASE_URL": f"sqlite:///{tmp / 'bench.db'}",
        "SYNTHHOST_HOME": str(tmp),
        "SYNTHHOST_SPOOL_DIR": str(tmp / "spool"),
    }
    host = Host(Settings.from_env(env), plugins=[synthhost_routing], load_entrypoints=False)
    anyio.run(host.start)
    try:
        synthhost_routing.set_config(host, FULL, workspace="w-full")
        rt = synthhost_routing.runtime(host)
        results: dict[str, Any] = {"iterations": iterations}
        for scenario in SCENARIOS:
            cfg = rt.for_workspace(SCENARIOS[scenario][0])

            def pure(call: Call, cfg: Any = cfg) -> Any:
                return decide(call.request, call.metadata, cfg)

            results[scenario] = {
                "decide": measure(
                    pure,
                    [make_call(host, scenario, i) for i in range(iterations)],
                    [make_call(host, scenario, i) for i in range(200)],
                ),
                "pre_call": measure(
                    synthhost_routing.pre_call,
                    [make_call(host, scenario, i) for i in range(iterations)],
                    [make_call(host, scenario, i) for i in range(200)],
                ),
            }
        cfg = rt.for_workspace("w-full")
        providers = ("echo", "anthropic", "google")

        def reroute(call: Call) -> Any:
            d = decide(call.request, call.metadata, cfg)
            call.request.model, call.request.region = d.model, d.region
            return next_route(call.request, cfg, d, {(call.request.provider, d.model, d.region): 1}, providers)

        warm = [make_call(host, "full", i) for i in range(200)]
        results["next_route"] = measure(reroute, [make_call(host, "full", i) for i in range(iterations)], warm)
        results["next_route"]["note"] = "decide + next_route (failure path)"
        return results
    finally:
        anyio.run(host.stop)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    args = parser.parse_args()
    results = run(args.iterations)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"routing decision per call, {args.iterations} calls per figure")
    for scenario in SCENARIOS:
        for part in ("decide", "pre_call"):
            r = results[scenario][part]
            print(
                f"  {scenario:<9}{part:<9} p50 {r['p50_us']:7.2f} us   p95 {r['p95_us']:7.2f} us   "
                f"p99 {r['p99_us']:7.2f} us   mean {r['mean_us']:7.2f} us"
            )
    r = results["next_route"]
    print(f"  {'failure':<9}{'reroute':<9} p50 {r['p50_us']:7.2f} us   p95 {r['p95_us']:7.2f} us   ({r['note']})")


if __name__ == "__main__":
    main()
