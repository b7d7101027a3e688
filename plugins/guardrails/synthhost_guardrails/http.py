"""The guard set over ``synthhost serve`` (``register_routes``), admin keys only:

- ``GET /v1/admin/guardrails``: the set the key's workspace runs and where it comes
  from (``workspace``, ``global`` or the built-in ``default``), with its document.
- ``PUT /v1/admin/guardrails``: a guard set document as JSON (the YAML file's shape),
  checked (every validator built once) and stored as the workspace's next version.
- ``DELETE /v1/admin/guardrails``: remove the workspace's own set (the global one, or
  the default, applies again); 404 when it has none.

The global set is the operator's (``synthhost guardrails apply --global``). Every write
is audited and acts in this process at once, in others within their refresh interval.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.gateway.errors import bad_request, not_found
from synthhost.gateway.plugin_api import actor, audit, host_of, read_json, require_admin
from synthhost_guardrails.store import GLOBAL


def _effective(engine: Any, workspace: str) -> dict[str, Any]:
    from synthhost_guardrails.guardset import DEFAULT_DOCUMENT
    from synthhost_guardrails.store import get_version

    for scope, source in ((workspace, "workspace"), (GLOBAL, "global")):
        row = get_version(engine, scope)
        if row is not None and not row.removed:
            return {"source": source, "version": row.version, "created_at": row.created_at.isoformat(),
                    "created_by": row.created_by, "summary": row.summary, "document": row.document}
    return {"source": "default", "version": None, "document": DEFAULT_DOCUMENT}


async def show_guards(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    found = await anyio.to_thread.run_sync(_effective, host_of(request).engine, request.state.workspace)
    return JSONResponse({"workspace": request.state.workspace, **found})


async def change_guards(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    from synthhost_guardrails import apply_guards, remove_guards
    from synthhost_guardrails.guardset import GuardSetError, parse_document
    from synthhost_guardrails.store import get_version

    host, workspace = host_of(request), request.state.workspace
    if request.method == "DELETE":
        row = await anyio.to_thread.run_sync(get_version, host.engine, workspace)
        if row is None or row.removed:
            return not_found("the workspace has no guard set of its own")
        result = await anyio.to_thread.run_sync(
            lambda: remove_guards(host, workspace=workspace, actor=actor(request)))
        await audit(request, "guardrails.remove", workspace, version=result.version)
        return JSONResponse({"version": result.version, "removed": True})
    body = await read_json(request)
    try:
        spec = parse_document(body)
        result = await anyio.to_thread.run_sync(
            lambda: apply_guards(host, spec, workspace=workspace, actor=actor(request)))
    except GuardSetError as exc:
        return bad_request(str(exc).splitlines()[0][:500])
    if result.changed:
        await audit(request, "guardrails.apply", workspace, version=result.version, summary=result.summary)
    return JSONResponse({"version": result.version, "changed": result.changed, "summary": result.summary})


async def guards(request: Request) -> Response:
    return await (show_guards if request.method == "GET" else change_guards)(request)
