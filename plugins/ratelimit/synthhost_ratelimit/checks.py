"""``synthhost check`` items of the rate limiter: Redis takes its Lua scripts."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from synthhost.checks import CheckResult, failed, passed, skipped

if TYPE_CHECKING:
    from synthhost.host import Host


def scripts(host: Host) -> CheckResult:
    """Every script the limiter sends (EVALSHA) is in Redis' script cache, loading the
    missing ones (what the limiter itself does on its first call): a Redis that refuses
    Lua (ACLs, a managed service without EVAL) fails here, not on the first limited call."""
    if not host.settings.redis_url:
        return skipped("no REDIS_URL: limits are enforced per process (each counts on its own)",
                       "set REDIS_URL to share limits between processes")
    import redis

    from synthhost_ratelimit.redis_backend import ACQUIRE, REFUND, USAGE

    texts = {"acquire": ACQUIRE, "refund": REFUND, "usage": USAGE}
    client = redis.Redis.from_url(host.settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        shas = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in texts.items()}
        cached = dict(zip(shas, client.script_exists(*shas.values()), strict=True))
        loaded_now = [name for name, present in cached.items() if not present]
        for name in loaded_now:
            if client.script_load(texts[name]) != shas[name]:
                return failed(f"Redis answered another SHA1 for the {name} script", "check the Redis server")
    except redis.RedisError as exc:
        return failed(f"Redis refused the rate-limit scripts ({type(exc).__name__}: {str(exc)[:120]})",
                      "check REDIS_URL, that Redis is up and that this user may run SCRIPT and EVALSHA")
    finally:
        client.close()
    note = f" ({', '.join(loaded_now)} loaded now)" if loaded_now else ""
    return passed(f"{len(texts)} scripts loaded{note}")
