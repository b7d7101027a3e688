"""The built-in validators: pure functions of a string, no dependencies, linear time.

A validator is built from its ``args`` (checked by a pydantic model: unknown or
ill-typed arguments are refused when a guard set is applied, not when a call runs) and
answers :meth:`Validator.validate` with a :class:`Result`: pass, or fail with the
*kinds* of what it found and how many, never the offending text (results go on spans
and into events). Asked to ``fix``, a validator that can (``can_fix``) also returns the
repaired text: masked PII/secrets/banned words, or the text cut to its maximum length.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from synthhost_guardrails import detectors
from synthhost_guardrails.detectors import Finding


@dataclass(frozen=True, slots=True)
class Result:
    ok: bool
    kinds: tuple[str, ...] = ()
    count: int = 0
    fixed: str | None = None  # the repaired text, when asked to fix and able to


PASS = Result(True)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Validator:
    name: ClassVar[str]
    can_fix: bool = False  # an instance may differ (regex_match can fix only with forbid)
    fix_on_input: ClassVar[bool] = True  # max_length cannot: a cut prompt loses its question
    Args: ClassVar[type[Args]] = Args

    def __init__(self, args: Any) -> None:
        pass

    def validate(self, text: str, fix: bool = False) -> Result:
        raise NotImplementedError


# -- span validators: find spans, mask them to fix ------------------------------------------


def _check_mask(template: str) -> str:
    try:
        template.format(kind="x", KIND="X")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"mask may only use {{kind}} or {{KIND}} placeholders ({exc})") from None
    return template


class MaskArgs(Args):
    mask: str = "[{KIND}]"  # what replaces each finding; {kind}/{KIND} is its kind

    @field_validator("mask")
    @classmethod
    def _mask(cls, value: str) -> str:
        return _check_mask(value)


class SpanValidator(Validator):
    can_fix = True
    mask = "[{KIND}]"

    def find(self, text: str) -> list[Finding]:
        raise NotImplementedError

    def validate(self, text: str, fix: bool = False) -> Result:
        found = self.find(text)
        if not found:
            return PASS
        kinds = tuple(sorted({f.kind for f in found}))
        return Result(False, kinds, len(found), detectors.mask(text, found, self.mask) if fix else None)


def _check_kinds(value: list[str] | None, known: tuple[str, ...]) -> list[str] | None:
    if value is not None:
        bad = [k for k in value if k not in known]
        if bad:
            raise ValueError(f"unknown kind {bad[0]!r} (known: {', '.join(known)})")
        if not value:
            raise ValueError("must name at least one kind")
    return value


class PiiArgs(MaskArgs):
    kinds: list[str] | None = None  # default: all

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str] | None) -> list[str] | None:
        return _check_kinds(value, detectors.PII_KINDS)


class NoPii(SpanValidator):
    """E-mail addresses, phone numbers, payment card numbers (Luhn-checked), US SSNs."""

    name = "no_pii"
    Args = PiiArgs

    def __init__(self, args: PiiArgs) -> None:
        self.mask = args.mask
        kinds = args.kinds or detectors.PII_KINDS
        self.email = detectors.EMAIL if "email" in kinds else None
        numbers = [k for k in kinds if k != "email"]
        self.numbers = detectors.Numbers(numbers) if numbers else None

    def find(self, text: str) -> list[Finding]:
        found = list(self.email.find(text)) if self.email is not None else []
        if self.numbers is not None:
            found.extend(self.numbers.find(text))
        return found


class SecretArgs(MaskArgs):
    kinds: list[str] | None = None  # default: all

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str] | None) -> list[str] | None:
        return _check_kinds(value, detectors.SECRET_KINDS)


class NoSecrets(SpanValidator):
    """API keys (sk-..., AKIA..., GitHub, Slack, Google), JWTs, bearer tokens, private
    key blocks."""

    name = "no_secrets"
    Args = SecretArgs

    def __init__(self, args: SecretArgs) -> None:
        self.mask = args.mask
        kinds = args.kinds or detectors.SECRET_KINDS
        self.detectors = tuple(d for d in detectors.SECRETS if d.kind in kinds)
        self.keys = "private_key" in kinds

    def find(self, text: str) -> list[Finding]:
        return detectors.find_all(text, self.detectors, keys=self.keys)


# Words are runs of letters, digits and underscores (Unicode-aware); a banned phrase's
# words may be separated in the text by whitespace, hyphens or apostrophes only.
_WORD = re.compile(r"\w+")
_GAP = re.compile(r"[\s\-'\u2019]+")
_NOT_PHRASE = re.compile(r"[^\w\s\-'\u2019]")


class BanArgs(MaskArgs):
    words: list[str] = Field(min_length=1)

    @field_validator("words")
    @classmethod
    def _words(cls, value: list[str]) -> list[str]:
        for entry in value:
            tokens = _WORD.findall(entry)
            if not tokens:
                raise ValueError(f"entry {entry!r} has no letters or digits")
            if _NOT_PHRASE.search(entry):
                raise ValueError(f"entry {entry!r}: only words separated by spaces, hyphens or apostrophes are matched")
        return value


class BanList(SpanValidator):
    """Whole words and phrases, case-insensitive: "hate" matches "Hate" and "hate-filled"
    but not "whatever" or "hates". Linear in the text whatever the list's size: the text
    is split into words once, and each word is one dict look-up."""

    name = "ban_list"
    Args = BanArgs

    def __init__(self, args: BanArgs) -> None:
        self.mask = args.mask
        # first word -> the phrases (as word tuples) starting with it, longest first
        self.by_first: dict[str, list[tuple[str, ...]]] = {}
        for entry in args.words:
            phrase = tuple(w.casefold() for w in _WORD.findall(entry))
            bucket = self.by_first.setdefault(phrase[0], [])
            if phrase not in bucket:
                bucket.append(phrase)
        for bucket in self.by_first.values():
            bucket.sort(key=len, reverse=True)

    def find(self, text: str) -> list[Finding]:
        # Fast path: no banned first word anywhere (set operations run in C).
        words = set(_WORD.findall(text))
        if not any(w.casefold() in self.by_first for w in words):
            return []
        return list(self._scan(text))

    def _scan(self, text: str) -> Iterator[Finding]:
        tokens = [(m.start(), m.end(), m.group().casefold()) for m in _WORD.finditer(text)]
        i, n = 0, len(tokens)
        while i < n:
            phrases = self.by_first.get(tokens[i][2])
            matched = 0
            for phrase in phrases or ():
                k = len(phrase)
                if i + k <= n and all(
                    tokens[i + j][2] == phrase[j] and _GAP.fullmatch(text, tokens[i + j - 1][1], tokens[i + j][0])
                    for j in range(1, k)
                ):
                    matched = k
                    break
            if matched:
                yield Finding(tokens[i][0], tokens[i + matched - 1][1], "banned")
                i += matched
            else:
                i += 1


# -- whole-text validators -------------------------------------------------------------------


class LengthArgs(Args):
    max: int = Field(100_000, ge=1, description="Maximum length in characters.")


class MaxLength(Validator):
    name = "max_length"
    can_fix = True
    fix_on_input = False
    Args = LengthArgs

    def __init__(self, args: LengthArgs) -> None:
        self.max = args.max

    def validate(self, text: str, fix: bool = False) -> Result:
        if len(text) <= self.max:
            return PASS
        return Result(False, ("too_long",), 1, text[: self.max] if fix else None)


class NonEmpty(Validator):
    """Fails on an empty or whitespace-only text."""

    name = "non_empty"

    def validate(self, text: str, fix: bool = False) -> Result:
        return PASS if text and not text.isspace() else Result(False, ("empty",), 1)


class ValidJson(Validator):
    """The text parses as JSON. (JSON Schema checks would need the ``jsonschema``
    package, which this plugin does not depend on.)"""

    name = "valid_json"

    def validate(self, text: str, fix: bool = False) -> Result:
        try:
            json.loads(text)
        except (ValueError, RecursionError):
            return Result(False, ("invalid_json",), 1)
        return PASS


class RegexArgs(MaskArgs):
    regex: str
    match_type: Literal["search", "fullmatch"] = "search"
    ignore_case: bool = False
    forbid: bool = False  # a match is the violation (and fix masks every match)

    @field_validator("regex")
    @classmethod
    def _regex(cls, value: str) -> str:
        try:
            compile_user_regex(value)
        except ValueError as exc:
            raise ValueError(f"invalid regular expression: {exc}") from None
        return value


def compile_user_regex(pattern: str, ignore_case: bool = False) -> Any:
    """A user's pattern on RE2 (google-re2): matching is linear in the text, whatever
    the pattern, so no guard set can hold a call (``(a|aa)+$`` on 41 characters took 26 s
    on Python's backtracking engine). RE2 has no backreferences or look-around: such
    patterns are refused when the guard set is applied, with RE2's reason."""
    import re2

    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    options.max_mem = 8 << 20  # a huge pattern fails to compile instead of eating memory
    try:
        return re2.compile(pattern, options)
    except re2.error as exc:
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(f"{reason} (patterns run on RE2: no backreferences or look-around)") from None


class RegexMatch(Validator):
    """The text must match ``regex`` (``search`` anywhere, or ``fullmatch``); with
    ``forbid: true`` it must *not* contain a match, and ``fix`` masks every match."""

    name = "regex_match"
    Args = RegexArgs

    def __init__(self, args: RegexArgs) -> None:
        self.pattern = compile_user_regex(args.regex, args.ignore_case)
        self.fullmatch = args.match_type == "fullmatch"
        self.forbid = self.can_fix = args.forbid
        self.mask = args.mask

    def validate(self, text: str, fix: bool = False) -> Result:
        if self.forbid:
            found = [Finding(m.start(), m.end(), "match") for m in self.pattern.finditer(text) if m.end() > m.start()]
            if not found:
                return PASS
            return Result(False, ("match",), len(found), detectors.mask(text, found, self.mask) if fix else None)
        matched = self.pattern.fullmatch(text) if self.fullmatch else self.pattern.search(text)
        return PASS if matched else Result(False, ("no_match",), 1)


BUILTINS: dict[str, type[Validator]] = {
    v.name: v for v in (NoPii, NoSecrets, BanList, MaxLength, NonEmpty, ValidJson, RegexMatch)
}
