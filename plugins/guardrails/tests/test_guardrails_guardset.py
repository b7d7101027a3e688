"""Guard set documents (checked at apply time, one-line errors) and the engine that runs
a compiled set over messages and answers."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from synthhost_guardrails import parse_guard_set
from synthhost_guardrails.engine import check_input, check_output
from synthhost_guardrails.guardset import (
    DEFAULT,
    DEFAULT_DOCUMENT,
    GuardSetError,
    Pipeline,
    compile_document,
    document,
    load_text,
)

KEY = "sk-proj-" + "aB3dE5fG7hJ9kL1mN3pQ5rS7"


def pipeline(**doc: Any) -> Pipeline:
    return compile_document(doc, "test")


def error_of(text: str) -> str:
    with pytest.raises(GuardSetError) as info:
        parse_guard_set(text)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- documents --------------------------------------------------------------------------------


def test_full_document_round_trip() -> None:
    spec = load_text(
        """
description: support bot
input:
  - validator: no_secrets
    on_fail: fix
  - {validator: no_pii, args: {kinds: [card, ssn]}, roles: [user]}
output:
  - validator: ban_list
    on_fail: warn
    args: {words: [hate]}
"""
    )
    assert document(spec) == {
        "description": "support bot",
        "input": [
            {"validator": "no_secrets", "on_fail": "fix"},
            {"validator": "no_pii", "on_fail": "exception", "args": {"kinds": ["card", "ssn"]}, "roles": ["user"]},
        ],
        "output": [{"validator": "ban_list", "on_fail": "warn", "args": {"words": ["hate"]}}],
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("input: [{validator: no_such}]", "input[0].validator: unknown validator 'no_such' (built in: ban_list,"),
        (
            "input: [{validator: no_pii, on_fail: explode}]",
            "input[0].on_fail: must be one of exception, fix, warn, noop",
        ),
        ("output: [{validator: ban_list}]", "output[0] (ban_list): args.words: Field required"),
        ("output: [{validator: ban_list, args: {words: hate}}]", "output[0] (ban_list): args.words: Input should be"),
        ("output: [{validator: max_length, args: {max: -1}}]", "output[0] (max_length): args.max: Input should be"),
        ("output: [{validator: no_pii, args: {kind: [email]}}]", "output[0] (no_pii): args.kind: unknown field"),
        ("output: [{validator: no_pii, args: {kinds: [dob]}}]", "output[0] (no_pii): args.kinds: unknown kind 'dob'"),
        ("output: [{validator: non_empty, on_fail: fix}]", "output[0].on_fail: non_empty cannot fix a text"),
        ("output: [{validator: regex_match, args: {regex: 'x'}, on_fail: fix}]", "regex_match cannot fix"),
        ("input: [{validator: max_length, on_fail: fix}]", "input[0].on_fail: max_length cannot fix a prompt"),
        ("output: [{validator: no_pii, roles: [user]}]", "output[0].roles: only input validators select messages"),
        ("output: [{validator: regex_match, args: {regex: '(a)\\1'}}]", "args.regex: invalid regular expression"),
        ("inputs: []", "inputs: unknown field"),
        ("input: {validator: no_pii}", "input: Input should be a valid list"),
        ("- no_pii", "a guard set is a mapping"),
        ("", "the guard set is empty"),
        ("input: [\n  {validator: no_pii\n", "line 4: expected ',' or '}'"),
    ],
)
def test_errors_are_one_line_and_name_the_field(text: str, expected: str) -> None:
    assert expected in error_of(text + "\n")


def test_hub_validator_without_guardrails_ai_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "guardrails", None)  # as if not installed
    message = error_of("output: [{validator: 'hub:regex_match', args: {regex: x}}]\n")
    assert message == (
        "output[0] (hub:regex_match): needs Guardrails AI, which is not installed: "
        "pip install 'synthhost-guardrails[guardrails-ai]'"
    )


def test_default_set() -> None:
    assert DEFAULT.label == "default"
    assert [(e.name, e.on_fail) for e in DEFAULT.input] == [("no_secrets", "fix")]
    assert [(e.name, e.on_fail) for e in DEFAULT.output] == [("no_secrets", "fix")]
    assert DEFAULT_DOCUMENT["input"] == [{"validator": "no_secrets", "on_fail": "fix"}]


def test_an_empty_set_is_allowed() -> None:
    p = compile_document({"input": [], "output": []}, "empty")
    assert p.input == () and p.output == ()


# -- the engine: input --------------------------------------------------------------------------


def test_input_fix_copies_and_never_mutates_the_callers_messages() -> None:
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": f"use {KEY} please"},
    ]
    before = copy.deepcopy(messages)
    outcome = check_input(pipeline(input=[{"validator": "no_secrets", "on_fail": "fix"}]), messages)
    assert messages == before
    assert outcome.messages is not None
    assert outcome.messages[0] is messages[0]  # untouched messages are not copied
    assert outcome.messages[1] == {"role": "user", "content": "use [API_KEY] please"}
    assert outcome.denied is None
    [v] = outcome.violations
    assert v.to_dict() == {
        "validator": "no_secrets",
        "where": "input",
        "on_fail": "fix",
        "kinds": ["api_key"],
        "count": 1,
        "messages": [1],
    }


def test_input_list_content_parts() -> None:
    messages: list[dict[str, Any]] = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "mail a@example.com"},
                {"type": "image_url", "image_url": {"url": "data:..."}},
                {"type": "text", "text": "and b@example.com"},
            ],
        }
    ]
    outcome = check_input(pipeline(input=[{"validator": "no_pii", "on_fail": "fix"}]), messages)
    assert outcome.messages is not None
    parts = outcome.messages[0]["content"]
    assert [p.get("text") for p in parts] == ["mail [EMAIL]", None, "and [EMAIL]"]
    assert messages[0]["content"][0]["text"] == "mail a@example.com"
    assert outcome.violations[0].count == 2


def test_input_roles_select_messages() -> None:
    p = pipeline(input=[{"validator": "valid_json", "roles": ["user"]}])
    ok = check_input(p, [{"role": "system", "content": "not json"}, {"role": "user", "content": '{"q": 1}'}])
    assert ok.violations == []
    bad = check_input(p, [{"role": "user", "content": "not json"}])
    assert bad.denied is not None and bad.denied.messages == (0,)


def test_input_no_selected_message_is_an_empty_text() -> None:
    p = pipeline(input=[{"validator": "non_empty", "roles": ["user"]}])
    outcome = check_input(p, [{"role": "system", "content": "hi"}])
    assert outcome.denied is not None and outcome.denied.kinds == ("empty",)
    assert check_input(pipeline(input=[{"validator": "no_pii"}]), []).violations == []


def test_input_exception_masks_what_it_denies_and_stops() -> None:
    p = pipeline(
        input=[
            {"validator": "no_pii", "on_fail": "warn"},
            {"validator": "no_secrets", "on_fail": "exception"},
            {"validator": "non_empty"},
        ]
    )
    messages = [{"role": "user", "content": f"a@example.com {KEY}"}, {"role": "user", "content": KEY}]
    outcome = check_input(p, messages)
    assert [v.validator for v in outcome.violations] == ["no_pii", "no_secrets"]
    assert outcome.denied is outcome.violations[1]
    assert outcome.denied.messages == (0, 1) and outcome.denied.count == 2
    assert outcome.denied.describe() == "guardrail no_secrets failed on input (messages 0, 1): api_key"
    # warn does not change the text; the denied secret is masked for the trace
    assert outcome.messages == [
        {"role": "user", "content": "a@example.com [API_KEY]"},
        {"role": "user", "content": "[API_KEY]"},
    ]


def test_entries_see_earlier_fixes() -> None:
    p = pipeline(
        input=[
            {"validator": "no_secrets", "on_fail": "fix"},
            {"validator": "regex_match", "args": {"regex": "sk-"}, "on_fail": "noop"},
        ]
    )
    outcome = check_input(p, [{"role": "user", "content": KEY}])
    assert [v.validator for v in outcome.violations] == ["no_secrets", "regex_match"]


# -- the engine: output -------------------------------------------------------------------------


def test_output_fix_chain() -> None:
    p = pipeline(
        output=[
            {"validator": "ban_list", "args": {"words": ["darn"]}, "on_fail": "fix"},
            {"validator": "max_length", "args": {"max": 12}, "on_fail": "fix"},
        ]
    )
    outcome = check_output(p, "well darn it, that was long")
    assert outcome.text == "well [BANNED"
    assert [(v.validator, v.kinds) for v in outcome.violations] == [
        ("ban_list", ("banned",)),
        ("max_length", ("too_long",)),
    ]
    assert check_output(p, "fine").text is None


def test_output_noop_and_warn_leave_the_text() -> None:
    p = pipeline(output=[{"validator": "no_pii", "on_fail": "noop"}, {"validator": "valid_json", "on_fail": "warn"}])
    outcome = check_output(p, "a@example.com")
    assert outcome.text is None and outcome.denied is None
    assert [v.on_fail for v in outcome.violations] == ["noop", "warn"]


def test_output_exception() -> None:
    outcome = check_output(pipeline(output=[{"validator": "valid_json"}]), "not json")
    assert outcome.denied is not None
    assert outcome.denied.describe() == "guardrail valid_json failed on output: invalid_json"
    assert outcome.text is None  # nothing to mask: the text is kept for the caller's error


def test_the_shipped_example_applies() -> None:
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "support.yaml"
    spec = parse_guard_set(example)
    p = compile_document(document(spec), "example")
    outcome = check_input(p, [{"role": "user", "content": "my card is 4111 1111 1111 1111"}])
    assert outcome.denied is not None and outcome.denied.kinds == ("card",)
    assert check_output(p, "Call 555-123-4567, you idiot").text == "Call [PHONE], you [BANNED]"
