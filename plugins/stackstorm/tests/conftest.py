"""Fixtures for the stackstorm plugin's tests.

- ``st2``: a started :class:`FakeSt2` (the loopback st2api) running the shipped pack;
- ``kit``: builds hosts with the plugin, the fake's environment, and two test plugins:
  ``Upstreams`` (providers ``backup`` and ``anthropic``, both echo providers, so a
  reroute's effect shows in what *they* received) and ``FastRetry`` (zero backoff, so
  the default recovery's retries take no time);
- ``kit.events(host, type)``: the ``event_logs`` contexts of one type, as stored.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_stackstorm
from synthhost import Host, hookimpl
from synthhost.call import Call
from synthhost.providers.echo import EchoProvider
from synthhost.registry import RegisterGate, RegisterProvider
from synthhost_stackstorm.testing import FakeSt2

ALL_FLAGS = ("enable_stackstorm", "enable_stackstorm_retry", "enable_stackstorm_reroute",
             "enable_stackstorm_repair_execution")


class Upstreams:
    __name__ = "upstreams"

    @hookimpl
    def register_providers(self, register: RegisterProvider) -> None:
        register("backup", lambda host: EchoProvider())
        register("anthropic", lambda host: EchoProvider())


class FastRetry:
    __name__ = "fast_retry"

    @hookimpl
    def register_gate(self, register: RegisterGate) -> None:
        register(None, order={"pre_call": 1})

    @hookimpl
    def pre_call(self, call: Call) -> None:
        call.retry_initial_delay_s = 0.0
        call.retry_max_delay_s = 0.0


class Kit:
    def __init__(self, make_host: Callable[..., Host], st2: FakeSt2) -> None:
        self._make_host = make_host
        self.st2 = st2

    def host(self, *plugins: Any, env: dict[str, str] | None = None, configured: bool = True,
             st2: FakeSt2 | None = None) -> Host:
        base = (st2 or self.st2).env() if configured else {}
        return self._make_host(synthhost_stackstorm, Upstreams(), FastRetry(), *plugins, env={**base, **(env or {})})

    @staticmethod
    def enable(host: Host, *flags: str, workspace: str | None = None) -> None:
        for flag in flags or ALL_FLAGS:
            host.flags.set(flag, True, workspace=workspace)

    @staticmethod
    async def events(host: Host, event_type: str) -> list[dict[str, Any]]:
        await host.writer.flush()
        table = sa.table("event_logs", sa.column("event_type"), sa.column("status"), sa.column("context", sa.JSON),
                         sa.column("created_at"))
        query = sa.select(table.c.status, table.c.context).where(table.c.event_type == event_type)
        with host.engine.connect() as conn:
            rows = conn.execute(query.order_by(table.c.created_at)).all()
        return [{"status": status, **(context or {})} for status, context in rows]

    @staticmethod
    async def all_event_rows(host: Host) -> list[dict[str, Any]]:
        await host.writer.flush()
        with host.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text("SELECT * FROM event_logs")).mappings()]

    @staticmethod
    async def spans(host: Host) -> list[dict[str, Any]]:
        await host.writer.flush()
        table = sa.table("spans", sa.column("kind"), sa.column("attributes", sa.JSON))
        with host.engine.connect() as conn:
            rows = conn.execute(sa.select(table.c.attributes).where(table.c.kind == "call")).all()
        return [attributes for (attributes,) in rows]


@pytest.fixture
def st2() -> Iterator[FakeSt2]:
    with FakeSt2() as fake:
        yield fake


@pytest.fixture
def kit(make_host: Callable[..., Host], st2: FakeSt2) -> Kit:
    return Kit(make_host, st2)
