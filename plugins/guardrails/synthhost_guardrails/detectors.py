"""Finding PII and secrets in text, in one linear pass per detector.

Python's ``re`` backtracks, so every pattern here is shaped to do bounded work per
start position:

- a match may only *start* where the previous character could not be part of it (a
  lookbehind, placed after a literal prefix where there is one so ``re`` can still
  skip ahead with its fast literal search), so a long run of, say, digits is tried
  once, not once per character;
- quantifiers that could be split more than one way are bounded (an e-mail local part
  is at most 64 characters), and an unbounded one is only followed by something its
  own character class cannot match, so it never backtracks into itself.

Each detector also has cheap trigger substrings: when none occurs in the text (the
usual case for a prompt) its regular expression does not run at all.

A :class:`Finding` holds a kind and a span, never the matched text, so callers can
mask, count and report without copying a secret anywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Finding:
    start: int
    end: int
    kind: str


Check = Callable[[str], bool]


@dataclass(frozen=True, slots=True)
class Detector:
    kind: str
    pattern: re.Pattern[str]
    triggers: tuple[str, ...] = ()  # the text must contain one of these (C-speed ``in``)
    check: Check | None = None  # a post-filter on the matched text (Luhn, ranges...)
    group: str | None = None  # mask only this group (the token after "Bearer ")

    def find(self, text: str) -> Iterator[Finding]:
        if self.triggers and not any(t in text for t in self.triggers):
            return
        for m in self.pattern.finditer(text):
            if self.check is not None and not self.check(m.group()):
                continue
            start, end = m.span(self.group) if self.group else m.span()
            yield Finding(start, end, self.kind)


# -- PII ---------------------------------------------------------------------------------

EMAIL = Detector(
    "email",
    re.compile(
        r"(?<![\w.%+-])[\w.%+-]{1,64}"  # local part, starting at the start of its run
        r"@(?:[A-Za-z0-9-]{1,63}\.){1,8}[A-Za-z]{2,24}(?![\w-])"
    ),
    triggers=("@",),
)


def luhn_ok(number: str) -> bool:
    digits = [ord(c) - 48 for c in number if "0" <= c <= "9"]
    if not 13 <= len(digits) <= 19:
        return False
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _ssn_ok(text: str) -> bool:
    # The SSA never issues area 000, 666 or 9xx, group 00 or serial 0000.
    area, group, serial = text[:3], text[4:6], text[7:]
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def _phone_digits_ok(text: str) -> bool:
    return 8 <= sum(c.isdigit() for c in text) <= 15


# Cards, SSNs and phone numbers are found in one pass, by one pattern that starts with
# the class [+(\d]: ``re`` then skips every other character in C. Each kind's "not
# preceded by" lookbehinds come after that first character and span it. The lookarounds
# refuse a match inside a longer digit sequence, so a 30-digit id is not read as a card
# plus a phone number, and "4111 1111 1111 1112" (not Luhn-valid) is nothing at all.
_NUMBER_KINDS: dict[str, tuple[str, Check]] = {
    # 13 to 19 digits, single spaces or dashes between them; Luhn-checked.
    "card": (r"(?<=\d)(?<!\d\d)(?<!\d[ -]\d)(?:[ -]?\d){12,18}(?!\d)(?![ -]\d)", luhn_ok),
    # US SSN, with dashes or spaces (a bare 9-digit number is too often something else).
    "ssn": (r"(?<=\d)(?<!\d\d)(?<!\d[ -]\d)\d\d(?P<ssn_sep>[ -])\d\d(?P=ssn_sep)\d{4}(?!\d)(?![ -]\d)", _ssn_ok),
    # North American numbers need separators ("555-123-4567", "(555) 123 4567", "+1 555
    # 123 4567"); international ones a leading "+" and 8 to 15 digits. A bare run of
    # digits is not a phone number: ids, amounts and timestamps look just like one.
    "phone": (
        r"(?<![\w+].)(?<!\d[ .-].)(?:"
        r"(?<=\+)(?:1[ .-]?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}|[1-9][\d .()-]{6,22}\d)"
        r"|(?<=\()\d{3}\)[ .-]?\d{3}[ .-]\d{4}"
        r"|(?<=1)[ .-]?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}"
        r"|(?<=\d)\d\d[ .-]\d{3}[ .-]\d{4}"
        r")(?!\d)(?![ .-]\d)",
        _phone_digits_ok,
    ),
}
NUMBER_KINDS: tuple[str, ...] = tuple(_NUMBER_KINDS)

# Every card, SSN and phone number has two digits split by one or two separators, 13
# digits in a row, or a "+". This cheap pass spares the full one for a prompt whose
# only numbers are "2024" and "1,234".
_NUMBERS_GATE = re.compile(r"\d(?:[ .()-]{1,2}\d|\d{12})", re.ASCII)


class Numbers:
    """Finds the chosen kinds among card, ssn and phone in one pass."""

    def __init__(self, kinds: Iterable[str]) -> None:
        wanted = set(kinds)
        chosen = [k for k in NUMBER_KINDS if k in wanted]
        branches = "|".join(f"(?P<{k}>{_NUMBER_KINDS[k][0]})" for k in chosen)
        # No kind starts right after a digit: one shared check spares trying every branch
        # at each digit inside a number. ASCII digits only (re.ASCII is also faster): the
        # Luhn check reads ASCII digits, and so do the forms these patterns describe.
        self.pattern = re.compile(rf"[+(\d](?<!\d.)(?:{branches})", re.ASCII)
        self.checks = {k: _NUMBER_KINDS[k][1] for k in chosen}

    def find(self, text: str) -> Iterator[Finding]:
        if _NUMBERS_GATE.search(text) is None and "+" not in text:
            return
        for m in self.pattern.finditer(text):
            kind = m.lastgroup or ""
            if self.checks[kind](m.group()):
                yield Finding(m.start(), m.end(), kind)


PII_KINDS: tuple[str, ...] = ("email", *NUMBER_KINDS)


# -- secrets -------------------------------------------------------------------------------


def _key_like(text: str) -> bool:
    return any(c.isdigit() for c in text) and any(c.isalpha() for c in text[3:])


# Each pattern starts with a literal, so ``re`` finds candidates with its fast literal
# search (about 1 ns a character) instead of trying every position; the "not preceded
# by" lookbehind comes after the literal and spans it.
SECRETS: tuple[Detector, ...] = (
    # OpenAI (sk-..., sk-proj-...), Anthropic (sk-ant-...), Stripe (sk_live_, rk_test_).
    # A real key has digits: "sk-learn-compatible-estimators" is not one.
    Detector("api_key", re.compile(r"sk[-_](?<![\w-]sk[-_])[A-Za-z0-9_-]{20,}"), check=_key_like),
    Detector("api_key", re.compile(r"rk[-_](?<![\w-]rk[-_])[A-Za-z0-9_-]{20,}"), check=_key_like),
    Detector("aws_access_key", re.compile(r"A[KS]IA(?<![A-Za-z0-9]A[KS]IA)[A-Z0-9]{16}(?![A-Za-z0-9])")),
    Detector("github_token", re.compile(r"gh[pousr]_(?<!\wgh[pousr]_)[A-Za-z0-9]{36,}")),
    Detector("github_token", re.compile(r"github_pat_(?<!\wgithub_pat_)[A-Za-z0-9_]{22,}")),
    Detector("slack_token", re.compile(r"xox[abposr]-(?<![\w-]xox[abposr]-)[A-Za-z0-9-]{10,}")),
    Detector("google_api_key", re.compile(r"AIza(?<![\w-]AIza)[0-9A-Za-z_-]{35}(?![\w-])")),
    Detector("jwt", re.compile(r"eyJ(?<![\w-]eyJ)[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
    # Only the token is masked ("Authorization: Bearer [BEARER_TOKEN]").
    Detector(
        "bearer_token",
        re.compile(r"(?<![\w-])[Bb](?i:earer)[ \t]{1,8}(?P<token>[A-Za-z0-9._~+/-]{16,}=*)"),
        triggers=("earer", "EARER"),
        check=lambda m: any(c.isdigit() for c in m[7:]),
        group="token",
    ),
)

_KEY_BEGIN = re.compile(r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----")
_KEY_END = re.compile(r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----")


def private_keys(text: str) -> Iterator[Finding]:
    """PEM/PGP private key blocks, header to footer. A block without its footer runs to
    the end of the text (a cut-off key is still a secret). Scanning resumes after each
    footer, so the text is read once however many headers it holds."""
    if "-----BEGIN" not in text:
        return
    pos = 0
    while True:
        begin = _KEY_BEGIN.search(text, pos)
        if begin is None:
            return
        end = _KEY_END.search(text, begin.end())
        if end is None:
            yield Finding(begin.start(), len(text), "private_key")
            return
        yield Finding(begin.start(), end.end(), "private_key")
        pos = end.end()


SECRET_KINDS: tuple[str, ...] = (*dict.fromkeys(d.kind for d in SECRETS), "private_key")


def find_all(text: str, detectors: Iterable[Detector], *, keys: bool = False) -> list[Finding]:
    found: list[Finding] = []
    for detector in detectors:
        # Inline pre-screen: most detectors do not apply to most texts, and a generator
        # per detector per text cost more than the screen itself (runs twice a call).
        triggers = detector.triggers
        if triggers:
            for t in triggers:
                if t in text:
                    break
            else:
                continue
        found.extend(detector.find(text))
    if keys:
        found.extend(private_keys(text))
    return found


def merge(findings: list[Finding]) -> list[Finding]:
    """Sorted, with overlapping spans merged (the first finding's kind is kept)."""
    out: list[Finding] = []
    for f in sorted(findings, key=lambda f: (f.start, -f.end)):
        if out and f.start < out[-1].end:
            last = out[-1]
            if f.end > last.end:
                out[-1] = Finding(last.start, f.end, last.kind)
            continue
        out.append(f)
    return out


def mask(text: str, findings: list[Finding], template: str) -> str:
    """Replace every finding's span with ``template`` (``{kind}``/``{KIND}`` filled in)."""
    parts: list[str] = []
    pos = 0
    for f in merge(findings):
        parts.append(text[pos : f.start])
        parts.append(template.format(kind=f.kind, KIND=f.kind.upper()))
        pos = f.end
    parts.append(text[pos:])
    return "".join(parts)
