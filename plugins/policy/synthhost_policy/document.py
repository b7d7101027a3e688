"""The policy set file: YAML, validated with pydantic, every error one line with its
file, line and field."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from synthhost.errors import UsageError
from synthhost.limits import LimitedLoader, read_text_file
from synthhost_policy.expr import ExprError, compile_condition

GLOBAL = "*"
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$"
ActionType = Literal["block", "route", "modify", "warn", "log"]
ROUTE_FIELDS = ("model", "provider", "region")
MODIFY_ROOTS = ("model", "provider", "region", "params", "metadata", "messages", "args")  # args: tool rules


def _check_path(path: str, allowed: Sequence[str]) -> tuple[str, ...]:
    parts = tuple(path.split("."))
    if not all(parts) or parts[0] not in allowed:
        raise ValueError(f"cannot set {path!r} (allowed: {', '.join(allowed)}, or params.X/metadata.X/args.X)")
    if len(parts) > 1 and parts[0] not in ("params", "metadata", "args"):
        raise ValueError(f"cannot set {path!r}: {parts[0]} has no sub-fields")
    return parts


def _check_value(parts: tuple[str, ...], value: Any) -> None:
    root = parts[0]
    if len(parts) > 1:
        return  # params.X / metadata.X: any JSON value (null removes the key)
    if root in ("model", "provider") and not (isinstance(value, str) and value):
        raise ValueError(f"{root} must be a non-empty string")
    if root == "region" and value is not None and not isinstance(value, str):
        raise ValueError("region must be a string or null")
    if root in ("params", "metadata", "args") and not isinstance(value, dict):
        raise ValueError(f"{root} must be a mapping (or set {root}.KEY)")
    if root == "messages" and not (
        isinstance(value, list) and all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in value)
    ):
        raise ValueError("messages must be a list of {role, content} mappings")


class Action(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    type: ActionType
    message: str | None = Field(default=None, max_length=2000)
    set_: dict[str, Any] | None = Field(default=None, alias="set")

    @model_validator(mode="after")
    def _check(self) -> Action:
        if self.type in ("route", "modify"):
            if not self.set_:
                raise ValueError(f"a {self.type} action needs `set` with at least one field")
            allowed = ROUTE_FIELDS if self.type == "route" else MODIFY_ROOTS
            for path, value in self.set_.items():
                if self.type == "route" and path not in ROUTE_FIELDS:
                    raise ValueError(f"route can only set {', '.join(ROUTE_FIELDS)}, not {path!r} (use modify)")
                _check_value(_check_path(path, allowed), value)
        elif self.set_ is not None:
            raise ValueError(f"a {self.type} action takes no `set`")
        return self


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE)
    priority: int = 0
    enabled: bool = True
    description: str | None = None
    when: str = Field(min_length=1)
    actions: list[Action] = Field(min_length=1)

    @field_validator("when")
    @classmethod
    def _compile(cls, value: str) -> str:
        compile_condition(value)  # ExprError (a ValueError) carries the position
        return value


class PolicySet(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_RE)
    workspace: str | None = Field(default=None, min_length=1, max_length=200)
    priority: int = 0
    enabled: bool = True
    description: str | None = None
    rules: list[Rule] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_rules(self) -> PolicySet:
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"duplicate rule name {rule.name!r}")
            seen.add(rule.name)
        return self

    def document(self) -> dict[str, Any]:
        """The canonical JSON document stored per version (workspace resolved apart)."""
        return self.model_dump(mode="json", by_alias=True, exclude={"workspace"}, exclude_none=True)


class PolicyFileError(ValueError):
    """One or more problems in a policy file; ``lines`` holds one message per problem."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


# -- YAML with line numbers ---------------------------------------------------------------

Loc = tuple[str | int, ...]


def _walk(node: yaml.Node, path: Loc, lines: dict[Loc, Any], dupes: list[tuple[Loc, int]]) -> None:
    lines[path] = node
    if isinstance(node, yaml.MappingNode):
        keys: set[Any] = set()
        for key_node, value_node in node.value:
            key = key_node.value
            if key in keys:
                dupes.append(((*path, key), key_node.start_mark.line + 1))
            keys.add(key)
            _walk(value_node, (*path, key), lines, dupes)
            lines[(*path, key, "__key__")] = key_node
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*path, index), lines, dupes)


def format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _line_of(loc: Loc, nodes: Mapping[Loc, Any]) -> int | None:
    for n in range(len(loc), -1, -1):
        key_node = nodes.get((*loc[:n], "__key__"))
        node = key_node or nodes.get(loc[:n])
        if node is not None:
            return int(node.start_mark.line) + 1
    return None


_MESSAGES = {
    "extra_forbidden": "unknown field",
    "missing": "missing required field",
}


def _expr_line(node: Any, err: ExprError) -> tuple[int, int] | None:
    """Map a position inside the expression to the file, where that is exact."""
    if node is None or err.line is None or err.col is None:
        return None
    mark = node.start_mark
    if node.style is None:  # plain scalar: single-line positions are exact
        return (mark.line + 1, mark.column + err.col) if err.line == 1 else None
    if node.style == "|":  # literal block: the text starts on the next line
        return (mark.line + 1 + err.line, 0)
    if node.style in ("'", '"') and err.line == 1:
        escaped = node.style in node.value or (node.style == '"' and "\\" in node.value)
        return (mark.line + 1, 0 if escaped else mark.column + 1 + err.col)  # 0: column unknown
    return None


def parse_policy(text: str, source: str = "<policy>") -> PolicySet:
    """Parse and validate a policy file; raise :class:`PolicyFileError`."""
    try:
        loader = LimitedLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise PolicyFileError([f"{source}{line}: invalid YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise PolicyFileError([f"{source}: invalid YAML: {exc}"]) from None
    if not isinstance(data, dict):
        raise PolicyFileError([f"{source}: a policy file must be a mapping (name, rules...)"])
    nodes: dict[Loc, Any] = {}
    dupes: list[tuple[Loc, int]] = []
    if root is not None:
        _walk(root, (), nodes, dupes)
    if dupes:
        raise PolicyFileError([f"{source}:{line}: {format_loc(loc)}: duplicate key" for loc, line in dupes])
    try:
        return PolicySet.model_validate(data)
    except ValidationError as exc:
        raise PolicyFileError(_format_errors(exc, source, nodes)) from None


def _format_errors(exc: ValidationError, source: str, nodes: Mapping[Loc, Any]) -> list[str]:
    out: list[str] = []
    for err in exc.errors():
        loc: Loc = tuple(err["loc"])
        field = format_loc(loc)
        ctx_error = (err.get("ctx") or {}).get("error")
        line = _line_of(loc, nodes)
        where = f"{source}:{line}" if line else source
        if isinstance(ctx_error, ExprError):
            exact = _expr_line(nodes.get(loc), ctx_error)
            if exact is not None:
                where = f"{source}:{exact[0]}" + (f":{exact[1]}" if exact[1] else "")
            out.append(f"{where}: {field}: {ctx_error}")
            continue
        message = _MESSAGES.get(err["type"], err["msg"])
        if message.startswith("Value error, "):
            message = message[len("Value error, ") :]
        message = re.sub(r"\s+", " ", message)
        out.append(f"{where}: {field}: {message}")
    return out


def load_policy_file(path: str | Path) -> tuple[PolicySet, str]:
    """Read and validate a file; returns the set and the file's text."""
    p = Path(path)
    try:
        text = read_text_file(p, what="policy file")
    except UsageError as exc:
        raise PolicyFileError([exc.message]) from None
    return parse_policy(text, str(p)), text


def policy_from_document(document: Mapping[str, Any], workspace: str) -> PolicySet:
    """Rebuild a stored document (already validated at apply)."""
    return PolicySet.model_validate({**document, "workspace": workspace})
