"""Scrubbing and capping what is sent to Langfuse.

Everything that leaves the process (inputs, outputs, metadata, status messages, event
contexts) goes through :meth:`Redactor.clean`: strings that look like credentials are
replaced, values under credential-looking keys are dropped, the values of the
environment's ``*_KEY`` / ``*_SECRET`` / ``*TOKEN`` variables are masked wherever they
appear, and each field is capped so one huge prompt cannot blow up an export batch.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

REDACTED = "[REDACTED]"

# Shapes of well-known credentials. Each is specific enough not to eat ordinary prose.
_TOKEN_PATTERNS = (
    r"\b(?:sk|pk|rk)-(?:[A-Za-z0-9]+-){0,3}[A-Za-z0-9_\-]{16,}",  # OpenAI, Anthropic, Langfuse
    r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",  # AWS access key ids
    r"\bgh[pousr]_[A-Za-z0-9]{30,}\b",  # GitHub tokens
    r"\bgithub_pat_[A-Za-z0-9_]{30,}",
    r"\bxox[abposr]-[A-Za-z0-9-]{10,}",  # Slack
    r"\bAIza[0-9A-Za-z_\-]{35}\b",  # Google API keys
    r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}",  # JWTs
    r"(?i:\bbearer\s+[A-Za-z0-9\-._~+/]{8,}=*)",
    r"(?i:\bbasic\s+[A-Za-z0-9+/]{12,}=*)",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
)
# ``api_key=...`` / ``"password": "..."`` inside free text: keep the name, drop the value.
_ASSIGNMENT = re.compile(
    r"(?i)(\b[\w-]*(?:api[_-]?key|secret|token|password|passwd)[\"']?\s*[:=]\s*[\"']?)"
    r"([^\s\"',;}{]{6,})"
)
# Dict keys whose (string) values are credentials. ``*_tokens`` counts are not matched.
_SECRET_KEY = re.compile(
    r"(?i)^(?:.*[_\-.])?(?:api[_-]?key|apikey|secret|secret[_-]?key|token|password|passwd|"
    r"authorization|cookie|set-cookie|credentials?)$"
)
_SECRET_ENV = re.compile(r"(?i)(?:_KEY|_SECRET|TOKEN|_PASSWORD)$")
# A substring each pattern above needs (lower-cased), as are the environment's secret
# values: an ASCII string holding none of them cannot match and skips the regexes (a
# few µs per short string through the alternation and the backtracking ``[\w-]*``;
# most strings sent to Langfuse hold no credential). Keep in step with the patterns.
_TRIGGERS = (
    "sk-", "pk-", "rk-", "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "xox",
    "aiza", "eyj", "bearer", "basic", "-----begin", "api", "secret", "token", "passw",
)
MIN_SECRET_CHARS = 6  # shorter env values ("1", "true") would mask ordinary text


@functools.lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    # Keys repeat from trace to trace: decide each once.
    return _SECRET_KEY.match(key) is not None


def secret_env_values(env: Mapping[str, str]) -> list[str]:
    """The values of ``*_KEY``, ``*_SECRET``, ``*TOKEN`` (and ``*_PASSWORD``) variables."""
    values = {v.strip() for k, v in env.items() if _SECRET_ENV.search(k) and v and len(v.strip()) >= MIN_SECRET_CHARS}
    return sorted(values, key=len, reverse=True)  # longest first: no partial masks


class Redactor:
    def __init__(self, env: Mapping[str, str] | None = None, *, max_chars: int = 8000) -> None:
        self.max_chars = max(64, int(max_chars))
        secrets = secret_env_values(env or {})
        parts = [re.escape(v) for v in secrets]
        self._triggers = re.compile("|".join(re.escape(t) for t in (*_TRIGGERS, *(v.lower() for v in secrets))))
        parts.extend(_TOKEN_PATTERNS)
        self._tokens = re.compile("|".join(f"(?:{p})" for p in parts))

    # -- strings ----------------------------------------------------------------------

    def text(self, value: str) -> str:
        if len(value) < MIN_SECRET_CHARS:  # too short to hold any credential we mask
            return value
        # Non-ASCII text takes the regexes: their case-insensitive matching folds more
        # than lower() does (the long s matches "s").
        if value.isascii() and self._triggers.search(value.lower()) is None:
            return value
        value = self._tokens.sub(REDACTED, value)
        return _ASSIGNMENT.sub(lambda m: m.group(1) + REDACTED, value)

    def short(self, value: str, limit: int) -> str:
        value = self.text(value)
        return value if len(value) <= limit else value[: max(0, limit - 1)] + "…"

    # -- structures -------------------------------------------------------------------

    def scrub(self, value: Any, depth: int = 0) -> Any:
        """Redact recursively; long strings are cut to ``max_chars``."""
        if value is None or isinstance(value, bool | int | float):
            return value
        if isinstance(value, str):
            cleaned = self.text(value)
            if len(cleaned) > self.max_chars:
                cut = len(cleaned) - self.max_chars
                cleaned = cleaned[: self.max_chars] + f"…[truncated {cut} chars]"
            return cleaned
        if isinstance(value, Decimal):
            return str(value)
        if depth > 20:
            return "[nested too deep]"
        if isinstance(value, Mapping):
            out: dict[str, Any] = {}
            for k, v in value.items():
                key = str(k)
                if isinstance(v, str) and v and _secret_key(key):
                    out[key] = REDACTED
                else:
                    out[key] = self.scrub(v, depth + 1)
            return out
        if isinstance(value, list | tuple | set | frozenset):
            return [self.scrub(v, depth + 1) for v in value]
        return self.scrub(str(value), depth + 1)

    def clean(self, value: Any) -> Any:
        """Scrub (each string capped at ``max_chars``), then cap the whole field at four
        times that: a bigger value (say, a long conversation) is replaced by a marker
        holding a prefix of its JSON."""
        scrubbed = self.scrub(value)
        if scrubbed is None or isinstance(scrubbed, bool | int | float | str):
            return scrubbed
        encoded = json.dumps(scrubbed, ensure_ascii=False, default=str)
        limit = 4 * self.max_chars
        if len(encoded) <= limit:
            return scrubbed
        return {"truncated": True, "chars": len(encoded), "preview": encoded[:limit]}
