"""Policy sets over ``synthhost serve`` (``register_routes``), admin keys only:

- ``GET /v1/admin/policies``: the sets that apply to the key's workspace, its own and
  the global ones (``scope``: ``workspace`` or ``global``), latest versions.
- ``GET /v1/admin/policies/{name}``: one set's document (its own first, else global).
- ``PUT /v1/admin/policies/{name}``: a policy document as JSON (the YAML file's shape;
  ``name`` may be left out, ``workspace`` must be left out or be the key's), stored as
  the workspace's next version. 400 with the problems when it does not validate.
- ``DELETE /v1/admin/policies/{name}``: remove the workspace's set (404 if none).

Global sets (workspace ``'*'``) are the operator's, changed with ``synthhost policy``;
a workspace admin reads them but cannot change them. Every write is audited (an
``admin_action`` event, durable before the answer) and acts in this process at once,
in others within their refresh interval.
"""

from __future__ import annotations

from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.errors import UsageError
from synthhost.gateway.errors import bad_request, not_found
from synthhost.gateway.plugin_api import actor, audit, host_of, read_json, require_admin
from synthhost_policy.document import GLOBAL


def _summary(row: Any) -> dict[str, Any]:
    return {"name": row.name, "scope": "global" if row.workspace == GLOBAL else "workspace",
            "version": row.version, "priority": row.priority, "enabled": row.enabled,
            "rules": len((row.document or {}).get("rules") or ()),
            "created_at": row.created_at.isoformat(), "created_by": row.created_by}


async def list_policies(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    from synthhost_policy.store import current_sets

    workspace = request.state.workspace
    rows = await anyio.to_thread.run_sync(current_sets, host_of(request).engine, [workspace, GLOBAL])
    data = [_summary(r) for r in rows if not r.removed]
    return JSONResponse({"object": "list", "workspace": workspace, "data": data})


async def get_policy(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    from synthhost_policy.store import get_version

    engine, name = host_of(request).engine, request.path_params["name"]
    for scope in (request.state.workspace, GLOBAL):
        row = await anyio.to_thread.run_sync(get_version, engine, scope, name)
        if row is not None and not row.removed:
            return JSONResponse({**_summary(row), "document": row.document})
    return not_found(f"no policy set {name!r}")


async def change_policy(request: Request) -> Response:
    if (denied := require_admin(request)) is not None:
        return denied
    from synthhost_policy import apply_policy, remove_policy
    from synthhost_policy.document import PolicyFileError, PolicySet
    from synthhost_policy.store import get_version

    host, workspace, name = host_of(request), request.state.workspace, request.path_params["name"]
    if request.method == "DELETE":
        row = await anyio.to_thread.run_sync(get_version, host.engine, workspace, name)
        if row is None or row.removed:
            return not_found(f"workspace has no policy set {name!r}")
        result = await anyio.to_thread.run_sync(
            lambda: remove_policy(host, name, workspace=workspace, actor=actor(request)))
        await audit(request, "policy.remove", name, version=result.version)
        return JSONResponse({"name": name, "version": result.version, "removed": True})
    body = await read_json(request)
    if not isinstance(body, dict):
        return bad_request("the body must be a policy document (an object with 'rules')")
    if body.get("name", name) != name:
        return bad_request(f"the document names set {body['name']!r}, the URL {name!r}", "name")
    if body.get("workspace", workspace) != workspace:
        return bad_request("a workspace's sets can only be changed with that workspace's key", "workspace")
    document = {k: v for k, v in body.items() if k != "workspace"}
    try:
        policy = PolicySet.model_validate({**document, "name": name})
    except Exception as exc:  # pydantic's ValidationError, or a CEL compile error inside it
        return bad_request(_first_problem(exc), "rules")
    try:
        result = await anyio.to_thread.run_sync(
            lambda: apply_policy(host, policy, workspace=workspace, actor=actor(request)))
    except (UsageError, PolicyFileError) as exc:
        return bad_request(str(exc))
    if result.changed:
        await audit(request, "policy.apply", name, version=result.version, summary=result.summary)
    return JSONResponse({"name": name, "version": result.version, "changed": result.changed,
                         "summary": result.summary})


def _first_problem(exc: Exception) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        lines = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            lines.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        return "; ".join(lines)
    return str(exc).splitlines()[0][:300]


async def policy(request: Request) -> Response:
    return await (get_policy if request.method == "GET" else change_policy)(request)
