"""The ``agent.yaml`` format: pydantic models, loading with line-accurate errors, and
template rendering.

An agent file looks like::

    name: summarize
    model: echo/gpt-4o-mini          # "provider/model"; a bare name means provider "echo"
    inputs:
      text: {description: what to summarise}            # required (no default)
      style: {default: "three bullet points"}           # optional
    steps:
      - name: summary
        system: You are a careful editor.
        prompt: "Summarise as {{ style }}: {{ text }}"
      - name: title
        model: echo/gpt-4o
        params: {temperature: 0.2}
        prompt: "A title for: {{ summary }}"
    retry: {max_attempts: 3, initial_delay_s: 1.0, max_delay_s: 30.0}
    schedule: "0 9 * * mon-fri"

Templates are Jinja, rendered in a sandbox (``ImmutableSandboxedEnvironment``) with
strict undefined, ``trim_blocks`` and ``lstrip_blocks``. They are checked when the file
is loaded: a step may use the agent's inputs, the outputs of *earlier* steps (under the
step's ``output`` name, default its ``name``) and the built-ins in
:data:`BUILTIN_VARIABLES` (``workspace``, ``agent``, ``run_id``, ``step``, ``inputs``,
``outputs``). Build a step's variables with :func:`step_variables`.

Every problem with a file raises :class:`synthhost.errors.UsageError` with a one-line
message ``FILE:LINE: FIELD.PATH: what is wrong``.
"""

from __future__ import annotations

import contextvars
import difflib
import os
import re
import stat
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jinja2
import yaml
from croniter import croniter
from jinja2 import meta, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from synthhost.errors import ErrorCode, SynthhostError, UsageError
from synthhost.limits import LimitedLoader
from synthhost.tools.spec import HttpSpec, McpSpec, ToolSpec

__all__ = [
    "BUILTIN_VARIABLES",
    "DEFAULT_PROVIDER",
    "AgentSpec",
    "InputSpec",
    "RetryPolicy",
    "Step",
    "TemplateRenderError",
    "check_providers",
    "check_tools",
    "format_path",
    "load_agent",
    "parse_agent",
    "render_step",
    "resolve_inputs",
    "split_model",
    "step_variables",
]

DEFAULT_PROVIDER = "echo"

BUILTIN_VARIABLES: Mapping[str, str] = {
    "workspace": "the workspace the run belongs to",
    "agent": "the agent's name",
    "run_id": "the run's id",
    "step": "the current step's name",
    "inputs": "a mapping of every input value",
    "outputs": "a mapping of the outputs of the steps run so far",
}
"""Variables every template may use besides inputs and earlier outputs."""

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_AGENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")

FieldPath = tuple[str | int, ...]


class TemplateRenderError(SynthhostError):
    """A template failed while rendering (the load-time check cannot see everything,
    e.g. ``{{ inputs.missing }}``). The run fails with ``TEMPLATE_ERROR``."""

    code = ErrorCode.TEMPLATE_ERROR


# -- limits on what one agent file may ask of the host (documented in the README) ---------

MAX_FILE_BYTES = 1 << 20  # an agent file is read up to 1 MiB, and refused beyond
MAX_RENDER_CHARS = 1 << 20  # one rendered template (system or prompt)
MAX_RENDER_S = 2.0  # one template's render time
MAX_TEMPLATE_ITERATIONS = 1_000_000  # loop iterations in one render, all loops together
MAX_RETRY_DELAY_S = 3600.0
MAX_TURNS_LIMIT = 100  # the most model turns one step may take


class TemplateBudgetExceeded(jinja2.TemplateError):
    pass


_budget: contextvars.ContextVar[list[float]] = contextvars.ContextVar("synthhost_template_budget")


def _charge(n: int = 1) -> None:
    budget = _budget.get(None)
    if budget is None:
        return
    budget[0] -= n
    if budget[0] < 0:
        raise TemplateBudgetExceeded(f"more than {MAX_TEMPLATE_ITERATIONS:,} loop iterations")
    if time.monotonic() > budget[1]:
        raise TemplateBudgetExceeded(f"rendering took longer than {MAX_RENDER_S:g}s")


class _BudgetedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox, plus a budget: ``*`` and ``**`` may not build huge values, every loop
    iteration (``range`` and ``for``) is charged, and render stops past the output
    size or time limit (see :func:`render_limited`)."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    size = len(seq) * times
                    if size > MAX_RENDER_CHARS:
                        raise TemplateBudgetExceeded(f"'*' would build {size:,} items (limit {MAX_RENDER_CHARS:,})")
        if operator == "**" and isinstance(right, int | float) and abs(right) > 1000:
            raise TemplateBudgetExceeded("'**' with an exponent over 1000")
        return super().call_binop(context, operator, left, right)



def _budget_range(*args: int) -> Any:
    for value in range(*args):
        _charge()
        yield value


# One sandboxed environment for every agent: templates cannot reach Python internals or
# mutate their variables, and a missing variable is an error, never an empty string.
# trim_blocks/lstrip_blocks: a line holding only "{% if %}" leaves no blank line in the
# prompt (as in Hugging Face chat templates).
_ENV = _BudgetedEnvironment(
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=False,
    trim_blocks=True,
    lstrip_blocks=True,
)
_ENV.globals["range"] = _budget_range


def render_limited(template: jinja2.Template, variables: Mapping[str, Any]) -> str:
    """Render within the budget: at most ``MAX_RENDER_CHARS`` of output, ``MAX_RENDER_S``
    seconds and ``MAX_TEMPLATE_ITERATIONS`` loop iterations; beyond, a
    :class:`TemplateBudgetExceeded` (a ``TEMPLATE_ERROR``), never a hang."""
    token = _budget.set([float(MAX_TEMPLATE_ITERATIONS), time.monotonic() + MAX_RENDER_S])
    try:
        parts: list[str] = []
        size = 0
        for chunk in template.generate(variables):
            size += len(chunk)
            if size > MAX_RENDER_CHARS:
                raise TemplateBudgetExceeded(f"output longer than {MAX_RENDER_CHARS:,} characters")
            _charge(0)
            parts.append(chunk)
        return "".join(parts)
    finally:
        _budget.reset(token)


def split_model(ref: str) -> tuple[str, str]:
    """``"openai/gpt-4o"`` → ``("openai", "gpt-4o")``; ``"gpt-4o"`` → ``("echo",
    "gpt-4o")``. Only the first ``/`` splits, so ``openai/meta-llama/Llama-3-8B`` keeps
    the model's own slash."""
    provider, sep, model = ref.partition("/")
    if not sep:
        return DEFAULT_PROVIDER, ref
    return provider, model


def _check_model_ref(value: str) -> str:
    value = value.strip()
    provider, model = split_model(value)
    if not provider or not model or any(c.isspace() for c in value):
        raise ValueError(f"model must be 'provider/model' or a bare model name, got {value!r}")
    # A bare name stays bare: the host resolves it (a model-list name or alias, else echo).
    return value


def _check_identifier(value: str, what: str) -> str:
    if not _IDENT.match(value):
        raise ValueError(
            f"{what} must be an identifier (letters, digits, '_'; not starting with a digit), got {value!r}"
        )
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_output_schema(value: dict[str, Any] | str | None) -> dict[str, Any] | str | None:
    """A JSON Schema is checked now; a ``module:Model`` reference's format now and its
    import by :func:`check_tools` (importing user code needs the run's environment)."""
    if value is None:
        return None
    if isinstance(value, str):
        module, sep, attr = value.partition(":")
        if not sep or not module or not attr or any(c.isspace() for c in value):
            raise ValueError(f"output_schema must be a JSON Schema mapping or 'package.module:Model', got {value!r}")
        return value
    from synthhost.structured import OutputSchema

    OutputSchema.from_spec(value)
    return value


class InputSpec(_Model):
    """A declared input. ``required`` defaults to true when there is no default; an
    optional input without a default renders as the empty string."""

    description: str = ""
    default: Any = None
    required: bool = True

    @field_validator("default")
    @classmethod
    def _scalar_default(cls, value: Any) -> Any:
        if value is not None and not isinstance(value, str | int | float | bool):
            raise ValueError(f"default must be a string, number or boolean, got {type(value).__name__}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _required_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("required") is None:
            data = {**data, "required": data.get("default") is None}
        return data

    @model_validator(mode="after")
    def _not_both(self) -> InputSpec:
        if self.required and self.default is not None:
            raise ValueError("an input with a default cannot be required")
        return self


class RetryPolicy(_Model):
    max_attempts: int = Field(default=3, ge=1, le=10)
    initial_delay_s: float = Field(default=1.0, ge=0, le=MAX_RETRY_DELAY_S, allow_inf_nan=False)
    max_delay_s: float = Field(default=30.0, ge=0, le=MAX_RETRY_DELAY_S, allow_inf_nan=False)

    @model_validator(mode="after")
    def _ordered(self) -> RetryPolicy:
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError("max_delay_s must be >= initial_delay_s")
        return self


class Step(_Model):
    name: str
    prompt: str
    system: str | None = None
    model: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    output: str | None = None
    # The agent loop (synthhost.agent_loop): None inherits the agent's; [] turns tools off.
    tools: list[ToolSpec] | None = None
    max_turns: int | None = Field(default=None, ge=1, le=MAX_TURNS_LIMIT)
    output_schema: dict[str, Any] | str | None = None
    output_retries: int | None = Field(default=None, ge=0, le=10)

    # (system, prompt) compiled once, on first use (load_agent compiles eagerly).
    _compiled: tuple[jinja2.Template | None, jinja2.Template] | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return _check_identifier(value, "step name")

    @field_validator("output")
    @classmethod
    def _output(cls, value: str | None) -> str | None:
        return None if value is None else _check_identifier(value, "output name")

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return None if value is None else _check_model_ref(value)

    _output_schema = field_validator("output_schema")(classmethod(lambda cls, v: _check_output_schema(v)))

    @property
    def output_name(self) -> str:
        """The variable later steps read this step's result from."""
        return self.output or self.name

    def templates(self) -> tuple[jinja2.Template | None, jinja2.Template]:
        """The compiled ``(system, prompt)`` templates, compiled on first call."""
        if self._compiled is None:
            system = _ENV.from_string(self.system) if self.system is not None else None
            self._compiled = (system, _ENV.from_string(self.prompt))
        return self._compiled


class AgentSpec(_Model):
    name: str
    description: str = ""
    workspace: str = "default"
    model: str
    params: dict[str, Any] = Field(default_factory=dict)
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    steps: list[Step] = Field(min_length=1)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    schedule: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    tools: list[ToolSpec] = Field(default_factory=list)
    max_turns: int = Field(default=10, ge=1, le=MAX_TURNS_LIMIT)
    output_schema: dict[str, Any] | str | None = None
    output_retries: int = Field(default=2, ge=0, le=10)

    _source: str = PrivateAttr("<agent>")
    _lines: dict[FieldPath, int] = PrivateAttr(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _AGENT_NAME.match(value):
            raise ValueError(f"agent name must be letters, digits, '_', '-' or '.', got {value!r}")
        return value

    @field_validator("workspace")
    @classmethod
    def _workspace(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("workspace must not be empty")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return _check_model_ref(value)

    @field_validator("inputs")
    @classmethod
    def _input_names(cls, value: dict[str, InputSpec]) -> dict[str, InputSpec]:
        for name in value:
            _check_identifier(name, "input name")
            if name in BUILTIN_VARIABLES:
                raise ValueError(f"input name {name!r} is reserved (a built-in variable)")
        return value

    _output_schema = field_validator("output_schema")(classmethod(lambda cls, v: _check_output_schema(v)))

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"invalid cron expression {value!r}")
        return value

    @model_validator(mode="after")
    def _unique_steps(self) -> AgentSpec:
        # Raised as a plain error with its path so the loader can point at the line.
        seen_names: set[str] = set()
        seen_outputs: dict[str, str] = {}
        for i, step in enumerate(self.steps):
            if step.name in seen_names:
                raise _FieldProblem(("steps", i, "name"), f"duplicate step name {step.name!r}")
            seen_names.add(step.name)
            out = step.output_name
            field = "output" if step.output else "name"
            if out in BUILTIN_VARIABLES:
                raise _FieldProblem(("steps", i, field), f"output name {out!r} is reserved (a built-in variable)")
            if out in self.inputs:
                raise _FieldProblem(("steps", i, field), f"output name {out!r} is also an input name")
            if out in seen_outputs:
                raise _FieldProblem(
                    ("steps", i, field),
                    f"output name {out!r} is already used by step {seen_outputs[out]!r}",
                )
            seen_outputs[out] = step.name
        return self

    # -- helpers for the runner ------------------------------------------------------

    @property
    def source(self) -> str:
        """The file the spec was loaded from (``<string>`` when parsed from text)."""
        return self._source

    def model_for(self, step: Step) -> str:
        """The step's ``provider/model``: its override, else the agent's."""
        return step.model or self.model

    def params_for(self, step: Step) -> dict[str, Any]:
        """The agent's params with the step's merged over them."""
        return {**self.params, **step.params}

    def tools_for(self, step: Step) -> list[ToolSpec]:
        """The step's tools: its own list, else the agent's."""
        return list(step.tools) if step.tools is not None else list(self.tools)

    def loop_for(self, step: Step) -> tuple[int, dict[str, Any] | str | None, int]:
        """``(max_turns, output_schema, output_retries)`` for a step, the step's over the agent's."""
        return (step.max_turns or self.max_turns,
                step.output_schema if step.output_schema is not None else self.output_schema,
                step.output_retries if step.output_retries is not None else self.output_retries)

    def uses_loop(self, step: Step) -> bool:
        """Does this step run the agent loop (tools or structured output)?"""
        return bool(self.tools_for(step)) or self.loop_for(step)[1] is not None

    def compile(self) -> None:
        """Compile every template now (``load_agent`` does; specs built in code compile
        lazily on first render)."""
        for step in self.steps:
            step.templates()

    def line_of(self, path: FieldPath) -> int | None:
        """The line of a field in the source file, when the spec came from YAML."""
        return _nearest_line(self._lines, path)


class _FieldProblem(ValueError):
    """A cross-field problem found by a model validator, with the path it belongs to."""

    def __init__(self, path: FieldPath, message: str) -> None:
        super().__init__(message)
        self.path = path
        self.message = message


# -- field paths and lines --------------------------------------------------------------


def format_path(path: Iterable[str | int]) -> str:
    """``("steps", 1, "prompt")`` → ``steps[1].prompt``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _nearest_line(lines: Mapping[FieldPath, int], path: FieldPath) -> int | None:
    """The line of ``path``, or of its closest ancestor present in the file."""
    for n in range(len(path), -1, -1):
        line = lines.get(tuple(path[:n]))
        if line is not None:
            return line
    return None


def _index_lines(
    node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], dupes: list[tuple[FieldPath, int]]
) -> None:
    """Map every field path to its 1-based line: a mapping entry's line is its key's
    line, a list item's line is the item's. Records duplicate keys in ``dupes``."""
    if isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key is None or key == "<<":
                continue
            sub = (*path, key)
            if key in seen:
                dupes.append((sub, key_node.start_mark.line + 1))
            seen.add(key)
            lines[sub] = key_node.start_mark.line + 1
            _index_lines(value_node, sub, lines, dupes)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            sub = (*path, i)
            lines[sub] = item.start_mark.line + 1
            _index_lines(item, sub, lines, dupes)


def _template_lines(node: yaml.Node | None) -> int | None:
    """For a literal block scalar (``prompt: |``) the template's line 1 is the line after
    the indicator; for any other style we can only point at the field."""
    if isinstance(node, yaml.ScalarNode) and node.style == "|":
        return node.start_mark.line + 2
    return None


def _in_template(first: int | None, field_line: int | None, tline: int | None) -> int | None:
    """A template line as a file line when the YAML kept line breaks, else the field's."""
    return first + tline - 1 if first and tline else field_line


def _find_node(root: yaml.Node, path: FieldPath) -> yaml.Node | None:
    node: yaml.Node | None = root
    for part in path:
        if isinstance(node, yaml.MappingNode):
            node = next(
                (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part),
                None,
            )
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            node = node.value[part] if part < len(node.value) else None
        else:
            return None
    return node


# -- loading ----------------------------------------------------------------------------


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"[:80]


def _known_fields(path: FieldPath) -> list[str]:
    """The fields allowed at the mapping holding ``path``'s last element."""
    parent = [p for p in path[:-1] if isinstance(p, str)]
    nested: dict[str, type[BaseModel]] = {"tools": ToolSpec, "http": HttpSpec, "mcp": McpSpec, "retry": RetryPolicy}
    if not parent:
        model: type[BaseModel] = AgentSpec
    elif parent[-1] in nested and parent[0] != "inputs":
        model = nested[parent[-1]]
    elif parent[0] == "steps":
        model = Step
    elif parent[0] == "inputs":
        model = InputSpec
    else:  # pragma: no cover - only the models above forbid extras
        return []
    return list(model.model_fields)


def _pydantic_message(err: Mapping[str, Any], path: FieldPath) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown field {path[-1]!r} (known: {', '.join(_known_fields(path))})"
    if kind == "missing":
        return "missing required field"
    msg = str(err["msg"])
    if kind == "value_error":
        ctx_error = err.get("ctx", {}).get("error")
        if isinstance(ctx_error, _FieldProblem):
            return ctx_error.message
        msg = msg.removeprefix("Value error, ")
        return msg
    if kind == "too_short" and path and path[-1] == "steps":
        return "at least one step is required"
    # "Input should be a valid integer, unable to parse string as an integer"
    # → "should be a valid integer, got str 'lots'"
    msg = msg.removeprefix("Input ")
    msg = re.sub(r" or instance of \w+", "", msg)
    if kind.endswith(("_type", "_parsing")):
        msg = msg.split(", ")[0] + f", got {_describe(err.get('input'))}"
    return msg


def _error_from_validation(exc: ValidationError, source: str, lines: Mapping[FieldPath, int]) -> UsageError:
    """The first problem in file order, as one line."""
    problems: list[tuple[int, FieldPath, str]] = []
    for err in exc.errors(include_url=False):
        path: FieldPath = tuple(err["loc"])
        ctx_error = err.get("ctx", {}).get("error")
        if isinstance(ctx_error, _FieldProblem):
            path = ctx_error.path
        message = _pydantic_message(err, path)
        line = _nearest_line(lines, path) if lines else None
        problems.append((line or 0, path, message))
    problems.sort(key=lambda p: p[0])
    line, path, message = problems[0]
    field = format_path(path)
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    prefix = f"{field}: " if field else ""
    return UsageError(f"{_where(source, line or None)}: {prefix}{message}{more}")


def _check_templates(spec: AgentSpec, source: str, root: yaml.Node | None) -> None:
    """Compile every template and check that it only uses known variables: the inputs,
    the built-ins and the outputs of earlier steps."""
    known = set(spec.inputs) | set(BUILTIN_VARIABLES)
    for i, step in enumerate(spec.steps):
        for field in ("system", "prompt"):
            text = getattr(step, field)
            if text is not None:
                _check_template(spec, source, root, ("steps", i, field), text, known)
        step.templates()
        known.add(step.output_name)


def _check_template(
    spec: AgentSpec, source: str, root: yaml.Node | None, path: FieldPath, text: str, known: set[str]
) -> None:
    node = _find_node(root, path) if root is not None else None
    first, field_line = _template_lines(node), spec.line_of(path)
    field = format_path(path)
    try:
        ast = _ENV.parse(text)
    except jinja2.TemplateSyntaxError as exc:
        where = _where(source, _in_template(first, field_line, exc.lineno))
        message = _one_line(exc.message or str(exc))
        raise UsageError(f"{where}: {field}: template syntax error: {message}") from None
    undefined = meta.find_undeclared_variables(ast) - known - set(_ENV.globals)
    if not undefined:
        return
    name = min(undefined)
    tline = min(
        (n.lineno for n in ast.find_all(nodes.Name) if n.name == name and n.ctx == "load"),
        default=None,
    )
    where = _where(source, _in_template(first, field_line, tline))
    available = ", ".join(sorted(known - set(BUILTIN_VARIABLES))) or "none"
    step_index = path[1]
    assert isinstance(step_index, int)
    later = {s.output_name for s in spec.steps[step_index:]}
    hint = f"; {name!r} is the output of this or a later step" if name in later else ""
    raise UsageError(f"{where}: {field}: undefined template variable {name!r} (known: {available}){hint}")


def parse_agent(text: str, source: str = "<string>") -> AgentSpec:
    """Parse and validate an agent from YAML text. Raises :class:`UsageError`."""
    if len(text) > MAX_FILE_BYTES:
        raise UsageError(f"{source}: larger than {MAX_FILE_BYTES // 1024} KiB (an agent file's limit)")
    loader = LimitedLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = _one_line(exc.problem or exc.context or "invalid YAML")
        if exc.context and exc.problem and exc.problem.startswith("but "):
            # "expected a single document in the stream but found another document"
            problem = _one_line(f"{exc.context} {exc.problem}")
        elif exc.context and exc.problem:
            # e.g. "(while parsing a flow sequence started on line 5)"
            started = exc.context_mark
            at = f" started on line {started.line + 1}" if started and started != mark else ""
            problem += f" ({_one_line(exc.context)}{at})"
        raise UsageError(f"{_where(source, line)}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{source}: YAML error: {_one_line(str(exc))}") from None
    finally:
        loader.dispose()

    if root is None or data is None:
        raise UsageError(f"{source}: the agent file is empty")
    if not isinstance(data, dict):
        raise UsageError(
            f"{_where(source, root.start_mark.line + 1)}: the agent file must be a mapping "
            f"of fields (name, model, steps, ...), got {_describe(data)}"
        )
    lines: dict[FieldPath, int] = {(): root.start_mark.line + 1}
    dupes: list[tuple[FieldPath, int]] = []
    _index_lines(root, (), lines, dupes)
    if dupes:
        path, line = dupes[0]
        raise UsageError(f"{source}:{line}: {format_path(path)}: duplicate key")
    try:
        spec = AgentSpec.model_validate(data)
    except ValidationError as exc:
        raise _error_from_validation(exc, source, lines) from None
    spec._source = source
    spec._lines = lines
    _check_templates(spec, source, root)
    return spec


def load_agent(path: str | Path) -> AgentSpec:
    """Load and validate an agent file. Raises :class:`UsageError`."""
    source = str(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{source}: not a regular file (a device or pipe cannot be an agent file)")
        with open(path, "rb") as fh:
            raw = fh.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise UsageError(f"{source}: larger than {MAX_FILE_BYTES // 1024} KiB (an agent file's limit)")
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"{source}: is a directory, not an agent file") from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read ({exc.strerror})") from None
    return parse_agent(text, source)


# -- checks that need the host, inputs and rendering --------------------------------------


def check_providers(spec: AgentSpec, known: Iterable[str], source: str | None = None) -> None:
    """Refuse a model naming a provider the host does not have."""
    names = set(known)
    source = source or spec.source
    refs: list[tuple[FieldPath, str]] = [(("model",), spec.model)]
    refs += [(("steps", i, "model"), s.model) for i, s in enumerate(spec.steps) if s.model]
    for path, ref in refs:
        provider, _ = split_model(ref)
        if provider not in names:
            raise UsageError(
                f"{_where(source, spec.line_of(path))}: unknown provider {provider!r} in "
                f"{format_path(path)} (known: {', '.join(sorted(names)) or 'none'})"
            )


def check_tools(spec: AgentSpec, host: Any, source: str | None = None) -> None:
    """Refuse, with the entry's line, a ``python:`` tool or an ``output_schema`` model that
    does not import, and a tool name no plugin registered (HTTP and MCP entries are checked
    when the run opens them)."""
    from synthhost.structured import OutputSchema
    from synthhost.tools.toolbox import resolve_static, search_dir

    source = source or spec.source
    base_dir = search_dir(spec.source)
    entries: list[tuple[FieldPath, ToolSpec]] = [(("tools", i), t) for i, t in enumerate(spec.tools)]
    schemas: list[tuple[FieldPath, Any]] = [(("output_schema",), spec.output_schema)]
    for i, step in enumerate(spec.steps):
        entries += [(("steps", i, "tools", j), t) for j, t in enumerate(step.tools or ())]
        schemas.append((("steps", i, "output_schema"), step.output_schema))
    for path, entry in entries:
        if entry.http is None and entry.mcp is None:
            try:
                resolve_static(host, entry, base_dir)
            except ValueError as exc:
                field = (*path, "python" if entry.python else "name")
                raise UsageError(f"{_where(source, spec.line_of(field))}: {format_path(field)}: "
                                 f"{_one_line(str(exc))}") from None
    for path, value in schemas:
        if isinstance(value, str):
            try:
                OutputSchema.from_spec(value, base_dir=base_dir)
            except ValueError as exc:
                raise UsageError(f"{_where(source, spec.line_of(path))}: {format_path(path)}: "
                                 f"{_one_line(str(exc))}") from None


def resolve_inputs(spec: AgentSpec, given: Mapping[str, str]) -> dict[str, Any]:
    """Input values for a run: the given ones, then defaults. Unknown names and missing
    required inputs raise :class:`UsageError`. An optional input with no default and no
    value is ``""``."""
    source = spec.source
    unknown = sorted(set(given) - set(spec.inputs))
    if unknown:
        known = ", ".join(sorted(spec.inputs)) or "none"
        close = difflib.get_close_matches(unknown[0], list(spec.inputs), n=1)
        hint = f", did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"{source}: unknown input {unknown[0]!r} for agent {spec.name!r}{hint} (known: {known})")
    values: dict[str, Any] = {}
    for name, decl in spec.inputs.items():
        if name in given:
            values[name] = given[name]
        elif decl.default is not None:
            values[name] = decl.default
        elif decl.required:
            about = f" ({_one_line(decl.description)})" if decl.description else ""
            raise UsageError(
                f"{_where(source, spec.line_of(('inputs', name)))}: inputs.{name}: missing "
                f"required input {name!r}{about}; pass --input {name}=VALUE"
            )
        else:
            values[name] = ""
    return values


def step_variables(
    spec: AgentSpec,
    step: Step,
    inputs: Mapping[str, Any],
    outputs: Mapping[str, Any],
    *,
    workspace: str,
    run_id: str,
) -> dict[str, Any]:
    """The variables a step's templates see: inputs, earlier outputs, built-ins."""
    return {
        **inputs,
        **outputs,
        "workspace": workspace,
        "agent": spec.name,
        "run_id": run_id,
        "step": step.name,
        "inputs": dict(inputs),
        "outputs": dict(outputs),
    }


def render_step(step: Step, variables: Mapping[str, Any]) -> tuple[str | None, str]:
    """Render ``(system, prompt)``. Raises :class:`TemplateRenderError` (code
    ``TEMPLATE_ERROR``) when a template fails at run time."""
    system_t, prompt_t = step.templates()
    try:
        system = render_limited(system_t, variables) if system_t is not None else None
        prompt = render_limited(prompt_t, variables)
    except jinja2.TemplateError as exc:
        raise TemplateRenderError(f"step {step.name!r}: {type(exc).__name__}: {_one_line(str(exc))}") from None
    return system, prompt
