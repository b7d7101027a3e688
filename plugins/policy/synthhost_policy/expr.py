"""CEL conditions: compile once, validate names at apply time, flatten for speed.

A condition is compiled with the Rust ``cel`` package. Before it is accepted we check,
with a small CEL tokenizer, that it only reads known context variables and fields and
calls functions this interpreter has, so a typo is refused at ``apply`` with its
position instead of failing at call time.

Accepted conditions are then *flattened*: ``request.model`` becomes the top-level
variable ``__request_model`` (same value, same semantics). Converting Python values into
CEL is what costs time (about 1 µs per string, 2 µs per dict), and nested maps are also
slower to read; flat variables let the engine convert only the fields that a workspace's
rules actually read, once per call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from synthhost_policy._cel import cel

# Context roots with a fixed shape: root -> fields. ``metadata`` (call metadata) is free-form.
ROOT_FIELDS: dict[str, tuple[str, ...]] = {
    "request": (
        "model",
        "provider",
        "params",
        "prompt",
        "prompt_tokens",
        "estimated_cost",
        "cost_known",
        "region",
        "metadata",
        "messages",
    ),
    "workspace": ("id",),
    "agent": ("name",),
    "user": ("id",),
    "org": ("id",),
    "tool": ("name", "source", "args"),  # tool calls only (pre_tool)
}
FREE_ROOTS = frozenset({"metadata"})
ROOTS = frozenset(ROOT_FIELDS) | FREE_ROOTS

# Native functions of the Rust interpreter (cel/stdlib.py docstring, checked by tests).
KNOWN_FUNCTIONS = frozenset(
    {
        "has",
        "all",
        "exists",
        "exists_one",
        "map",
        "filter",
        "size",
        "contains",
        "startsWith",
        "endsWith",
        "matches",
        "int",
        "uint",
        "double",
        "string",
        "bytes",
        "timestamp",
        "duration",
        "type",
        "dyn",
        "getFullYear",
        "getMonth",
        "getDayOfYear",
        "getDayOfMonth",
        "getDate",
        "getDayOfWeek",
        "getHours",
        "getMinutes",
        "getSeconds",
        "getMilliseconds",
    }
)
MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
# Identifiers that are values, not variables.
KEYWORDS = frozenset(
    {
        "true",
        "false",
        "null",
        "in",
        "int",
        "uint",
        "double",
        "bool",
        "string",
        "bytes",
        "list",
        "map",
        "null_type",
        "type",
    }
)


_IDENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def flat_name(root: str, field: str) -> str:
    return f"__{root}_{field}"


class ExprError(ValueError):
    """An invalid condition. ``line``/``col`` are 1-based positions inside the expression."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col

    def __str__(self) -> str:
        where = f" at {self.line}:{self.col}" if self.line is not None else ""
        return f"invalid CEL expression{where}: {self.message}"


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # id | num | str | op
    text: str
    start: int
    end: int


_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<comment>//[^\n]*)
  | (?P<str>(?:[rR][bB]?|[bB][rR]?)?(?:\"\"\"(?:\\.|[^\\])*?\"\"\"|'''(?:\\.|[^\\])*?'''
        |"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'))
  | (?P<num>0[xX][0-9a-fA-F]+[uU]?|\d+\.\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?
        |\d+[eE][+-]?\d+|\d+[uU]?)
  | (?P<id>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>==|!=|<=|>=|&&|\|\||.)
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    for m in _TOKEN_RE.finditer(source):
        kind = m.lastgroup or "op"
        if kind in ("ws", "comment"):
            continue
        tokens.append(Token(kind, m.group(), m.start(), m.end()))
    return tokens


def position(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a character offset."""
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, col


_CEL_ERROR_RE = re.compile(r"ERROR: <input>:(\d+):(\d+): ([^\n]*)")


def _parse_error(source: str, exc: Exception) -> ExprError:
    text = str(exc)
    m = _CEL_ERROR_RE.search(text)
    if m is None:
        return ExprError(text.splitlines()[0] if text else type(exc).__name__)
    message = m.group(3).strip()
    # The ANTLR "expecting {...}" set lists every token class: noise for a human.
    expecting = message.find(" expecting {")
    if expecting >= 0 and message.count(",", expecting) > 3:
        message = message[:expecting] + " (expected an operand)"
    return ExprError(message, int(m.group(1)), int(m.group(2)))


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled condition. ``uses`` names what it reads: ``"request.model"``-style
    flat fields, ``"metadata"``, or a bare root (``"request"``) when the whole object is
    needed (``request["model"]``)."""

    source: str
    program: cel.Program
    uses: frozenset[str]
    flat_source: str


def _is_member_dot(tokens: list[Token], i: int) -> bool:
    """Is tokens[i] (a '.') a member access, as opposed to a leading root-scope dot?"""
    if i == 0:
        return False
    prev = tokens[i - 1]
    return prev.kind in ("id", "num", "str") or prev.text in (")", "]", "}")


def compile_condition(source: str) -> Condition:
    """Compile and validate; raise :class:`ExprError` with the position of the problem."""
    if not source.strip():
        raise ExprError("empty expression", 1, 1)
    try:
        original = cel.compile(source)
    except Exception as exc:  # the extension raises ValueError; be defensive
        raise _parse_error(source, exc) from None
    tokens = tokenize(source)
    n = len(tokens)

    def fail(message: str, tok: Token) -> ExprError:
        line, col = position(source, tok.start)
        return ExprError(message, line, col)

    def text(j: int) -> str:
        return tokens[j].text if 0 <= j < n else ""

    # Names bound by comprehension macros: `list.exists(x, x > 1)`.
    bound: set[str] = set()
    for i, tok in enumerate(tokens):
        if (
            tok.kind == "id"
            and tok.text in MACROS
            and text(i - 1) == "."
            and text(i + 1) == "("
            and i + 3 < n
            and tokens[i + 2].kind == "id"
            and text(i + 3) == ","
        ):
            var = tokens[i + 2]
            if var.text in ROOTS:
                raise fail(f"macro variable {var.text!r} shadows a context variable", var)
            bound.add(var.text)

    uses: set[str] = set()
    edits: list[tuple[int, int, str]] = []
    i = 0
    while i < n:
        tok = tokens[i]
        member = text(i - 1) == "." and _is_member_dot(tokens, i - 1)
        if tok.kind != "id" or member:
            if tok.kind == "id" and text(i + 1) == "(" and tok.text not in KNOWN_FUNCTIONS:
                raise fail(f"unknown function {tok.text!r}", tok)
            i += 1
            continue
        name = tok.text
        if text(i + 1) == "(":  # global function call
            if name not in KNOWN_FUNCTIONS:
                raise fail(f"unknown function {name!r}", tok)
            i += 1
            continue
        if text(i - 1) == ".":  # `.name`: this interpreter has no root-scope qualifier
            raise fail(f"unknown variable '.{name}'", tokens[i - 1])
        if name in bound or name in KEYWORDS:
            i += 1
            continue
        if name not in ROOTS:
            known = ", ".join(sorted(ROOTS))
            raise fail(f"unknown variable {name!r} (known: {known})", tok)
        start = tok.start
        if name in FREE_ROOTS:
            uses.add(name)
            i += 1
            continue
        if text(i + 1) != "." or i + 2 >= n or tokens[i + 2].kind != "id":
            uses.add(name)  # bare root: request["model"], [request]...
            i += 1
            continue
        field_tok = tokens[i + 2]
        if field_tok.text not in ROOT_FIELDS[name] or text(i + 3) == "(":
            fields = ", ".join(ROOT_FIELDS[name])
            raise fail(f"unknown field {name}.{field_tok.text} (known: {fields})", field_tok)
        if text(i - 1) == "(" and text(i - 2) == "has" and text(i + 3) == ")":
            # has(request.model): the fixed fields always exist.
            edits.append((tokens[i - 2].start, tokens[i + 3].end, "true"))
        else:
            uses.add(f"{name}.{field_tok.text}")
            edits.append((start, field_tok.end, flat_name(name, field_tok.text)))
        i += 3

    # Cross-check with the compiler's own view, in case the tokenizer missed something.
    refs = original.references()
    for ref in (v.lstrip(".") for v in refs.get("variables", [])):
        if ref not in ROOTS and ref not in bound and ref not in KEYWORDS:
            raise ExprError(f"unknown variable {ref!r}")
    for fn in refs.get("functions", []):
        if _IDENT_RE.match(fn) and fn not in KNOWN_FUNCTIONS:
            raise ExprError(f"unknown function {fn!r}")

    _check_regex_literals(source, tokens)

    flat = source
    for start, end, replacement in sorted(edits, reverse=True):
        flat = flat[:start] + replacement + flat[end:]
    try:
        program = cel.compile(flat) if edits else original
    except Exception:  # pragma: no cover - a flattening bug must not lose the rule
        program, flat = original, source
        uses = {u.split(".", 1)[0] for u in uses}
    condition = Condition(source, program, frozenset(uses), flat)
    _check_type(condition)
    return condition


# Typical values of every field (the declared schema: model a string, prompt_tokens an
# int, estimated_cost a double...). A condition is run on them once when it is applied:
# one that is not boolean, or mixes types, would fail on every call.
SAMPLE: dict[str, dict[str, Any]] = {
    "request": {"model": "gpt-4o-mini", "provider": "openai", "params": {}, "prompt": "hello",
                "prompt_tokens": 10, "estimated_cost": 0.001, "cost_known": True, "region": "us-east-1",
                "metadata": {}, "messages": [{"role": "user", "content": "hello"}]},
    "workspace": {"id": "w"}, "agent": {"name": "a"}, "user": {"id": "u"}, "org": {"id": "o"},
    "tool": {"name": "search", "source": "python", "args": {}},
}


def _sample_context() -> Any:
    values: dict[str, Any] = {"metadata": {}}
    for root, fields in SAMPLE.items():
        values[root] = dict(fields)
        for name, value in fields.items():
            values[flat_name(root, name)] = value
    ctx = cel.Context()
    ctx.update(values)
    return ctx


def _check_type(condition: Condition) -> None:
    try:
        result = condition.program.execute(_sample_context())
    except KeyError:
        return  # reads an absent key (metadata.tier): "does not hold", a valid condition
    except Exception as exc:
        message = str(exc).split(". ", 1)[0].splitlines()[0]
        raise ExprError(f"fails on every call with the declared field types: {message}", 1, 1) from None
    if not isinstance(result, bool):
        raise ExprError(f"a condition must be boolean, this one gives {type(result).__name__} "
                        f"(compare it: `... == \"x\"`)", 1, 1)


def _check_regex_literals(source: str, tokens: list[Token]) -> None:
    """``matches("...")`` with a literal pattern: compile it now (the interpreter's Rust
    ``regex`` and RE2 share the syntax), so a typo is an apply-time error with its
    position, not a failure of every call."""
    import ast

    import re2

    options = re2.Options()
    options.log_errors = False
    for i, tok in enumerate(tokens):
        if tok.text != "matches" or i + 2 >= len(tokens) or tokens[i + 1].text != "(":
            continue
        arg = tokens[i + 2]
        if arg.kind != "str" or i + 3 >= len(tokens) or tokens[i + 3].text not in (")", ","):
            continue
        try:
            pattern = ast.literal_eval(arg.text)
        except (ValueError, SyntaxError):
            continue
        if not isinstance(pattern, str):
            continue
        try:
            re2.compile(pattern, options)
        except re2.error as exc:
            reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            line, col = position(source, arg.start)
            raise ExprError(f"invalid regular expression in matches(): {reason}", line, col) from None
