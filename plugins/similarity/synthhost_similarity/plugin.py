"""The similarity plugin's hooks. What they do is described in
:mod:`synthhost_similarity.service`; this module only wires them to the host.

Gate: active for a workspace when ``enable_similarity_logging`` or
``enable_prompt_similarity_check`` is on. Stages: ``pre_call`` at
``Stage.SIMILARITY`` (after route, policy, rate limit and input guardrails),
``post_call`` at ``Stage.SIMILARITY_LOG``.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Final

from synthhost import Stage, hookimpl
from synthhost_similarity.flags import FLAG_CHECK, FLAG_LOG

if TYPE_CHECKING:
    import click

    from synthhost.call import Call, Response
    from synthhost.host import Host
    from synthhost.registry import (
        RegisterFlag,
        RegisterGate,
        RegisterHealthCheck,
        RegisterMigrations,
        RegisterRetention,
    )
    from synthhost_similarity.service import SimilarityService

MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"

_SERVICES: weakref.WeakKeyDictionary[Host, SimilarityService] = weakref.WeakKeyDictionary()


def service_for(host: Host) -> SimilarityService:
    """This plugin's state for ``host`` (created on first use if start-up was skipped)."""
    service = _SERVICES.get(host)
    if service is None:
        # numpy, SQLAlchemy and the service load here (start-up), not when the CLI
        # imports the plugin to list its commands.
        from synthhost_similarity.service import SimilarityService

        service = _SERVICES[host] = SimilarityService(host)
    return service


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(
        FLAG_LOG,
        default=False,
        description="Log each prompt's similarity to the workspace's earlier and known prompts (off the call path).",
    )
    register(
        FLAG_CHECK,
        default=False,
        description="Check each prompt against the workspace's reference library and "
        "block, flag or warn at or above the threshold.",
    )


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(
        lambda f: f[FLAG_LOG] or f[FLAG_CHECK],
        order={"pre_call": Stage.SIMILARITY, "post_call": Stage.SIMILARITY_LOG},
    )


@hookimpl
def register_retention(register: RegisterRetention) -> None:
    register("prompt_similarity_logs", "created_at")
    # Logged prompts only: known prompts are an admin's, removed with ``known rm``.
    register("prompt_references", "created_at", only={"kind": "prompt"})


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(MIGRATIONS)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_similarity.cli import similarity

    cli.add_command(similarity)


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    register("similarity", _health)


def _health(host: Host) -> tuple[bool, str]:
    service = _SERVICES.get(host)
    if service is None:  # the CLI's host is not started: say what would be used
        from synthhost_similarity.embedders import make_embedder

        return True, f"embedder {make_embedder(host.settings.env).name} (not started)"
    from synthhost_similarity.logger import pending

    store = service.store
    refs = sum(len(store.library(ws)) for ws in store.workspaces())
    try:
        waiting = f"{pending(host.engine)} prompts waiting to be logged"
    except Exception as exc:  # the table is checked by the database's own health line
        waiting = f"logging backlog unknown ({type(exc).__name__})"
    where = "here" if service.consumer is not None else f"by a worker (SYNTHHOST_DELIVERY={host.delivery})"
    return True, (
        f"embedder {service.embedder.name}, {len(store.workspaces())} workspaces and "
        f"{refs} references in memory, {waiting} ({where})"
    )


@hookimpl
def startup(host: Host) -> None:
    service_for(host).start()


@hookimpl
async def shutdown(host: Host) -> None:
    service = _SERVICES.get(host)
    if service is None:
        return
    # Leave the writer's share of the shutdown budget: it commits what we queue here.
    budget = max(0.5, host.settings.shutdown_timeout_s / 2)
    import anyio

    await anyio.to_thread.run_sync(service.stop, budget, abandon_on_cancel=True)
    aclose = getattr(service.embedder, "aclose", None)
    if aclose is not None:
        await aclose()


@hookimpl
async def pre_call(call: Call) -> None:
    if call.host.flags.is_enabled(call.workspace, FLAG_CHECK):
        await service_for(call.host).check(call)


@hookimpl
def post_call(call: Call, response: Response) -> None:
    if call.host.flags.is_enabled(call.workspace, FLAG_LOG):
        service_for(call.host).enqueue(call)
