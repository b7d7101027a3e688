"""Policy sets, guard sets and routing configurations over ``synthhost serve``'s admin
API (the plugins' ``register_routes``): admin keys only, scoped to the key's workspace
(404 for another's, never 403), validated (400 with the problem), audited, and acting
on the next call through the gateway. SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

import synthhost_guardrails
import synthhost_policy
import synthhost_routing
from synthhost.gateway.keys import create_key
from synthhost.host import Host
from tests.gateway_server import serving

CHAT = "/v1/chat/completions"


def _chat(text: str, model: str = "echo/gpt-4o-mini") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


@pytest.fixture
def served(make_host: Any) -> Iterator[tuple[Host, str, dict[str, dict[str, str]], str]]:
    host = make_host(synthhost_policy, synthhost_guardrails, synthhost_routing)
    with serving(host) as url:
        admin_key, admin = create_key(host.engine, "acme", "admin")
        member_key, _ = create_key(host.engine, "acme")
        other_key, _ = create_key(host.engine, "other", "admin")
        headers = {name: {"Authorization": f"Bearer {key}"}
                   for name, key in (("admin", admin_key), ("member", member_key), ("other", other_key))}
        yield host, url, headers, admin.id


def _audits(host: Host) -> list[tuple[str, str, str]]:
    host.wait_for_events()
    with host.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT context FROM event_logs WHERE event_type = 'admin_action' "
                                    "ORDER BY created_at")).scalars().all()
    found = [json.loads(c) if isinstance(c, str) else c for c in rows]
    return [(a["action"], a["target"], a["actor"]) for a in found]


BLOCK = {"rules": [{"name": "no-secrets-talk", "when": 'request.prompt.contains("forbidden")',
                    "actions": [{"type": "block", "message": "not here"}]}]}


def test_policy_sets_over_http(served: Any) -> None:
    host, url, h, admin_id = served
    host.flags.set("enable_policy_engine", True, workspace="acme")
    path = url + "/v1/admin/policies/guard"
    assert httpx.put(path, headers=h["member"], json=BLOCK).status_code == 403
    assert httpx.get(url + "/v1/admin/policies", headers=h["member"]).status_code == 403
    assert httpx.post(url + CHAT, headers=h["member"], json=_chat("a forbidden topic")).status_code == 200

    r = httpx.put(path, headers=h["admin"], json=BLOCK)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["changed"] is True
    denied = httpx.post(url + CHAT, headers=h["member"], json=_chat("a forbidden topic"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "POLICY_DENIED"
    assert httpx.post(url + CHAT, headers=h["member"], json=_chat("fine")).status_code == 200

    listed = httpx.get(url + "/v1/admin/policies", headers=h["admin"]).json()["data"]
    assert [(d["name"], d["scope"], d["version"], d["rules"]) for d in listed] == [("guard", "workspace", 1, 1)]
    shown = httpx.get(path, headers=h["admin"]).json()
    assert shown["document"]["rules"][0]["name"] == "no-secrets-talk"
    assert httpx.put(path, headers=h["admin"], json=BLOCK).json()["changed"] is False  # same document

    # Another workspace's admin: no such set, whatever it is called (no oracle).
    assert httpx.get(path, headers=h["other"]).status_code == 404
    assert httpx.delete(path, headers=h["other"]).status_code == 404
    assert httpx.get(url + "/v1/admin/policies", headers=h["other"]).json()["data"] == []

    bad: Any
    for bad in ({"rules": [{"name": "x", "when": "request.model ==", "actions": [{"type": "block"}]}]},
                {"rules": []}, {**BLOCK, "name": "elsewhere"}, {**BLOCK, "workspace": "other"}, [1]):
        r = httpx.put(path, headers=h["admin"], json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert "Traceback" not in r.text
    r = httpx.put(path, headers=h["admin"], content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"

    assert httpx.delete(path, headers=h["admin"]).status_code == 200
    assert httpx.post(url + CHAT, headers=h["member"], json=_chat("a forbidden topic")).status_code == 200
    assert httpx.delete(path, headers=h["admin"]).status_code == 404
    assert _audits(host) == [("policy.apply", "guard", f"key:{admin_id}"),
                             ("policy.remove", "guard", f"key:{admin_id}")]


def test_guard_sets_over_http(served: Any) -> None:
    host, url, h, admin_id = served
    host.flags.set("enable_guardrails_ai", True, workspace="acme")
    path = url + "/v1/admin/guardrails"
    assert httpx.get(path, headers=h["member"]).status_code == 403
    assert httpx.get(path, headers=h["admin"]).json()["source"] == "default"

    strict = {"input": [{"validator": "ban_list", "on_fail": "exception", "args": {"words": ["zebra"]}}]}
    r = httpx.put(path, headers=h["admin"], json=strict)
    assert r.status_code == 200, r.text
    denied = httpx.post(url + CHAT, headers=h["member"], json=_chat("a zebra crossing"))
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "GUARDRAIL_VIOLATION"
    shown = httpx.get(path, headers=h["admin"]).json()
    assert shown["source"] == "workspace" and shown["document"]["input"][0]["validator"] == "ban_list"
    assert httpx.get(path, headers=h["other"]).json()["source"] == "default"  # B sees only its own

    bad: Any
    for bad in ({"input": [{"validator": "no_such_validator"}]}, {"input": "x"}, None, {"nope": []}):
        r = httpx.put(path, headers=h["admin"], json=bad)
        assert r.status_code == 400, (bad, r.text)
    assert httpx.delete(path, headers=h["other"]).status_code == 404
    assert httpx.delete(path, headers=h["admin"]).status_code == 200
    assert httpx.post(url + CHAT, headers=h["member"], json=_chat("a zebra crossing")).status_code == 200
    assert _audits(host) == [("guardrails.apply", "acme", f"key:{admin_id}"),
                             ("guardrails.remove", "acme", f"key:{admin_id}")]


def test_routing_configs_over_http(served: Any) -> None:
    host, url, h, admin_id = served
    host.flags.set("enable_archgw_routing", True, workspace="acme")
    path = url + "/v1/admin/routing"
    assert httpx.put(path, headers=h["member"], json={"max_prompt_tokens": 5}).status_code == 403
    assert httpx.get(path, headers=h["admin"]).json()["stored"] is None

    r = httpx.put(path, headers=h["admin"], json={"max_prompt_tokens": 5})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == {"max_prompt_tokens": 5} and r.json()["version"] == 1
    too_long = httpx.post(url + CHAT, headers=h["member"], json=_chat("one two three four five six seven eight"))
    assert too_long.status_code in (400, 403) and too_long.json()["error"]["code"] == "PROMPT_TOO_LONG"
    assert httpx.get(path, headers=h["other"]).json()["stored"] is None

    for bad in ({"max_prompt_tokens": "many"}, {"no_such_key": 1}, {"workspace": "other"}, [1]):
        r = httpx.put(path, headers=h["admin"], json=bad)
        assert r.status_code == 400, (bad, r.text)
    r = httpx.delete(path, headers=h["admin"])
    assert r.status_code == 200 and r.json()["stored"] == {}
    assert httpx.post(url + CHAT, headers=h["member"],
                      json=_chat("one two three four five six seven eight")).status_code == 200
    assert _audits(host) == [("routing.set", "acme", f"key:{admin_id}"),
                             ("routing.clear", "acme", f"key:{admin_id}")]


def test_plugin_admin_bodies_are_capped(make_host: Any) -> None:
    host = make_host(synthhost_policy, env={"SYNTHHOST_MAX_BODY_BYTES": "2000"})
    with serving(host) as url:
        key, _ = create_key(host.engine, "acme", "admin")
        big = {"rules": BLOCK["rules"], "description": "x" * 5000}
        r = httpx.put(url + "/v1/admin/policies/guard", headers={"Authorization": f"Bearer {key}"}, json=big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
