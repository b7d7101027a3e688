"""Guard sets: the YAML a workspace applies, checked and compiled into a pipeline.

::

    description: support bot            # optional
    input:                              # run on the request, before the provider
      - validator: no_secrets
        on_fail: fix                    # exception (default) | fix | warn | noop
      - validator: no_pii
        on_fail: exception
        args: {kinds: [card, ssn]}
        roles: [user]                   # input only: which messages (default: all)
    output:                             # run on the answer, before the caller sees it
      - validator: ban_list
        on_fail: fix
        args: {words: [hate, "kill yourself"]}
      - validator: hub:regex_match      # Guardrails AI (the [guardrails-ai] extra)
        args: {regex: "^[A-Z]"}

Everything is checked when the set is applied (unknown validators, arguments, an
``on_fail: fix`` a validator cannot honour), so a stored set always compiles, unless
the process running it lacks something the applying one had (the Guardrails AI extra):
see :class:`Pipeline.error`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthhost.limits import safe_load
from synthhost_guardrails.validators import BUILTINS, Validator

OnFail = Literal["exception", "fix", "warn", "noop"]
ON_FAIL: tuple[str, ...] = ("exception", "fix", "warn", "noop")
HUB_PREFIX = "hub:"


class GuardSetError(ValueError):
    """A guard set that cannot be used; the message is one line naming the field."""


class EntrySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    validator: str
    on_fail: OnFail = "exception"
    args: dict[str, Any] = Field(default_factory=dict)
    roles: list[str] | None = None


class GuardSetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str | None = None
    input: list[EntrySpec] = Field(default_factory=list)
    output: list[EntrySpec] = Field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Entry:
    """One compiled validator in a pipeline."""

    name: str  # as written: "no_pii", "hub:regex_match"
    validator: Validator
    on_fail: str
    roles: frozenset[str] | None = None
    threaded: bool = False  # run off the event loop (Guardrails AI validators)


@dataclass(frozen=True, slots=True)
class Pipeline:
    """A compiled guard set. ``label`` says where it came from ("default", "workspace
    acme v3", "global v1"). ``error`` is set when a stored set cannot be compiled in this
    process: every call of its workspaces is then denied, never let through unchecked."""

    label: str
    input: tuple[Entry, ...] = ()
    output: tuple[Entry, ...] = ()
    error: str | None = None
    input_threaded: bool = field(init=False)
    output_threaded: bool = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_threaded", any(e.threaded for e in self.input))
        object.__setattr__(self, "output_threaded", any(e.threaded for e in self.output))


DEFAULT_DOCUMENT: dict[str, Any] = {
    "description": "built-in default: mask secrets in prompts and answers",
    "input": [{"validator": "no_secrets", "on_fail": "fix"}],
    "output": [{"validator": "no_secrets", "on_fail": "fix"}],
}


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_error(exc: ValidationError, prefix: str = "") -> str:
    err = exc.errors()[0]
    where = _loc(tuple(err["loc"]))
    if err["type"] == "extra_forbidden":
        message = "unknown field"
    elif err["type"] == "literal_error" and where.endswith("on_fail"):
        message = f"must be one of {', '.join(ON_FAIL)}"
    else:
        message = str(err["msg"]).removeprefix("Value error, ")
    where = f"{prefix}.{where}" if prefix and where else (prefix or where)
    return f"{where}: {message}" if where else message


def parse_document(data: Any) -> GuardSetSpec:
    if data is None:
        raise GuardSetError("the guard set is empty")
    if not isinstance(data, Mapping):
        raise GuardSetError("a guard set is a mapping with 'input' and/or 'output' lists")
    try:
        return GuardSetSpec.model_validate(data)
    except ValidationError as exc:
        raise GuardSetError(_first_error(exc)) from None


def load_text(text: str) -> GuardSetSpec:
    try:
        data = safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise GuardSetError(f"{where}{problem}") from None
    return parse_document(data)


def load_file(path: str | Path) -> GuardSetSpec:
    from synthhost.errors import UsageError
    from synthhost.limits import read_text_file

    path = Path(path)
    try:
        text = read_text_file(path, what="guard set")
    except UsageError as exc:
        raise GuardSetError(exc.message) from None
    try:
        return load_text(text)
    except GuardSetError as exc:
        raise GuardSetError(f"{path}: {exc}") from None


def document(spec: GuardSetSpec) -> dict[str, Any]:
    """The canonical stored form (what ``show`` prints and ``apply`` compares)."""

    def entry(e: EntrySpec) -> dict[str, Any]:
        out: dict[str, Any] = {"validator": e.validator, "on_fail": e.on_fail}
        if e.args:
            out["args"] = e.args
        if e.roles is not None:
            out["roles"] = e.roles
        return out

    doc: dict[str, Any] = {}
    if spec.description:
        doc["description"] = spec.description
    doc["input"] = [entry(e) for e in spec.input]
    doc["output"] = [entry(e) for e in spec.output]
    return doc


def _build(spec: EntrySpec, where: str) -> Entry:
    name = spec.validator
    if spec.roles is not None and where.startswith("output"):
        raise GuardSetError(f"{where}.roles: only input validators select messages")
    if name.startswith(HUB_PREFIX):
        from synthhost_guardrails import hub

        try:
            validator: Validator = hub.HubValidator(name[len(HUB_PREFIX) :], spec.args, spec.on_fail)
        except hub.HubError as exc:
            raise GuardSetError(f"{where} ({name}): {exc}") from None
        threaded = True
    else:
        cls = BUILTINS.get(name)
        if cls is None:
            known = ", ".join(sorted(BUILTINS))
            raise GuardSetError(
                f"{where}.validator: unknown validator {name!r} (built in: {known}; Guardrails AI: hub:<name>)"
            )
        try:
            args = cls.Args.model_validate(spec.args)
        except ValidationError as exc:
            raise GuardSetError(f"{where} ({name}): {_first_error(exc, 'args')}") from None
        validator = cls(args)
        threaded = False
    if spec.on_fail == "fix":
        if not validator.can_fix:
            raise GuardSetError(f"{where}.on_fail: {name} cannot fix a text; use exception, warn or noop")
        if where.startswith("input") and not validator.fix_on_input:
            raise GuardSetError(
                f"{where}.on_fail: {name} cannot fix a prompt (a cut prompt loses its question); "
                "use exception, warn or noop"
            )
    roles = frozenset(spec.roles) if spec.roles is not None else None
    return Entry(name, validator, spec.on_fail, roles, threaded)


def compile_spec(spec: GuardSetSpec, label: str) -> Pipeline:
    """Build every validator; the first problem is a :class:`GuardSetError`."""
    inputs = tuple(_build(e, f"input[{i}]") for i, e in enumerate(spec.input))
    outputs = tuple(_build(e, f"output[{i}]") for i, e in enumerate(spec.output))
    return Pipeline(label, inputs, outputs)


def compile_document(doc: Mapping[str, Any], label: str) -> Pipeline:
    return compile_spec(parse_document(doc), label)


DEFAULT = compile_document(DEFAULT_DOCUMENT, "default")
