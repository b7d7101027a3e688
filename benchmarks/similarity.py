"""Prompt-similarity check latency at 10k and 100k stored prompts per workspace.

For each size N, N distinct synthetic prompts (about 40 templates with random slot
fillers: the near-duplicate-heavy mix a real workspace has) are embedded with the
built-in ``hashed-ngram-v1`` embedder and loaded straight into one workspace's
in-memory library (no database rows: the index is what is measured). Then, per query:

- ``embed+search``: embed the prompt and find its closest reference: what the check
  adds to a call (the target: p95 <= 1 ms at 100k);
- ``check()``: the plugin's whole ``pre_call`` path on a started host (SQLite in a temp
  dir): embed, search, decide, queue the log row and event, index the new prompt.

Wall-clock figures include whatever else the machine runs; ``CPU time`` (this thread's)
is the check's own cost, the figure to read on a shared machine.

Queries are a third each: lightly edited stored prompts, new prompts from the same
templates, and unrelated prompts. Above ``exact_limit`` rows the index answers in two
stages (SimHash Hamming pre-selection, exact rescoring); ``agreement`` compares its
pick with an exhaustive scan of the same query: same row (overall, and where the
exhaustive best scores >= 0.7, the rows a log or a block names), same decision at 0.85,
and the largest score shortfall. ``borderline`` (untimed) searches again with the
threshold just under each query's exhaustive best score (for bests >= 0.5): the hardest
place for the decision, which must still be "at or above".

    uv run --frozen python benchmarks/similarity.py                 # 10k and 100k
    uv run --frozen python benchmarks/similarity.py --sizes 10000 --queries 500 --json
    OPENBLAS_NUM_THREADS=1 uv run --frozen python benchmarks/similarity.py   # one core

Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np

import synthhost_similarity
from synthhost import Denied, Host, Request
from synthhost.call import Call
from synthhost.settings import Settings
from synthhost_similarity import service_for
from synthhost_similarity.embedders import HashedNgramEmbedder
from synthhost_similarity.index import EXACT_LIMIT, VectorIndex
from synthhost_similarity.service import FLAG_CHECK, SimilarityService
from synthhost_similarity.store import Ref, WorkspaceLibrary

THRESHOLD = 0.85

WORDS = {
    "lang": ["Python", "Go", "Rust", "TypeScript", "Java", "Kotlin", "C#", "Ruby", "SQL", "Bash"],
    "task": [
        "parses a CSV file",
        "retries failed HTTP requests",
        "validates an email address",
        "merges two sorted lists",
        "computes a moving average",
        "deduplicates user records",
        "streams a large file in chunks",
        "rate-limits API calls",
        "converts XML to JSON",
        "finds the shortest path in a graph",
        "caches database queries",
        "hashes passwords",
    ],
    "topic": [
        "quantum entanglement",
        "inflation",
        "photosynthesis",
        "the French revolution",
        "neural networks",
        "compound interest",
        "plate tectonics",
        "the immune system",
        "blockchain",
        "climate change",
        "supply chains",
        "black holes",
        "vaccines",
    ],
    "audience": [
        "a ten year old",
        "a CFO",
        "a new engineer",
        "my grandmother",
        "a high-school class",
        "a product manager",
        "a journalist",
    ],
    "lang2": ["Spanish", "French", "German", "Japanese", "Portuguese", "Italian", "Dutch"],
    "person": [
        "my landlord",
        "my manager",
        "a customer",
        "the school",
        "our supplier",
        "the hiring team",
        "my bank",
        "the city council",
    ],
    "ask": [
        "a refund",
        "two days off",
        "a repair this week",
        "an extension",
        "a meeting",
        "a price reduction",
        "feedback on my proposal",
        "the invoice copy",
    ],
    "product": [
        "Acme Cloud",
        "our mobile app",
        "the billing API",
        "the analytics dashboard",
        "the VPN client",
        "the smart thermostat",
        "the payroll module",
    ],
    "n": [str(i) for i in range(2, 30)],
    "region": ["eu-west-1", "us-east-2", "ap-south-1", "eu-central-1", "us-west-1"],
    "fmt": ["bullet points", "a table", "a haiku", "one paragraph", "a tweet", "JSON"],
}

TEMPLATES = [
    "Write a {lang} function that {task}.",
    "Write a {lang} function that {task}, with unit tests and type hints.",
    "Explain {topic} to {audience} in simple terms.",
    "Explain {topic} to {audience} in {n} sentences.",
    "Summarize the following article about {topic} in {n} {fmt}.",
    "Translate the following paragraph into {lang2}: our {product} release moves to week {n}.",
    "Please draft a polite email to {person} asking for {ask}.",
    "Please draft a firm but friendly email to {person} about {ask} for {product}.",
    "You are a support agent for {product}. A customer in {region} reports an outage since "
    "{n}:00 UTC. Write a reply that apologises and asks for the account id.",
    "You are a senior {lang} reviewer. Review this pull request that {task} and list {n} concrete issues.",
    "Generate a SQL query that returns the top {n} customers of {product} by revenue.",
    "List {n} ideas for a blog post about {topic} aimed at {audience}.",
    "Write a short story about {topic} for {audience}, under {n}00 words.",
    "Compare {lang} and {lang2}-speaking markets for {product} in {fmt}.",
    "Create a {n}-step onboarding checklist for {product} users in {region}.",
    "What are the main risks of {topic} for {product}? Answer in {fmt}.",
    "Rewrite this paragraph about {topic} so {audience} can follow it.",
    "Give me {n} interview questions for a {lang} developer who {task}.",
    "Debug this {lang} code: it {task} but crashes on empty input.",
    "Draft release notes for {product} version {n}.{n} in {fmt}.",
] + [
    f"Act as a {role}. {{ask_verb}} about {{topic}} for {{audience}}, in {{fmt}}."
    for role in (
        "historian",
        "lawyer",
        "teacher",
        "nutritionist",
        "CTO",
        "poet",
        "economist",
        "doctor",
        "travel agent",
        "data scientist",
        "marketer",
        "coach",
        "chef",
        "architect",
        "biologist",
        "pilot",
        "journalist",
        "designer",
        "banker",
        "judge",
    )
]
WORDS["ask_verb"] = [
    "Answer questions",
    "Write a briefing",
    "Give advice",
    "Prepare notes",
    "Make a quiz",
    "Write an outline",
]

UNRELATED = [
    "What's a good name for a golden retriever puppy?",
    "How many grams of flour are in a cup?",
    "Plan a three-day itinerary for Lisbon with kids.",
    "Why is the sky blue at noon and red at sunset?",
    "Recommend five science fiction novels from the 1970s.",
    "How do I remove a red wine stain from a carpet?",
    "Is it safe to run a marathon two weeks after the flu?",
    "Suggest a weekly workout plan for a beginner with bad knees.",
]


def fill(template: str, rng: random.Random) -> str:
    return template.format(**{k: rng.choice(v) for k, v in WORDS.items()})


def prompts(n: int, rng: random.Random) -> list[str]:
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < n:
        text = fill(rng.choice(TEMPLATES), rng)
        if len(out) % 3 == 0:  # some free-text tail: real prompts carry context
            text += f" Context: ticket {rng.randrange(10**6)} from {rng.choice(WORDS['person'])}."
        if text not in seen:
            seen.add(text)
            out.append(text)
    return out


def edit(text: str, rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return text.lower().rstrip(".")
    if kind == 1:
        return text.replace(",", "").replace(".", "!", 1)
    if kind == 2:
        words = text.split()
        i = rng.randrange(len(words))
        words[i] = words[i] + "s" if len(words[i]) > 3 else words[i]
        return " ".join(words)
    return "Please: " + text


def queries(stored: list[str], count: int, rng: random.Random) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for i in range(count):
        if i % 3 == 0:
            out.append(("edited", edit(rng.choice(stored), rng)))
        elif i % 3 == 1:
            out.append(("new", fill(rng.choice(TEMPLATES), rng)))
        else:
            out.append(("unrelated", rng.choice(UNRELATED) + f" (case {rng.randrange(10**4)})"))
    return out


def near_miss_candidates(stored: list[str], count: int, rng: random.Random) -> list[str]:
    """Prompts that share a template or most words with stored ones without repeating
    any: two templates run together, a stored prompt with several words swapped, a
    template with an unrelated question as context. Most land at 0.6-0.85, where the
    two-stage search has the most rows to rescore."""
    vocabulary = [w for words in WORDS.values() for w in words]
    out: list[str] = []
    for i in range(count):
        if i % 3 == 0:
            out.append(fill(rng.choice(TEMPLATES), rng) + " " + fill(rng.choice(TEMPLATES), rng))
        elif i % 3 == 1:
            words = edit(rng.choice(stored), rng).split()
            for _ in range(3):
                words[rng.randrange(len(words))] = rng.choice(vocabulary)
            out.append(" ".join(words))
        else:
            out.append(fill(rng.choice(TEMPLATES), rng) + f" Context: {rng.choice(UNRELATED)}")
    return out


def bench_near_misses(
    lib: WorkspaceLibrary, embedder: HashedNgramEmbedder, stored: list[str], count: int, seed: int
) -> dict[str, Any]:
    """embed+search for prompts whose exhaustive best scores 0.6-0.85 (untimed
    exhaustive scans pick them out of ``count`` candidates)."""
    index = lib.index
    assert index is not None
    picked = []
    for text in near_miss_candidates(stored, count, random.Random(seed + 1)):
        vector = embedder.embed_one(text)
        exact = index.search(vector, exact=True)
        if exact is not None and 0.6 <= exact.score < THRESHOLD:
            picked.append((text, exact))
    total_ms: list[float] = []
    cpu_ms: list[float] = []
    same_row = same_decision = 0
    gc.disable()
    try:
        for text, exact in picked:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            match = lib.search(embedder.embed_one(text), THRESHOLD)
            total_ms.append((time.perf_counter() - t0) * 1000)
            cpu_ms.append((time.thread_time() - c0) * 1000)
            assert match is not None
            same_row += match.row == exact.row
            same_decision += match.score < THRESHOLD
    finally:
        gc.enable()
    n = len(picked) or 1
    return {
        "queries": len(picked),
        "embed+search": summary(total_ms) if total_ms else {},
        "embed+search_cpu": summary(cpu_ms) if cpu_ms else {},
        "same_row": round(same_row / n, 4),
        "same_decision": round(same_decision / n, 4),
    }


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples_ms: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(pct(samples_ms, 0.50), 3),
        "p95_ms": round(pct(samples_ms, 0.95), 3),
        "p99_ms": round(pct(samples_ms, 0.99), 3),
        "mean_ms": round(sum(samples_ms) / len(samples_ms), 3),
    }


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def build_library(embedder: HashedNgramEmbedder, texts: list[str]) -> tuple[WorkspaceLibrary, float]:
    started = time.perf_counter()
    vectors = np.empty((len(texts), embedder.dim), dtype=np.float32)
    for i, text in enumerate(texts):
        vectors[i] = embedder.embed_one(text)
    embed_s = time.perf_counter() - started
    lib = WorkspaceLibrary("bench", exact_limit=EXACT_LIMIT)
    fresh = WorkspaceLibrary("bench", exact_limit=EXACT_LIMIT)
    # Capacity as a load from the table leaves it (doubling from the first batch).
    capacity = 1 << (len(texts) - 1).bit_length()
    fresh.index = VectorIndex(embedder.dim, capacity=capacity, exact_limit=EXACT_LIMIT)
    fresh.index.add_many(vectors, [Ref(f"r{i}", "prompt", t[:500]) for i, t in enumerate(texts)])
    fresh.ids = {f"r{i}" for i in range(len(texts))}
    lib.replace(fresh, 0)
    lib.next_refresh = float("inf")
    return lib, embed_s


def bench_size(n: int, n_queries: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    embedder = HashedNgramEmbedder()
    stored = prompts(n, rng)
    lib, embed_s = build_library(embedder, stored)
    index = lib.index
    assert index is not None
    qs = queries(stored, n_queries, rng)
    for _, text in qs[:50]:  # warm-up
        lib.search(embedder.embed_one(text), THRESHOLD)

    embed_ms: list[float] = []
    search_ms: list[float] = []
    total_ms: list[float] = []
    cpu_ms: list[float] = []  # this thread's CPU time: what the check costs without
    # the waits a shared machine adds (preemption by other processes)
    same_row = same_decision = near = same_row_near = border = border_same = 0
    worst_gap = 0.0
    hits = {"edited": 0, "new": 0, "unrelated": 0}
    answers = []
    gc.disable()
    try:
        for _, text in qs:
            c0 = time.thread_time()
            t0 = time.perf_counter()
            vector = embedder.embed_one(text)
            t1 = time.perf_counter()
            match = lib.search(vector, THRESHOLD)
            t2 = time.perf_counter()
            cpu_ms.append((time.thread_time() - c0) * 1000)
            embed_ms.append((t1 - t0) * 1000)
            search_ms.append((t2 - t1) * 1000)
            total_ms.append((t2 - t0) * 1000)
            answers.append((vector, match))
    finally:
        gc.enable()
    # Compared afterwards: an exhaustive scan between timed queries would flush the
    # caches the next search runs from.
    for (kind, _), (vector, match) in zip(qs, answers, strict=True):
        exact = index.search(vector, exact=True)
        assert match is not None and exact is not None
        same_row += match.row == exact.row
        same_decision += (match.score >= THRESHOLD) == (exact.score >= THRESHOLD)
        worst_gap = max(worst_gap, exact.score - match.score)
        hits[kind] += match.score >= THRESHOLD
        if exact.score >= 0.7:
            near += 1
            same_row_near += match.row == exact.row
        if exact.score >= 0.5:
            border += 1
            tight = index.search(vector, threshold=exact.score - 0.005)
            border_same += tight is not None and tight.score >= exact.score - 0.005
    per_kind = n_queries // 3 or 1
    return {
        "stored": n,
        "queries": n_queries,
        "mode": "two-stage" if n > index.exact_limit else "exact",
        "embed+search": summary(total_ms),
        "embed+search_cpu": summary(cpu_ms),
        "embed": summary(embed_ms),
        "search": summary(search_ms),
        "agreement": {
            "same_row": round(same_row / len(qs), 4),
            "same_row_at_0.7": round(same_row_near / (near or 1), 4),
            "same_decision": round(same_decision / len(qs), 4),
            "borderline_same_decision": round(border_same / (border or 1), 4),
            "borderline_queries": border,
            "worst_score_gap": round(worst_gap, 5),
        },
        "hit_rate_at_0.85": {k: round(v / per_kind, 3) for k, v in hits.items()},
        "index_mb": round(index.nbytes / 2**20, 1),
        "build_s": {"embed": round(embed_s, 2)},
        "_lib": lib,
        "_queries": qs,
        "_stored": stored,
    }


async def bench_check(lib: WorkspaceLibrary, qs: list[tuple[str, str]]) -> dict[str, Any]:
    """The whole pre_call path on a started host, with the library preloaded."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp}/bench.db"}
        host = Host(Settings.from_env(env), plugins=[synthhost_similarity], load_entrypoints=False)
        async with host:
            host.flags.set(FLAG_CHECK, True, workspace="bench")
            service: SimilarityService = service_for(host)
            target = service.store.library("bench")
            target.replace(lib, 0)
            target.next_refresh = float("inf")
            service.default_action = "flagged"  # record the decision, never raise
            samples: list[float] = []
            cpu_samples: list[float] = []
            for i, (_, text) in enumerate(qs):
                call = Call(
                    host=host,
                    request=Request(model="m", messages=[{"role": "user", "content": text}]),
                    workspace="bench",
                    run_id=f"run{i}",
                )
                cpu = time.thread_time()
                start = time.perf_counter()
                with contextlib.suppress(Denied):  # the action is "flagged": never raised
                    await service.check(call)
                samples.append((time.perf_counter() - start) * 1000)
                cpu_samples.append((time.thread_time() - cpu) * 1000)
            await host.writer.flush()
        skip = 50 if len(samples) > 100 else 0
        return {**summary(samples[skip:]), "cpu": summary(cpu_samples[skip:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000", help="stored prompts per workspace")
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-check", action="store_true", help="skip the check() timing")
    parser.add_argument(
        "--near-misses", type=int, default=600, help="candidate prompts for the 0.6-0.85 timing (0: skip)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    results = []
    for n in (int(s) for s in args.sizes.split(",")):
        result = bench_size(n, args.queries, args.seed)
        lib, qs, stored = result.pop("_lib"), result.pop("_queries"), result.pop("_stored")
        if args.near_misses:
            result["near_misses"] = bench_near_misses(lib, HashedNgramEmbedder(), stored, args.near_misses, args.seed)
        if not args.no_check:
            result["check()"] = anyio.run(bench_check, lib, qs)
        results.append(result)
        del lib
        gc.collect()

    meta = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "embedder": "hashed-ngram-v1 (512)",
        "exact_limit": EXACT_LIMIT,
        "target": "embed+search p95 <= 1 ms at 100k",
    }
    if args.json:
        print(json.dumps({"meta": meta, "results": results}, indent=2))
        return
    print(
        f"similarity check latency ({meta['embedder']}, numpy {meta['numpy']}, "
        f"{meta['cpus']} cpus, OPENBLAS_NUM_THREADS={meta['openblas_threads']}, "
        f"load average {meta['load_average_1m']})"
    )
    for r in results:
        es, e, s = r["embed+search"], r["embed"], r["search"]
        print(
            f"\n{r['stored']:>7} stored prompts, {r['queries']} queries, {r['mode']} search, "
            f"index {r['index_mb']} MB (built in {r['build_s']['embed']} s)"
        )
        print(f"  embed+search  p50 {es['p50_ms']:7.3f} ms  p95 {es['p95_ms']:7.3f} ms  p99 {es['p99_ms']:7.3f} ms")
        cpu = r["embed+search_cpu"]
        print(f"  (CPU time)    p50 {cpu['p50_ms']:7.3f} ms  p95 {cpu['p95_ms']:7.3f} ms  p99 {cpu['p99_ms']:7.3f} ms")
        print(f"  embed         p50 {e['p50_ms']:7.3f} ms  p95 {e['p95_ms']:7.3f} ms")
        print(f"  search        p50 {s['p50_ms']:7.3f} ms  p95 {s['p95_ms']:7.3f} ms")
        if "check()" in r:
            c = r["check()"]
            print(
                f"  check()       p50 {c['p50_ms']:7.3f} ms  p95 {c['p95_ms']:7.3f} ms  "
                "(embed, search, decide, queue row+event, index the prompt)"
            )
            print(f"  (CPU time)    p50 {c['cpu']['p50_ms']:7.3f} ms  p95 {c['cpu']['p95_ms']:7.3f} ms")
        a = r["agreement"]
        print(
            f"  vs exhaustive: same row {a['same_row']:.1%} ({a['same_row_at_0.7']:.1%} where the best "
            f"scores >= 0.7), same decision {a['same_decision']:.1%}, worst score gap {a['worst_score_gap']}"
        )
        print(
            f"  borderline (threshold = best - 0.005, {a['borderline_queries']} queries): "
            f"same decision {a['borderline_same_decision']:.1%}"
        )
        print(f"  score >= 0.85: {r['hit_rate_at_0.85']}")
        if r.get("near_misses", {}).get("queries"):
            nm = r["near_misses"]
            w, c = nm["embed+search"], nm["embed+search_cpu"]
            print(
                f"  near misses (exhaustive best 0.6-0.85, {nm['queries']} queries): embed+search "
                f"p50 {w['p50_ms']:.3f} ms p95 {w['p95_ms']:.3f} ms (CPU p50 {c['p50_ms']:.3f} p95 {c['p95_ms']:.3f}); "
                f"same row {nm['same_row']:.1%}, same decision {nm['same_decision']:.1%}"
            )


if __name__ == "__main__":
    main()
