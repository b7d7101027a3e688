"""``/healthz`` (the process answers) and ``/readyz`` (it can serve: database reachable
and migrated, Redis when configured, every plugin's health check, outbox not stuck)."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from synthhost.host import Host

CHECK_TIMEOUT_S = 5.0


def _database(host: Host) -> tuple[bool, str]:
    with host.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    return True, "reachable"


def _migrations(host: Host) -> tuple[bool, str]:
    from synthhost.storage import db

    current, heads = db.current(host.engine), db.heads(host.engine, host.registry.migrations)
    if current == heads:
        return True, "at head"
    missing = sorted(heads - current)
    return False, f"not migrated: missing {', '.join(missing)} (run synthhost db upgrade)"


def _redis(host: Host) -> tuple[bool, str]:
    try:
        import redis
    except ImportError:
        return False, "REDIS_URL is set but the redis package is not installed"
    client = redis.Redis.from_url(host.settings.redis_url or "", socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return True, "reachable"


def _outbox(host: Host) -> tuple[bool, str]:
    from synthhost.outbox import queue_stats

    max_age = float(host.settings.env.get("SYNTHHOST_READY_OUTBOX_MAX_AGE_S") or 900)
    stats = queue_stats(host.engine, host.registry.exporters)
    stuck = {name: row["oldest_pending_age_s"] for name, row in stats.items()
             if row.get("oldest_pending_age_s") is not None and row["oldest_pending_age_s"] > max_age}
    if stuck:
        return False, "stuck: " + ", ".join(f"{n} oldest row {age:.0f}s old" for n, age in sorted(stuck.items())) + \
            f" (bound {max_age:g}s, SYNTHHOST_READY_OUTBOX_MAX_AGE_S)"
    parked = sum(int(row.get("parked") or 0) for row in stats.values())
    return True, f"moving ({parked} parked)" if parked else "moving"


async def _run(host: Host, check: Callable[[Host], Any]) -> tuple[bool, str]:
    """One check, bounded; sync checks run in a thread (they may do I/O)."""
    try:
        with anyio.fail_after(CHECK_TIMEOUT_S):
            if inspect.iscoroutinefunction(check):
                outcome = await check(host)
            else:
                outcome = await anyio.to_thread.run_sync(check, host, abandon_on_cancel=True)
                if inspect.isawaitable(outcome):
                    outcome = await outcome
        ok, detail = outcome
        return bool(ok), host.redact(str(detail))[:300]
    except TimeoutError:
        return False, f"timed out after {CHECK_TIMEOUT_S:g}s"
    except Exception as exc:
        return False, host.redact(f"{type(exc).__name__}: {exc}")[:300]


async def readiness(host: Host) -> tuple[bool, dict[str, Any]]:
    checks: list[tuple[str, str | None, Callable[[Host], tuple[bool, str] | Awaitable[tuple[bool, str]]]]] = [
        ("database", None, _database), ("migrations", None, _migrations)]
    if host.settings.redis_url:
        checks.append(("redis", None, _redis))
    if host.registry.exporters:
        checks.append(("outbox", None, _outbox))
    checks.extend((name, plugin, check) for name, (plugin, check) in sorted(host.registry.health_checks.items()))
    results: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()

    async def one(name: str, plugin: str | None, check: Callable[[Host], Any]) -> None:
        ok, detail = await _run(host, check)
        results[name] = {"ok": ok, "detail": detail, **({"plugin": plugin} if plugin else {})}

    async with anyio.create_task_group() as tg:
        for name, plugin, check in checks:
            tg.start_soon(one, name, plugin, check)
    ready = all(r["ok"] for r in results.values())
    return ready, {"status": "ready" if ready else "not ready",
                   "checks": dict(sorted(results.items())),
                   "duration_ms": round((time.perf_counter() - started) * 1000, 1)}
