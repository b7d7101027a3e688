"""CEL conditions: positions of errors, names checked at compile time, flattening."""

from __future__ import annotations

import cel
import pytest

from synthhost_policy.expr import KNOWN_FUNCTIONS, ExprError, compile_condition, tokenize


@pytest.mark.parametrize(
    ("source", "line", "col", "fragment"),
    [
        ("request.model ==", 1, 17, "Syntax error"),
        ('request.model == "a" &&\n  request.params.x >', 2, 21, "Syntax error"),
        ("request.modle == 'x'", 1, 9, "unknown field request.modle"),
        ("reqest.model == 'x'", 1, 1, "unknown variable 'reqest'"),
        ("request.model.lower() == 'x'", 1, 15, "unknown function 'lower'"),
        ("foo(request.model)", 1, 1, "unknown function 'foo'"),
        ("workspace.name == 'x'", 1, 11, "unknown field workspace.name"),
        ("[1].exists(request, request > 0)", 1, 12, "shadows a context variable"),
        ("  ", 1, 1, "empty expression"),
        ('.request.model == "x"', 1, 1, "unknown variable '.request'"),
    ],
)
def test_invalid_conditions_are_refused_with_their_position(source: str, line: int, col: int, fragment: str) -> None:
    with pytest.raises(ExprError) as info:
        compile_condition(source)
    assert (info.value.line, info.value.col) == (line, col)
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(f"invalid CEL expression at {line}:{col}: ")


def test_known_functions_all_exist_in_the_interpreter() -> None:
    """Every allow-listed name runs; a name outside the list is refused at apply, so the
    list must not hold a function the interpreter lacks."""
    checks = {
        "has": "has(m.a)",
        "all": "[1].all(x, x > 0)",
        "exists": "[1].exists(x, x > 0)",
        "exists_one": "[1].exists_one(x, x > 0)",
        "map": "[1].map(x, x * 2) == [2]",
        "filter": "[1, 2].filter(x, x > 1) == [2]",
        "size": "size('ab') == 2",
        "contains": "'abc'.contains('b')",
        "startsWith": "'abc'.startsWith('a')",
        "endsWith": "'abc'.endsWith('c')",
        "matches": "'abc'.matches('^a.c$')",
        "int": "int(1.5) == 1",
        "uint": "uint(1) == 1u",
        "double": "double(1) == 1.0",
        "string": "string(1) == '1'",
        "bytes": "bytes('a') == b'a'",
        "timestamp": "timestamp('2024-01-01T00:00:00Z') > timestamp('2023-01-01T00:00:00Z')",
        "duration": "duration('1s') < duration('2s')",
        "type": "type(1) == int",
        "dyn": "dyn(1) == 1",
        "getFullYear": "timestamp('2024-01-01T00:00:00Z').getFullYear() == 2024",
        "getMonth": "timestamp('2024-02-01T00:00:00Z').getMonth() == 1",
        "getDayOfYear": "timestamp('2024-01-02T00:00:00Z').getDayOfYear() == 1",
        "getDayOfMonth": "timestamp('2024-01-02T00:00:00Z').getDayOfMonth() == 1",
        "getDate": "timestamp('2024-01-02T00:00:00Z').getDate() == 2",
        "getDayOfWeek": "timestamp('2024-01-01T00:00:00Z').getDayOfWeek() == 1",
        "getHours": "timestamp('2024-01-01T05:00:00Z').getHours() == 5",
        "getMinutes": "timestamp('2024-01-01T05:06:00Z').getMinutes() == 6",
        "getSeconds": "timestamp('2024-01-01T05:06:07Z').getSeconds() == 7",
        "getMilliseconds": "timestamp('2024-01-01T05:06:07.008Z').getMilliseconds() == 8",
    }
    assert set(checks) == set(KNOWN_FUNCTIONS)
    for name, source in checks.items():
        assert cel.compile(source).execute({"m": {"a": 1}}) is True, name


CONTEXT = {
    "request": {
        "model": "gpt-4o",
        "provider": "openai",
        "params": {"temperature": 0.7, "max_tokens": 100},
        "prompt": "hello world",
        "prompt_tokens": 3,
        "estimated_cost": 0.002,
        "region": None,
        "metadata": {"tier": "free"},
        "messages": [{"role": "user", "content": "hello world"}],
    },
    "workspace": {"id": "w1"},
    "agent": {"name": "bot"},
    "user": {"id": "u1"},
    "org": {"id": None},
    "metadata": {"team": "a"},
}


def _flat_context() -> dict[str, object]:
    out: dict[str, object] = {"metadata": CONTEXT["metadata"]}
    for root, value in CONTEXT.items():
        if root != "metadata":
            for key, item in value.items():  # type: ignore[attr-defined]
                out[f"__{root}_{key}"] = item
    return out


@pytest.mark.parametrize(
    "source",
    [
        'request.model == "gpt-4o"',
        'request.model.startsWith("gpt") && request.params.temperature > 0.5',
        "request.params.max_tokens > 50 && request.prompt_tokens < 10",
        "has(request.params.temperature) && !has(request.params.top_p)",
        "has(request.model) && has(request.region)",
        "request.region == null",
        'request.metadata.tier in ["free", "trial"]',
        'request.params.exists(k, k == "temperature")',
        'request.messages.exists(m, m.role == "user" && m.content.contains("hello"))',
        "request.estimated_cost > 0.001",
        'user.id == "u1" && workspace.id == "w1" && agent.name == "bot" && org.id == null',
        'metadata.team == "a"',
        'request["model"] == "gpt-4o"',
        'request . model == "gpt-4o" // a comment naming request.nothing',
        'r"request.nothing" != request.model',
        "'''request.model''' != request.model",
        "type(request.params) == map && size(request.prompt) == 11",
    ],
)
def test_flattening_keeps_the_meaning(source: str) -> None:
    condition = compile_condition(source)
    expected = cel.compile(source).execute(CONTEXT)
    context = {**_flat_context(), "request": CONTEXT["request"]}
    assert condition.program.execute(context) == expected
    assert expected is True  # every case above holds on CONTEXT


def test_uses_names_only_what_the_condition_reads() -> None:
    assert compile_condition("request.model == 'a' && user.id == 'b'").uses == {
        "request.model",
        "user.id",
    }
    assert compile_condition("has(request.model)").uses == frozenset()
    assert compile_condition("request['model'] == 'a'").uses == {"request"}
    assert compile_condition("metadata.x == 1").uses == {"metadata"}
    assert compile_condition("[1].exists(x, x == 1)").uses == frozenset()


def test_tokenizer_skips_strings_and_comments() -> None:
    tokens = tokenize("a.b == \"x.y\" // c.d\n&& b'q' == e")
    assert [t.text for t in tokens if t.kind == "id"] == ["a", "b", "e"]


def test_a_parse_error_message_is_one_readable_line() -> None:
    with pytest.raises(ExprError) as info:
        compile_condition("request.model == ")
    message = str(info.value)
    assert "expected an operand" in message
    assert "NUM_FLOAT" not in message


def test_importing_the_plugin_does_not_import_the_cel_repl() -> None:
    """`import cel` pulls typer/prompt_toolkit/rich (its REPL); every CLI start would pay."""
    import subprocess
    import sys

    code = "import sys, synthhost_policy.cli; print(sorted({'typer', 'prompt_toolkit', 'rich'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
