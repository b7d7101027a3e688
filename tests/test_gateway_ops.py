"""``synthhost serve`` operations through HTTP: /healthz, /readyz, /metrics, plugin
routes (``register_routes``), workspace isolation and no tracebacks in responses."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from synthhost import hookimpl
from synthhost.errors import Denied
from synthhost.gateway import create_app
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from synthhost.registry import RegistrationError
from tests.gateway_server import serving

MODEL = "echo/gpt-4o-mini"
SECRET = "sk-test-0123456789abcdefSECRET"


class Notes:
    """A plugin with routes: per-workspace notes, a public ping, and a broken endpoint."""

    __name__ = "acme_notes"

    def __init__(self) -> None:
        self.notes: dict[str, tuple[str, str]] = {}  # id -> (workspace, text)
        self.healthy = True

    @hookimpl
    def register_routes(self, register: Any) -> None:
        register("/v1/notes", self.add, methods=["POST"])
        register("/v1/notes/{note_id}", self.get)
        register("/acme/ping", self.ping, auth=False)
        register("/acme/boom", self.boom)

    @hookimpl
    def register_health_checks(self, register: Any) -> None:
        register("acme", lambda host: (self.healthy, "fine" if self.healthy else f"broken, key {SECRET}"))

    @hookimpl
    def pre_call(self, call: Any) -> None:
        if call.request.params.get("deny"):
            raise Denied("POLICY_DENIED", "no")
        if call.request.params.get("crash"):
            raise RuntimeError("plugin bug")

    async def add(self, request: Request) -> Response:
        body = await request.json()
        note_id = f"n{len(self.notes) + 1}"
        self.notes[note_id] = (request.state.workspace, str(body["text"]))
        return JSONResponse({"id": note_id}, status_code=201)

    async def get(self, request: Request) -> Response:
        note = self.notes.get(request.path_params["note_id"])
        if note is None or note[0] != request.state.workspace:  # 404 either way: no oracle
            return JSONResponse({"error": {"message": "not found", "type": "not_found_error"}}, status_code=404)
        return JSONResponse({"text": note[1], "workspace": note[0], "role": request.state.role})

    async def ping(self, request: Request) -> Response:
        return JSONResponse({"pong": True})

    async def boom(self, request: Request) -> Response:
        raise RuntimeError(f"exploded with {SECRET}")


@pytest.fixture
def served(make_host: Any) -> Iterator[tuple[Host, str, Notes]]:
    notes = Notes()
    host = make_host(notes, env={"ACME_API_KEY": SECRET})
    with serving(host) as url:
        yield host, url, notes


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_plugin_routes_are_authenticated_and_isolated_by_workspace(served: Any) -> None:
    host, url, _ = served
    key_a, _ = create_key(host.engine, "a")
    key_b, _ = create_key(host.engine, "b", "admin")
    r = httpx.post(url + "/v1/notes", headers=bearer(key_a), json={"text": "a's note"})
    assert r.status_code == 201
    note = r.json()["id"]
    got = httpx.get(url + f"/v1/notes/{note}", headers=bearer(key_a))
    assert got.status_code == 200 and got.json() == {"text": "a's note", "workspace": "a", "role": "member"}
    # Workspace b: the same answer as for an id that does not exist.
    other = httpx.get(url + f"/v1/notes/{note}", headers=bearer(key_b))
    missing = httpx.get(url + "/v1/notes/n999", headers=bearer(key_b))
    assert other.status_code == missing.status_code == 404 and other.json() == missing.json()
    assert httpx.get(url + f"/v1/notes/{note}").status_code == 401
    assert httpx.get(url + "/acme/ping").json() == {"pong": True}


def test_an_exception_is_a_json_500_without_traceback_or_secret(served: Any, caplog: Any) -> None:
    host, url, _ = served
    key, _ = create_key(host.engine, "a")
    with caplog.at_level("ERROR", logger="synthhost.gateway"):
        r = httpx.get(url + "/acme/boom", headers=bearer(key))
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "Traceback" not in r.text and "exploded" not in r.text and SECRET not in r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert "exploded" in logged and SECRET not in logged  # the log has it, redacted


def test_a_route_taking_a_gateway_path_is_refused(make_host: Any) -> None:
    class Squatter:
        __name__ = "acme_squatter"

        @hookimpl
        def register_routes(self, register: Any) -> None:
            register("/v1/chat/completions", lambda request: None, methods=["POST"])

    with pytest.raises(RegistrationError, match=r"acme_squatter.*gateway.s own"):
        create_app(make_host(Squatter()))


def test_two_plugins_on_one_path_are_refused(make_host: Any) -> None:
    class One:
        __name__ = "acme_one"

        @hookimpl
        def register_routes(self, register: Any) -> None:
            register("/acme", lambda request: None)

    class Two(One):
        __name__ = "acme_two"

    with pytest.raises(RegistrationError, match="'/acme' registered by 'acme_one' and 'acme_two'"):
        make_host(One(), Two())


def test_healthz_and_readyz(served: Any) -> None:
    _, url, notes = served
    assert httpx.get(url + "/healthz").json() == {"status": "ok"}
    r = httpx.get(url + "/readyz")
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert {"database", "migrations", "acme"} <= set(checks)
    assert all(c["ok"] for c in checks.values())
    assert checks["acme"]["plugin"] == "acme_notes"
    notes.healthy = False
    r = httpx.get(url + "/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    assert r.json()["checks"]["acme"]["ok"] is False
    assert SECRET not in r.text and "broken" in r.text


def test_readyz_checks_redis_when_configured(make_host: Any) -> None:
    host = make_host(env={"REDIS_URL": "redis://127.0.0.1:1/0"})  # nothing listens there
    with serving(host) as url:
        r = httpx.get(url + "/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["redis"]["ok"] is False and r.json()["checks"]["database"]["ok"] is True


def _sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0])) if "{" in line else {}
        if found == labels:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_count_calls_denials_tokens_and_plugin_errors(served: Any) -> None:
    host, url, _ = served
    key, _ = create_key(host.engine, "a")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "count me"}]}
    for extra, status in (({}, 200), ({}, 200), ({"deny": 1}, 403), ({"crash": 1}, 200)):
        r = httpx.post(url + "/v1/chat/completions", headers=bearer(key), json={**body, **extra})
        assert r.status_code == status
    r = httpx.get(url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    labels = {"provider": "echo", "model": "gpt-4o-mini"}
    assert _sample(text, "synthhost_calls_total", **labels, status="ok") == 3
    assert _sample(text, "synthhost_calls_total", **labels, status="POLICY_DENIED") == 1
    assert _sample(text, "synthhost_call_duration_seconds_count", **labels, status="ok") == 3
    assert _sample(text, "synthhost_denials_total", code="POLICY_DENIED") == 1
    assert _sample(text, "synthhost_tokens_total", **labels, direction="output") > 0
    assert _sample(text, "synthhost_plugin_errors_total", plugin="acme_notes", hook="pre_call") == 1
    assert "synthhost_writer_queue_depth" in text
    assert _sample(text, "synthhost_host_stat", counter="plugin_errors") == host.stats["plugin_errors"] >= 1
    assert _sample(text, "synthhost_events_total", type="plugin_error", status="error") == 1
    assert _sample(text, "synthhost_events_total", type="run_finished", status="success") == 3
    assert 'workspace="' not in text  # off unless SYNTHHOST_METRICS_WORKSPACE_LABEL
    route = {"route": "/v1/chat/completions", "method": "POST"}
    assert _sample(text, "synthhost_http_requests_total", **route, status="200") == 3
    assert _sample(text, "synthhost_http_requests_total", **route, status="403") == 1
    assert _sample(text, "synthhost_http_request_duration_seconds_count", route="/v1/chat/completions") == 4


def test_metrics_carry_the_hosts_counters_plugins_included(served: Any) -> None:
    host, url, _ = served
    host.stats["similarity.references_evicted"] += 21  # what the similarity plugin counts
    text = httpx.get(url + "/metrics").text
    assert _sample(text, "synthhost_host_stat", counter="similarity.references_evicted") == 21
    host.stats["similarity.references_evicted"] += 4
    text = httpx.get(url + "/metrics").text
    assert _sample(text, "synthhost_host_stat", counter="similarity.references_evicted") == 25


def test_metrics_workspace_label_behind_a_setting(make_host: Any) -> None:
    host = make_host(env={"SYNTHHOST_METRICS_WORKSPACE_LABEL": "1"})
    with serving(host) as url:
        key, _ = create_key(host.engine, "team-x")
        httpx.post(url + "/v1/chat/completions", headers=bearer(key),
                   json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).raise_for_status()
        text = httpx.get(url + "/metrics").text
    assert _sample(text, "synthhost_calls_total", provider="echo", model="gpt-4o-mini", status="ok",
                   workspace="team-x") == 1


def test_model_labels_are_bounded(make_host: Any) -> None:
    host = make_host(env={"SYNTHHOST_METRICS_MAX_MODELS": "2"})
    with serving(host) as url:
        key, _ = create_key(host.engine, "a")
        for i in range(5):
            httpx.post(url + "/v1/chat/completions", headers=bearer(key),
                       json={"model": f"echo/m{i}", "messages": [{"role": "user", "content": "x"}]}).raise_for_status()
        text = httpx.get(url + "/metrics").text
    assert _sample(text, "synthhost_calls_total", provider="other", model="other", status="ok") == 3
    assert _sample(text, "synthhost_calls_total", provider="echo", model="m0", status="ok") == 1


class Slow:
    """A plugin whose pre_call waits (async) and whose post_call is plain."""

    __name__ = "acme_slow"

    @hookimpl
    async def pre_call(self, call: Any) -> None:
        import anyio

        await anyio.sleep(0.03)

    @hookimpl
    def post_call(self, call: Any, response: Any) -> None:
        return None


def test_metrics_time_each_plugins_hooks(make_host: Any) -> None:
    host = make_host(Slow())
    with serving(host) as url:
        key, _ = create_key(host.engine, "a")
        for _ in range(3):
            httpx.post(url + "/v1/chat/completions", headers=bearer(key),
                       json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]}).raise_for_status()
        text = httpx.get(url + "/metrics").text
    name = "synthhost_plugin_hook_duration_seconds"
    assert _sample(text, name + "_count", plugin="acme_slow", hook="pre_call") == 3
    assert _sample(text, name + "_count", plugin="acme_slow", hook="post_call") == 3
    # The awaited sleep is inside the measured time: no sample lands at or under 25 ms.
    assert _sample(text, name + "_bucket", plugin="acme_slow", hook="pre_call", le="0.025") == 0
    assert _sample(text, name + "_bucket", plugin="acme_slow", hook="pre_call", le="+Inf") == 3
    assert _sample(text, name + "_sum", plugin="acme_slow", hook="pre_call") > 3 * 0.025
    # Lifecycle hooks are not call hooks: they are not timed.
    assert 'hook="startup"' not in text
