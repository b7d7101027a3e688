"""``synthhost check``'s rate-limit item: skipped without Redis, loads the scripts a
fresh Redis lacks, fails when Redis is down (a private redis-server, never the shared one)."""

from __future__ import annotations

import hashlib
from typing import Any

import anyio

import synthhost_ratelimit
from synthhost.checks import run_checks
from synthhost_ratelimit.redis_backend import ACQUIRE


def item(host: Any) -> Any:
    return {o.name: o for o in anyio.run(run_checks, host, 3)}["ratelimit_scripts"]


def test_ratelimit_scripts_check(make_host: Any, private_redis: Any) -> None:
    assert item(make_host(synthhost_ratelimit)).status == "skip"
    host = make_host(synthhost_ratelimit, env={"REDIS_URL": private_redis.url})
    first = item(host)
    assert first.status == "pass" and first.detail == "3 scripts loaded (acquire, refund, usage loaded now)"
    client = private_redis.client()
    assert client.script_exists(hashlib.sha1(ACQUIRE.encode()).hexdigest()) == [True]
    client.close()
    assert item(host).detail == "3 scripts loaded"
    assert {o.name for o in anyio.run(run_checks, host, 2)}.isdisjoint({"ratelimit_scripts"})
    private_redis.stop()
    down = item(host)
    assert down.status == "fail" and "ConnectionError" in down.detail and "REDIS_URL" in down.fix
