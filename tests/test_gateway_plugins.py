"""The production plugins' denials through ``synthhost serve``: the real rate limiter
(on the real Redis) answers 429 with ``Retry-After`` to the official SDK."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import redis

import synthhost_ratelimit
from synthhost.gateway.keys import create_key
from synthhost_ratelimit.store import set_limit
from tests.gateway_server import serving


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    name = f"gwtest:{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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
        assert info.value.response.headers["retry-after"] == "60"
        # Another workspace's key is not limited: the workspace comes from the key.
        with openai.OpenAI(base_url=url + "/v1", api_key=other, max_retries=0) as sdk:
            for _ in range(3):
                assert sdk.chat.completions.create(model="echo/m", messages=messages).choices
