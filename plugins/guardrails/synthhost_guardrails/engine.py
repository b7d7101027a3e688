"""Running a pipeline over a request's messages or an answer's text.

Pure functions of their arguments (no host), so the CLI's ``test`` command and the
benchmark run exactly what a call runs.

Input: each validator checks each selected message's text on its own (string content,
and the text parts of list content), in the order the set lists them; a message no
validator changes is the caller's own object, a changed one is a copy (the caller's
messages are never mutated). If an entry selects no text at all, it checks one empty
text (so ``non_empty`` fails on a request with no user message).

Actions: ``fix`` replaces the text with the validator's repair and goes on (a failure
the validator cannot repair, which only a Guardrails AI validator can have, denies);
``warn``
and ``noop`` record and go on; ``exception`` records, stops the pipeline and denies.
Before a denial, a validator that can mask (PII, secrets, banned words) masks what it
found anyway, so the request or answer kept on the trace does not hold it either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from synthhost_guardrails.guardset import Entry, Pipeline


@dataclass(slots=True)
class Violation:
    validator: str
    where: str  # "input" | "output"
    on_fail: str
    kinds: tuple[str, ...]
    count: int
    messages: tuple[int, ...] = ()  # input: indexes of the messages that failed
    position: int = 0  # the entry's index in its list
    unfixed: bool = False  # on_fail fix, but the validator had no repair: denied

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "validator": self.validator,
            "where": self.where,
            "on_fail": self.on_fail,
            "kinds": list(self.kinds),
            "count": self.count,
        }
        if self.messages:
            out["messages"] = list(self.messages)
        if self.unfixed:
            out["unfixed"] = True
        return out

    def describe(self) -> str:
        where = self.where
        if self.messages:
            s = "s" if len(self.messages) > 1 else ""
            where += f" (message{s} {', '.join(map(str, self.messages))})"
        kinds = f": {', '.join(self.kinds)}" if self.kinds else ""
        unfixed = " (and could not be fixed)" if self.unfixed else ""
        return f"guardrail {self.validator} failed on {where}{kinds}{unfixed}"


@dataclass(slots=True)
class Outcome:
    violations: list[Violation] = field(default_factory=list)
    denied: Violation | None = None
    messages: list[dict[str, Any]] | None = None  # input: the new messages, if changed
    text: str | None = None  # output: the new text, if changed


def _fix_wanted(entry: Entry) -> bool:
    # exception: mask what can be masked, so the denied text is not kept on the trace
    return entry.on_fail == "fix" or (entry.on_fail == "exception" and entry.validator.can_fix)


class _Tally:
    __slots__ = ("count", "kinds", "messages", "unfixed")

    def __init__(self) -> None:
        self.kinds: dict[str, None] = {}
        self.count = 0
        self.messages: list[int] = []
        self.unfixed = False


def check_input(pipeline: Pipeline, messages: Sequence[dict[str, Any]]) -> Outcome:
    outcome = Outcome()
    current: list[dict[str, Any]] = list(messages)
    changed = False
    for position, entry in enumerate(pipeline.input):
        fix = _fix_wanted(entry)
        tally = _Tally()
        checked = False
        for index, message in enumerate(current):
            if entry.roles is not None and message.get("role") not in entry.roles:
                continue
            content = message.get("content")
            if isinstance(content, str):
                checked = True
                result = entry.validator.validate(content, fix)
                if result.ok:
                    continue
                _count(tally, result.kinds, result.count, index)
                if fix and result.fixed is not None and result.fixed != content:
                    current[index] = {**message, "content": result.fixed}
                    changed = True
                tally.unfixed |= entry.on_fail == "fix" and result.fixed is None
            elif isinstance(content, list):
                parts: list[Any] | None = None
                for j, part in enumerate(content):
                    if not (isinstance(part, dict) and isinstance(part.get("text"), str)):
                        continue
                    checked = True
                    result = entry.validator.validate(part["text"], fix)
                    if result.ok:
                        continue
                    _count(tally, result.kinds, result.count, index)
                    if fix and result.fixed is not None and result.fixed != part["text"]:
                        parts = parts if parts is not None else list(content)
                        parts[j] = {**part, "text": result.fixed}
                    tally.unfixed |= entry.on_fail == "fix" and result.fixed is None
                if parts is not None:
                    current[index] = {**message, "content": parts}
                    changed = True
        if not checked:
            result = entry.validator.validate("", False)
            if not result.ok:
                _count(tally, result.kinds, result.count, None)
                tally.unfixed = entry.on_fail == "fix"
        if tally.count:
            violation = Violation(
                entry.name,
                "input",
                entry.on_fail,
                tuple(tally.kinds),
                tally.count,
                tuple(tally.messages),
                position,
                tally.unfixed,
            )
            outcome.violations.append(violation)
            if entry.on_fail == "exception" or tally.unfixed:
                outcome.denied = violation
                break
    if changed:
        outcome.messages = current
    return outcome


def _count(tally: _Tally, kinds: tuple[str, ...], count: int, index: int | None) -> None:
    for kind in kinds:
        tally.kinds[kind] = None
    tally.count += max(count, 1)
    if index is not None and (not tally.messages or tally.messages[-1] != index):
        tally.messages.append(index)


def check_output(pipeline: Pipeline, text: str) -> Outcome:
    outcome = Outcome()
    current = text
    for position, entry in enumerate(pipeline.output):
        fix = _fix_wanted(entry)
        result = entry.validator.validate(current, fix)
        if result.ok:
            continue
        if fix and result.fixed is not None:
            current = result.fixed
        unfixed = entry.on_fail == "fix" and result.fixed is None
        violation = Violation(
            entry.name, "output", entry.on_fail, result.kinds, max(result.count, 1), (), position, unfixed
        )
        outcome.violations.append(violation)
        if entry.on_fail == "exception" or unfixed:
            outcome.denied = violation
            break
    if current != text:
        outcome.text = current
    return outcome
