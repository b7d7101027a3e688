"""Admin endpoints of ``synthhost serve`` (``admin`` keys only; 403 for ``member`` keys).

- ``GET /v1/admin/flags``: the key's workspace's flags, resolved (value and source).
- ``PUT /v1/admin/flags/{name}`` ``{"enabled": bool}`` / ``DELETE``: the workspace's row.
- ``GET /v1/admin/queue``: outbox statistics per exporter (``synthhost queue stats``).
- ``POST /v1/admin/queue/retry-parked`` ``{"exporter": optional}``: parked rows back to
  pending (``synthhost queue retry-parked``).

Every write is audited: an ``admin_action`` event (workspace, key id, action, target,
value) made durable before the answer. Flags are scoped to the key's workspace; the
outbox is shared by every workspace, so its two endpoints are operator actions.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost.errors import SynthhostError, UsageError
from synthhost.gateway.errors import bad_request, error_response, from_error

if TYPE_CHECKING:
    from synthhost.host import Host


def forbidden() -> Response:
    return error_response(403, "this endpoint needs an admin key (synthhost keys create --role admin)",
                          type="permission_error", code="admin_required")


class Admin:
    def __init__(self, host: Host) -> None:
        self.host = host

    async def _audit(self, request: Request, action: str, target: str | None, **values: Any) -> None:
        key = request.state.key
        self.host.emit("admin_action", workspace=request.state.workspace, actor=f"key:{key.id}",
                       action=action, target=target, **values)
        await self.host.wait_for_rows()

    async def flags(self, request: Request) -> Response:
        if request.state.role != "admin":
            return forbidden()
        states = self.host.flags.state(request.state.workspace)
        return JSONResponse({"object": "list", "workspace": request.state.workspace,
                             "data": [dataclasses.asdict(s) for s in states]})

    async def flag(self, request: Request, body: Any) -> Response:
        if request.state.role != "admin":
            return forbidden()
        name = request.path_params["name"]
        workspace = request.state.workspace
        actor = f"key:{request.state.key.id}"
        try:
            if request.method == "DELETE":
                removed = await anyio.to_thread.run_sync(
                    lambda: self.host.flags.unset(name, workspace=workspace))
                await self._audit(request, "flags.unset", name, removed=removed)
            else:
                if not isinstance(body, dict) or not isinstance(body.get("enabled"), bool):
                    return bad_request("the body must be {\"enabled\": true|false}", "enabled")
                enabled = body["enabled"]
                await anyio.to_thread.run_sync(
                    lambda: self.host.flags.set(name, enabled, workspace=workspace, actor=actor))
                await self._audit(request, "flags.set", name, enabled=enabled)
        except UsageError as exc:
            return bad_request(exc.message, "name", code="unknown_flag")
        except SynthhostError as exc:
            return from_error(exc, self.host.redact)
        state = next(s for s in self.host.flags.state(workspace) if s.name == name)
        return JSONResponse(dataclasses.asdict(state))

    async def queue(self, request: Request) -> Response:
        if request.state.role != "admin":
            return forbidden()
        from synthhost.outbox import queue_stats

        stats = await anyio.to_thread.run_sync(queue_stats, self.host.engine, self.host.registry.exporters)
        return JSONResponse({"exporters": stats})

    async def retry_parked(self, request: Request, body: Any) -> Response:
        if request.state.role != "admin":
            return forbidden()
        from synthhost.outbox import retry_parked

        exporter = body.get("exporter") if isinstance(body, dict) else None
        if exporter is not None and exporter not in self.host.registry.exporters:
            return bad_request("unknown exporter", "exporter")
        count = await anyio.to_thread.run_sync(retry_parked, self.host.engine, exporter)
        await self._audit(request, "queue.retry_parked", exporter, rows=count)
        return JSONResponse({"retried": count})
