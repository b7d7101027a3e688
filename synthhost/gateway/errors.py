"""Host errors as OpenAI-style error responses: ``{"error": {"message", "type", "code",
"param"}}`` with the HTTP status the official SDKs map to their exception classes.

=============================================  ======  ==========================
code                                           status  why
=============================================  ======  ==========================
``RATE_LIMITED``                               429     the caller's own limit; ``Retry-After``
``POLICY_DENIED``, ``GUARDRAIL_VIOLATION``,    403     the request is understood and refused:
``SIMILARITY_BLOCKED``, other denials                  retrying it unchanged cannot succeed
``PROVIDER_BAD_REQUEST``, validation           400
``PROVIDER_CONTEXT_TOO_LONG``                  400
``UNKNOWN_PROVIDER``                           404     like OpenAI's ``model_not_found``
``PROVIDER_ERROR``, ``PROVIDER_AUTH``          502     the upstream failed (its credentials are
                                                       the gateway's, not the caller's)
``PROVIDER_RATE_LIMITED``,                     503     the upstream is out of capacity; with
``PROVIDER_OVERLOADED``, ``STORAGE_UNAVAILABLE``       ``Retry-After`` when it said when
``PLUGIN_ERROR`` (a fail-closed plugin)        503
``PROVIDER_TIMEOUT``                           504
=============================================  ======  ==========================
"""

from __future__ import annotations

import math
from typing import Any

from starlette.responses import JSONResponse

from synthhost.errors import Denied, ErrorCode, ProviderError, SynthhostError

STATUS: dict[str, tuple[int, str]] = {
    ErrorCode.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorCode.POLICY_DENIED: (403, "permission_error"),
    ErrorCode.GUARDRAIL_VIOLATION: (403, "permission_error"),
    ErrorCode.SIMILARITY_BLOCKED: (403, "permission_error"),
    ErrorCode.PROVIDER_BAD_REQUEST: (400, "invalid_request_error"),
    ErrorCode.PROVIDER_CONTEXT_TOO_LONG: (400, "invalid_request_error"),
    ErrorCode.INVALID_AGENT: (400, "invalid_request_error"),
    ErrorCode.TEMPLATE_ERROR: (400, "invalid_request_error"),
    ErrorCode.UNKNOWN_PROVIDER: (404, "not_found_error"),
    ErrorCode.PROVIDER_ERROR: (502, "api_error"),
    ErrorCode.PROVIDER_AUTH: (502, "api_error"),
    ErrorCode.PROVIDER_RATE_LIMITED: (503, "service_unavailable"),
    ErrorCode.PROVIDER_OVERLOADED: (503, "service_unavailable"),
    ErrorCode.STORAGE_UNAVAILABLE: (503, "service_unavailable"),
    ErrorCode.PLUGIN_ERROR: (503, "service_unavailable"),
    ErrorCode.PROVIDER_TIMEOUT: (504, "timeout_error"),
    ErrorCode.CANCELLED: (503, "service_unavailable"),
}


def error_response(status: int, message: str, *, type: str, code: str | None = None, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": type, "code": code, "param": param}}
    return JSONResponse(body, status_code=status, headers=headers)


def bad_request(message: str, param: str | None = None, code: str = "invalid_request") -> JSONResponse:
    return error_response(400, message, type="invalid_request_error", code=code, param=param)


def unauthorized(message: str = "missing or invalid API key (Authorization: Bearer <key>)") -> JSONResponse:
    return error_response(401, message, type="authentication_error", code="invalid_api_key",
                          headers={"WWW-Authenticate": "Bearer"})


def not_found(message: str = "not found") -> JSONResponse:
    return error_response(404, message, type="not_found_error", code="not_found")


def internal_error() -> JSONResponse:
    return error_response(500, "internal error (see the server log)", type="server_error", code="internal_error")


def retry_after_seconds(value: Any) -> str | None:
    """``Retry-After`` takes whole seconds: round up, at least 1."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return str(max(1, math.ceil(seconds)))


def error_body(error: SynthhostError, redact: Any) -> dict[str, Any]:
    """OpenAI's error object for a host error (what a stream's ``error`` event carries)."""
    _, kind = _status(error)
    return {"error": {"message": str(redact(error.message))[:1000], "type": kind, "code": str(error.code),
                      "param": None}}


def _status(error: SynthhostError) -> tuple[int, str]:
    code = str(error.code)
    if isinstance(error, Denied):
        return STATUS.get(code, (403, "permission_error"))
    return STATUS.get(code, (502, "api_error"))


def from_error(error: SynthhostError, redact: Any) -> JSONResponse:
    """The response for a host error. ``redact`` masks secrets in the message."""
    code = str(error.code)
    status, kind = _status(error)
    headers: dict[str, str] = {}
    retry = None
    if isinstance(error, Denied):
        retry = error.details.get("retry_after")
    elif isinstance(error, ProviderError):
        retry = error.retry_after
    if status in (429, 503) and (value := retry_after_seconds(retry)) is not None:
        headers["Retry-After"] = value
    return error_response(status, str(redact(error.message))[:1000], type=kind, code=code, headers=headers)
