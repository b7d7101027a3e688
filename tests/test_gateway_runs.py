"""``/v1/runs`` through HTTP: wait or 202, the run record, live step events (SSE),
cancel, and 404 across workspaces (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from synthhost.gateway.keys import create_key
from synthhost.host import Host
from tests.gateway_server import serving

SLOW = """
name: slow
model: echo/gpt-4o-mini
params: {echo_latency_ms: %d}
inputs:
  topic: {required: true}
steps:
  - {name: one, prompt: "first {{ topic }}"}
  - {name: two, prompt: "second {{ topic }}"}
  - {name: three, prompt: "third {{ topic }}"}
"""


@pytest.fixture
def served(make_host: Any, tmp_path: Path) -> Iterator[tuple[Host, str, dict[str, str], dict[str, str]]]:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "slow.yaml").write_text(SLOW % 150)
    (agents / "stuck.yaml").write_text(SLOW % 60_000)
    (agents / "hello.yaml").write_text(Path("examples/hello.yaml").read_text())
    host = make_host(env={"SYNTHHOST_AGENTS_DIR": str(agents)})
    with serving(host) as url:
        a, _ = create_key(host.engine, "a")
        b, _ = create_key(host.engine, "b")
        yield host, url, {"Authorization": f"Bearer {a}"}, {"Authorization": f"Bearer {b}"}


def test_wait_runs_an_inline_spec_in_the_keys_workspace(served: Any) -> None:
    host, url, auth_a, _ = served
    spec = {"name": "inline", "model": "echo/m", "workspace": "elsewhere",
            "steps": [{"name": "s", "prompt": "hi {{ who }}"}], "inputs": {"who": {"default": "x"}}}
    r = httpx.post(url + "/v1/runs", headers=auth_a, json={"spec": spec, "inputs": {"who": "Ada"}, "wait": True},
                   timeout=30)
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "ok" and run["output"] == "echo: hi Ada" and run["workspace"] == "a"
    assert [s["name"] for s in run["steps"]] == ["s"]
    stored = httpx.get(url + f"/v1/runs/{run['id']}", headers=auth_a).json()
    assert stored["status"] == "ok" and stored["output"] == "echo: hi Ada" and stored["agent"] == "inline"
    assert host.count("runs", workspace_id="elsewhere") == 0


def test_202_then_live_step_events_then_done(served: Any) -> None:
    _, url, auth_a, _ = served
    r = httpx.post(url + "/v1/runs", headers=auth_a, json={"agent": "slow", "inputs": {"topic": "t"}})
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/runs/{run_id}" and r.json()["status"] == "running"
    events: list[tuple[str, Any]] = []
    with httpx.stream("GET", url + f"/v1/runs/{run_id}/events", headers=auth_a, timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((str(name), json.loads(line.removeprefix("data: "))))
    assert [e for e, _ in events] == ["step", "step", "step", "done"]
    assert [d["name"] for _, d in events[:3]] == ["one", "two", "three"]
    assert [d["index"] for _, d in events[:3]] == [1, 2, 3] and events[0][1]["output"] == "echo: first t"
    done = events[-1][1]
    assert done["id"] == run_id and done["status"] == "ok" and done["output"] == "echo: third t"
    # Finished: from the database, the same answer through both endpoints.
    deadline = time.monotonic() + 30
    while (stored := httpx.get(url + f"/v1/runs/{run_id}", headers=auth_a).json())["status"] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert stored["status"] == "ok" and [s["name"] for s in stored["steps"]] == ["one", "two", "three"]
    with httpx.stream("GET", url + f"/v1/runs/{run_id}/events", headers=auth_a) as stream:
        replay = [line for line in stream.iter_lines() if line.startswith("event: ")]
    assert replay == ["event: step"] * 3 + ["event: done"]


def test_cancel_records_the_run_cancelled(served: Any) -> None:
    host, url, auth_a, auth_b = served
    created = httpx.post(url + "/v1/runs", headers=auth_a, json={"agent": "stuck", "inputs": {"topic": "t"}})
    run_id = created.json()["id"]
    # Another workspace cannot see, follow or cancel it: 404 like a run that does not exist.
    for method, path in (("GET", ""), ("GET", "/events"), ("POST", "/cancel")):
        theirs = httpx.request(method, url + f"/v1/runs/{run_id}{path}", headers=auth_b)
        missing = httpx.request(method, url + f"/v1/runs/{'f' * 32}{path}", headers=auth_b)
        assert theirs.status_code == missing.status_code == 404, path
        assert theirs.json() == missing.json()
    r = httpx.post(url + f"/v1/runs/{run_id}/cancel", headers=auth_a, timeout=30)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    host.wait_for_events()
    with host.engine.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM runs WHERE id = :id"), {"id": run_id}).scalar()
    assert status == "cancelled"
    again = httpx.post(url + f"/v1/runs/{run_id}/cancel", headers=auth_a)
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_cancellable"


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"agent": "nope"}, 404, "not_found"),
    ({"agent": "../slow"}, 400, "INVALID_AGENT"),
    ({"agent": "slow"}, 400, "INVALID_AGENT"),  # the required input is missing
    ({"agent": "slow", "inputs": {"topic": "t", "extra": "x"}}, 400, "INVALID_AGENT"),
    ({"agent": "hello", "spec": {"name": "x"}}, 400, "INVALID_AGENT"),
    ({"spec": {"name": "x", "model": "echo/m", "steps": []}}, 400, "INVALID_AGENT"),
    ({"spec": "name: [unclosed"}, 400, "INVALID_AGENT"),
    ({"spec": {"name": "x", "model": "nowhere/m", "steps": [{"name": "s", "prompt": "p"}]}}, 400, "INVALID_AGENT"),
    ({"agent": "hello", "inputs": ["x"]}, 400, "invalid_request"),
    ({"agent": "hello", "wait": "yes"}, 400, "invalid_request"),
])
def test_bad_run_requests(served: Any, body: dict[str, Any], status: int, code: str) -> None:
    _, url, auth_a, _ = served
    r = httpx.post(url + "/v1/runs", headers=auth_a, json=body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_a_run_in_progress_at_shutdown_is_recorded_cancelled(make_host: Any, tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "stuck.yaml").write_text(SLOW % 60_000)
    host = make_host(env={"SYNTHHOST_AGENTS_DIR": str(agents)}, shutdown_timeout_s=0.5)
    with serving(host) as url:
        key, _ = create_key(host.engine, "a")
        r = httpx.post(url + "/v1/runs", headers={"Authorization": f"Bearer {key}"},
                       json={"agent": "stuck", "inputs": {"topic": "t"}})
        run_id = r.json()["id"]
    with host.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT status, error_code FROM runs WHERE id = :id"), {"id": run_id}).one()
    assert tuple(row) == ("cancelled", "CANCELLED")
