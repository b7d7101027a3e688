"""A small st2api client on httpx: run an action to completion, cancel, post a webhook.

Wire protocol (st2 OpenAPI spec): ``POST /v1/executions {"action", "parameters"}`` → 201
Execution (``status: requested``); ``GET /v1/executions/{id}`` until a terminal status
(succeeded, failed, timeout, canceled, abandoned); ``DELETE /v1/executions/{id}``
cancels; ``POST /v1/webhooks/st2 {"trigger", "payload"}`` → 202. Every error body is
``{"faultstring": ...}``, surfaced in :class:`St2Error`. Auth: ``St2-Api-Key`` (or
``X-Auth-Token``) on every request; the value never appears in a message.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import anyio
import httpx

from synthhost_stackstorm.config import Config

_ACTION_NOT_FOUND = re.compile(r'^Action "[^"]*" cannot be found\.')
TERMINAL = frozenset({"succeeded", "failed", "timeout", "canceled", "abandoned"})
ErrorKind = Literal["unreachable", "unauthorized", "not_found", "rejected", "server_error", "deadline",
                    "failed", "invalid_response"]


class St2Error(Exception):
    """Anything that kept StackStorm from giving an answer. ``kind``: unreachable,
    unauthorized (401/403), not_found (an action or pack not installed: st2's 400
    ``Action "x" cannot be found.``, or 404 for other resources), rejected
    (other 4xx, e.g. bad parameters), server_error (5xx), deadline (our
    ``STACKSTORM_TIMEOUT``; the execution was cancelled), failed (the execution ended
    failed/timeout/canceled/abandoned), invalid_response."""

    def __init__(self, kind: ErrorKind, message: str, *, status_code: int | None = None,
                 execution_id: str | None = None, execution: Execution | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status_code = status_code
        self.execution_id = execution_id
        self.execution = execution


@dataclass(slots=True)
class Execution:
    id: str
    action: str
    status: str
    result: Any = None
    elapsed_s: float = 0.0
    web_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def output(self) -> Any:
        """The workflow's ``output`` (orquesta), or a python action's ``result``."""
        if isinstance(self.result, dict):
            if "output" in self.result:
                return self.result["output"]
            if "result" in self.result:
                return self.result["result"]
        return self.result

    @property
    def errors(self) -> Any:
        return self.result.get("errors") if isinstance(self.result, dict) else None


def faultstring(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("faultstring"):
        return str(body["faultstring"])[:300]
    return (response.text or response.reason_phrase or "").strip()[:300]


def http_error(response: httpx.Response, what: str, execution_id: str | None = None) -> St2Error:
    status = response.status_code
    fault = faultstring(response)
    if status in (401, 403):
        hint = "check STACKSTORM_API_KEY (sent as St2-Api-Key)"
        return St2Error("unauthorized", f"{what}: StackStorm refused the credentials ({status}: {fault}); {hint}",
                        status_code=status, execution_id=execution_id)
    if status == 404 or (status == 400 and _ACTION_NOT_FOUND.search(fault)):
        # st2api answers a missing action (pack not installed) with 400 'Action "x" cannot
        # be found.' on POST /executions, and 404 for unknown resources elsewhere.
        return St2Error("not_found", f"{what}: {status} {fault}", status_code=status, execution_id=execution_id)
    kind: ErrorKind = "server_error" if status >= 500 else "rejected"
    return St2Error(kind, f"{what}: {status} {fault}", status_code=status, execution_id=execution_id)


def _execution(body: Any, what: str) -> Execution:
    if not isinstance(body, dict) or not isinstance(body.get("id"), str) or not isinstance(body.get("status"), str):
        raise St2Error("invalid_response", f"{what}: not an Execution: {str(body)[:200]}")
    action = body.get("action")
    ref = action.get("ref") if isinstance(action, dict) else None
    elapsed = body.get("elapsed_seconds")
    return Execution(
        id=body["id"], action=str(ref or ""), status=body["status"], result=body.get("result"),
        elapsed_s=float(elapsed) if isinstance(elapsed, int | float) else 0.0,
        web_url=body.get("web_url"), raw=body,
    )


class St2Client:
    """One async session: ``async with St2Client(config) as st2: await st2.run(ref, params)``.
    Open one per hook call (an httpx client belongs to one event loop)."""

    def __init__(self, config: Config, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> St2Client:
        self._http = httpx.AsyncClient(
            base_url=self.config.api_url, headers={**self.config.auth_headers(), "Accept": "application/json"},
            timeout=httpx.Timeout(self.config.http_timeout_s), verify=self.config.verify, transport=self._transport,
            follow_redirects=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _request(self, method: str, path: str, what: str, *, json: Any = None,
                       execution_id: str | None = None) -> httpx.Response:
        assert self._http is not None, "use St2Client as an async context manager"
        try:
            return await self._http.request(method, path, json=json)
        except httpx.TimeoutException as exc:
            raise St2Error("unreachable", f"{what}: no answer within {self.config.http_timeout_s:g}s "
                                          f"({type(exc).__name__})", execution_id=execution_id) from None
        except httpx.HTTPError as exc:
            raise St2Error("unreachable", f"{what}: {type(exc).__name__}: {exc}"[:300],
                           execution_id=execution_id) from None

    async def start(self, ref: str, parameters: dict[str, Any], *, context: dict[str, Any] | None = None) -> Execution:
        """``POST /executions``: the new execution (status ``requested``)."""
        body: dict[str, Any] = {"action": ref, "parameters": parameters}
        if context:
            body["context"] = context
        what = f"POST /executions {ref}"
        response = await self._request("POST", "/executions", what, json=body)
        if response.status_code not in (200, 201):
            raise http_error(response, what)
        return _execution(_json(response, what), what)

    async def get(self, execution_id: str) -> Execution:
        what = f"GET /executions/{execution_id}"
        response = await self._request("GET", f"/executions/{execution_id}", what, execution_id=execution_id)
        if response.status_code != 200:
            raise http_error(response, what, execution_id)
        return _execution(_json(response, what), what)

    async def cancel(self, execution_id: str) -> str:
        """``DELETE /executions/{id}``: the status st2 reports (``canceling``...), or the
        faultstring when it cannot be cancelled any more."""
        what = f"DELETE /executions/{execution_id}"
        response = await self._request("DELETE", f"/executions/{execution_id}", what, execution_id=execution_id)
        if response.status_code != 200:
            raise http_error(response, what, execution_id)
        body = _json(response, what)
        if isinstance(body, dict) and body.get("faultstring"):
            return str(body["faultstring"])
        return str(body.get("status", "")) if isinstance(body, dict) else ""

    async def _get_object(self, path: str, noun: str) -> dict[str, Any]:
        what = f"GET {path}"
        response = await self._request("GET", path, what)
        if response.status_code != 200:
            raise http_error(response, what)
        body = _json(response, what)
        if not isinstance(body, dict):
            raise St2Error("invalid_response", f"{what}: not {noun}")
        return body

    async def get_action(self, ref: str) -> dict[str, Any]:
        return await self._get_object(f"/actions/{ref}", "an action")

    async def get_pack(self, ref: str) -> dict[str, Any]:
        """``GET /packs/<ref>``: an installed pack (name, version...)."""
        return await self._get_object(f"/packs/{ref}", "a pack")

    async def run(self, ref: str, parameters: dict[str, Any], *, context: dict[str, Any] | None = None,
                  timeout_s: float | None = None) -> Execution:
        """Start ``ref`` and poll until it finishes. Returns the succeeded execution;
        raises :class:`St2Error` otherwise (``deadline``: not finished within
        ``timeout_s``, cancelled with ``DELETE``; ``failed``: ended unsuccessfully)."""
        timeout_s = self.config.timeout_s if timeout_s is None else timeout_s
        started = time.monotonic()
        execution = await self.start(ref, parameters, context=context)
        deadline = started + timeout_s
        interval = self.config.poll_interval_s
        try:
            while execution.status not in TERMINAL:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    await self._cancel_quietly(execution.id)
                    raise St2Error("deadline", f"{ref} execution {execution.id} still {execution.status} after "
                                               f"{timeout_s:g}s (STACKSTORM_TIMEOUT): cancelled",
                                   execution_id=execution.id, execution=execution)
                await anyio.sleep(min(interval, remaining))
                execution = await self.get(execution.id)
        except anyio.get_cancelled_exc_class():
            await self._cancel_quietly(execution.id)  # our call was cancelled: do not leave work running
            raise
        if not execution.elapsed_s:
            execution.elapsed_s = time.monotonic() - started
        if execution.status != "succeeded":
            detail = _errors_text(execution.errors) or _errors_text(execution.result)
            raise St2Error("failed", f"{ref} execution {execution.id} {execution.status}"
                                     + (f": {detail}" if detail else ""),
                           execution_id=execution.id, execution=execution)
        return execution

    async def _cancel_quietly(self, execution_id: str) -> None:
        # Our deadline passed; the cancel is best effort and must not mask the deadline.
        with anyio.move_on_after(min(self.config.http_timeout_s, 5.0), shield=True):
            with contextlib.suppress(St2Error):
                await self.cancel(execution_id)


def _json(response: httpx.Response, what: str) -> Any:
    try:
        return response.json()
    except ValueError:
        raise St2Error("invalid_response", f"{what}: {response.status_code} with a non-JSON body") from None


def _errors_text(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, list):
        parts = [str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in value]
        return "; ".join(parts)[:300]
    if isinstance(value, dict):
        for key in ("error", "stderr", "message"):
            if value.get(key):
                return str(value[key]).strip()[:300]
        return ""
    return str(value)[:300]


def post_webhook(http: httpx.Client, trigger: str, payload: dict[str, Any]) -> None:
    """``POST /webhooks/st2`` (sync: the webhook sender runs in its own thread)."""
    what = f"POST /webhooks/st2 {trigger}"
    try:
        response = http.post("/webhooks/st2", json={"trigger": trigger, "payload": payload})
    except httpx.HTTPError as exc:
        raise St2Error("unreachable", f"{what}: {type(exc).__name__}: {exc}"[:300]) from None
    if response.status_code not in (200, 201, 202):
        raise http_error(response, what)


def finite(value: Any, default: float = 0.0) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default
