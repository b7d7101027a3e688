"""The policy file: pydantic validation, one line per error with file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthhost_policy.document import PolicyFileError, load_policy_file, parse_policy

GOOD = """\
name: limits
priority: 10
description: cost and model limits
rules:
  - name: cheap-for-free
    priority: 5
    when: request.metadata.tier == "free" && request.model == "gpt-4o"
    actions:
      - type: route
        set: {model: gpt-4o-mini, region: eu-west-1}
      - type: warn
        message: routed to the small model
  - name: cap
    when: request.params.max_tokens > 1000
    actions:
      - {type: modify, set: {params.max_tokens: 1000, metadata.capped: true}}
"""


def errors(text: str) -> list[str]:
    with pytest.raises(PolicyFileError) as info:
        parse_policy(text, "p.yaml")
    for line in info.value.lines:
        assert "\n" not in line
        assert line.startswith("p.yaml")
    return info.value.lines


def test_a_good_file_round_trips_to_a_canonical_document() -> None:
    policy = parse_policy(GOOD, "p.yaml")
    doc = policy.document()
    assert doc["name"] == "limits" and "workspace" not in doc
    assert doc["rules"][0]["actions"][0] == {
        "type": "route",
        "set": {"model": "gpt-4o-mini", "region": "eu-west-1"},
    }
    assert parse_policy(GOOD.replace("priority: 10", "priority: 10\nworkspace: w1")).workspace == "w1"


def test_unknown_fields_are_refused_with_line_and_field() -> None:
    text = GOOD.replace("    priority: 5\n", "    priorty: 5\n").replace("prio", "prio", 1)
    assert errors(text) == ["p.yaml:6: rules[0].priorty: unknown field"]
    assert errors(GOOD + "version: 3\n") == ["p.yaml:17: version: unknown field"]
    text = GOOD.replace("        message: routed", "        mesage: routed")
    assert errors(text) == ["p.yaml:12: rules[0].actions[1].mesage: unknown field"]


def test_invalid_cel_is_refused_with_its_position_in_the_file() -> None:
    text = GOOD.replace('request.model == "gpt-4o"', 'request.model = "gpt-4o"')
    (line,) = errors(text)
    assert line.startswith("p.yaml:7:")
    assert "rules[0].when: invalid CEL expression at 1:" in line
    text = GOOD.replace("request.params.max_tokens", "request.param.max_tokens")
    assert errors(text) == [
        "p.yaml:14:19: rules[1].when: invalid CEL expression at 1:9: unknown field "
        "request.param (known: model, provider, params, prompt, prompt_tokens, estimated_cost, cost_known, "
        "region, metadata, messages)"
    ]


def test_block_scalar_expressions_report_the_file_line() -> None:
    text = GOOD.replace(
        "    when: request.params.max_tokens > 1000\n",
        "    when: |\n      request.params.max_tokens > 1000 &&\n      requst.model == 'x'\n",
    )
    (line,) = errors(text)
    assert line.startswith("p.yaml:16: rules[1].when: invalid CEL expression at 2:1: unknown variable")


@pytest.mark.parametrize(
    ("action", "message"),
    [
        ("{type: route, set: {params.temperature: 0}}", "route can only set model, provider, region"),
        ("{type: route}", "a route action needs `set`"),
        ("{type: modify, set: {prompt: x}}", "cannot set 'prompt'"),
        ("{type: modify, set: {model.name: x}}", "model has no sub-fields"),
        ("{type: modify, set: {model: ''}}", "model must be a non-empty string"),
        ("{type: modify, set: {params: 3}}", "params must be a mapping"),
        ("{type: modify, set: {messages: [hi]}}", "messages must be a list"),
        ("{type: block, set: {model: x}}", "a block action takes no `set`"),
        ("{type: deny}", "Input should be 'block', 'route', 'modify', 'warn' or 'log'"),
    ],
)
def test_action_errors(action: str, message: str) -> None:
    text = GOOD.replace("{type: modify, set: {params.max_tokens: 1000, metadata.capped: true}}", action)
    (line,) = errors(text)
    assert line.startswith("p.yaml:16: rules[1].actions[0]")
    assert message in line


def test_every_error_is_reported_on_its_own_line() -> None:
    text = """\
name: bad name
rules:
  - name: a
    when: "request.model =="
    actions: []
  - name: b
    actions: [{type: log}]
"""
    assert errors(text) == [
        "p.yaml:1: name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$'",
        "p.yaml:4:28: rules[0].when: invalid CEL expression at 1:17: Syntax error: "
        "mismatched input '<EOF>' (expected an operand)",
        "p.yaml:5: rules[0].actions: List should have at least 1 item after validation, not 0",
        "p.yaml:6: rules[1].when: missing required field",
    ]


def test_duplicates_and_shapes() -> None:
    assert errors("name: a\nname: b\nrules: []\n") == ["p.yaml:2: name: duplicate key"]
    dup_rule = GOOD.replace("  - name: cap\n", "  - name: cheap-for-free\n")
    assert errors(dup_rule) == ["p.yaml:1: (document): duplicate rule name 'cheap-for-free'"]
    assert errors("- a\n- b\n") == ["p.yaml: a policy file must be a mapping (name, rules...)"]
    assert errors("name: [a\n")[0].startswith("p.yaml:2: invalid YAML:")


def test_files_are_read_with_their_path_in_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyFileError) as info:
        load_policy_file(tmp_path / "missing.yaml")
    assert str(tmp_path / "missing.yaml") in info.value.lines[0]
    path = tmp_path / "p.yaml"
    path.write_text(GOOD.replace("when: request.params", "when: request.paramz"))
    with pytest.raises(PolicyFileError) as info:
        load_policy_file(path)
    assert info.value.lines[0].startswith(f"{path}:14:19: rules[1].when:")


def test_the_shipped_example_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "limits.yaml"
    policy, _ = load_policy_file(example)
    assert [r.name for r in policy.rules][:2] == ["free-tier-premium-model", "eu-residency"]
