"""Fixtures for the cost plugin's tests.

``sim`` is a provider that answers exactly like the echo provider (``echo_usage`` sets
the reported usage, ``echo_fail`` injects failures) but reports itself as the provider
named in ``params["sim_provider"]`` (and ``params["sim_model"]`` as the billed model),
the way a real OpenAI/Anthropic/Google response names its provider and dated model.
``sim_fail_usage`` makes attempt 1 fail carrying the partial response it was billed for
(``error.response``, with usage), like a stream cut after tokens were generated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_cost
from synthhost import Host, ProviderError, Usage, hookimpl
from synthhost.call import Call, Request, Response
from synthhost.providers.echo import EchoProvider
from synthhost_cost.models import COST_LOGS


class SimProvider:
    def __init__(self) -> None:
        self.echo = EchoProvider()

    async def complete(self, request: Request, *, call: Call) -> Response:
        failing = request.params.get("sim_fail_usage")
        if isinstance(failing, dict) and call.attempt == 1:
            error = ProviderError("sim: stream cut after tokens were billed", code="PROVIDER_TIMEOUT")
            error.response = Response(  # type: ignore[attr-defined]
                text="", model=request.model, provider=request.params["sim_provider"], usage=Usage(**failing)
            )
            raise error
        response = await self.echo.complete(request, call=call)
        response.provider = request.params.get("sim_provider", "echo")
        response.model = request.params.get("sim_model", request.model)
        return response


class Sim:
    """Test plugin registering the ``sim`` provider."""

    __name__ = "sim"

    @hookimpl
    def register_providers(self, register: Any) -> None:
        register("sim", lambda host: SimProvider())


class CostKit:
    def __init__(self, make_host: Callable[..., Host]) -> None:
        self._make_host = make_host

    def host(self, *plugins: Any, env: dict[str, str] | None = None) -> Host:
        return self._make_host(synthhost_cost, Sim(), *plugins, env=env)

    @staticmethod
    def enable(host: Host, workspace: str | None = None) -> None:
        host.flags.set("track_model_costs", True, workspace=workspace)

    @staticmethod
    async def call(
        host: Host,
        provider: str,
        model: str,
        usage: dict[str, int] | None = None,
        *,
        workspace: str = "default",
        agent: str | None = None,
        **params: Any,
    ) -> Response:
        p = {"sim_provider": provider, **params}
        if usage is not None:
            p["echo_usage"] = usage
        return await host.complete(model=f"sim/{model}", messages="hi", workspace=workspace, agent=agent, params=p)

    @staticmethod
    async def rows(host: Host, **where: Any) -> list[dict[str, Any]]:
        await host.writer.flush()
        query = sa.select(COST_LOGS).order_by(COST_LOGS.c.created_at, COST_LOGS.c.attempt)
        for key, value in where.items():
            query = query.where(COST_LOGS.c[key] == value)
        with host.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @staticmethod
    async def events(host: Host, event_type: str) -> list[dict[str, Any]]:
        await host.writer.flush()
        table = sa.table(
            "event_logs",
            sa.column("event_type"),
            sa.column("workspace_id"),
            sa.column("span_id"),
            sa.column("status"),
            sa.column("context", sa.JSON),
            sa.column("created_at"),
        )
        query = sa.select(table).where(table.c.event_type == event_type).order_by(table.c.created_at)
        with host.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    @staticmethod
    async def spans(host: Host) -> list[dict[str, Any]]:
        await host.writer.flush()
        table = sa.table(
            "spans", sa.column("id"), sa.column("kind"), sa.column("status"), sa.column("error_code"),
            sa.column("attributes", sa.JSON)
        )
        with host.engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.select(table).where(table.c.kind == "call")).mappings()]


@pytest.fixture
def kit(make_host: Callable[..., Host]) -> CostKit:
    return CostKit(make_host)
