"""Evaluation semantics, without a host: order, block, route/modify, errors, activation."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from synthhost import tokens
from synthhost.call import Request
from synthhost_policy import pricing
from synthhost_policy.document import GLOBAL, parse_policy
from synthhost_policy.engine import Outcome, Plan, compile_set, evaluate


@dataclass
class Subject:
    request: Request
    workspace: str = "w1"
    user: str | None = "u1"
    org: str | None = None
    agent: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def subject(model: str = "gpt-4o", prompt: str = "hello", **kw: Any) -> Subject:
    params = kw.pop("params", {})
    metadata = kw.pop("request_metadata", {})
    request = Request(
        model,
        kw.pop("provider", "openai"),
        [{"role": "user", "content": prompt}],
        params,
        kw.pop("region", None),
        metadata,
    )
    return Subject(request, **kw)


def policy(name: str, rules: list[dict[str, Any]], priority: int = 0, **extra: Any) -> Any:
    return parse_policy(json.dumps({"name": name, "priority": priority, "rules": rules, **extra}))


def rule(name: str, when: str, *actions: dict[str, Any], priority: int = 0) -> dict[str, Any]:
    return {"name": name, "when": when, "priority": priority, "actions": list(actions)}


BLOCK = {"type": "block", "message": "no"}


def plan(*sets: tuple[Any, str], workspace: str = "w1") -> Plan:
    return Plan.build(workspace, [compile_set(p, ws, i + 1) for i, (p, ws) in enumerate(sets)])


def actions(outcome: Outcome) -> list[tuple[str, str, str]]:
    return [(d.set, d.rule, d.action) for d in outcome.decisions]


def test_no_match_is_a_plain_allow_with_no_decisions() -> None:
    p = plan((policy("s", [rule("r", 'request.model == "other"', BLOCK)]), "w1"))
    outcome = evaluate(p, subject())
    assert outcome.allowed and outcome.decisions == []
    assert evaluate(plan(), subject()).allowed


def test_sets_by_priority_then_rules_by_priority_and_every_match_acts() -> None:
    low = policy("low", [rule("l1", "true", {"type": "log"})], priority=1)
    high = policy(
        "high",
        [
            rule("h-late", "true", {"type": "warn", "message": "late"}, priority=1),
            rule("h-early", "true", {"type": "log"}, priority=9),
        ],
        priority=5,
    )
    glob = policy("glob", [rule("g", "true", {"type": "log"})], priority=5)
    outcome = evaluate(plan((low, "w1"), (glob, GLOBAL), (high, "w1")), subject())
    # Same priority: the workspace's own set before the global one.
    assert actions(outcome) == [
        ("high", "h-early", "log"),
        ("high", "h-late", "warn"),
        ("glob", "g", "log"),
        ("low", "l1", "log"),
    ]
    assert outcome.warnings == ["late"]


def test_a_block_in_a_lower_priority_set_still_blocks() -> None:
    high = policy("high", [rule("route", "true", {"type": "route", "set": {"model": "m2"}})], 10)
    low = policy("low", [rule("deny", 'request.model == "m2"', BLOCK)], 1)
    s = subject()
    outcome = evaluate(plan((high, "w1"), (low, GLOBAL)), s)
    assert outcome.blocked is not None
    assert (outcome.blocked.set, outcome.blocked.rule, outcome.blocked.message) == ("low", "deny", "no")
    assert outcome.blocked.version == 2


def test_the_first_block_stops_evaluation() -> None:
    p = policy(
        "s",
        [
            rule("first", "true", {"type": "block", "message": "first"}, priority=2),
            rule("second", "true", {"type": "block", "message": "second"}, priority=1),
        ],
    )
    other = policy("t", [rule("never", "true", {"type": "log"})], priority=-1)
    outcome = evaluate(plan((p, "w1"), (other, "w1")), subject())
    assert outcome.blocked and outcome.blocked.message == "first"
    assert actions(outcome) == [("s", "first", "block")]


def test_block_without_message_names_the_rule() -> None:
    p = policy("s", [rule("r", "true", {"type": "block"})])
    outcome = evaluate(plan((p, "w1")), subject())
    assert outcome.blocked and outcome.blocked.message == "denied by policy rule s/r"


def test_route_and_modify_change_the_request_and_later_rules_see_it() -> None:
    p = policy(
        "s",
        [
            rule(
                "route",
                'request.model == "gpt-4o"',
                {"type": "route", "set": {"model": "gpt-4o-mini", "provider": "echo", "region": "eu-west-1"}},
                priority=3,
            ),
            rule(
                "modify",
                'request.model == "gpt-4o-mini" && request.region == "eu-west-1"',
                {"type": "modify", "set": {"params.temperature": 0.1, "metadata.routed": True, "params.opts.depth": 2}},
                priority=2,
            ),
            rule(
                "see",
                "request.params.temperature < 0.2 && request.metadata.routed",
                {"type": "warn", "message": "saw it"},
                priority=1,
            ),
        ],
    )
    original_params = {"temperature": 0.9, "top_p": 1}
    s = subject(params=original_params)
    outcome = evaluate(plan((p, "w1")), s)
    assert outcome.allowed
    assert actions(outcome) == [("s", "route", "route"), ("s", "modify", "modify"), ("s", "see", "warn")]
    r = s.request
    assert (r.model, r.provider, r.region) == ("gpt-4o-mini", "echo", "eu-west-1")
    assert r.params == {"temperature": 0.1, "top_p": 1, "opts": {"depth": 2}}
    assert r.metadata == {"routed": True}
    assert original_params == {"temperature": 0.9, "top_p": 1}  # the caller's dict untouched
    route = outcome.decisions[0].changes
    assert route == {
        "model": "gpt-4o-mini",
        "from_model": "gpt-4o",
        "provider": "echo",
        "from_provider": "openai",
        "region": "eu-west-1",
        "from_region": None,
    }


def test_modify_can_remove_a_param_and_replace_messages() -> None:
    p = policy(
        "s",
        [
            rule(
                "m",
                "true",
                {
                    "type": "modify",
                    "set": {"params.temperature": None, "messages": [{"role": "user", "content": "redacted prompt"}]},
                },
            ),
            rule("after", 'request.prompt == "redacted prompt" && !has(request.params.temperature)', {"type": "log"}),
        ],
    )
    s = subject(prompt="secret stuff", params={"temperature": 1.0})
    outcome = evaluate(plan((p, "w1")), s)
    assert s.request.params == {} and s.request.prompt == "redacted prompt"
    assert outcome.decisions[0].changes == {"params.temperature": None, "messages": "<1 messages>"}
    assert actions(outcome)[-1] == ("s", "after", "log")


def test_a_missing_key_means_the_condition_does_not_hold() -> None:
    p = policy("s", [rule("r", 'request.metadata.tier == "free"', BLOCK)])
    assert evaluate(plan((p, "w1")), subject()).decisions == []
    assert evaluate(plan((p, "w1")), subject(request_metadata={"tier": "free"})).blocked


@pytest.mark.parametrize(("when", "needle", "col"), [
    ("request.model > 3", "fails on every call with the declared field types: No such overload", 1),
    ("request.model", "a condition must be boolean, this one gives str", 1),
    ('request.prompt.matches("[")', "invalid regular expression in matches(): missing ]", 24),
    ("request.prompt_tokens + 0.5 > 1", "No such overload", 1),
])
def test_conditions_that_cannot_work_are_refused_when_applied(when: str, needle: str, col: int) -> None:
    from synthhost_policy.expr import ExprError, compile_condition

    with pytest.raises(ExprError) as info:
        compile_condition(when)
    assert needle in str(info.value) and info.value.col == col and info.value.line == 1


def test_an_evaluation_error_is_a_decision_and_a_broken_block_rule_fails_closed() -> None:
    """What only the call's data can break (a metadata value, a pattern from metadata)
    still fails closed at run time."""
    p = policy(
        "s",
        [
            rule("bad-warn", "int(request.metadata.n) > 3", {"type": "warn"}, priority=2),
            rule("bad-block", "request.prompt.matches(request.metadata.pattern)", BLOCK, priority=1),
        ],
    )
    outcome = evaluate(plan((p, "w1")), subject(request_metadata={"n": "abc", "pattern": "["}))
    assert [(d.rule, d.action) for d in outcome.decisions] == [
        ("bad-warn", "error"),
        ("bad-block", "error"),
        ("bad-block", "block"),
    ]
    assert outcome.blocked and outcome.blocked.message
    assert outcome.blocked.message.startswith("policy rule s/bad-block failed: ")
    assert outcome.blocked.error and "regex" in outcome.blocked.error


def test_disabled_sets_and_rules_are_skipped() -> None:
    off_rule = policy("s", [{**rule("r", "true", BLOCK), "enabled": False}, rule("ok", "true", {"type": "log"})])
    assert actions(evaluate(plan((off_rule, "w1")), subject())) == [("s", "ok", "log")]


def test_only_sets_of_the_workspace_and_global_apply() -> None:
    mine = policy("mine", [rule("r", "true", {"type": "log"})])
    theirs = policy("theirs", [rule("r", "true", BLOCK)])
    glob = policy("glob", [rule("r", "true", {"type": "log"})])
    outcome = evaluate(plan((mine, "w1"), (theirs, "w2"), (glob, GLOBAL)), subject())
    assert actions(outcome) == [("mine", "r", "log"), ("glob", "r", "log")]


def test_context_values() -> None:
    # The host's shared estimator: tiktoken for an OpenAI model, plus chat framing.
    want = tokens.count_messages([{"role": "user", "content": "0123456789"}], "gpt-4o", "openai")
    assert want == tokens.PER_REPLY + tokens.PER_MESSAGE + tokens.count_text("0123456789", "gpt-4o") > 3
    seen = policy(
        "s",
        [
            rule(
                "r",
                f'request.prompt_tokens == {want} && request.prompt == "0123456789" && '
                'workspace.id == "w9" && user.id == "u" && org.id == "o" && agent.name == "a" '
                '&& metadata.k == "v" && request.provider == "openai" && request.region == "us"',
                {"type": "log"},
            ),
        ],
    )
    s = subject(prompt="0123456789", workspace="w9", user="u", org="o", agent="a", metadata={"k": "v"}, region="us")
    assert actions(evaluate(plan((seen, "w9"), workspace="w9"), s)) == [("s", "r", "log")]


def test_estimated_cost_uses_prompt_tokens_and_max_tokens() -> None:
    pricing.warm()
    inp, out = pricing.per_token("openai", "gpt-4o")
    assert inp > 0 and out > 0
    expected = 3 * inp + 100 * out
    assert pricing.estimate("openai", "gpt-4o", 3, {"max_tokens": 100}) == pytest.approx(expected)
    assert pricing.estimate("echo", "no-such-model-xyz", 1000, {}) is None  # unknown, never 0.0
    p = policy("s", [rule("r", f"request.estimated_cost > {expected * 0.99}", BLOCK)])
    assert evaluate(plan((p, "w1")), subject(prompt="0123456789", params={"max_tokens": 100})).blocked
    assert evaluate(plan((p, "w1")), subject(prompt="0123456789", params={"max_tokens": 50})).allowed


def test_cached_activation_never_confuses_values_of_different_types() -> None:
    """The per-thread activation skips unchanged scalars: 1, 1.0 and True must differ."""
    p = policy(
        "s",
        [
            rule("int", "type(metadata.v) == int", {"type": "log"}),
            rule("float", "type(user.id) == double", {"type": "log"}),
        ],
    )
    compiled = plan((p, "w1"))
    for user, meta, expected in [
        (1, {"v": 1}, ["int"]),
        (1.0, {"v": 1.0}, ["float"]),
        (True, {"v": True}, []),
        (1, {"v": 1}, ["int"]),
    ]:
        s = subject(user=user, metadata=meta)
        assert [d.rule for d in evaluate(compiled, s).decisions] == expected


def test_alternating_subjects_and_threads_see_their_own_values() -> None:
    p = policy("s", [rule("r", 'user.id == "bad" || request.model == "bad"', BLOCK)])
    compiled = plan((p, "w1"))
    results: list[bool] = []

    def run(n: int) -> None:
        for i in range(n):
            bad = i % 3 == 0
            s = subject(user="bad" if bad else f"u{i}")
            results.append(evaluate(compiled, s).allowed is (not bad))

    threads = [threading.Thread(target=run, args=(300,)) for _ in range(3)]
    for t in threads:
        t.start()
    run(300)
    for t in threads:
        t.join()
    assert len(results) == 1200 and all(results)


def test_values_cel_cannot_hold_are_passed_as_json() -> None:
    p = policy("s", [rule("r", 'request.params.tags.size() == 1 && request.params.obj.startsWith("<")', BLOCK)])
    outcome = evaluate(plan((p, "w1")), subject(params={"tags": {"x"}, "obj": object()}))
    assert outcome.blocked
    # The thread's activation is still good afterwards.
    assert evaluate(plan((p, "w1")), subject(params={"tags": [], "obj": "x"})).allowed


def test_cached_activation_sees_a_dict_mutated_in_place() -> None:
    p = policy("s", [rule("r", "request.params.temperature > 1.0", BLOCK)])
    compiled = plan((p, "w1"))
    params: dict[str, Any] = {"temperature": 0.5}
    s = subject(params=params)
    assert evaluate(compiled, s).allowed
    params["temperature"] = 1.5  # same dict object, new content
    assert evaluate(compiled, s).blocked
    params["temperature"] = 1  # int: CEL compares int and double numerically
    assert evaluate(compiled, s).allowed
