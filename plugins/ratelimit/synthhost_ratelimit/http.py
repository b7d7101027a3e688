"""Rate limits over ``synthhost serve`` (``register_routes``), admin keys only:

- ``GET /v1/admin/ratelimits``: the key's workspace's effective limits, scope by scope,
  with where each comes from (``workspace``, ``global`` or ``default``).
- ``PUT /v1/admin/ratelimits/{scope}`` ``{"requests": n|null, "tokens": n|null,
  "window_s": s}`` (fields left out keep their value) / ``DELETE``: the workspace's row.

Every write is audited (an ``admin_action`` event with the key id, durable before the
answer) and acts in this process at once, in others within the refresh interval.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.gateway import plugin_api
from synthhost.gateway.errors import bad_request
from synthhost.gateway.plugin_api import host_of, read_json, require_admin
from synthhost_ratelimit.limits import SCOPES
from synthhost_ratelimit.models import GLOBAL_WORKSPACE

if TYPE_CHECKING:
    from synthhost.host import Host

MAX_WINDOW_S = 7 * 86400


def _limits(host: Host, workspace: str) -> list[dict[str, Any]]:
    from synthhost_ratelimit.store import load_rows, resolve

    rows = load_rows(host.engine)
    own = {r.scope for r in rows if r.workspace == workspace}
    shared = {r.scope for r in rows if r.workspace == GLOBAL_WORKSPACE}
    return [{"scope": scope, "requests": limit.requests, "tokens": limit.tokens, "window_s": limit.window_s,
             "source": "workspace" if scope in own else "global" if scope in shared else "default"}
            for scope, limit in resolve(rows, workspace).items()]


async def list_limits(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    data = await anyio.to_thread.run_sync(_limits, host_of(request), request.state.workspace)
    return JSONResponse({"object": "list", "workspace": request.state.workspace, "data": data})


def _count(body: dict[str, Any], name: str) -> Any:
    value = body[name]
    if value is None or (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53):
        return value
    raise ValueError(f"'{name}' must be a non-negative integer or null")


async def change_limit(request: Request) -> Response:
    from synthhost_ratelimit import state
    from synthhost_ratelimit.store import set_limit, unset_limit

    if (denied := require_admin(request)) is not None:
        return denied
    host, workspace, scope = host_of(request), request.state.workspace, request.path_params["scope"]
    if scope not in SCOPES or scope == "global":
        return bad_request(f"scope must be one of {', '.join(s for s in SCOPES if s != 'global')}", "scope")
    actor = plugin_api.actor(request)
    if request.method == "DELETE":
        removed = await anyio.to_thread.run_sync(unset_limit, host.engine, workspace, scope)
        change: dict[str, Any] = {"removed": removed}
        action = "ratelimit.unset"
    else:
        body = await read_json(request)
        if not isinstance(body, dict) or not body or set(body) - {"requests", "tokens", "window_s"}:
            return bad_request("the body must set some of 'requests', 'tokens', 'window_s'")
        change = {}
        try:
            for name in ("requests", "tokens"):
                if name in body:
                    change[name] = _count(body, name)
        except ValueError as exc:
            return bad_request(str(exc))
        if "window_s" in body:
            window = body["window_s"]
            if isinstance(window, bool) or not isinstance(window, int | float) or not math.isfinite(window) \
                    or not 0 < window <= MAX_WINDOW_S:
                return bad_request(f"'window_s' must be more than 0 and at most {MAX_WINDOW_S} seconds", "window_s")
            change["window_s"] = float(window)
        await anyio.to_thread.run_sync(lambda: set_limit(host.engine, workspace, scope, updated_by=actor, **change))
        action = "ratelimit.set"
    refresher = state(host).refresher
    if refresher is not None:
        await anyio.to_thread.run_sync(refresher.reload)  # this process at once
    await plugin_api.audit(request, action, scope, **change)
    data = await anyio.to_thread.run_sync(_limits, host, workspace)
    return JSONResponse(next(d for d in data if d["scope"] == scope))
