"""Routing configuration over ``synthhost serve`` (``register_routes``), admin keys only:

- ``GET /v1/admin/routing``: the workspace's stored document (or null), the global
  one, and the effective configuration calls are routed with (defaults <- global <-
  workspace), as ``synthhost routing show --json`` prints it.
- ``PUT /v1/admin/routing``: a whole routing document as JSON, validated merged over
  the global one and stored as the workspace's next version (400 when it would not
  compile).
- ``DELETE /v1/admin/routing``: clear the workspace's document (global and defaults
  apply again).

The global configuration is the operator's (``synthhost routing apply --global``).
Every write is audited and acts in this process at once, in others within their
refresh interval.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.errors import UsageError
from synthhost.gateway.errors import bad_request
from synthhost.gateway.plugin_api import actor, audit, host_of, read_json, require_admin
from synthhost_routing.catalog import GLOBAL


def _shown(engine: Any, workspace: str) -> dict[str, Any]:
    from synthhost_routing import store
    from synthhost_routing.cli import describe
    from synthhost_routing.config import effective

    rows = store.load_all(engine)
    own, base = rows.get(workspace), rows.get(GLOBAL)
    cfg = effective(base.document if base else None, own.document if own else None)
    return {"workspace": workspace, "stored": own.document if own else None,
            "version": own.version if own else None,
            "updated_at": own.updated_at.isoformat() if own else None,
            "updated_by": own.updated_by if own else None,
            "global": base.document if base else None, "effective": describe(cfg)}


async def show_routing(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    return JSONResponse(await anyio.to_thread.run_sync(_shown, host_of(request).engine, request.state.workspace))


async def change_routing(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    from synthhost_routing import set_config

    host, workspace = host_of(request), request.state.workspace
    if request.method == "DELETE":
        document: dict[str, Any] = {}
        action = "routing.clear"
    else:
        body = await read_json(request)
        if not isinstance(body, dict):
            return bad_request("the body must be a routing document (an object)")
        if body.get("workspace", workspace) != workspace:
            return bad_request("a workspace's routing can only be changed with that workspace's key", "workspace")
        document, action = body, "routing.set"
    try:
        version = await anyio.to_thread.run_sync(
            lambda: set_config(host, document, workspace=workspace, actor=actor(request)))
    except UsageError as exc:
        return bad_request(exc.message.splitlines()[0][:500])
    await audit(request, action, workspace, version=version)
    return JSONResponse(await anyio.to_thread.run_sync(_shown, host.engine, workspace))


async def routing(request: Request) -> Response:
    return await (show_routing if request.method == "GET" else change_routing)(request)
