"""Policy evaluation cost: one workspace with 20 rules (typical conditions).

Measures ``synthhost_policy.engine.evaluate`` on a real :class:`synthhost.Call`, which is
what ``pre_call`` runs (plus a dict look-up for the cached plan): building the CEL
activation for the fields the rules read, then every rule. Target: p50 <= 30 us.

Scenarios: ``allow`` (no rule matches: the common case), ``match`` (a route and a warn
match: the request is rewritten and the fields the route changed are re-read). Each call
has its own prompt and one of 50 users.

    uv run --frozen python benchmarks/policy.py [--iterations N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

from synthhost.call import Call, Request
from synthhost_policy import pricing
from synthhost_policy.document import parse_policy
from synthhost_policy.engine import Plan, compile_set, evaluate

RULES = [
    ("deny-banned-user", 'user.id == "banned-user"', "block"),
    ("deny-banned-ws", 'workspace.id == "w-suspended"', "block"),
    ("huge-prompt", "request.prompt_tokens > 100000", "block"),
    ("expensive", "request.estimated_cost > 0.50", "block"),
    ("free-tier-cost", 'request.metadata.tier == "free" && request.estimated_cost > 0.01', "block"),
    (
        "free-premium",
        'request.metadata.tier == "free" && request.model in ["gpt-4o", "o1"]',
        "route",
    ),
    ("hot-temperature", "request.params.temperature > 1.5", "modify"),
    ("token-cap", "request.params.max_tokens > 4096", "modify"),
    ("eu-residency", 'request.metadata.region == "eu" && request.region != "eu-west-1"', "route"),
    ("legacy-model", 'request.model.startsWith("gpt-3")', "warn"),
    ("preview-model", 'request.model.endsWith("-preview")', "warn"),
    ("jailbreak", 'request.prompt.contains("ignore previous instructions")', "block"),
    ("long-prompt", "request.prompt_tokens > 8000", "warn"),
    ("tools", "has(request.params.tools)", "log"),
    ("agent-x", 'agent.name == "experimental"', "log"),
    ("openai-us", 'request.provider == "openai" && request.region == "us"', "log"),
    ("enterprise", 'request.metadata.tier == "enterprise"', "log"),
    ("admin-cost", 'request.estimated_cost > 0.1 && user.id != "admin"', "warn"),
    ("org-trial", 'org.id == "trial-org" && request.prompt_tokens > 2000', "block"),
    ("mini-long", 'request.model == "gpt-4o-mini" && request.prompt_tokens > 50000', "warn"),
]

ACTIONS = {
    "block": {"type": "block", "message": "not allowed"},
    "route": {"type": "route", "set": {"model": "gpt-4o-mini"}},
    "modify": {"type": "modify", "set": {"params.max_tokens": 4096}},
    "warn": {"type": "warn", "message": "heads up"},
    "log": {"type": "log"},
}


def policy_yaml() -> str:
    doc: dict[str, Any] = {
        "name": "bench",
        "priority": 10,
        "rules": [
            {"name": n, "priority": 100 - i, "when": w, "actions": [ACTIONS[a]]} for i, (n, w, a) in enumerate(RULES)
        ],
    }
    return json.dumps(doc)  # JSON is YAML


PROMPT = "Summarise the following report in three bullet points. " * 12


def make_call(scenario: str, i: int = 0) -> Call:
    """Every call has its own prompt (and length) and one of 50 users, so the
    activation cache only helps with what really repeats (workspace, model, params)."""
    tier, model = ("free", "gpt-4o") if scenario == "match" else ("pro", "gpt-4o-mini")
    messages = [
        {"role": "system", "content": "You are concise."},
        {"role": "user", "content": PROMPT + f" Report #{i}." + " more" * (i % 7)},
    ]
    request = Request(
        model=model,
        provider="openai",
        messages=messages,
        params={"temperature": 0.7, "max_tokens": 512},
        metadata={"tier": tier},
    )
    return Call(
        host=None,  # type: ignore[arg-type]  # evaluate() never touches the host
        request=request,
        workspace="w1",
        user=f"user-{i % 50}",
        org="o1",
        agent="support",
        metadata={"tier": tier},
    )


def measure(plan: Plan, scenario: str, iterations: int) -> dict[str, float]:
    calls = [make_call(scenario, i) for i in range(iterations)]
    for _ in range(200):  # warm-up (price look-ups, CPU caches)
        evaluate(plan, make_call(scenario))
    samples = []
    gc.disable()
    try:
        for call in calls:
            t0 = time.perf_counter_ns()
            evaluate(plan, call)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20000)
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    args = parser.parse_args()

    pricing.warm()
    policy = parse_policy(policy_yaml(), "bench.yaml")
    plan = Plan.build("w1", [compile_set(policy, "w1", 1)])
    results = {
        "rules": len(RULES),
        "iterations": args.iterations,
        "allow": measure(plan, "allow", args.iterations),
        "match": measure(plan, "match", args.iterations),
        "target_p50_us": 30,
    }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"policy evaluation, 1 workspace, {len(RULES)} rules, {args.iterations} calls each")
    for scenario in ("allow", "match"):
        r = results[scenario]
        print(
            f"  {scenario:<6} p50 {r['p50_us']:7.2f} us   p95 {r['p95_us']:7.2f} us   "
            f"p99 {r['p99_us']:7.2f} us   mean {r['mean_us']:7.2f} us"
        )
    print("  target: p50 <= 30 us")


if __name__ == "__main__":
    main()
