"""A loopback st2api fake that speaks the real wire protocol, for tests.

A real StackStorm cannot run here (st2api is not on PyPI; it needs MongoDB and
RabbitMQ), so tests point the plugin's real httpx client at this stdlib
``ThreadingHTTPServer`` on 127.0.0.1 (ephemeral port)::

    with FakeSt2() as st2:                       # runs the shipped synthralos pack
        env = st2.env()                          # STACKSTORM_API_URL/KEY, tiny poll interval
        st2.script("synthralos.llm_retry", output={"action": "retry", "delay_s": 0})
        ...
        st2.executions("synthralos.llm_retry")   # what was asked, with which parameters

What it does, as st2api does (st2 OpenAPI spec; checked with st2client 3.9.0):

- auth on every request: ``St2-Api-Key`` or ``X-Auth-Token`` header (or the
  ``st2-api-key``/``x-auth-token`` query parameters); missing or wrong → 401
  ``{"faultstring": "Unauthorized - ..."}``;
- routes under ``/api/v1`` (nginx) and ``/v1`` (st2api on :9101);
- ``POST /executions`` → 201 Execution (``id`` 24 hex, ``action``, ``runner``,
  ``liveaction``, ``parameters``, ``status: requested``, ``start_timestamp``,
  ``context.user``, ``result: {}``, ``log``, ``web_url``); unknown action → **400**
  ``Action "<ref>" cannot be found.`` (as st2api does, not 404)
  ``Action "x" cannot be found.``; parameters the action does not declare, missing
  required ones, wrong types → 400 with the jsonschema-style faultstring;
- ``GET /executions/{id}``: each poll advances ``requested → scheduled → running →``
  the terminal status, then carries ``end_timestamp``, ``elapsed_seconds`` and the
  runner-shaped ``result`` (python-script ``{exit_code, result, stdout, stderr}``,
  orquesta ``{output}`` or ``{errors, output: null}``);
- ``DELETE /executions/{id}`` → 200 ``canceling``, the next poll ``canceled``; an
  execution already finished → 200 ``{"faultstring": "Action cannot be canceled. ..."}``;
- ``POST /webhooks/st2`` → 400 ``Trigger not specified.`` without ``trigger``, else 202
  echoing the body; ``POST /webhooks/<url>`` → 202 if registered, else 404;
- ``GET /actions``, ``/actions/{ref}``, ``/runnertypes[?name=]``, and
  ``/executions/{id}/result`` and ``/children`` (always empty: task executions are not
  modelled);
- records every request (method, path, query, lower-cased headers, JSON body).

Outcomes: by default an execution *really runs* the pack (:class:`PackRunner`: python
actions imported and called, workflows interpreted); :meth:`FakeSt2.script` overrides
one action (fixed or computed output, any terminal status, or hang in ``running``).
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from synthhost_stackstorm.client import TERMINAL
from synthhost_stackstorm.pack import PackRunner, ParameterError, resolve_parameters

API_KEY = "st2-test-api-key-5f0c2a9b7d"
RUNNERTYPES: dict[str, dict[str, Any]] = {  # name -> runner_parameters (a few of st2's)
    "python-script": {"env": {"type": "object"}, "timeout": {"type": "integer", "default": 600},
                      "log_level": {"type": "string", "default": "DEBUG"}},
    "orquesta": {},
    "local-shell-cmd": {"cmd": {"type": "string"}, "timeout": {"type": "integer", "default": 60}},
    "noop": {},
}


@dataclass(frozen=True, slots=True)
class Recorded:
    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: Any


@dataclass(slots=True)
class Script:
    status: str = "succeeded"
    output: Any = None  # orquesta output: a value, or a callable(parameters) -> value
    result: Any = None  # the whole result (any runner), overriding ``output``
    errors: list[Any] | None = None
    hang: bool = False
    steps: tuple[str, ...] | None = None


@dataclass(slots=True)
class _Execution:
    id: str
    ref: str
    action: dict[str, Any]
    parameters: dict[str, Any]
    started: float
    pending: deque[str]
    final_status: str
    final_result: Any
    hang: bool = False
    status: str = "requested"
    ended: float | None = None
    result: Any = field(default_factory=dict)
    log: list[dict[str, str]] = field(default_factory=list)
    liveaction_id: str = ""


def _ts(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_ids = itertools.count(int(time.time()))


def _object_id() -> str:
    return f"{next(_ids) & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"  # 24 hex, like a MongoDB ObjectId


class FakeSt2:
    def __init__(self, *, pack_root: str | Path | None = None, api_key: str | None = API_KEY,
                 auth_token: str | None = None, steps: tuple[str, ...] = ("scheduled", "running"),
                 user: str = "st2admin") -> None:
        self.runner = PackRunner(pack_root)
        self.pack_version: str | None = None  # GET /packs/<ref> answers the pack's own version unless set
        self.api_key = api_key
        self.auth_token = auth_token
        self.steps = steps
        self.user = user
        self.requests: list[Recorded] = []
        self.scripts: dict[str, Script] = {}
        self.webhook_urls: set[str] = set()
        self._executions: dict[str, _Execution] = {}
        self._failures: deque[tuple[int, str, str | None, str | None]] = deque()
        self._lock = threading.RLock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        """The ``STACKSTORM_API_URL`` form users write (nginx front, no ``/v1``)."""
        return f"http://127.0.0.1:{self.port}/api"

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a host using this fake (tiny poll interval, short deadline)."""
        env = {"STACKSTORM_API_URL": self.url, "STACKSTORM_API_KEY": self.api_key or "",
               "STACKSTORM_POLL_INTERVAL": "0.002", "STACKSTORM_TIMEOUT": "5", "STACKSTORM_HTTP_TIMEOUT": "5"}
        env.update(extra)
        return env

    def start(self) -> FakeSt2:
        if self._thread is None:
            self._thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), name="fake-st2api",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.server.server_close()

    def __enter__(self) -> FakeSt2:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @staticmethod
    def closed_url() -> str:
        """A URL where nothing listens (connection refused at once): "StackStorm down"."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}/api"

    # -- scripting ---------------------------------------------------------------------------

    def script(self, ref: str, *, status: str = "succeeded", output: Any = None, result: Any = None,
               errors: list[Any] | None = None, hang: bool = False, steps: tuple[str, ...] | None = None) -> None:
        """Make ``ref`` end with ``status`` and this output/result instead of running the pack."""
        if status not in TERMINAL:
            raise ValueError(f"{status!r} is not a terminal status {sorted(TERMINAL)}")
        with self._lock:
            self.scripts[ref] = Script(status, output, result, errors, hang, steps)

    def unscript(self, ref: str) -> None:
        with self._lock:
            self.scripts.pop(ref, None)

    def fail_next(self, status: int, faultstring: str = "Internal Server Error", *, times: int = 1,
                  method: str | None = None, path: str | None = None) -> None:
        """The next ``times`` API requests (of ``method`` to a path containing ``path``, if
        given) answer ``status`` with this faultstring."""
        with self._lock:
            self._failures.extend([(status, faultstring, method, path)] * times)

    def register_webhook(self, url: str) -> None:
        with self._lock:
            self.webhook_urls.add(url.strip("/"))

    # -- inspection --------------------------------------------------------------------------

    def executions(self, ref: str | None = None) -> list[dict[str, Any]]:
        """Executions as ``GET /executions/{id}`` would show them now (without advancing)."""
        with self._lock:
            return [self._json(e) for e in self._executions.values() if ref is None or e.ref == ref]

    def calls(self, method: str, suffix: str) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests if r.method == method and r.path.endswith(suffix)]

    def webhooks(self, trigger: str | None = None) -> list[dict[str, Any]]:
        """Bodies accepted by ``POST /webhooks/st2``."""
        with self._lock:
            bodies = [r.body for r in self.requests
                      if r.method == "POST" and r.path.endswith("/webhooks/st2") and isinstance(r.body, dict)]
        return [b for b in bodies if b.get("trigger") and (trigger is None or b["trigger"] == trigger)]

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value or time.monotonic() >= deadline:
                return value
            time.sleep(0.005)

    # -- the API -----------------------------------------------------------------------------

    def _auth(self, headers: Mapping[str, str], query: Mapping[str, str]) -> str | None:
        key = headers.get("st2-api-key") or query.get("st2-api-key")
        token = headers.get("x-auth-token") or query.get("x-auth-token")
        if not key and not token:
            return "Unauthorized - One of Token or API key required."
        if key:
            if self.api_key and key == self.api_key:
                return None
            return "Unauthorized - ApiKey with key_hash=<sha256 of the key> not found."
        if self.auth_token and token == self.auth_token:
            return None
        return "Unauthorized - Token with token=<redacted> not found."

    def handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: Any) -> tuple[int, Any]:
        parts = urlsplit(raw_path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        with self._lock:
            self.requests.append(Recorded(method, parts.path, query, dict(headers), body))
        path = parts.path
        for prefix in ("/api/v1/", "/v1/"):
            if path.startswith(prefix):
                path = path[len(prefix) - 1:]
                break
        else:
            return 404, {"faultstring": f"The resource could not be found: {parts.path}"}
        fault = self._auth(headers, query)
        if fault is not None:
            return 401, {"faultstring": fault}
        with self._lock:
            if self._failures:
                status, faultstring, only_method, only_path = self._failures[0]
                if only_method in (None, method) and (only_path is None or only_path in path):
                    self._failures.popleft()
                    return status, {"faultstring": faultstring}
        segments = [s for s in path.split("/") if s]
        if segments[:1] == ["executions"]:
            return self._executions_api(method, segments[1:], body)
        if segments[:1] == ["webhooks"] and method == "POST":
            return self._webhook(segments[1:], body)
        if segments[:1] == ["actions"] and method == "GET":
            if len(segments) == 1:
                return 200, [self._action(ref) for ref in self._known()]
            ref = "/".join(segments[1:])
            if ref not in self._known():
                return 404, {"faultstring": f'Resource with a reference or id "{ref}" not found'}
            return 200, self._action(ref)
        if segments[:1] == ["packs"] and method == "GET" and len(segments) == 2:
            meta = self.runner.pack.meta
            if segments[1] != self.runner.pack.name:
                return 404, {"faultstring": f'Resource with a reference or id "{segments[1]}" not found'}
            return 200, {"id": _object_id(), "ref": self.runner.pack.name, "name": meta.get("name"),
                         "version": self.pack_version or meta.get("version"), "description": meta.get("description")}
        if segments == ["runnertypes"] and method == "GET":
            wanted = query.get("name")
            return 200, [{"name": n, "enabled": True, "runner_module": n.replace("-", "_"),
                          "runner_parameters": RUNNERTYPES[n]}
                         for n in RUNNERTYPES if wanted in (None, n)]
        return 404, {"faultstring": f"The resource could not be found: {parts.path}"}

    def _known(self) -> list[str]:
        return sorted({*self.runner.pack.actions, *self.scripts})

    def _action(self, ref: str) -> dict[str, Any]:
        meta = self.runner.pack.actions.get(ref)
        pack, _, name = ref.partition(".")
        if meta is None:
            return {"ref": ref, "name": name, "pack": pack, "runner_type": "orquesta", "parameters": {},
                    "enabled": True, "id": _object_id()}
        public = {k: v for k, v in meta.items() if not k.startswith("_")}
        return {**public, "ref": ref, "pack": pack, "id": f"{abs(hash(ref)) & (2**96 - 1):024x}"}

    def _executions_api(self, method: str, rest: list[str], body: Any) -> tuple[int, Any]:
        if method == "POST" and not rest:
            return self._create(body)
        if not rest:
            if method == "GET":
                return 200, self.executions()
            return 405, {"faultstring": "Method Not Allowed"}
        with self._lock:
            execution = self._executions.get(rest[0])
            if execution is None:
                # st2's ResourceController._get_one_by_id wording.
                return 404, {"faultstring": f'Unable to identify resource with id "{rest[0]}".'}
            if method == "GET" and len(rest) == 1:
                self._advance(execution)
                return 200, self._json(execution)
            if method == "GET" and rest[1:] == ["result"]:
                return 200, execution.result
            if method == "GET" and rest[1:] == ["children"]:
                return 200, []  # task executions are not modelled (the st2 CLI asks for them)
            if method == "DELETE" and len(rest) == 1:
                if execution.status in TERMINAL or execution.status == "canceling":
                    return 200, {"faultstring": f"Action cannot be canceled. State = {execution.status}."}
                execution.status = "canceling"
                execution.log.append({"status": "canceling", "timestamp": _ts(time.time())})
                execution.pending = deque(["canceled"])
                execution.final_status, execution.final_result, execution.hang = "canceled", {"output": None}, False
                return 200, self._json(execution)
        return 405, {"faultstring": "Method Not Allowed"}

    def _create(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not body.get("action"):
            return 400, {"faultstring": "'action' is a required property"}
        ref = str(body["action"])
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, dict):
            return 400, {"faultstring": f"{parameters!r} is not of type 'object'"}
        with self._lock:
            script = self.scripts.get(ref)
        meta = self.runner.pack.actions.get(ref)
        if meta is None and script is None:
            # st2api answers 400 here, not 404 (actionexecutions.py: abort(BAD_REQUEST, ...)).
            return 400, {"faultstring": f'Action "{ref}" cannot be found.'}
        runner_type = (meta or {}).get("runner_type", "orquesta")
        try:
            resolved = resolve_parameters(meta, parameters) if meta is not None else dict(parameters)
            if script is not None:
                final_status, final_result = self._scripted(script, runner_type, resolved)
            else:
                final_status, final_result = self.runner.run(ref, parameters)
        except ParameterError as exc:
            return 400, {"faultstring": str(exc)}
        now = time.time()
        steps = script.steps if script is not None and script.steps is not None else self.steps
        execution = _Execution(
            id=_object_id(), ref=ref, action=self._action(ref), parameters=resolved, started=now,
            pending=deque([*steps] if script is not None and script.hang else [*steps, final_status]),
            final_status=final_status, final_result=final_result, hang=bool(script and script.hang),
            liveaction_id=_object_id(),
        )
        execution.log.append({"status": "requested", "timestamp": _ts(now)})
        with self._lock:
            self._executions[execution.id] = execution
        return 201, self._json(execution)

    @staticmethod
    def _scripted(script: Script, runner_type: str, parameters: dict[str, Any]) -> tuple[str, Any]:
        if script.result is not None:
            return script.status, script.result
        output = script.output(parameters) if callable(script.output) else script.output
        if runner_type == "python-script":
            ok = script.status == "succeeded"
            return script.status, {"exit_code": 0 if ok else 1, "result": output, "stdout": "",
                                   "stderr": "" if ok else "scripted failure"}
        if script.status == "succeeded":
            return script.status, {"output": output}
        errors = script.errors or [{"type": "error", "message": f"scripted {script.status}"}]
        return script.status, {"errors": errors, "output": None}

    def _advance(self, execution: _Execution) -> None:
        if execution.status in TERMINAL or not execution.pending:
            return
        status = execution.pending.popleft()
        now = time.time()
        execution.status = status
        execution.log.append({"status": status, "timestamp": _ts(now)})
        if status in TERMINAL:
            execution.ended = now
            execution.result = execution.final_result

    def _json(self, execution: _Execution) -> dict[str, Any]:
        runner = execution.action.get("runner_type", "orquesta")
        data: dict[str, Any] = {
            "id": execution.id,
            "action": execution.action,
            "runner": {"name": runner, "enabled": True, "runner_module": str(runner).replace("-", "_")},
            "liveaction": {"id": execution.liveaction_id, "action": execution.ref, "parameters": execution.parameters,
                           "status": execution.status, "action_is_workflow": runner == "orquesta"},
            "parameters": execution.parameters,
            "status": execution.status,
            "start_timestamp": _ts(execution.started),
            "context": {"user": self.user},
            "result": execution.result,
            "log": list(execution.log),
            "web_url": f"https://st2.invalid/#/history/{execution.id}/general",
        }
        if execution.ended is not None:
            data["end_timestamp"] = _ts(execution.ended)
            data["elapsed_seconds"] = round(execution.ended - execution.started, 6)
        return data

    def _webhook(self, rest: list[str], body: Any) -> tuple[int, Any]:
        url = "/".join(rest)
        if url == "st2":
            if not isinstance(body, dict) or not body.get("trigger"):
                return 400, {"faultstring": "Trigger not specified."}
            return 202, body
        with self._lock:
            known = url in self.webhook_urls
        if not known:
            return 404, {"faultstring": f'Webhook route "{url}" not found.'}
        return 202, body

    # -- HTTP ----------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body: Any = None
                if raw:
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        self._send(400, {"faultstring": "Failed to parse request body: not JSON"})
                        return
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = fake.handle(self.command, self.path, headers, body)
                self._send(status, payload)

            def _send(self, status: int, payload: Any) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

        return Handler
