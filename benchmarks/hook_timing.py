"""What timing a plugin hook costs (``synthhost.hooktiming``, on in ``synthhost serve``):
a no-op hook called plainly and through the timed wrapper, interleaved in one run.

    uv run python benchmarks/hook_timing.py [--n 500000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

from synthhost.hooktiming import HookTimings


def hook(call: object) -> None:
    return None


def per_call_ns(fn: object, n: int) -> float:
    call = fn  # type: ignore[assignment]
    started = time.perf_counter_ns()
    for _ in range(n):
        call(None)  # type: ignore[operator]
    return (time.perf_counter_ns() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    timings = HookTimings()
    timed = timings.wrap("bench", "pre_call", hook)
    plain_ns, timed_ns = [], []
    for _ in range(args.rounds):
        plain_ns.append(per_call_ns(hook, args.n))
        timed_ns.append(per_call_ns(timed, args.n))
    plain, wrapped = statistics.median(plain_ns), statistics.median(timed_ns)
    print(f"plain hook   {plain:8.1f} ns/call (median of {args.rounds} rounds x {args.n:,})")
    print(f"timed hook   {wrapped:8.1f} ns/call")
    print(f"added        {wrapped - plain:8.1f} ns per hook implementation per call")


if __name__ == "__main__":
    main()
