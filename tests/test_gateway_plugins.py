"""The production plugins through ``synthhost serve``: the real rate limiter (on the real
Redis) answers 429 with ``Retry-After`` to the official SDK, and its limits are managed
over HTTP by admin keys (its ``register_routes``)."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
import sqlalchemy as sa

import synthhost_ratelimit
from synthhost.gateway.keys import create_key
from synthhost_ratelimit.store import set_limit
from tests.gateway_server import serving


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    return redis_prefix


def test_the_rate_limiter_answers_429_with_retry_after(make_host: Any, redis_url: str, prefix: str) -> None:
    host = make_host(synthhost_ratelimit, env={"REDIS_URL": redis_url, "SYNTHHOST_RATELIMIT_PREFIX": prefix})
    with serving(host) as url:
        host.flags.set("enable_rate_limiting", True, workspace="rl")
        set_limit(host.engine, "rl", "workspace", requests=2, window_s=60)
        refresher = synthhost_ratelimit.state(host).refresher
        assert refresher is not None
        refresher.reload()
        key, _ = create_key(host.engine, "rl")
        other, _ = create_key(host.engine, "free")
        messages: Any = [{"role": "user", "content": "hi"}]
        with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as sdk:
            for _ in range(2):
                assert sdk.chat.completions.create(model="echo/m", messages=messages).choices
            with pytest.raises(openai.RateLimitError) as info:
                sdk.chat.completions.create(model="echo/m", messages=messages)
        assert info.value.status_code == 429
        body: Any = info.value.body
        assert body["code"] == "RATE_LIMITED" and body["type"] == "rate_limit_error"
        # 2 per 60 s is one per 30 s (GCRA): the next call fits 30 s after the burst
        assert info.value.response.headers["retry-after"] == "30"
        # Another workspace's key is not limited: the workspace comes from the key.
        with openai.OpenAI(base_url=url + "/v1", api_key=other, max_retries=0) as sdk:
            for _ in range(3):
                assert sdk.chat.completions.create(model="echo/m", messages=messages).choices


def test_rate_limits_over_http_admin_only_audited_and_acting(make_host: Any, redis_url: str, prefix: str) -> None:
    host = make_host(synthhost_ratelimit, env={"REDIS_URL": redis_url, "SYNTHHOST_RATELIMIT_PREFIX": prefix})
    with serving(host) as url:
        host.flags.set("enable_rate_limiting", True, workspace="rl")
        admin_key, admin = create_key(host.engine, "rl", "admin")
        member_key, _ = create_key(host.engine, "rl")
        as_admin = {"Authorization": f"Bearer {admin_key}"}
        as_member = {"Authorization": f"Bearer {member_key}"}
        assert httpx.get(url + "/v1/admin/ratelimits", headers=as_member).status_code == 403
        assert httpx.put(url + "/v1/admin/ratelimits/workspace", headers=as_member,
                         json={"requests": 1}).status_code == 403
        r = httpx.put(url + "/v1/admin/ratelimits/workspace", headers=as_admin, json={"requests": 1, "window_s": 60})
        assert r.status_code == 200, r.text
        assert r.json() == {"scope": "workspace", "requests": 1, "tokens": None, "window_s": 60.0,
                            "source": "workspace"}
        body = {"model": "echo/m", "messages": [{"role": "user", "content": "hi"}]}
        first = httpx.post(url + "/v1/chat/completions", headers=as_member, json=body)
        second = httpx.post(url + "/v1/chat/completions", headers=as_member, json=body)
        assert (first.status_code, second.status_code) == (200, 429)
        listed = {d["scope"]: d for d in httpx.get(url + "/v1/admin/ratelimits", headers=as_admin).json()["data"]}
        assert listed["workspace"]["requests"] == 1 and listed["user"]["source"] == "default"
        for bad in ({"requests": -1}, {"requests": "10"}, {"window_s": 0}, {"oops": 1}, {}):
            assert httpx.put(url + "/v1/admin/ratelimits/workspace", headers=as_admin, json=bad).status_code == 400
        assert httpx.put(url + "/v1/admin/ratelimits/global", headers=as_admin, json={"requests": 1}).status_code == 400
        r = httpx.delete(url + "/v1/admin/ratelimits/workspace", headers=as_admin)
        assert r.status_code == 200 and r.json()["source"] == "default"
        assert httpx.post(url + "/v1/chat/completions", headers=as_member, json=body).status_code == 200
        host.wait_for_events()
        with host.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT context FROM event_logs WHERE event_type = 'admin_action' "
                                        "ORDER BY created_at")).scalars().all()
    audits = [json.loads(c) if isinstance(c, str) else c for c in rows]
    assert [(a["action"], a["target"], a["actor"]) for a in audits] == [
        ("ratelimit.set", "workspace", f"key:{admin.id}"), ("ratelimit.unset", "workspace", f"key:{admin.id}")]
