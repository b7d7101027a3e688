"""The agent.yaml format: validation, one-line errors with lines, templates, inputs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from synthhost.agent import (
    BUILTIN_VARIABLES,
    AgentSpec,
    InputSpec,
    Step,
    TemplateRenderError,
    check_providers,
    load_agent,
    parse_agent,
    render_step,
    resolve_inputs,
    split_model,
    step_variables,
)
from synthhost.errors import ErrorCode, UsageError

ROOT = Path(__file__).resolve().parents[1]
BAD = Path(__file__).parent / "data" / "bad_agents"
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))

OK = """\
name: summarize
description: Summarise, then title.
model: gpt-4o-mini
params: {temperature: 0.5, max_tokens: 100}
inputs:
  text: {description: the text}
  style: {default: bullets}
  note: {required: false}
steps:
  - name: summary
    system: You are terse; workspace {{ workspace }}.
    prompt: |
      Summarise as {{ style }}:
      {{ text }}{{ note }}
  - name: title
    model: openai/gpt-4o
    params: {temperature: 0.1}
    output: headline
    prompt: "Title for {{ summary }} ({{ agent }}, {{ step }})"
  - name: check
    prompt: "{{ headline }} / {{ outputs['headline'] }} / {{ inputs['style'] }} / {{ run_id }}"
retry: {max_attempts: 5, initial_delay_s: 0.1, max_delay_s: 2}
schedule: "*/5 * * * *"
metadata: {owner: team-a}
"""


def error_of(text: str, source: str = "agent.yaml") -> str:
    with pytest.raises(UsageError) as info:
        parse_agent(textwrap.dedent(text), source)
    message = info.value.message
    assert "\n" not in message and "Traceback" not in message
    assert info.value.code == ErrorCode.INVALID_AGENT
    return message


# -- the happy path ---------------------------------------------------------------------


def test_parse_full_agent() -> None:
    spec = parse_agent(OK, "ok.yaml")
    assert spec.name == "summarize"
    assert spec.workspace == "default"
    assert spec.model == "gpt-4o-mini"  # a bare name stays bare: the host resolves it (model list, else echo)
    assert spec.source == "ok.yaml"
    assert [s.name for s in spec.steps] == ["summary", "title", "check"]
    assert [s.output_name for s in spec.steps] == ["summary", "headline", "check"]
    assert spec.inputs["text"].required is True
    assert spec.inputs["style"].required is False  # has a default
    assert spec.inputs["note"].required is False
    assert spec.retry.max_attempts == 5
    assert spec.schedule == "*/5 * * * *"
    assert spec.metadata == {"owner": "team-a"}
    assert spec.model_for(spec.steps[0]) == "gpt-4o-mini"
    assert spec.model_for(spec.steps[1]) == "openai/gpt-4o"
    assert spec.params_for(spec.steps[1]) == {"temperature": 0.1, "max_tokens": 100}
    assert spec.line_of(("steps", 1, "model")) == 16


def test_defaults() -> None:
    spec = parse_agent("name: a\nmodel: echo/x\nsteps: [{name: s, prompt: hi}]\n")
    assert spec.workspace == "default"
    assert spec.retry.model_dump() == {
        "max_attempts": 3,
        "initial_delay_s": 1.0,
        "max_delay_s": 30.0,
    }
    assert spec.schedule is None and spec.params == {} and spec.inputs == {}
    assert spec.source == "<string>"


def test_split_model() -> None:
    assert split_model("openai/gpt-4o") == ("openai", "gpt-4o")
    assert split_model("gpt-4o") == ("echo", "gpt-4o")
    assert split_model("openai/meta-llama/Llama-3.1-8B") == ("openai", "meta-llama/Llama-3.1-8B")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path: Path) -> None:
    spec = load_agent(path)
    check_providers(spec, {"echo"})  # every example runs offline
    inputs = resolve_inputs(spec, {})  # and needs no arguments
    outputs: dict[str, str] = {}
    for step in spec.steps:
        variables = step_variables(spec, step, inputs, outputs, workspace="w", run_id="r1")
        _, prompt = render_step(step, variables)
        assert prompt.strip()
        outputs[step.output_name] = f"<{step.name}>"


def test_at_least_three_examples() -> None:
    assert len(EXAMPLES) >= 3


# -- rendering --------------------------------------------------------------------------


def test_render_step_and_builtins() -> None:
    spec = parse_agent(OK)
    inputs = resolve_inputs(spec, {"text": "Hello world."})
    assert inputs == {"text": "Hello world.", "style": "bullets", "note": ""}
    first, second, third = spec.steps
    system, prompt = render_step(
        first, step_variables(spec, first, inputs, {}, workspace="ws1", run_id="r1")
    )
    assert system == "You are terse; workspace ws1."
    assert prompt == "Summarise as bullets:\nHello world."
    outputs = {"summary": "S"}
    system, prompt = render_step(
        second, step_variables(spec, second, inputs, outputs, workspace="ws1", run_id="r1")
    )
    assert system is None
    assert prompt == "Title for S (summarize, title)"
    outputs["headline"] = "H"
    _, prompt = render_step(
        third, step_variables(spec, third, inputs, outputs, workspace="ws1", run_id="r1")
    )
    assert prompt == "H / H / bullets / r1"
    assert set(BUILTIN_VARIABLES) == {"workspace", "agent", "run_id", "step", "inputs", "outputs"}


def test_block_tags_leave_no_blank_lines() -> None:
    spec = parse_agent(
        textwrap.dedent(
            """\
            name: a
            model: m
            inputs: {kind: {default: billing}}
            steps:
              - name: s
                prompt: |
                  Start
                  {% if kind == "billing" %}
                  Billing text
                  {% else %}
                  Other text
                  {% endif %}
                  End
            """
        )
    )
    step = spec.steps[0]
    variables = step_variables(spec, step, {"kind": "billing"}, {}, workspace="w", run_id="r")
    assert render_step(step, variables) == (None, "Start\nBilling text\nEnd")


def test_templates_compiled_once(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = parse_agent(OK)
    step = spec.steps[0]
    compiled = step.templates()
    import synthhost.agent as agent_module

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("templates were compiled again")

    monkeypatch.setattr(agent_module._ENV, "from_string", no_compile)
    variables = step_variables(
        spec, step, resolve_inputs(spec, {"text": "t"}), {}, workspace="w", run_id="r"
    )
    for _ in range(3):
        render_step(step, variables)
    assert step.templates() is compiled


def test_spec_built_in_code_compiles_lazily() -> None:
    spec = AgentSpec(
        name="coded",
        model="echo/x",
        inputs={"who": InputSpec(default="you")},
        steps=[Step(name="s", prompt="Hi {{ who }}")],
    )
    assert spec.inputs["who"].required is False
    step = spec.steps[0]
    _, prompt = render_step(
        step, step_variables(spec, step, {"who": "me"}, {}, workspace="w", run_id="r")
    )
    assert prompt == "Hi me"


def test_render_errors_are_template_errors() -> None:
    spec = parse_agent(
        "name: a\nmodel: m\ninputs: {x: {default: v}}\nsteps:\n"
        "  - name: s\n    prompt: \"{{ inputs['missing'] }}\"\n"
        '  - name: t\n    prompt: "{{ x.__class__.__mro__ }}"\n'
    )
    for step in spec.steps:
        variables = step_variables(spec, step, {"x": "v"}, {}, workspace="w", run_id="r")
        with pytest.raises(TemplateRenderError) as info:
            render_step(step, variables)
        assert info.value.code == ErrorCode.TEMPLATE_ERROR
        assert step.name in info.value.message


def test_sandbox_is_immutable() -> None:
    spec = parse_agent(
        "name: a\nmodel: m\ninputs: {x: {default: v}}\nsteps:\n"
        "  - name: s\n    prompt: \"{{ inputs.update({'x': 'hacked'}) }}\"\n"
    )
    step = spec.steps[0]
    variables = step_variables(spec, step, {"x": "v"}, {}, workspace="w", run_id="r")
    with pytest.raises(TemplateRenderError):
        render_step(step, variables)
    assert variables["inputs"] == {"x": "v"}


# -- the bad files: one line each, file:line: field: problem ------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "syntax_error.yaml",
            ":8: YAML syntax error: found unexpected end of stream "
            "(while scanning a quoted scalar started on line 5)",
        ),
        (
            "unknown_field.yaml",
            ":6: steps[0].temprature: unknown field 'temprature' "
            "(known: name, prompt, system, model, params, output, tools, max_turns, output_schema, output_retries)",
        ),
        ("missing_field.yaml", ":4: steps[0].prompt: missing required field"),
        (
            "wrong_type.yaml",
            ":4: retry.max_attempts: should be a valid integer, got str 'several'",
        ),
        ("template_syntax.yaml", ":9: steps[0].prompt: template syntax error: unexpected '}'"),
        (
            "undefined_variable.yaml",
            ":12: steps[1].prompt: undefined template variable 'topic' (known: summary, text)",
        ),
        (
            "forward_reference.yaml",
            ":5: steps[0].prompt: undefined template variable 'summary' (known: none); "
            "'summary' is the output of this or a later step",
        ),
        ("bad_cron.yaml", ":3: schedule: invalid cron expression 'every monday'"),
    ],
)
def test_bad_files(name: str, expected: str) -> None:
    path = BAD / name
    with pytest.raises(UsageError) as info:
        load_agent(path)
    assert info.value.message == f"{path}{expected}"


def test_unknown_provider_file() -> None:
    path = BAD / "unknown_provider.yaml"
    spec = load_agent(path)
    with pytest.raises(UsageError) as info:
        check_providers(spec, {"echo", "openai"})
    assert info.value.message == (
        f"{path}:7: unknown provider 'antrhopic' in steps[1].model (known: echo, openai)"
    )
    check_providers(spec, {"echo", "antrhopic"})  # fine once the provider exists


def test_unknown_provider_in_agent_model() -> None:
    spec = parse_agent("name: a\nmodel: foo/bar\nsteps: [{name: s, prompt: hi}]\n", "a.yaml")
    with pytest.raises(
        UsageError, match=r"^INVALID_AGENT: a\.yaml:2: unknown provider 'foo' in model "
    ):
        check_providers(spec, {"echo"}, "a.yaml")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such file"):
        load_agent(tmp_path / "nope.yaml")
    with pytest.raises(UsageError, match="is a directory"):
        load_agent(tmp_path)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "agent.yaml: the agent file is empty"),
        ("# only a comment\n", "agent.yaml: the agent file is empty"),
        ("- a\n- b\n", "agent.yaml:1: the agent file must be a mapping"),
        ("name: x\n  model: m\n", "agent.yaml:2: YAML syntax error: mapping values are not"),
        ("name: a\n---\nname: b\n", "agent.yaml:2: YAML syntax error: expected a single"),
        ("name: a\nmodel: m\nname: b\nsteps: []\n", "agent.yaml:3: name: duplicate key"),
        ("model: m\nsteps: [{name: s, prompt: hi}]\n", "agent.yaml:1: name: missing required"),
        ("name: a\nsteps: [{name: s, prompt: hi}]\n", "agent.yaml:1: model: missing required"),
        ("name: a\nmodel: m\n", "agent.yaml:1: steps: missing required field"),
        ("name: a\nmodel: m\nsteps: []\n", "agent.yaml:3: steps: at least one step is required"),
        ("name: a\nmodel: m\nsteps: hi\n", "agent.yaml:3: steps: should be a valid list, got str"),
        (
            "name: a\nmodel: m\ncolour: red\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:3: colour: unknown field 'colour' (known: name, description, workspace,",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - name: s\n    prompt: hi\n    params: [1]\n",
            "agent.yaml:6: steps[0].params: should be a valid dictionary, got a list",
        ),
        (
            "name: 5\nmodel: m\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:1: name: should be a valid string, got int 5",
        ),
        (
            "name: a b\nmodel: m\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:1: name: agent name must be",
        ),
        (
            "name: a\nmodel: 'openai/'\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:2: model: model must be 'provider/model'",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - name: s\n    prompt: hi\n    model: 'x y'\n",
            "agent.yaml:6: steps[0].model: model must be",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - name: 1st step\n    prompt: hi\n",
            "agent.yaml:4: steps[0].name: step name must be an identifier",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - {name: s, prompt: a}\n  - {name: s, prompt: b}\n",
            "agent.yaml:5: steps[1].name: duplicate step name 's'",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - {name: s, prompt: a, output: o}\n"
            "  - {name: t, prompt: b, output: o}\n",
            "agent.yaml:5: steps[1].output: output name 'o' is already used by step 's'",
        ),
        (
            "name: a\nmodel: m\ninputs: {s: {default: x}}\nsteps:\n  - {name: s, prompt: a}\n",
            "agent.yaml:5: steps[0].name: output name 's' is also an input name",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - {name: agent, prompt: a}\n",
            "agent.yaml:4: steps[0].name: output name 'agent' is reserved",
        ),
        (
            "name: a\nmodel: m\ninputs:\n  run_id: {}\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:3: inputs: input name 'run_id' is reserved",
        ),
        (
            "name: a\nmodel: m\ninputs:\n  topic: cats\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:4: inputs.topic: should be a valid dictionary, got str 'cats'",
        ),
        (
            "name: a\nmodel: m\ninputs:\n  topic: {defualt: cats}\n"
            "steps: [{name: s, prompt: hi}]\n",
            "agent.yaml:4: inputs.topic.defualt: unknown field 'defualt' "
            "(known: description, default, required)",
        ),
        (
            "name: a\nmodel: m\ninputs:\n  topic:\n    default: [1]\n"
            "steps: [{name: s, prompt: hi}]\n",
            "agent.yaml:5: inputs.topic.default: default must be a string, number or boolean",
        ),
        (
            "name: a\nmodel: m\ninputs:\n  t: {default: x, required: true}\n"
            "steps: [{name: s, prompt: hi}]\n",
            "agent.yaml:4: inputs.t: an input with a default cannot be required",
        ),
        (
            "name: a\nmodel: m\nretry: {max_attempts: 11}\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:3: retry.max_attempts: should be less than or equal to 10",
        ),
        (
            "name: a\nmodel: m\nretry: {max_attempts: 0}\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:3: retry.max_attempts: should be greater than or equal to 1",
        ),
        (
            "name: a\nmodel: m\nretry:\n  initial_delay_s: 5\n  max_delay_s: 1\n"
            "steps: [{name: s, prompt: hi}]\n",
            "agent.yaml:3: retry: max_delay_s must be >= initial_delay_s",
        ),
        (
            "name: a\nmodel: m\nretry:\n  backoff: 2\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:4: retry.backoff: unknown field 'backoff' "
            "(known: max_attempts, initial_delay_s, max_delay_s)",
        ),
        (
            "name: a\nmodel: m\nschedule: '61 * * * *'\nsteps: [{name: s, prompt: hi}]\n",
            "agent.yaml:3: schedule: invalid cron expression '61 * * * *'",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - name: s\n    system: '{% if %}'\n    prompt: hi\n",
            "agent.yaml:5: steps[0].system: template syntax error:",
        ),
        (
            "name: a\nmodel: m\nsteps:\n  - name: s\n    system: 'Be {{ mood }}'\n    prompt: hi\n",
            "agent.yaml:5: steps[0].system: undefined template variable 'mood' (known: none)",
        ),
        (
            # A step cannot read its own output.
            "name: a\nmodel: m\nsteps:\n  - name: s\n    prompt: '{{ s }}'\n",
            "agent.yaml:5: steps[0].prompt: undefined template variable 's'",
        ),
    ],
)
def test_one_line_errors(text: str, expected: str) -> None:
    assert error_of(text).startswith(expected)


def test_first_error_in_file_order_is_reported() -> None:
    message = error_of(
        "name: a\nmodel: m\nretry: {max_attempts: 99}\nsteps:\n  - name: s\n    bogus: 1\n"
    )
    assert message.startswith("agent.yaml:3: retry.max_attempts:")
    assert message.endswith("(and 2 more)")  # bogus field, missing prompt


def test_template_line_inside_block_scalar() -> None:
    message = error_of(
        """\
        name: a
        model: m
        steps:
          - name: s
            prompt: |
              one
              two
              three {{ nope }}
        """
    )
    assert message.startswith("agent.yaml:8: steps[0].prompt: undefined template variable 'nope'")


def test_jinja_globals_and_loops_are_not_undefined() -> None:
    parse_agent(
        """\
name: a
model: m
inputs: {items: {default: abc}}
steps:
  - name: s
    prompt: "{% for c in inputs['items'] %}{{ loop.index }}{{ c }}{% endfor %}{{ range(2)|list }}"
  - name: t
    prompt: "{% set x = 1 %}{{ x }}{{ namespace(a=1).a }}"
"""
    )


# -- inputs at run time --------------------------------------------------------------------


def test_missing_input_names_it() -> None:
    spec = parse_agent(OK, "ok.yaml")
    with pytest.raises(UsageError) as info:
        resolve_inputs(spec, {})
    assert info.value.message == (
        "ok.yaml:6: inputs.text: missing required input 'text' (the text); pass --input text=VALUE"
    )


def test_unknown_input_is_refused_with_a_suggestion() -> None:
    spec = parse_agent(OK, "ok.yaml")
    with pytest.raises(UsageError) as info:
        resolve_inputs(spec, {"text": "t", "stlye": "x"})
    assert info.value.message == (
        "ok.yaml: unknown input 'stlye' for agent 'summarize', did you mean 'style'? "
        "(known: note, style, text)"
    )


def test_given_inputs_override_defaults() -> None:
    spec = parse_agent(OK)
    assert resolve_inputs(spec, {"text": "t", "style": "prose", "note": "!"}) == {
        "text": "t",
        "style": "prose",
        "note": "!",
    }
