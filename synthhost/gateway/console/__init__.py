"""The web console of ``synthhost serve`` at ``/ui``: runs, traces, costs, similarity,
flags and the outbox, as server-rendered pages (Jinja2, SVG charts, one small vendored
script; nothing from a CDN, so it works offline).

Sign-in exchanges an API key for a session cookie (:mod:`.session`). Every page reads
the session's workspace only; another workspace's run is "not found". Flags and queues
are admin pages; their writes need the session's CSRF token and are audited like the
admin API's (``admin_action`` events, durable before the answer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlencode

import anyio
import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from synthhost.errors import SynthhostError, UsageError
from synthhost.gateway.console import charts, data
from synthhost.gateway.console.session import COOKIE, MAX_AGE_S, Session, Sessions
from synthhost.gateway.keys import KeyCache
from synthhost.gateway.plugin_api import audit
from synthhost.gateway.traces_api import STATUSES

if TYPE_CHECKING:
    from synthhost.host import Host

Endpoint = Callable[[Request], Awaitable[Response]]
HERE = Path(__file__).parent
MAX_FORM_BYTES = 16 * 1024
# No inline script or style anywhere: the vendored script and stylesheet only.
SECURITY_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                                "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
LIVE_POLL_S = 1.0
LIVE_MAX_S = 600.0


def _templates() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["ms"] = lambda v: "—" if v is None else (f"{v / 1000:.2f} s" if v >= 1000 else f"{v:.1f} ms")
    env.filters["usd"] = lambda v: "—" if v in (None, "") else f"${float(v):.6f}".rstrip("0").rstrip(".")
    env.filters["when"] = lambda v: "—" if not v else v.replace("T", " ")[:19]
    env.filters["pretty"] = lambda v: json.dumps(v, indent=2, ensure_ascii=False, default=str)
    return env


class Console:
    def __init__(self, host: Host, keys: KeyCache, guarded: Callable[[Endpoint], Endpoint]) -> None:
        self.host = host
        self.keys = keys
        self.guarded = guarded
        self.sessions = Sessions(host.engine, host.settings.env.get("SYNTHHOST_CONSOLE_SECRET"), keys.ttl_s)
        self.templates = _templates()

    # -- plumbing -------------------------------------------------------------------

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        session: Session | None = getattr(request.state, "session", None)
        html = self.templates.get_template(name).render(
            session=session, csrf=self.sessions.csrf_token(session) if session else "",
            path=request.url.path, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def error(self, request: Request, status: int, message: str) -> Response:
        return self.render(request, "error.html", status=status, title=str(status), message=message)

    async def form(self, request: Request) -> dict[str, str]:
        from synthhost.gateway.app import BodyTooLarge, read_body

        try:
            raw = await read_body(request, MAX_FORM_BYTES)
        except BodyTooLarge:
            return {}
        parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
        return {k: v[0] for k, v in parsed.items()}

    def page(self, endpoint: Endpoint, *, admin: bool = False, write: bool = False) -> Endpoint:
        """Signed-in pages: no session → the sign-in page; a member on an admin page →
        403; a write without the session's CSRF token → 403."""

        async def wrapper(request: Request) -> Response:
            session = await anyio.to_thread.run_sync(self.sessions.read, request.cookies.get(COOKIE))
            if session is None:
                if request.method != "GET":
                    return self.error(request, 401, "Your session has ended: sign in again.")
                target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                return RedirectResponse("/ui/login?" + urlencode({"next": target}), status_code=303,
                                        headers=SECURITY_HEADERS)
            # What the gateway's authenticated endpoints set: plugin_api.audit reads these.
            request.state.session = session
            request.state.key = session.key
            request.state.workspace = session.workspace
            request.state.role = session.key.role
            if admin and not session.is_admin:
                return self.error(request, 403, "This page needs an admin key (synthhost keys create --role admin).")
            if write:
                request.state.form = await self.form(request)
                if not self.sessions.csrf_ok(session, request.state.form.get("csrf")):
                    return self.error(request, 403, "The form's CSRF token is missing or stale: reload the page.")
            return await endpoint(request)

        return self.guarded(wrapper)

    def routes(self) -> list[BaseRoute]:
        g = self.guarded
        return [
            Route("/ui", g(self.index), methods=["GET"]),
            Route("/ui/login", g(self.login), methods=["GET", "POST"]),
            Route("/ui/logout", self.page(self.logout, write=True), methods=["POST"]),
            Route("/ui/runs", self.page(self.runs), methods=["GET"]),
            Route("/ui/runs/live", self.page(self.live), methods=["GET"]),
            Route("/ui/runs/{run_id}", self.page(self.trace), methods=["GET"]),
            Route("/ui/runs/{run_id}/export", self.page(self.export), methods=["GET"]),
            Route("/ui/costs", self.page(self.costs), methods=["GET"]),
            Route("/ui/costs.csv", self.page(self.costs_csv), methods=["GET"]),
            Route("/ui/similarity", self.page(self.similarity), methods=["GET"]),
            Route("/ui/flags", self.page(self.flags, admin=True), methods=["GET"]),
            Route("/ui/flags/{name}", self.page(self.flag, admin=True, write=True), methods=["POST"]),
            Route("/ui/queues", self.page(self.queues, admin=True), methods=["GET"]),
            Route("/ui/queues/retry-parked", self.page(self.retry_parked, admin=True, write=True),
                  methods=["POST"]),
            Mount("/ui/static", app=StaticFiles(directory=HERE / "static"), name="console-static"),
        ]

    # -- sign-in --------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return RedirectResponse("/ui/runs", status_code=303, headers=SECURITY_HEADERS)

    @staticmethod
    def _next(value: str | None) -> str:
        # Only a path of this console: never an open redirect.
        return value if value and value.startswith("/ui/") and not value.startswith("/ui//") else "/ui/runs"

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            target = self._next(request.query_params.get("next"))
            return self.render(request, "login.html", title="Sign in", next=target, message=None)
        form = await self.form(request)
        key = form.get("key", "").strip()
        target = self._next(form.get("next"))
        info = await anyio.to_thread.run_sync(self.keys.lookup, key) if key else None
        if info is None:
            return self.render(request, "login.html", status=401, title="Sign in", next=target,
                               message="That API key is not valid (or has been revoked).")
        response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
        response.set_cookie(COOKIE, self.sessions.issue(key, info), max_age=MAX_AGE_S, path="/ui", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        response = RedirectResponse("/ui/login", status_code=303, headers=SECURITY_HEADERS)
        response.delete_cookie(COOKIE, path="/ui", httponly=True, samesite="strict")
        return response

    # -- runs and traces -------------------------------------------------------------

    async def runs(self, request: Request) -> Response:
        params = {k: request.query_params.get(k, "") for k in
                  ("status", "agent", "model", "since", "until", "q", "cursor", "limit")}
        try:
            page = await anyio.to_thread.run_sync(data.runs_page, self.host, request.state.workspace, params)
        except ValueError as exc:
            return self.render(request, "runs.html", status=400, title="Runs", params=params, runs=[],
                               next_url=None, message=str(exc), statuses=STATUSES)
        next_url = None
        if page["next_cursor"]:
            next_url = "/ui/runs?" + urlencode({**{k: v for k, v in params.items() if v},
                                                "cursor": page["next_cursor"]})
        return self.render(request, "runs.html", title="Runs", params=params, runs=page["data"],
                           next_url=next_url, message=None, statuses=STATUSES)

    async def live(self, request: Request) -> Response:
        """Server-sent events: the status of the given running runs, whenever it changes;
        the stream ends when none is running (or after ``LIVE_MAX_S``)."""
        ids = [i for i in request.query_params.get("ids", "").split(",") if 1 <= len(i) <= 64][:200]
        workspace = request.state.workspace

        async def stream() -> Any:
            waiting = set(ids)
            started = anyio.current_time()
            while waiting and anyio.current_time() - started < LIVE_MAX_S:
                page = await anyio.to_thread.run_sync(data.run_statuses, self.host, workspace, sorted(waiting))
                for row in page:
                    if row["status"] != "running":
                        waiting.discard(row["id"])
                        yield f"event: run\ndata: {json.dumps(row)}\n\n"
                missing = waiting - {row["id"] for row in page}
                waiting -= missing
                if waiting:
                    await asyncio.sleep(LIVE_POLL_S)
            yield "event: done\ndata: {}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream", headers=SECURITY_HEADERS)

    async def trace(self, request: Request) -> Response:
        doc = await anyio.to_thread.run_sync(data.trace_document, self.host, request.state.workspace,
                                             request.path_params["run_id"])
        if doc is None:
            return self.error(request, 404, "No such run in this workspace.")
        bars, total = data.waterfall(doc)
        return self.render(request, "trace.html", title=f"Run {doc['run']['name']}", doc=doc, run=doc["run"],
                           bars=bars, total_ms=total, chart=charts.waterfall(bars, total))

    async def export(self, request: Request) -> Response:
        from synthhost.traces import export_name

        doc = await anyio.to_thread.run_sync(data.trace_document, self.host, request.state.workspace,
                                             request.path_params["run_id"])
        if doc is None:
            return self.error(request, 404, "No such run in this workspace.")
        name = export_name(str(doc["run"]["run_id"]))
        # The same text as `synthhost traces export` (json.dumps, indent 2, a final newline).
        return Response(json.dumps(doc, indent=2) + "\n", media_type="application/json",
                        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})

    # -- costs and similarity ------------------------------------------------------------

    def _range_params(self, request: Request) -> dict[str, str]:
        return {"since": request.query_params.get("since", "7d") or "7d",
                "until": request.query_params.get("until", "")}

    async def costs(self, request: Request) -> Response:
        params = self._range_params(request)
        try:
            report = await anyio.to_thread.run_sync(data.costs, self.host, request.state.workspace, params)
        except ValueError as exc:
            return self.render(request, "costs.html", status=400, title="Costs", params=params, report=None,
                               charts={}, message=f"'since'/'until': {exc}", csv_url="")
        chart_of = {group: charts.bar_chart(f"Spend per {group} (USD)", sorted(
            report.by[group].items(), key=lambda kv: kv[0] if group == "day" else -kv[1]))
            for group in data.COST_GROUPS}
        return self.render(request, "costs.html", title="Costs", params=params, report=report, charts=chart_of,
                           message=None, csv_url="/ui/costs.csv?" + urlencode(params))

    async def costs_csv(self, request: Request) -> Response:
        params = self._range_params(request)
        try:
            report = await anyio.to_thread.run_sync(data.costs, self.host, request.state.workspace, params)
        except ValueError as exc:
            return self.error(request, 400, f"'since'/'until': {exc}")
        name = f"costs-{request.state.workspace}-{datetime.now(UTC):%Y-%m-%d}.csv"
        return Response(data.costs_csv(report), media_type="text/csv",
                        headers={**SECURITY_HEADERS, "Content-Disposition": f'attachment; filename="{name}"'})

    async def similarity(self, request: Request) -> Response:
        params = self._range_params(request)
        try:
            report = await anyio.to_thread.run_sync(data.similarity, self.host, request.state.workspace, params)
        except ValueError as exc:
            return self.error(request, 400, f"'since'/'until': {exc}")
        rates = [(day, 100.0 * hit / seen if seen else 0.0) for day, (seen, hit) in report.per_day.items()]
        return self.render(request, "similarity.html", title="Similarity", params=params, report=report,
                           chart=charts.bar_chart("Detection rate per day (%)", rates, unit="%"))

    # -- admin: flags and queues ------------------------------------------------------------

    async def flags(self, request: Request, message: str | None = None, status: int = 200) -> Response:
        states = self.host.flags.state(request.state.workspace)
        rows = sorted(states, key=lambda s: (data.PHASES.get(s.name, 9), s.name))
        return self.render(request, "flags.html", status=status, title="Flags", flags=rows, phases=data.PHASES,
                           message=message)

    async def flag(self, request: Request) -> Response:
        name = request.path_params["name"]
        form: dict[str, str] = request.state.form
        workspace = request.state.workspace
        actor = f"key:{request.state.key.id}"
        try:
            if form.get("action") == "unset":
                removed = await anyio.to_thread.run_sync(lambda: self.host.flags.unset(name, workspace=workspace))
                await audit(request, "flags.unset", name, removed=removed)
            elif form.get("enabled") in ("true", "false"):
                enabled = form["enabled"] == "true"
                await anyio.to_thread.run_sync(
                    lambda: self.host.flags.set(name, enabled, workspace=workspace, actor=actor))
                await audit(request, "flags.set", name, enabled=enabled)
            else:
                return await self.flags(request, "The form must say enabled=true|false or action=unset.", 400)
        except UsageError as exc:
            return await self.flags(request, exc.message, 400)
        except SynthhostError as exc:
            return await self.flags(request, self.host.redact(str(exc)), 400)
        return RedirectResponse("/ui/flags", status_code=303, headers=SECURITY_HEADERS)

    async def queues(self, request: Request, message: str | None = None) -> Response:
        from synthhost.outbox import queue_stats

        stats = await anyio.to_thread.run_sync(queue_stats, self.host.engine, self.host.registry.exporters)
        return self.render(request, "queues.html", title="Queues", stats=stats, message=message)

    async def retry_parked(self, request: Request) -> Response:
        from synthhost.outbox import queue_stats, retry_parked

        exporter = request.state.form.get("exporter") or None
        if exporter is not None and exporter not in self.host.registry.exporters:
            # Rows left by an exporter no longer installed can be retried too.
            known = await anyio.to_thread.run_sync(queue_stats, self.host.engine, ())
            if exporter not in known:
                return self.error(request, 400, "'exporter': unknown exporter")
        count = await anyio.to_thread.run_sync(retry_parked, self.host.engine, exporter)
        await audit(request, "queue.retry_parked", exporter, rows=count)
        return await self.queues(request, f"{count} parked row(s) put back to pending.")


def console_routes(host: Host, keys: KeyCache, guarded: Callable[[Endpoint], Endpoint]) -> list[BaseRoute]:
    """The console's routes, for the gateway app."""
    return Console(host, keys, guarded).routes()
