"""Evaluation: the sets in scope for a workspace, compiled once, evaluated per call.

Order: sets by priority (highest first; on a tie the workspace's own set before a
global one, then by name), rules inside a set likewise (ties keep file order). Every
matching rule's actions run in order:

- ``block`` stops evaluation and denies the call, whatever set it is in;
- ``route``/``modify`` change the request in place: the provider receives the change
  and the conditions of later rules see it;
- ``warn`` and ``log`` are recorded as decisions.

A condition reading a field or key that is absent (``request.metadata.tier`` with no
``tier``) does not hold; test presence with ``has()``. Any other evaluation error
(type mismatch, bad regex) is an ``error`` decision, and fails closed for a rule that
would block.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

from synthhost.tokens import prompt_tokens
from synthhost_policy import pricing
from synthhost_policy._cel import cel
from synthhost_policy.document import GLOBAL, PolicySet
from synthhost_policy.expr import ROOT_FIELDS, Condition, compile_condition, flat_name


class Subject(Protocol):
    """What a policy reads: :class:`synthhost.Call` satisfies it."""

    request: Any
    workspace: str
    user: str | None
    org: str | None
    agent: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class CompiledAction:
    type: str
    message: str | None
    changes: tuple[tuple[tuple[str, ...], Any], ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRule:
    name: str
    priority: int
    condition: Condition
    actions: tuple[CompiledAction, ...]
    blocks: bool


@dataclass(frozen=True, slots=True)
class CompiledSet:
    workspace: str
    name: str
    version: int
    priority: int
    rules: tuple[CompiledRule, ...]
    uses: frozenset[str]

    @property
    def scope(self) -> str:
        return "global" if self.workspace == GLOBAL else "workspace"


def reads_tool(rule: CompiledRule) -> bool:
    """Is this a tool rule (its condition reads ``tool.*``)?"""
    return any(u.partition(".")[0] == "tool" for u in rule.condition.uses)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> Condition:
    return compile_condition(source)


def compile_set(policy: PolicySet, workspace: str, version: int) -> CompiledSet:
    rules: list[CompiledRule] = []
    ordered = sorted(enumerate(policy.rules), key=lambda ir: (-ir[1].priority, ir[0]))
    for _, rule in ordered:
        if not rule.enabled:
            continue
        actions = tuple(
            CompiledAction(
                a.type,
                a.message,
                tuple((tuple(k.split(".")), v) for k, v in (a.set_ or {}).items()),
            )
            for a in rule.actions
        )
        rules.append(
            CompiledRule(
                rule.name,
                rule.priority,
                _compile(rule.when),
                actions,
                any(a.type == "block" for a in actions),
            )
        )
    uses = frozenset().union(*(r.condition.uses for r in rules)) if rules else frozenset()
    return CompiledSet(workspace, policy.name, version, policy.priority, tuple(rules), uses)


# -- the activation -------------------------------------------------------------------------


def _prompt(subject: Subject, memo: dict[str, Any]) -> str:
    prompt = memo.get("prompt")
    if prompt is None:
        prompt = memo["prompt"] = subject.request.prompt
    return prompt


def _prompt_tokens(subject: Subject, memo: dict[str, Any]) -> int:
    return prompt_tokens(subject.request)  # the host's shared estimator, memoised per request


def _estimated_cost(subject: Subject, memo: dict[str, Any]) -> float | None:
    req = subject.request
    return pricing.estimate(req.provider, req.model, _prompt_tokens(subject, memo), req.params)


def _cost_known(subject: Subject, memo: dict[str, Any]) -> bool:
    return pricing.known(subject.request.provider, subject.request.model)


Getter = Callable[[Subject, dict[str, Any]], Any]

GETTERS: dict[str, Getter] = {
    "request.model": lambda s, m: s.request.model,
    "request.provider": lambda s, m: s.request.provider,
    "request.params": lambda s, m: s.request.params,
    "request.prompt": _prompt,
    "request.prompt_tokens": _prompt_tokens,
    "request.estimated_cost": _estimated_cost,
    "request.cost_known": _cost_known,
    "request.region": lambda s, m: s.request.region,
    "request.metadata": lambda s, m: s.request.metadata,
    "request.messages": lambda s, m: s.request.messages,
    "workspace.id": lambda s, m: s.workspace,
    "agent.name": lambda s, m: s.agent,
    "user.id": lambda s, m: s.user,
    "org.id": lambda s, m: s.org,
    # A tool call (synthhost.tools.ToolCall) is the subject of tool rules.
    "tool.name": lambda s, m: cast(Any, s).name,
    "tool.source": lambda s, m: cast(Any, s).source,
    "tool.args": lambda s, m: cast(Any, s).args,
}


def _root_getter(root: str) -> Getter:
    fields = [(f, GETTERS[f"{root}.{f}"]) for f in ROOT_FIELDS[root]]
    return lambda s, m: {f: get(s, m) for f, get in fields}


# Which request fields each flat variable is computed from (for re-reading after a change).
DEPENDS: dict[str, frozenset[str]] = {
    "request.prompt": frozenset({"messages"}),
    "request.prompt_tokens": frozenset({"messages"}),
    "request.estimated_cost": frozenset({"model", "provider", "params", "messages"}),
    "request.cost_known": frozenset({"model", "provider"}),
}
ALL_FIELDS = frozenset({"model", "provider", "params", "region", "metadata", "messages", "args"})


def _depends(use: str) -> frozenset[str]:
    if use == "request":
        return ALL_FIELDS
    root, _, name = use.partition(".")
    if root == "tool":  # a tool rule's modify changes args only
        return frozenset({"args"}) if name in ("", "args") else frozenset()
    if root != "request":
        return frozenset()
    return DEPENDS.get(use, frozenset({name}))


def _constant(value: Any) -> Getter:
    return lambda s, m: value


def _variables(uses: Iterable[str], overrides: Mapping[str, Any] | None = None) -> tuple[tuple[str, Getter], ...]:
    out: list[tuple[str, Getter]] = []
    for use in sorted(uses):
        if overrides and use in overrides:
            root, name = use.split(".", 1)
            out.append((flat_name(root, name), _constant(overrides[use])))
        elif use == "metadata":
            out.append(("metadata", lambda s, m: s.metadata))
        elif "." in use:
            root, name = use.split(".", 1)
            out.append((flat_name(root, name), GETTERS[use]))
        else:
            out.append((use, _root_getter(use)))
    return tuple(out)


def _json_default(value: Any) -> Any:
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=_json_default))


_SCALARS = frozenset({str, int, float, bool, type(None)})
_local = threading.local()


def _snapshot(value: Any, depth: int = 0) -> Any:
    """A type-strict, immutable copy of a JSON-like value (``None`` when not one): in
    Python ``1 == 1.0 == True``, in CEL they differ, so types are part of it."""
    kind = type(value)
    if kind in _SCALARS:
        return (kind, value)
    if depth > 3:
        return None
    if kind is dict:
        items = []
        for key, item in value.items():
            snap = _snapshot(item, depth + 1)
            if snap is None or type(key) is not str:
                return None
            items.append((key, snap))
        return (dict, tuple(items))
    if kind is list:
        snaps = tuple(_snapshot(item, depth + 1) for item in value)
        return None if None in snaps else (list, snaps)
    return None


def build_context(variables: tuple[tuple[str, Getter], ...], subject: Subject) -> cel.Context:
    """The CEL activation for a subject.

    Converting a Python value into CEL costs about 1 us per string and 3 us per small
    map: most of an evaluation. So each thread keeps one ``cel.Context`` and converts
    only the variables whose value changed since the last evaluation in that thread
    (workspace, user, model, params... repeat from call to call). Values are compared
    through type-strict snapshots, so a dict mutated in place is still seen as changed;
    anything that is not plain JSON is always converted. Variables a plan does not read
    may hold stale values: its rules cannot see them.
    """
    state: tuple[cel.Context, dict[str, Any]] | None = getattr(_local, "state", None)
    if state is None:
        state = _local.state = (cel.Context(), {})
    ctx, last = state
    memo: dict[str, Any] = {}
    fresh: dict[str, Any] = {}
    for name, get in variables:
        value = get(subject, memo)
        snap = _snapshot(value)
        if snap is None:
            last.pop(name, None)
        elif last.get(name) == snap:
            continue
        else:
            last[name] = snap
        fresh[name] = value
    if fresh:
        try:
            ctx.update(fresh)
        except Exception:
            try:  # something CEL cannot hold (a set, an SDK object in params): its JSON form
                ctx.update({k: _jsonable(v) for k, v in fresh.items()})
            except Exception:
                _local.state = None  # never reuse a half-updated context
                raise
    return ctx


# -- decisions --------------------------------------------------------------------------------


@dataclass(slots=True)
class Decision:
    """One non-allow outcome of one rule (``action``: block, route, modify, warn, log,
    error)."""

    set: str
    version: int
    workspace: str
    rule: str
    action: str
    message: str | None = None
    changes: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "set": self.set,
            "version": self.version,
            "scope": "global" if self.workspace == GLOBAL else "workspace",
            "rule": self.rule,
            "action": self.action,
        }
        for key in ("message", "changes", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        return out


@dataclass(slots=True)
class Outcome:
    decisions: list[Decision] = field(default_factory=list)
    blocked: Decision | None = None

    @property
    def allowed(self) -> bool:
        return self.blocked is None

    @property
    def warnings(self) -> list[str]:
        return [d.message or d.rule for d in self.decisions if d.action == "warn"]


_EMPTY = Outcome()


@dataclass(frozen=True, slots=True)
class Plan:
    """The compiled sets in scope for one workspace, in evaluation order."""

    sets: tuple[CompiledSet, ...]
    variables: tuple[tuple[str, Getter], ...]
    # request field -> the variables to re-read when a route/modify changes it
    dependents: Mapping[str, tuple[tuple[str, Getter], ...]]
    # The rules whose condition reads ``tool.*``: evaluated for tool calls (pre_tool),
    # never for model calls; every other rule is evaluated for model calls only.
    tools: Plan | None = None

    @classmethod
    def build(
        cls,
        workspace: str,
        sets: Iterable[CompiledSet],
        overrides: Mapping[str, Any] | None = None,
        *,
        for_tools: bool = False,
    ) -> Plan:
        """``overrides`` fixes flat fields (``{"request.prompt_tokens": 10}``): for
        ``policy test``."""
        candidates = list(sets)
        in_scope = []
        for cset in candidates:
            rules = tuple(r for r in cset.rules if reads_tool(r) == for_tools)
            if cset.workspace in (workspace, GLOBAL) and rules:
                uses = frozenset().union(*(r.condition.uses for r in rules))
                whole = len(rules) == len(cset.rules)
                in_scope.append(cset if whole else dataclasses.replace(cset, rules=rules, uses=uses))
        in_scope.sort(key=lambda s: (-s.priority, s.workspace == GLOBAL, s.name))
        uses = frozenset().union(*(s.uses for s in in_scope)) if in_scope else frozenset()
        variables = _variables(uses, overrides)
        if for_tools:  # a tool call has no model request: its fields read as null
            variables = tuple((n, _constant(None)) if u.partition(".")[0] == "request" else (n, g)
                              for u, (n, g) in zip(sorted(uses), variables, strict=True))
        by_name = dict(zip(sorted(uses), variables, strict=True))
        dependents = {
            f: tuple(v for u, v in by_name.items() if f in _depends(u) and u not in (overrides or {}))
            for f in ALL_FIELDS
        }
        tools = None if for_tools else cls.build(workspace, candidates, overrides, for_tools=True)
        return cls(tuple(in_scope), variables, dependents, tools)

    @property
    def empty(self) -> bool:
        return not self.sets


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _set_path(request: Any, path: tuple[str, ...], value: Any) -> Any:
    """Write one change into the request; returns the previous value."""
    root = path[0]
    if len(path) == 1:
        old = getattr(request, root)
        if root in ("params", "metadata"):
            value = dict(value)
        elif root == "messages":
            value = [dict(m) for m in value]
        setattr(request, root, value)
        return old
    # Copy along the path: the caller's dicts are never mutated behind its back.
    top = dict(getattr(request, root) or {})
    node = top
    for key in path[1:-1]:
        child = node.get(key)
        node[key] = child = dict(child) if isinstance(child, Mapping) else {}
        node = child
    old = node.get(path[-1])
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    setattr(request, root, top)
    return old


def apply_changes(request: Any, action: CompiledAction) -> dict[str, Any]:
    """Apply a route/modify action; returns ``{path: new value}`` for the record (the
    old model/provider/region are kept as ``from_model``... so a route is auditable)."""
    summary: dict[str, Any] = {}
    for path, value in action.changes:
        old = _set_path(request, path, value)
        key = ".".join(path)
        if key == "messages":
            summary[key] = f"<{len(value)} messages>"  # never copy prompt text into events
        else:
            summary[key] = value
            if key in ("model", "provider", "region"):
                summary[f"from_{key}"] = old
    return summary


def _target(subject: Any, plan: Plan) -> Any:
    """What a modify action writes to: a model call's request, a tool call itself
    (``args.X``)."""
    return subject.request if plan.tools is not None else subject


def evaluate(plan: Plan, subject: Subject) -> Outcome:
    """Run every rule in scope against the subject; route/modify are applied to
    ``subject.request`` as they happen. Never raises for a rule's failure."""
    if not plan.sets:
        return _EMPTY
    ctx = build_context(plan.variables, subject)
    outcome: Outcome | None = None
    for cset in plan.sets:
        for rule in cset.rules:
            try:
                result = rule.condition.program.execute(ctx)
            except KeyError:
                continue  # absent field or key: the condition does not hold
            except Exception as exc:
                result = exc
            if result is False:
                continue
            if outcome is None:
                outcome = Outcome()
            if result is not True:
                error = (
                    _one_line(result)
                    if isinstance(result, BaseException)
                    else f"condition returned {type(result).__name__}, not bool"
                )
                decision = Decision(cset.name, cset.version, cset.workspace, rule.name, "error", error=error)
                outcome.decisions.append(decision)
                if rule.blocks:  # fail closed: a broken block rule must not let calls through
                    outcome.blocked = Decision(
                        cset.name,
                        cset.version,
                        cset.workspace,
                        rule.name,
                        "block",
                        message=f"policy rule {cset.name}/{rule.name} failed: {error}",
                        error=error,
                    )
                    outcome.decisions.append(outcome.blocked)
                    return outcome
                continue
            changed: set[str] = set()
            for action in rule.actions:
                decision = Decision(cset.name, cset.version, cset.workspace, rule.name, action.type, action.message)
                if action.type == "block":
                    if decision.message is None:
                        decision.message = f"denied by policy rule {cset.name}/{rule.name}"
                    outcome.decisions.append(decision)
                    outcome.blocked = decision
                    return outcome
                if action.changes:
                    if any((path[0] == "args") != (plan.tools is None) for path, _ in action.changes):
                        # args.X is a tool call's; the other fields a model call's
                        decision.action, decision.error = "error", "modify sets fields this call does not have"
                        outcome.decisions.append(decision)
                        continue
                    decision.changes = apply_changes(_target(subject, plan), action)
                    changed.update(path[0] for path, _ in action.changes)
                outcome.decisions.append(decision)
            if changed:  # later rules see the routed/modified request
                stale = {v for f in changed for v in plan.dependents[f]}
                ctx = build_context(tuple(stale), subject)
    return outcome or _EMPTY
