"""``/v1/admin``: admin keys only, flags scoped to the key's workspace and acting on the
next call, every write audited; queue stats and retry-parked (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from synthhost import hookimpl
from synthhost.errors import Denied
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from tests.gateway_server import serving


class Lockdown:
    """Denies every call of a workspace where its flag is on."""

    __name__ = "acme_lockdown"

    @hookimpl
    def register_flags(self, register: Any) -> None:
        register("acme_lockdown", default=False, description="deny every call")

    @hookimpl
    def register_gate(self, register: Any) -> None:
        register("acme_lockdown")

    @hookimpl
    def pre_call(self, call: Any) -> None:
        raise Denied("POLICY_DENIED", "locked down")


@pytest.fixture
def served(make_host: Any) -> Iterator[tuple[Host, str, dict[str, dict[str, str]], dict[str, str]]]:
    host = make_host(Lockdown())
    with serving(host) as url:
        keys = {}
        ids = {}
        for name, ws, role in (("admin_a", "a", "admin"), ("member_a", "a", "member"), ("admin_b", "b", "admin")):
            key, info = create_key(host.engine, ws, role)
            keys[name] = {"Authorization": f"Bearer {key}"}
            ids[name] = info.id
        yield host, url, keys, ids


def chat(url: str, auth: dict[str, str]) -> int:
    return httpx.post(url + "/v1/chat/completions", headers=auth,
                      json={"model": "echo/m", "messages": [{"role": "user", "content": "x"}]}).status_code


def test_member_keys_get_403_on_every_admin_endpoint(served: Any) -> None:
    _, url, keys, _ = served
    for method, path in (("GET", "/v1/admin/flags"), ("PUT", "/v1/admin/flags/acme_lockdown"),
                         ("DELETE", "/v1/admin/flags/acme_lockdown"), ("GET", "/v1/admin/queue"),
                         ("POST", "/v1/admin/queue/retry-parked")):
        r = httpx.request(method, url + path, headers=keys["member_a"], json={"enabled": True})
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required", path
        assert httpx.request(method, url + path).status_code == 401


def test_flags_are_scoped_audited_and_act_on_the_next_call(served: Any) -> None:
    host, url, keys, ids = served
    assert chat(url, keys["member_a"]) == 200
    r = httpx.put(url + "/v1/admin/flags/acme_lockdown", headers=keys["admin_a"], json={"enabled": True})
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["source"] == "workspace"
    assert chat(url, keys["member_a"]) == 403  # this process reloaded at once
    assert chat(url, keys["admin_b"]) == 200  # workspace b is not affected
    listed = {f["name"]: f for f in httpx.get(url + "/v1/admin/flags", headers=keys["admin_a"]).json()["data"]}
    assert listed["acme_lockdown"]["enabled"] is True
    theirs = {f["name"]: f for f in httpx.get(url + "/v1/admin/flags", headers=keys["admin_b"]).json()["data"]}
    assert theirs["acme_lockdown"]["enabled"] is False
    r = httpx.delete(url + "/v1/admin/flags/acme_lockdown", headers=keys["admin_a"])
    assert r.status_code == 200 and r.json()["source"] == "default"
    assert chat(url, keys["member_a"]) == 200
    with host.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT workspace_id, context FROM event_logs WHERE event_type = 'admin_action' "
                                    "ORDER BY created_at")).all()
    audits = [(ws, json.loads(c) if isinstance(c, str) else c) for ws, c in rows]
    assert [(ws, a["action"], a["target"], a["actor"]) for ws, a in audits] == [
        ("a", "flags.set", "acme_lockdown", f"key:{ids['admin_a']}"),
        ("a", "flags.unset", "acme_lockdown", f"key:{ids['admin_a']}")]
    assert audits[0][1]["enabled"] is True


@pytest.mark.parametrize(("name", "body", "message"), [
    ("acme_lockdwn", {"enabled": True}, "did you mean 'acme_lockdown'"),
    ("acme_lockdown", {"enabled": "yes"}, "enabled"),
    ("acme_lockdown", [True], "enabled"),
])
def test_bad_flag_writes_are_400_and_not_audited(served: Any, name: str, body: Any, message: str) -> None:
    host, url, keys, _ = served
    r = httpx.put(url + f"/v1/admin/flags/{name}", headers=keys["admin_a"], json=body)
    assert r.status_code == 400 and message in r.text
    host.wait_for_events()
    assert host.count("event_logs", event_type="admin_action") == 0


def test_queue_stats_and_retry_parked(served: Any) -> None:
    host, url, keys, _ = served
    assert httpx.get(url + "/v1/admin/queue", headers=keys["admin_a"]).json() == {"exporters": {}}
    r = httpx.post(url + "/v1/admin/queue/retry-parked", headers=keys["admin_a"], json={})
    assert r.status_code == 200 and r.json() == {"retried": 0}
    r = httpx.post(url + "/v1/admin/queue/retry-parked", headers=keys["admin_a"], json={"exporter": "nope"})
    assert r.status_code == 400
    host.wait_for_events()
    assert host.count("event_logs", event_type="admin_action") == 1
