"""Errors with stable codes.

Every error a caller can see carries a ``code`` from :class:`ErrorCode`. Codes are part
of the public contract: they appear in run records, events, exit messages and exports,
and they never change meaning.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class ErrorCode(StrEnum):
    RATE_LIMITED = "RATE_LIMITED"
    POLICY_DENIED = "POLICY_DENIED"
    GUARDRAIL_VIOLATION = "GUARDRAIL_VIOLATION"
    SIMILARITY_BLOCKED = "SIMILARITY_BLOCKED"
    PROVIDER_ERROR = "PROVIDER_ERROR"
    PROVIDER_TIMEOUT = "PROVIDER_TIMEOUT"
    PROVIDER_RATE_LIMITED = "PROVIDER_RATE_LIMITED"
    PROVIDER_AUTH = "PROVIDER_AUTH"
    PROVIDER_BAD_REQUEST = "PROVIDER_BAD_REQUEST"
    PROVIDER_OVERLOADED = "PROVIDER_OVERLOADED"
    PROVIDER_CONTEXT_TOO_LONG = "PROVIDER_CONTEXT_TOO_LONG"
    UNKNOWN_PROVIDER = "UNKNOWN_PROVIDER"
    INVALID_AGENT = "INVALID_AGENT"
    TEMPLATE_ERROR = "TEMPLATE_ERROR"
    PLUGIN_ERROR = "PLUGIN_ERROR"
    CANCELLED = "CANCELLED"
    STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
    MAX_TURNS = "MAX_TURNS"
    OUTPUT_INVALID = "OUTPUT_INVALID"
    # A durable run its engine (DBOS) gave up on: recovered too often, or an error escaped it.
    RUN_FAILED = "RUN_FAILED"
    # Tool failures: the model reads them as tool results; they end no run.
    TOOL_ERROR = "TOOL_ERROR"
    TOOL_TIMEOUT = "TOOL_TIMEOUT"
    TOOL_BAD_ARGUMENTS = "TOOL_BAD_ARGUMENTS"
    UNKNOWN_TOOL = "UNKNOWN_TOOL"


class SynthhostError(Exception):
    """Base class: an error with a stable code and a one-line message."""

    code: str = ErrorCode.PROVIDER_ERROR

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class Denied(SynthhostError):
    """Raised by ``pre_call``/``post_call`` to stop a call.

    Later plugins in the chain do not run and the call is not retried. ``details`` is
    free-form, JSON-serialisable data recorded on the span and the denial event (for
    example ``{"scope": "workspace", "retry_after": 1.5}`` from the rate limiter).
    """

    def __init__(self, code: str, message: str, **details: Any) -> None:
        super().__init__(message, code=code)
        self.details = details


class ProviderError(SynthhostError):
    """A model call failed. ``retryable`` tells recovery plugins whether trying the same
    request again can help (timeouts, 429, 5xx) or cannot (auth, bad request)."""

    def __init__(
        self,
        message: str,
        *,
        code: str = ErrorCode.PROVIDER_ERROR,
        retryable: bool = True,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.retryable = retryable
        self.status = status
        self.retry_after = retry_after


class UnknownProvider(SynthhostError):
    code = ErrorCode.UNKNOWN_PROVIDER


class UsageError(SynthhostError):
    """Bad input from a user: a file, field or flag. The CLI prints it on one line and
    exits with status 2."""

    code = ErrorCode.INVALID_AGENT


class StorageUnavailable(SynthhostError):
    """The database did not take rows within the configured bound."""

    code = ErrorCode.STORAGE_UNAVAILABLE
