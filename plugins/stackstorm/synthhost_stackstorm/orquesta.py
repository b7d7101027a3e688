"""A strict subset of Orquesta, to check and dry-run the pack without a StackStorm.

Real Orquesta needs st2 (MongoDB, RabbitMQ); the PyPI ``orquesta`` 1.2.0 does not import
on Python >= 3.10. This runs what the ``synthralos`` workflows use, and *refuses*
anything else, so the pack stays inside what is checked here:

- workflow keys ``version`` (1.0), ``description``, ``input``, ``vars``, ``output``, ``tasks``;
- task keys ``action`` (a ref, no inline parameters), ``input``, ``next`` of
  ``{when, publish (a list of one-key mappings), do (a name or a list)}``;
- YAQL expressions ``<% ... %>`` with: ``ctx()``, ``ctx(name)``, ``result()``,
  ``succeeded()``, ``failed()``, ``.attribute`` access, ``and``/``or``/``not``,
  comparisons ``= != < > <= >=``, parentheses, and literals (numbers, quoted strings,
  ``true``/``false``/``null``). A value that is exactly one expression keeps its type;
  expressions inside longer text are rendered as text.

Semantics follow Orquesta: every transition whose ``when`` holds is taken (no ``when``:
always); a failed task none of whose transitions was taken fails the workflow, which
then returns ``{"errors": [...], "output": None}``; joins and ``with`` items are refused.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

WORKFLOW_KEYS = frozenset({"version", "description", "input", "vars", "output", "tasks"})
TASK_KEYS = frozenset({"action", "input", "next"})
TRANSITION_KEYS = frozenset({"when", "publish", "do"})
MAX_TASK_RUNS = 200


class WorkflowError(Exception):
    """The workflow uses something outside the subset, or an expression failed."""


# -- expressions -----------------------------------------------------------------------------

_EXPR = re.compile(r"<%(.*?)%>", re.S)
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?)|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")|(?P<op>!=|<=|>=|=|<|>|\(|\)|\.|,)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*))"
)
FUNCTIONS = frozenset({"ctx", "result", "succeeded", "failed"})
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Scope:
    ctx: Mapping[str, Any]
    result: Any = None
    status: str | None = None


Node = Callable[[Scope], Any]


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise WorkflowError(f"unsupported expression syntax at {text[pos:pos + 20]!r} in {text!r}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None or (value is not None and token[1] != value):
            raise WorkflowError(f"expected {value or 'more'} in {self.text!r}")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.or_()
        if self.peek() is not None:
            raise WorkflowError(f"unexpected {self.peek()[1]!r} in {self.text!r}")  # type: ignore[index]
        return node

    def or_(self) -> Node:
        node = self.and_()
        while self.peek() == ("name", "or"):
            self.take()
            node = _either(node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.peek() == ("name", "and"):
            self.take()
            node = _both(node, self.not_())
        return node

    def not_(self) -> Node:
        if self.peek() == ("name", "not"):
            self.take()
            inner = self.not_()
            return lambda s: not inner(s)
        return self.compare()

    def compare(self) -> Node:
        node = self.postfix()
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in ("=", "!=", "<", ">", "<=", ">="):
            self.take()
            left, right, op = node, self.postfix(), token[1]
            ops: dict[str, Callable[[Any, Any], bool]] = {
                "=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
                ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, ">=": lambda a, b: a >= b,
            }
            fn = ops[op]
            return lambda s: fn(left(s), right(s))
        return node

    def postfix(self) -> Node:
        node = self.primary()
        while self.peek() == ("op", "."):
            self.take()
            kind, name = self.take()
            if kind != "name":
                raise WorkflowError(f"expected an attribute name after '.' in {self.text!r}")
            node = _attribute(node, name, self.text)
        return node

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "num":
            number = float(value) if "." in value else int(value)
            return lambda s: number
        if kind == "str":
            text = value[1:-1].encode().decode("unicode_escape")
            return lambda s: text
        if kind == "op" and value == "(":
            node = self.or_()
            self.take(")")
            return node
        if kind == "name":
            if value in ("true", "false", "null"):
                constant = {"true": True, "false": False, "null": None}[value]
                return lambda s: constant
            if value in FUNCTIONS and self.peek() == ("op", "("):
                self.take("(")
                arg: str | None = None
                if self.peek() != ("op", ")"):
                    akind, avalue = self.take()
                    if akind not in ("name", "str") or value != "ctx":
                        raise WorkflowError(f"{value}() takes no argument here, in {self.text!r}")
                    arg = avalue.strip("'\"")
                self.take(")")
                return _function(value, arg, self.text)
        raise WorkflowError(f"unsupported {value!r} in {self.text!r}")


def _either(left: Node, right: Node) -> Node:
    return lambda s: bool(left(s)) or bool(right(s))


def _both(left: Node, right: Node) -> Node:
    return lambda s: bool(left(s)) and bool(right(s))


def _function(name: str, arg: str | None, text: str) -> Node:
    if name == "ctx":
        if arg is None:
            return lambda s: s.ctx
        return lambda s: _get(s.ctx, arg, text)
    if name == "result":
        return lambda s: s.result
    if name == "succeeded":
        return lambda s: s.status == "succeeded"
    return lambda s: s.status == "failed"


def _get(value: Any, name: str, text: str) -> Any:
    if isinstance(value, Mapping):
        found = value.get(name, _MISSING)
        if found is _MISSING:
            raise WorkflowError(f"{name!r} is not defined (in {text!r}; has {sorted(value)})")
        return found
    raise WorkflowError(f"cannot read {name!r} of {type(value).__name__} in {text!r}")


def _attribute(node: Node, name: str, text: str) -> Node:
    return lambda s: _get(node(s), name, text)


_CACHE: dict[str, Node] = {}


def compile_expression(text: str) -> Node:
    node = _CACHE.get(text)
    if node is None:
        node = _CACHE[text] = _Parser(text).parse()
    return node


def expressions(value: Any) -> list[str]:
    """Every ``<% %>`` expression inside a (nested) value."""
    if isinstance(value, str):
        if "{{" in value or "{%" in value:
            raise WorkflowError(f"Jinja is outside the checked subset: {value!r}")
        return [m.group(1) for m in _EXPR.finditer(value)]
    if isinstance(value, Mapping):
        return [e for v in value.values() for e in expressions(v)]
    if isinstance(value, list):
        return [e for v in value for e in expressions(v)]
    return []


def render(value: Any, scope: Scope) -> Any:
    if isinstance(value, str):
        whole = _EXPR.fullmatch(value.strip())
        if whole is not None:
            return compile_expression(whole.group(1))(scope)
        if "<%" in value:
            return _EXPR.sub(lambda m: str(compile_expression(m.group(1))(scope)), value)
        return value
    if isinstance(value, Mapping):
        return {k: render(v, scope) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, scope) for v in value]
    return value


# -- workflow structure ------------------------------------------------------------------------


def _named(items: Any, where: str) -> list[tuple[str, Any, bool]]:
    """``input``/``vars``/``output``/``publish`` lists: names, or one-key mappings with a
    value. Returns ``(name, value, has_value)``."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise WorkflowError(f"{where} must be a list")
    out: list[tuple[str, Any, bool]] = []
    for item in items:
        if isinstance(item, str):
            out.append((item, None, False))
        elif isinstance(item, Mapping) and len(item) == 1:
            ((name, value),) = item.items()
            out.append((str(name), value, True))
        else:
            raise WorkflowError(f"{where}: {item!r} is not a name or a one-key mapping")
    return out


def _do(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise WorkflowError(f"{where}: do must be a task name or a list of them")


def check_workflow(spec: Any) -> list[str]:
    """Problems with a workflow definition (empty: inside the subset and consistent)."""
    problems: list[str] = []
    if not isinstance(spec, Mapping):
        return ["the workflow is not a mapping"]
    unknown = set(spec) - WORKFLOW_KEYS
    if unknown:
        problems.append(f"unsupported workflow keys {sorted(unknown)}")
    if str(spec.get("version")) != "1.0":
        problems.append(f"version must be 1.0 (got {spec.get('version')!r})")
    tasks = spec.get("tasks")
    if not isinstance(tasks, Mapping) or not tasks:
        return [*problems, "tasks must be a non-empty mapping"]
    try:
        for where in ("input", "vars", "output"):
            for _, value, _ in _named(spec.get(where), where):
                for text in expressions(value):
                    compile_expression(text)
    except WorkflowError as exc:
        problems.append(str(exc))
    targets: set[str] = set()
    for name, task in tasks.items():
        if not isinstance(task, Mapping):
            problems.append(f"task {name}: not a mapping")
            continue
        extra = set(task) - TASK_KEYS
        if extra:
            problems.append(f"task {name}: unsupported keys {sorted(extra)}")
        action = task.get("action")
        if not isinstance(action, str) or not re.fullmatch(r"[a-z0-9_]+\.[A-Za-z0-9_\-]+", action):
            problems.append(f"task {name}: action must be a plain 'pack.action' ref (got {action!r})")
        if task.get("input") is not None and not isinstance(task.get("input"), Mapping):
            problems.append(f"task {name}: input must be a mapping")
        try:
            for text in expressions(task.get("input") or {}):
                compile_expression(text)
            nexts = task.get("next") or []
            if not isinstance(nexts, list):
                raise WorkflowError("next must be a list")
            for item in nexts:
                if not isinstance(item, Mapping) or set(item) - TRANSITION_KEYS:
                    raise WorkflowError(f"transition {item!r}: only when/publish/do")
                for text in expressions(item.get("when") or ""):
                    compile_expression(text)
                for _, value, has_value in _named(item.get("publish"), "publish"):
                    if not has_value:
                        raise WorkflowError("publish items need a value")
                    for text in expressions(value):
                        compile_expression(text)
                targets.update(_do(item.get("do"), f"task {name}"))
        except WorkflowError as exc:
            problems.append(f"task {name}: {exc}")
    for target in sorted(targets - set(tasks)):
        problems.append(f"a transition goes to task {target!r}, which does not exist")
    if not set(tasks) - targets:
        problems.append("no start task (every task is some transition's target)")
    return problems


def action_refs(spec: Mapping[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """``(task, action ref, input)`` for every task."""
    tasks = spec.get("tasks") or {}
    return [(str(n), str(t.get("action")), dict(t.get("input") or {})) for n, t in tasks.items()
            if isinstance(t, Mapping)]


# -- running -------------------------------------------------------------------------------------

ActionRunner = Callable[[str, dict[str, Any]], tuple[str, Any]]


def run_workflow(spec: Mapping[str, Any], parameters: Mapping[str, Any], run_action: ActionRunner) -> tuple[str, Any]:
    """Run a workflow; ``run_action(ref, input) -> (status, result)`` runs its tasks.
    Returns ``("succeeded", {"output": ...})`` or ``("failed", {"errors": [...], "output": None})``."""
    problems = check_workflow(spec)
    if problems:
        return "failed", {"errors": [{"type": "error", "message": p} for p in problems], "output": None}
    ctx: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    try:
        for name, default, has_default in _named(spec.get("input"), "input"):
            if name in parameters:
                ctx[name] = parameters[name]
            else:
                ctx[name] = render(default, Scope(ctx)) if has_default else None
        for name, value, _ in _named(spec.get("vars"), "vars"):
            ctx[name] = render(value, Scope(ctx))
        tasks: Mapping[str, Any] = spec["tasks"]
        targets = {t for task in tasks.values() for item in task.get("next") or [] for t in _do(item.get("do"), "")}
        queue = deque(name for name in tasks if name not in targets)
        runs = 0
        while queue and not errors:
            name = queue.popleft()
            runs += 1
            if runs > MAX_TASK_RUNS:
                raise WorkflowError(f"more than {MAX_TASK_RUNS} task runs: a loop?")
            task = tasks[name]
            task_input = render(task.get("input") or {}, Scope(ctx))
            status, result = run_action(task["action"], task_input)
            taken = False
            for item in task.get("next") or []:
                scope = Scope(ctx, result, status)
                when = item.get("when")
                if when is not None and not render(when, scope):
                    continue
                taken = True
                for key, value, _ in _named(item.get("publish"), "publish"):
                    ctx[key] = render(value, Scope(ctx, result, status))
                queue.extend(_do(item.get("do"), name))
            if status != "succeeded" and not taken:
                errors.append({"type": "error", "task_id": name, "message": f"task {name} {status}",
                               "result": result})
        if errors:
            return "failed", {"errors": errors, "output": None}
        output = {name: render(value, Scope(ctx)) for name, value, _ in _named(spec.get("output"), "output")}
        return "succeeded", {"output": output}
    except WorkflowError as exc:
        return "failed", {"errors": [*errors, {"type": "error", "message": str(exc)}], "output": None}
