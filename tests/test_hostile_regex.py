"""No user-supplied pattern can hold a call: guard-set regexes run on RE2 (linear time),
policy `matches()` on the CEL interpreter's Rust `regex` (linear time), and patterns
either engine cannot run are refused when applied."""

from __future__ import annotations

from typing import Any

import pytest

import synthhost_guardrails
import synthhost_policy
from synthhost import Denied
from synthhost_guardrails.guardset import compile_spec, load_text
from synthhost_policy.expr import ExprError, compile_condition

pytestmark = pytest.mark.anyio

CATASTROPHIC = [r"(a|aa)+$", r"(.*a){20}$", r"^(\w+\s?)+$", r"(a+)+b", r"(x+x+)+y"]


@pytest.mark.parametrize("pattern", CATASTROPHIC)
async def test_a_catastrophic_guard_pattern_answers_at_once_through_the_host(make_host: Any, pattern: str) -> None:
    validator = f"{{validator: regex_match, args: {{regex: '{pattern}', forbid: true}}, on_fail: exception}}"
    spec = load_text(f"input: [{validator}]")
    async with make_host(synthhost_guardrails) as host:
        host.flags.set(synthhost_guardrails.FLAG, True, workspace="w")
        synthhost_guardrails.apply_guards(host, spec, workspace="w")
        # 41 characters held Python's re for 26 s; RE2 answers in microseconds. A hang
        # would be caught by pytest-timeout, not by a timed assertion.
        for prompt in ("a" * 41 + "!", "a" * 5_000 + "!", ("x" * 2_000) + "z"):
            try:
                await host.complete(workspace="w", model="echo/m", messages=prompt)
            except Denied as denied:
                assert denied.code == "GUARDRAIL_VIOLATION"


@pytest.mark.parametrize("pattern", CATASTROPHIC)
async def test_catastrophic_matches_in_a_policy_answer_at_once(make_host: Any, pattern: str) -> None:
    async with make_host(synthhost_policy) as host:
        host.flags.set(synthhost_policy.FLAG, True, workspace="w")
        rule = {"name": "r", "when": f"request.prompt.matches({pattern!r})", "actions": [{"type": "log"}]}
        import json

        synthhost_policy.apply_policy(host, json.dumps({"name": "p", "rules": [rule]}) + "\n", workspace="w")
        await host.complete(workspace="w", model="echo/m", messages="a" * 5_000 + "!")


@pytest.mark.parametrize("pattern", [r"(a)\1", r"(?=a)b", r"(?<!x)y"])
def test_patterns_a_linear_engine_cannot_run_are_refused_when_applied(pattern: str) -> None:
    with pytest.raises(Exception, match="no backreferences or look-around"):
        compile_spec(load_text(f"input: [{{validator: regex_match, args: {{regex: '{pattern}'}}}}]"), "t")
    with pytest.raises(ExprError, match="invalid regular expression in matches"):
        compile_condition(f"request.prompt.matches({pattern!r})")
