"""Two ``synthhost serve`` processes on different ports sharing the database and Redis:
a flag change reaches both within the refresh bound, and a rate limit is exact across
both (never more successes than the limit, whichever process answers)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import redis

from synthhost.gateway.keys import create_key
from synthhost.host import Host
from synthhost.settings import Settings
from tests.test_serve_process import _free_port

LIMIT = 10


def _start(env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthhost", "serve", "--port", str(port), "--no-access-log"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[str], url: str) -> None:
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "serve never answered /healthz"
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)


def test_flags_and_rate_limits_are_shared_by_two_serve_processes(db_url: str, redis_url: str,
                                                                 tmp_path: Path) -> None:
    prefix = f"gw2:{uuid.uuid4().hex[:12]}"
    env = {**os.environ, "DATABASE_URL": db_url, "REDIS_URL": redis_url, "SYNTHHOST_LOAD_PLUGINS": "ratelimit",
           "SYNTHHOST_RATELIMIT_PREFIX": prefix, "SYNTHHOST_FLAG_REFRESH_S": "0.2",
           "SYNTHHOST_RATELIMIT_REFRESH_S": "0.2", "SYNTHHOST_HOME": str(tmp_path)}
    host = Host(Settings.from_env(env), load_entrypoints=True)
    host.migrate()
    host.flags.reload()
    from synthhost_ratelimit.store import set_limit

    set_limit(host.engine, "two", "workspace", requests=LIMIT, window_s=3600)
    key, _ = create_key(host.engine, "two")
    client = redis.Redis.from_url(redis_url)

    def counted() -> int:
        """Requests in the workspace's bucket now (GCRA fill, rounded up: with a one-hour
        window nothing drains measurably while the test runs)."""
        import asyncio

        from synthhost_ratelimit.limits import Limit, ScopeCheck, scope_key
        from synthhost_ratelimit.redis_backend import connect

        async def fill() -> int:
            limiter = connect(redis_url, prefix=prefix)
            try:
                check = ScopeCheck.of("workspace", scope_key("workspace", "two"), Limit(requests=LIMIT,
                                                                                          window_s=3600))
                return (await limiter.usage([check]))[0][0]
            finally:
                await limiter.aclose()

        return asyncio.run(fill())
    servers = [_start(env), _start(env)]
    try:
        for proc, url in servers:
            _wait_ready(proc, url)
        body = {"model": "echo/m", "messages": [{"role": "user", "content": "hi"}]}
        auth = {"Authorization": f"Bearer {key}"}

        def call(url: str) -> int:
            return httpx.post(url + "/v1/chat/completions", headers=auth, json=body, timeout=30).status_code

        # Flag off: nothing is limited, nothing counted, on either process.
        assert [call(url) for _, url in servers for _ in range(LIMIT)] == [200] * (2 * LIMIT)
        assert counted() == 0
        host.flags.set("enable_rate_limiting", True, workspace="two")
        # Each process acts on the change within the refresh bound: a call it answers is
        # counted from then on (the loop only bounds a broken build).
        for _, url in servers:
            deadline = time.monotonic() + 30
            before = counted()
            while True:
                assert call(url) == 200
                if counted() > before:
                    break
                assert time.monotonic() < deadline, f"{url} never saw the flag"
                time.sleep(0.05)
        used = int(counted())
        assert used == 2
        # The rest of the limit, exactly, whichever process answers, under concurrency.
        urls = [url for _, url in servers] * 15
        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(call, urls))
        assert statuses.count(200) == LIMIT - used
        assert statuses.count(429) == len(urls) - (LIMIT - used)
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            try:
                _, err = proc.communicate(timeout=60)
                assert proc.returncode == 0, err
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        host.engine.dispose()
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()
