"""What plugins' routes (``register_routes``) use from the gateway: a size-capped JSON
body, the admin check, and the audit record of a write. One place, so every plugin's
admin endpoint answers the same statuses and bodies as the gateway's own."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from synthhost.gateway.errors import error_response

if TYPE_CHECKING:
    from synthhost.host import Host


class InvalidBody(Exception):
    """The body is not JSON: the gateway answers 400 ``invalid_json``."""


def host_of(request: Request) -> Host:
    host: Host = request.app.state.host
    return host


async def read_json(request: Request) -> Any:
    """The request's JSON body, at most ``SYNTHHOST_MAX_BODY_BYTES`` (413 past it, without
    reading the rest); :class:`InvalidBody` (answered 400) when it does not parse."""
    from synthhost.gateway.app import read_body

    raw = await read_body(request, request.app.state.max_body)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidBody from None


def require_admin(request: Request) -> Response | None:
    """None for an admin key; the 403 to return otherwise."""
    if request.state.role == "admin":
        return None
    return error_response(403, "this endpoint needs an admin key (synthhost keys create --role admin)",
                          type="permission_error", code="admin_required")


def actor(request: Request) -> str:
    return f"key:{request.state.key.id}"


async def audit(request: Request, action: str, target: str | None, **values: Any) -> None:
    """Record an ``admin_action`` event (workspace, key id, action, target, values) and
    wait until it is durable, so an answered write is always audited."""
    host = host_of(request)
    host.emit("admin_action", workspace=request.state.workspace, actor=actor(request), action=action,
              target=target, **values)
    await host.wait_for_rows()
