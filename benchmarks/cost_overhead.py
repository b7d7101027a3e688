"""Cost of the cost plugin's hot path: pricing one call and queueing its row and event.

Times the ``post_call`` body (warm price cache) on a started host (SQLite in a temp
dir, the writer thread running), per call, for a few representative usages: a plain
call, cached + reasoning tokens, a long-context tier, an override, an unpriced model.
Also times the pure arithmetic (``Quote.cost``) and genai-prices' own ``calc_price``
for the same usage, to show what the precompiled plans save.

    uv run --frozen python benchmarks/cost_overhead.py            # table
    uv run --frozen python benchmarks/cost_overhead.py --json

Target (issue 3): p50 <= 20 µs for computing + queueing a call's cost. Prints figures;
asserts nothing.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import anyio
import genai_prices

import synthhost_cost
from synthhost import Host, Request, Response, Usage
from synthhost.call import Call
from synthhost.settings import Settings
from synthhost_cost.pricing import Override, genai_usage

CASES: list[tuple[str, str, str, tuple[int, int, int, int, int]]] = [
    ("openai gpt-4o-mini", "openai", "gpt-4o-mini", (1_000, 0, 0, 500, 0)),
    ("openai gpt-5 cached+reasoning", "openai", "gpt-5", (10_000, 4_000, 0, 5_000, 3_000)),
    (
        "anthropic sonnet-4.5 cache r/w",
        "anthropic",
        "claude-sonnet-4-5",
        (11_000, 8_000, 2_000, 500, 0),
    ),
    ("google gemini-2.5-pro 250k tier", "google", "gemini-2.5-pro", (250_000, 0, 0, 1_000, 0)),
    ("override (workspace)", "openai", "ft:gpt-4o-mini:acme", (1_000, 0, 0, 500, 0)),
    ("unpriced model", "openai", "acme-private-7b", (1_000, 0, 0, 500, 0)),
]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(fn: Callable[[], Any], n: int) -> list[float]:
    for _ in range(200):  # warm-up
        fn()
    out = []
    gc.collect()
    gc.disable()
    try:
        for _ in range(n):
            started = time.perf_counter_ns()
            fn()
            out.append((time.perf_counter_ns() - started) / 1000)
    finally:
        gc.enable()
    return out


def stats(values: list[float]) -> dict[str, float]:
    return {"p50_us": round(pct(values, 0.5), 2), "p95_us": round(pct(values, 0.95), 2)}


async def main(n: int) -> dict[str, Any]:
    tmp = tempfile.mkdtemp(prefix="cost-bench-")
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp}/bench.db"}
    results: dict[str, Any] = {"n": n, "genai_prices": genai_prices.__version__, "cases": {}}
    async with Host(Settings.from_env(env), plugins=[synthhost_cost], load_entrypoints=False) as host:
        host.flags.set("track_model_costs", True)
        synthhost_cost.set_price(
            host,
            Override("bench", "openai", "ft:gpt-4o-mini:acme", Decimal("0.3"), Decimal("1.2")),
        )
        state = synthhost_cost.state_for(host)
        for label, provider, model, usage in CASES:
            call = Call(host=host, request=Request(model=model, provider=provider), workspace="bench")
            u = Usage(
                input_tokens=usage[0],
                cache_read_tokens=usage[1],
                cache_write_tokens=usage[2],
                output_tokens=usage[3],
                reasoning_tokens=usage[4],
            )
            response = Response(text="ok", model=model, provider=provider, usage=u)

            def body_fn(c: Call = call, r: Response = response) -> None:
                synthhost_cost.post_call(c, r)

            quote = state.book.quote("bench", provider, model, call.started_at)
            entry: dict[str, Any] = {"post_call": stats(timed(body_fn, n))}
            # The same body with the host's emit() stubbed out: this plugin's own share.
            real_emit = host.emit
            host.emit = lambda *a, **k: ""  # type: ignore[method-assign]
            try:
                entry["post_call_without_host_emit"] = stats(timed(body_fn, n))
            finally:
                host.emit = real_emit  # type: ignore[method-assign]
            if quote.priced:

                def compute(q: Any = quote, us: tuple[int, int, int, int, int] = usage) -> None:
                    q.cost(us, 0.0)

                entry["compute_only"] = stats(timed(compute, n))
                if quote.source == "genai-prices":
                    ts = datetime.now(UTC)
                    gu = genai_usage(usage)

                    def genai(g: Any = gu, m: str = model, p: str = provider, t: datetime = ts) -> None:
                        genai_prices.calc_price(g, m, provider_id=p, genai_request_timestamp=t)

                    entry["genai_prices_calc_price"] = stats(timed(genai, max(n // 5, 500)))
            results["cases"][label] = entry
            await host.writer.flush()
    all_p50 = sorted(e["post_call"]["p50_us"] for e in results["cases"].values())
    results["post_call_p50_us_median_case"] = all_p50[len(all_p50) // 2]
    results["post_call_p50_us_worst_case"] = all_p50[-1]
    return results


def render(results: dict[str, Any]) -> str:
    lines = [
        f"cost plugin hot path (n={results['n']} per case, genai-prices {results['genai_prices']})",
        f"{'case':34} {'post_call p50/p95 µs':>22} {'w/o host.emit':>14} {'compute p50':>12} {'genai calc p50':>15}",
    ]
    for label, e in results["cases"].items():
        pc = e["post_call"]
        own = e["post_call_without_host_emit"]["p50_us"]
        comp = e.get("compute_only", {}).get("p50_us", "-")
        gp = e.get("genai_prices_calc_price", {}).get("p50_us", "-")
        lines.append(f"{label:34} {pc['p50_us']:>10} / {pc['p95_us']:<9} {own:>14} {comp!s:>12} {gp!s:>15}")
    lines.append(
        f"post_call p50: median case {results['post_call_p50_us_median_case']} µs, "
        f"worst case {results['post_call_p50_us_worst_case']} µs (target <= 20 µs)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5000, help="timed calls per case")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out = anyio.run(main, args.n)
    print(json.dumps(out, indent=2) if args.json else render(out))
