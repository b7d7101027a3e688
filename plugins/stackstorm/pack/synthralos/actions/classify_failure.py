"""Classify an LLM call failure: is the same request worth sending again?

Never retried (whatever else is said): authentication and validation failures, and a
spent attempt budget. Retried: timeouts, 429, 408/409/425 and 5xx, and anything the
host itself marked retryable.
"""

from __future__ import annotations

import logging
from typing import Any

try:  # inside StackStorm
    from st2common.runners.base_action import Action
except ImportError:  # outside StackStorm (tests, linters): the same constructor surface

    class Action:  # type: ignore[no-redef]
        def __init__(self, config: Any = None, action_service: Any = None) -> None:
            self.config = config or {}
            self.action_service = action_service
            self.logger = logging.getLogger(type(self).__name__)


NEVER_RETRY_CODES = frozenset(
    {"PROVIDER_AUTH", "PROVIDER_BAD_REQUEST", "AUTHENTICATION_ERROR", "UNAUTHORIZED", "VALIDATION_ERROR",
     "INVALID_INPUT"}
)
NEVER_RETRY_STATUS = frozenset({400, 401, 403, 404, 413, 422})
RETRY_STATUS = frozenset({408, 409, 425, 429})


def category(error_code: str, status_code: int, failure_reason: str) -> str:
    """One word for the failure: auth, bad_request, rate_limit, timeout, server_error, unknown."""
    code = (error_code or "").upper()
    reason = (failure_reason or "").lower()
    if code in ("PROVIDER_AUTH", "AUTHENTICATION_ERROR", "UNAUTHORIZED") or status_code in (401, 403):
        return "auth"
    if code in ("PROVIDER_BAD_REQUEST", "VALIDATION_ERROR", "INVALID_INPUT") or status_code in (400, 413, 422):
        return "bad_request"
    if code == "PROVIDER_RATE_LIMITED" or status_code == 429 or "rate limit" in reason:
        return "rate_limit"
    if code == "PROVIDER_TIMEOUT" or status_code == 408 or "timeout" in reason or "timed out" in reason:
        return "timeout"
    if status_code >= 500 or code == "PROVIDER_ERROR":
        return "server_error"
    return "unknown"


class ClassifyFailure(Action):
    def run(self, failure_reason: str, error_code: str = "PROVIDER_ERROR", retryable: bool = True,
            status_code: int = 0, attempt: int = 1, max_attempts: int = 3) -> dict[str, Any]:
        kind = category(error_code, status_code, failure_reason)
        code = (error_code or "").upper()
        if attempt >= max_attempts:
            retry, why = False, f"attempt {attempt} of {max_attempts} failed: no attempt left"
        elif code in NEVER_RETRY_CODES or status_code in NEVER_RETRY_STATUS:
            retry, why = False, f"{kind} ({code or status_code}): the same request would fail again"
        elif not retryable:
            retry, why = False, f"the host marked {code or 'the error'} as not retryable"
        elif kind in ("rate_limit", "timeout", "server_error") or status_code in RETRY_STATUS:
            retry, why = True, f"{kind} is transient: retry attempt {attempt + 1}"
        else:
            retry, why = bool(retryable), "unclassified error the host marked retryable"
        return {"retry": retry, "category": kind, "reason": why}
