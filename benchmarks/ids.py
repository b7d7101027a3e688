"""Cost of an id: the former guessable one (per-process random prefix + counter) next to
the current 128-bit random one (``synthhost.call.new_id``), interleaved in one run.

    uv run python benchmarks/ids.py [--n 200000] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

from synthhost.call import new_id


def counter_ids() -> object:
    prefix = os.urandom(8).hex()
    counter = itertools.count(int.from_bytes(os.urandom(4), "big"))
    return lambda: f"{prefix}{next(counter):016x}"


def per_id_ns(fn: object, n: int) -> float:
    call = fn  # type: ignore[assignment]
    started = time.perf_counter_ns()
    for _ in range(n):
        call()  # type: ignore[operator]
    return (time.perf_counter_ns() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    old, new = counter_ids(), new_id
    results: dict[str, list[float]] = {"counter (old, guessable)": [], "urandom (new, 128 random bits)": []}
    for _ in range(args.rounds):  # interleaved: the machine drifts
        results["counter (old, guessable)"].append(per_id_ns(old, args.n))
        results["urandom (new, 128 random bits)"].append(per_id_ns(new, args.n))
    summary = {k: round(statistics.median(v), 1) for k, v in results.items()}
    if args.json:
        print(json.dumps({"ns_per_id_median": summary, "n": args.n, "rounds": args.rounds}))
        return
    for name, ns in summary.items():
        print(f"{name:<34} {ns:8.1f} ns/id (median of {args.rounds} rounds of {args.n})")
    old_ns, new_ns = summary.values()
    print(f"ratio new/old: {new_ns / old_ns:.2f}")


if __name__ == "__main__":
    main()
