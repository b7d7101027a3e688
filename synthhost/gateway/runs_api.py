"""Agent runs over HTTP.

- ``POST /v1/runs``: ``{"agent": NAME}`` (``NAME.yaml`` in ``SYNTHHOST_AGENTS_DIR``) or
  ``{"spec": {...} | "yaml text"}``, with ``"inputs": {name: value}``. ``"wait": true``
  answers 200 with the run record when it has finished; otherwise 202 with its id at
  once and the run goes on in this process. ``"durable": true`` queues it for
  ``synthhost worker`` processes instead (synthhost.durable; 202 with ``"status":
  "queued"``; with ``"wait": true`` 200 once a worker has finished it, or 202 after
  ``SYNTHHOST_DURABLE_WAIT_S``, 300). The run's workspace is the key's.
- ``GET /v1/runs/{id}``: the run record (live in this process, else from the database).
- ``GET /v1/runs/{id}/events``: server-sent events, one ``step`` event as each step ends,
  then ``done`` with the run record (at once for a finished run; a durable run on a
  worker is followed through its rows).
- ``POST /v1/runs/{id}/cancel``: cancels a run in progress in this process, or a
  durable run wherever it is (it stops at its next step boundary); the run records
  ``cancelled`` (409 for a finished run, or an in-process run of another process).

Another workspace's run is 404, exactly like a run that does not exist. At shutdown,
runs in progress get ``SYNTHHOST_SHUTDOWN_TIMEOUT`` to finish, then are cancelled (and
recorded ``cancelled``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from synthhost.call import new_id
from synthhost.errors import SynthhostError
from synthhost.gateway.errors import bad_request, error_response, from_error, not_found
from synthhost.traces import load_trace

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from synthhost.agent import AgentSpec
    from synthhost.host import Host
    from synthhost.trace import StepResult

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_ID = re.compile(r"[0-9a-f]{32}")


def _step(index: int, total: int, step: StepResult) -> dict[str, Any]:
    return {"index": index, "total": total, "name": step.name, "status": step.status, "model": step.model,
            "output": step.output, "error_code": step.error_code, "error_message": step.error_message}


@dataclass
class LiveRun:
    run_id: str
    workspace: str
    agent: str
    total: int
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    steps: list[dict[str, Any]] = field(default_factory=list)
    record: dict[str, Any] | None = None
    changed: anyio.Event = field(default_factory=anyio.Event)

    def notify(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()

    def snapshot(self) -> dict[str, Any]:
        if self.record is not None:
            return self.record
        return {"id": self.run_id, "object": "run", "agent": self.agent, "workspace": self.workspace,
                "status": "running", "steps": list(self.steps), "output": None, "error_code": None,
                "error_message": None}


class Runs:
    """The runs this process is executing, and the endpoints."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.live: dict[str, LiveRun] = {}
        self.group: TaskGroup | None = None
        env = host.settings.env
        self.agents_dir = Path(env["SYNTHHOST_AGENTS_DIR"]) if env.get("SYNTHHOST_AGENTS_DIR") else None
        raw = (env.get("SYNTHHOST_MAX_RUNS_IN_FLIGHT") or "").strip()
        self.max_live = int(raw) if raw.isdigit() and int(raw) > 0 else 100
        try:
            self.durable_wait_s = max(0.0, float(env.get("SYNTHHOST_DURABLE_WAIT_S") or 300))
        except ValueError:
            self.durable_wait_s = 300.0

    # -- the spec ---------------------------------------------------------------------

    def _spec(self, body: dict[str, Any]) -> AgentSpec:
        from synthhost.agent import check_providers, check_tools, load_agent, parse_agent
        from synthhost.errors import UsageError

        name, inline = body.get("agent"), body.get("spec")
        if (name is None) == (inline is None):
            raise UsageError("give either 'agent' (a name in SYNTHHOST_AGENTS_DIR) or 'spec' (the agent itself)")
        if name is not None:
            if not isinstance(name, str) or not _NAME.fullmatch(name):
                raise UsageError("'agent' must be an agent name (letters, digits, '_', '-', '.')")
            if self.agents_dir is None:
                raise UsageError("no SYNTHHOST_AGENTS_DIR on this server: send the agent as 'spec'")
            path = next((p for p in (self.agents_dir / f"{name}.yaml", self.agents_dir / f"{name}.yml")
                         if p.is_file()), None)
            if path is None:
                raise LookupError(name)
            spec = load_agent(path)
        else:
            text = inline if isinstance(inline, str) else json.dumps(inline)
            spec = parse_agent(text, "spec")
            _refuse_host_side_code(spec)
        check_providers(spec, self.host.registry.providers, spec.source)
        check_tools(spec, self.host, spec.source)
        return spec

    @staticmethod
    def _record(result: Any) -> dict[str, Any]:
        data = result.to_dict()
        return {"id": data.pop("run_id"), "object": "run", **data}

    # -- endpoints --------------------------------------------------------------------

    async def create(self, request: Request, body: Any) -> Response:
        from synthhost.agent import resolve_inputs

        if not isinstance(body, dict):
            return bad_request("the request body must be a JSON object")
        inputs = body.get("inputs") or {}
        if not isinstance(inputs, dict) or not all(isinstance(v, str | int | float | bool) for v in inputs.values()):
            return bad_request("'inputs' must be an object of strings", "inputs")
        wait = body.get("wait", False)
        if not isinstance(wait, bool):
            return bad_request("'wait' must be a boolean", "wait")
        durable = body.get("durable", False)
        if not isinstance(durable, bool):
            return bad_request("'durable' must be a boolean", "durable")
        workspace = request.state.workspace
        try:
            spec = await anyio.to_thread.run_sync(self._spec, body)
            given = {str(k): str(v) for k, v in inputs.items()}
            resolve_inputs(spec, given)  # refuse bad inputs now, not in the background
        except LookupError:
            return not_found("no such agent")
        except SynthhostError as exc:
            return from_error(exc, self.host.redact)  # INVALID_AGENT, TEMPLATE_ERROR: 400
        if durable:
            return await self._durable(spec, given, workspace, wait)
        if wait:
            try:
                result = await self.host.run(spec, inputs=given, workspace=workspace)
            except SynthhostError as exc:
                return from_error(exc, self.host.redact)
            return JSONResponse(self._record(result))
        if len(self.live) >= self.max_live or self.group is None:
            return error_response(503, "too many runs in progress on this server (SYNTHHOST_MAX_RUNS_IN_FLIGHT)",
                                  type="service_unavailable", code="too_many_runs", headers={"Retry-After": "1"})
        live = LiveRun(new_id(), workspace, spec.name, len(spec.steps))
        self.live[live.run_id] = live
        self.group.start_soon(self._background, live, spec, given)
        return JSONResponse(live.snapshot(), status_code=202, headers={"Location": f"/v1/runs/{live.run_id}"})

    async def _durable(self, spec: AgentSpec, inputs: dict[str, str], workspace: str, wait: bool) -> Response:
        """Queued for ``synthhost worker`` processes (synthhost.durable): 202 with the id,
        or with ``wait`` 200 with the record once a worker has finished it."""
        try:
            run_id = await self.host.enqueue(spec, inputs=inputs, workspace=workspace)
            if wait:
                # Bounded: with no worker up the run would wait forever; then it is 202.
                with anyio.move_on_after(self.durable_wait_s):
                    return JSONResponse(self._record(await self.host.wait_run(run_id)))
        except SynthhostError as exc:
            return from_error(exc, self.host.redact)
        stored = await anyio.to_thread.run_sync(self._stored, run_id, workspace)
        record = {"id": run_id, "object": "run", "workspace": workspace, "agent": spec.name, "status": "queued",
                  **(stored or {}), "durable": True}
        return JSONResponse(record, status_code=202, headers={"Location": f"/v1/runs/{run_id}"})

    async def _background(self, live: LiveRun, spec: AgentSpec, inputs: dict[str, str]) -> None:
        def on_step(index: int, total: int, step: StepResult) -> None:
            live.steps.append(_step(index, total, step))
            live.notify()

        try:
            with live.scope:
                result = await self.host.run(spec, inputs=inputs, workspace=live.workspace, on_step=on_step,
                                             run_id=live.run_id)
                live.record = self._record(result)
            if live.record is None:  # cancelled: the run recorded itself as such
                live.record = {**live.snapshot(), "status": "cancelled", "error_code": "CANCELLED",
                               "error_message": "run cancelled"}
        except SynthhostError as exc:
            live.record = {**live.snapshot(), "status": "error", "error_code": exc.code,
                           "error_message": self.host.redact(exc.message)}
        finally:
            live.notify()
            self.live.pop(live.run_id, None)

    def _stored(self, run_id: str, workspace: str) -> dict[str, Any] | None:
        trace = load_trace(self.host.engine, run_id, workspace)
        if trace is None or trace.run_id != run_id or trace.agent is None:
            return None
        steps = [s for s in trace.spans if s.kind == "step"]
        return {
            "id": trace.run_id, "object": "run", "trace_id": trace.trace_id, "workspace": trace.workspace,
            "agent": trace.agent, "status": trace.status, "output": trace.output,
            "error_code": trace.error_code, "error_message": trace.error_message,
            "cost_usd": trace.attributes.get("cost_usd"),
            "steps": [{"index": i + 1, "total": len(steps), "name": s.name, "status": s.status,
                       "error_code": s.error_code, "error_message": s.error_message}
                      for i, s in enumerate(steps)],
        }

    async def _find(self, request: Request) -> tuple[LiveRun | None, dict[str, Any] | None]:
        run_id = request.path_params["run_id"]
        live = self.live.get(run_id)
        if live is not None and live.workspace == request.state.workspace:
            return live, None
        if not _ID.fullmatch(run_id):
            return None, None
        return None, await anyio.to_thread.run_sync(self._stored, run_id, request.state.workspace)

    async def get(self, request: Request) -> Response:
        live, stored = await self._find(request)
        if live is not None:
            return JSONResponse(live.snapshot())
        return not_found("no such run") if stored is None else JSONResponse(stored)

    async def events(self, request: Request) -> Response:
        live, stored = await self._find(request)
        if live is None and stored is None:
            return not_found("no such run")

        def sse(event: str, data: Any) -> bytes:
            return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()

        async def stream() -> Any:
            if live is None:
                assert stored is not None
                record, sent = stored, 0
                while True:
                    for step in record["steps"][sent:]:
                        yield sse("step", step)
                    sent = len(record["steps"])
                    if record["status"] not in ("queued", "running"):
                        break
                    # Running elsewhere (a durable run on a worker): follow its rows.
                    await anyio.sleep(0.2)
                    fresh = await anyio.to_thread.run_sync(self._stored, record["id"], record["workspace"])
                    record = fresh or record
                yield sse("done", record)
                return
            sent = 0
            while True:
                changed = live.changed
                while sent < len(live.steps):
                    yield sse("step", live.steps[sent])
                    sent += 1
                if live.record is not None:
                    yield sse("done", live.record)
                    return
                await changed.wait()

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def cancel(self, request: Request) -> Response:
        live, stored = await self._find(request)
        if live is None:
            if stored is None:
                return not_found("no such run")
            durable = None
            if stored["status"] in ("queued", "running"):
                durable = await self._cancel_durable(stored["id"], request.state.workspace)
            if durable is not None:
                return durable
            where = "runs in another server process" if stored["status"] == "running" else "has finished"
            return error_response(409, f"the run {where}", type="invalid_request_error", code="not_cancellable")
        live.scope.cancel()
        with anyio.move_on_after(self.host.settings.shutdown_timeout_s):
            while live.record is None:
                await live.changed.wait()
        return JSONResponse(live.snapshot())

    async def _cancel_durable(self, run_id: str, workspace: str) -> Response | None:
        """A durable run (on any worker): cancelled through DBOS; None for another kind."""
        import importlib.util

        if importlib.util.find_spec("dbos") is None:
            return None
        from synthhost import durable

        try:
            status = await anyio.to_thread.run_sync(durable.cancel, self.host, run_id)
        except SynthhostError:  # not a durable run
            return None
        stored = await anyio.to_thread.run_sync(self._stored, run_id, workspace)
        return JSONResponse({**(stored or {"id": run_id, "object": "run"}), "status": status})

    async def drain(self, timeout: float) -> None:
        """At shutdown: let runs finish within ``timeout``, then cancel the rest."""
        with anyio.move_on_after(timeout):
            while self.live:
                await next(iter(self.live.values())).changed.wait()
        for live in list(self.live.values()):
            live.scope.cancel()


def _refuse_host_side_code(spec: AgentSpec) -> None:
    """An agent sent over HTTP may name registered tools only: a ``python:`` or ``mcp:``
    entry would run code on the server, an ``http:`` entry would send the server's
    environment to hosts the caller picks, and an ``output_schema`` reference imports
    a module. Agents in SYNTHHOST_AGENTS_DIR are the operator's, and may."""
    from synthhost.errors import UsageError

    steps = [("", spec.tools, spec.output_schema)] + [
        (f"steps[{i}].", s.tools or [], s.output_schema) for i, s in enumerate(spec.steps)]
    for prefix, tools, schema in steps:
        for j, tool in enumerate(tools):
            if tool.source != "plugin":
                raise UsageError(f"spec: {prefix}tools[{j}]: {tool.source} tools are refused in an agent sent "
                                 "over HTTP (use a registered tool, or an agent in SYNTHHOST_AGENTS_DIR)")
        if isinstance(schema, str):
            raise UsageError(f"spec: {prefix}output_schema: a 'module:Model' reference is refused in an agent "
                             "sent over HTTP (give the JSON Schema itself)")
