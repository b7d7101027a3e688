"""Guardrails cost per call, and the built-in validators' speed on a typical prompt and on
adversarial 1 MB inputs.

    uv run --frozen python benchmarks/guardrails.py [--iterations N] [--no-host] [--json]

- ``pipeline``: what the plugin's ``pre_call`` + ``post_call`` run for one call (checking
  the request's messages, then the answer), with the built-in default set (secrets
  masked both ways) and with a strict set (secrets, PII, a 50-word ban list, length on
  both sides); ``clean`` texts have nothing to find (the usual case), ``hit`` ones have
  a secret (default) or a secret, an e-mail and a banned word (strict) to mask.
- ``validators``: each built-in validator on the typical prompt (about 1.1 KB, with
  numbers, no PII).
- ``host``: ``Host.complete`` end to end with the echo provider at zero latency (SQLite in
  a temp dir), 200 warm-up then N counted sequential calls, without the plugin and with
  the default set; the difference is the plugin's overhead in a real call.
- ``megabyte``: one run of each validator on 1 MB inputs built to trip backtracking
  (runs of letters, digits, "sk-", "a@"...), the slowest input per validator, in ms.

p50/p95 in microseconds (ms for ``megabyte``); timings are sequential, after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import statistics
import string
import tempfile
import time
from collections.abc import Callable
from typing import Any

from synthhost_guardrails.engine import check_input, check_output
from synthhost_guardrails.guardset import DEFAULT, compile_document
from synthhost_guardrails.validators import BUILTINS, Validator

KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7"
SYSTEM = "You are a concise analyst for Acme Corp. Answer in at most five bullet points, in English."
PROMPT = (
    "Here is the quarterly summary. Revenue for Q3 2024 was 1,234,500 USD across 12 regions, up 8.5% "
    "on last year; the EMEA team closed 37 deals and APAC 21. Churn fell to 2.1% after the pricing "
    "change of 1 July. Support tickets: 4,812 opened, 4,650 closed, median first response 3h 20m. "
    "Please summarise the key findings, compare them with the previous quarter and suggest three "
    "actions for Q4, including one about hiring in the 3 largest regions and one about the onboarding "
    "flow, which still loses 14% of new users at step 2 of 5. Keep it short and do not invent numbers. "
    "Our fiscal year ends on 31 January; treat figures as preliminary until the audit."
)
REPLY = (
    "- Revenue: 1.23M USD in Q3 2024, +8.5% year on year, driven by EMEA (37 deals) ahead of APAC (21).\n"
    "- Churn down to 2.1% since the July pricing change.\n"
    "- Support kept pace: 4,650 of 4,812 tickets closed, first response 3h 20m (median).\n"
    "- Onboarding still loses 14% of new users at step 2 of 5.\n"
    "Actions for Q4: hire support staff in the 3 largest regions; shorten step 2 of onboarding; "
    "re-check the figures after the audit before sharing them externally."
)
BANNED = [f"banned{i}" for i in range(48)] + ["hate", "kill yourself"]

STRICT = compile_document(
    {
        "input": [
            {"validator": "no_secrets", "on_fail": "fix"},
            {"validator": "no_pii", "on_fail": "fix"},
            {"validator": "ban_list", "on_fail": "fix", "args": {"words": BANNED}},
            {"validator": "max_length", "on_fail": "exception", "args": {"max": 20000}},
        ],
        "output": [
            {"validator": "no_secrets", "on_fail": "fix"},
            {"validator": "no_pii", "on_fail": "fix"},
            {"validator": "ban_list", "on_fail": "fix", "args": {"words": BANNED}},
            {"validator": "max_length", "on_fail": "fix", "args": {"max": 20000}},
        ],
    },
    "strict",
)


def summary(samples_us: list[float]) -> dict[str, float]:
    s = sorted(samples_us)
    n = len(s)
    return {
        "n": n,
        "p50_us": round(s[n // 2], 2),
        "p95_us": round(s[int(n * 0.95)], 2),
        "p99_us": round(s[int(n * 0.99)], 2),
        "mean_us": round(statistics.fmean(s), 2),
    }


def timed(fn: Callable[[int], Any], iterations: int, warmup: int = 200) -> dict[str, float]:
    for i in range(warmup):
        fn(i)
    samples = []
    gc.disable()
    try:
        for i in range(iterations):
            t0 = time.perf_counter_ns()
            fn(i)
            samples.append((time.perf_counter_ns() - t0) / 1000)
    finally:
        gc.enable()
    return summary(samples)


def messages(i: int, hit: bool) -> list[dict[str, Any]]:
    user = PROMPT + f" Ref {i}."
    if hit:
        user += f" Use key {KEY} and mail me at ana.lima@example.com, I hate surprises."
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def bench_pipelines(iterations: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, pipeline in (("default", DEFAULT), ("strict", STRICT)):
        for case in ("clean", "hit"):
            hit = case == "hit"
            inputs = [messages(i, hit) for i in range(iterations)]
            reply = REPLY + (f"\nYour key {KEY} works, ana.lima@example.com." if hit else "")

            def call(i: int, inputs: list[Any] = inputs, reply: str = reply, pipeline: Any = pipeline) -> None:
                check_input(pipeline, inputs[i % len(inputs)])
                check_output(pipeline, reply)

            out[f"{name}/{case}"] = timed(call, iterations)
    return out


def build(name: str, **args: Any) -> Validator:
    cls = BUILTINS[name]
    return cls(cls.Args.model_validate(args))


def validators_for_bench() -> dict[str, Validator]:
    return {
        "no_secrets": build("no_secrets"),
        "no_pii": build("no_pii"),
        "ban_list (50 words)": build("ban_list", words=BANNED),
        "max_length": build("max_length"),
        "non_empty": build("non_empty"),
        "valid_json": build("valid_json"),
        "regex_match": build("regex_match", regex=r"\bproject-[a-z]+\b", forbid=True),
    }


def bench_validators(iterations: int) -> dict[str, Any]:
    text = PROMPT
    out: dict[str, Any] = {}
    for name, v in validators_for_bench().items():

        def run(i: int, v: Validator = v) -> None:
            v.validate(text)

        out[name] = timed(run, iterations)
    return out


def megabyte_inputs() -> dict[str, str]:
    mb = 1_000_000
    rnd = random.Random(7)
    return {
        "printable": "".join(rnd.choice(string.printable) for _ in range(mb)),
        "letters": "a" * mb,
        "at-runs": "a@" * (mb // 2),
        "digits": "1" * mb,
        "digit-space": "1 " * (mb // 2),
        "card-groups": "4111 " * (mb // 5),
        "sk-runs": "sk-" * (mb // 3),
        "bearer": "Bearer " * (mb // 7),
        "emails": "john.doe@example.com " * (mb // 21),
        "words": "hate kill yourself whatever " * (mb // 28),
        "brackets": "[" * mb,
    }


def bench_megabyte() -> dict[str, Any]:
    inputs = megabyte_inputs()
    out: dict[str, Any] = {}
    for name, v in validators_for_bench().items():
        worst, worst_input, total = 0.0, "", 0.0
        for input_name, text in inputs.items():
            t0 = time.perf_counter()
            v.validate(text, fix=True)
            elapsed = (time.perf_counter() - t0) * 1000
            total += elapsed
            if elapsed > worst:
                worst, worst_input = elapsed, input_name
        out[name] = {
            "worst_ms": round(worst, 1),
            "worst_input": worst_input,
            "mean_ms": round(total / len(inputs), 1),
        }
    return out


async def bench_host(iterations: int) -> dict[str, Any]:
    """Two hosts (plugin off, default set), calls interleaved so drift hits both alike."""
    import synthhost_guardrails
    from synthhost.host import Host
    from synthhost.settings import Settings

    labels = ("plugin_off", "default_set")
    samples: dict[str, list[float]] = {label: [] for label in labels}
    with tempfile.TemporaryDirectory() as tmp:
        hosts: dict[str, Host] = {}
        for label in labels:
            env = {
                **os.environ,
                "DATABASE_URL": f"sqlite:///{tmp}/{label}.db",
                "SYNTHHOST_HOME": tmp,
                "SYNTHHOST_SPOOL_DIR": f"{tmp}/spool-{label}",
            }
            hosts[label] = Host(Settings.from_env(env), plugins=[synthhost_guardrails], load_entrypoints=False)
        async with contextlib.AsyncExitStack() as astack:
            for label, host in hosts.items():
                await astack.enter_async_context(host)
                host.flags.set("enable_guardrails_ai", label == "default_set")
            params = {"echo_reply": REPLY}
            for i in range(-200, iterations):
                for label, host in hosts.items():
                    t0 = time.perf_counter_ns()
                    await host.complete(model="echo/gpt-4o-mini", messages=messages(i, False), params=params)
                    if i >= 0:
                        samples[label].append((time.perf_counter_ns() - t0) / 1000)
                if i % 500 == 499 or i == -1:
                    for host in hosts.values():
                        await host.writer.flush()  # keep the writers' queues from skewing later calls
    out: dict[str, Any] = {label: summary(samples[label]) for label in labels}
    out["overhead_p50_us"] = round(out["default_set"]["p50_us"] - out["plugin_off"]["p50_us"], 2)
    out["overhead_p95_us"] = round(out["default_set"]["p95_us"] - out["plugin_off"]["p95_us"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--no-host", action="store_true", help="Skip the end-to-end host measurement.")
    parser.add_argument("--json", action="store_true", help="Print JSON.")
    args = parser.parse_args()

    results: dict[str, Any] = {
        "prompt_chars": len(SYSTEM) + len(PROMPT),
        "reply_chars": len(REPLY),
        "iterations": args.iterations,
        "pipeline": bench_pipelines(args.iterations),
        "validators": bench_validators(args.iterations),
    }
    if not args.no_host:
        results["host"] = asyncio.run(bench_host(args.iterations))
    results["megabyte"] = bench_megabyte()
    if args.json:
        print(json.dumps(results, indent=2))
        return

    print(
        f"guardrails: prompt {results['prompt_chars']} chars (system + user), "
        f"reply {results['reply_chars']} chars, {args.iterations} calls each"
    )
    print("per call (input + output checks):")
    for name, r in results["pipeline"].items():
        print(f"  {name:<15} p50 {r['p50_us']:8.2f} us   p95 {r['p95_us']:8.2f} us   p99 {r['p99_us']:8.2f} us")
    print("each validator on the prompt:")
    for name, r in results["validators"].items():
        print(f"  {name:<20} p50 {r['p50_us']:8.2f} us   p95 {r['p95_us']:8.2f} us")
    if "host" in results:
        h = results["host"]
        print("Host.complete, echo provider at 0 ms:")
        for label in ("plugin_off", "default_set"):
            r = h[label]
            print(f"  {label:<12} p50 {r['p50_us']:8.1f} us   p95 {r['p95_us']:8.1f} us")
        print(f"  overhead     p50 {h['overhead_p50_us']:8.1f} us   p95 {h['overhead_p95_us']:8.1f} us")
    print("1 MB adversarial inputs (one run each, fix on):")
    for name, r in results["megabyte"].items():
        print(f"  {name:<20} worst {r['worst_ms']:8.1f} ms ({r['worst_input']})   mean {r['mean_ms']:7.1f} ms")


if __name__ == "__main__":
    main()
