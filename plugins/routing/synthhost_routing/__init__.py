"""synthhost plugin: route every model call (prompt length, plan tier, context window,
data residency), reroute failed calls over untried routes, and the Arch gateway
(``archgw`` provider).

Gate: flag ``enable_archgw_routing`` (default off), first in ``pre_call``
(``Stage.ROUTE``) and in ``on_failure`` just before the default recovery
(``Stage.RECOVERY - 100``). The decision is applied to ``call.request`` (model,
provider, region), so the provider receives it; it is recorded on the call's span as
``route`` and, when it changed something, as a ``route_decided`` event.

The ``archgw`` provider and its ``archgw`` health check are registered whatever the
flag says (a provider is only used when a request names it).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from synthhost import hookimpl
from synthhost.call import Call, Recovery, StashKey
from synthhost.errors import Denied, ProviderError
from synthhost.registry import (
    RegisterFlag,
    RegisterGate,
    RegisterHealthCheck,
    RegisterMigrations,
    RegisterProvider,
    RegisterRoute,
    Stage,
)
from synthhost_routing import catalog
from synthhost_routing.catalog import GATEWAY_NAME, GLOBAL, PIN_KEY
from synthhost_routing.decide import (
    MODEL_NOT_ALLOWED,
    NO_COMPLIANT_REGION,
    PROMPT_TOO_LONG,
    ROUTING_CONFIG_INVALID,
    Decision,
    Route,
    decide,
    next_route,
)

if TYPE_CHECKING:
    import click

    from synthhost.host import Host
    from synthhost_routing.config import Routing
    from synthhost_routing.routing_runtime import RoutingRuntime

FLAG = "enable_archgw_routing"
EVENT = "route_decided"
MIGRATIONS = Path(__file__).resolve().parent / "migrations"

DECISION = StashKey[Decision]()
FAILURES = StashKey[dict[tuple[str, str, str | None], int]]()

_runtimes: weakref.WeakKeyDictionary[Host, RoutingRuntime] = weakref.WeakKeyDictionary()


def runtime(host: Host) -> RoutingRuntime:
    """This host's routing runtime (created, and loaded, on first use)."""
    rt = _runtimes.get(host)
    if rt is None:
        # SQLAlchemy and pydantic load here, once per host, not at plugin import. (The
        # module is not called ``runtime``: importing it lazily would rebind this
        # package's ``runtime`` attribute, this function, to the module.)
        from synthhost_routing.routing_runtime import RoutingRuntime

        env = host.settings.env
        refresh = float(env.get("SYNTHHOST_ROUTING_REFRESH_S") or host.settings.flag_refresh_s)
        rt = _runtimes[host] = RoutingRuntime(host.engine, refresh)
        weakref.finalize(host, rt.stop)
        rt.reload()
    return rt


# -- registration ----------------------------------------------------------------------------


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(
        FLAG, default=False, description="Route calls (length, plan tier, context window, region); reroute failures."
    )


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(FLAG, order={"pre_call": Stage.ROUTE, "on_failure": Stage.RECOVERY - 100})


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(MIGRATIONS)


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register(GATEWAY_NAME, _gateway_factory)


@hookimpl
def register_routes(register: RegisterRoute) -> None:
    from synthhost_routing import http

    register("/v1/admin/routing", http.routing, methods=["GET", "PUT", "DELETE"])


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    register("archgw", _gateway_health)


# The gateway provider (httpx) is imported when a host first uses it.
def _gateway_factory(host: Host) -> Any:
    from synthhost_routing import gateway

    return gateway.factory(host)


async def _gateway_health(host: Host) -> tuple[bool, str]:
    from synthhost_routing import gateway

    return await gateway.health(host)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_routing.cli import routing

    cli.add_command(routing)


# -- lifecycle -------------------------------------------------------------------------------


@hookimpl
async def startup(host: Host) -> None:
    import anyio

    rt = await anyio.to_thread.run_sync(runtime, host)
    rt.start()


@hookimpl
def shutdown(host: Host) -> None:
    rt = _runtimes.pop(host, None)
    if rt is not None:
        rt.stop()


# -- the call ----------------------------------------------------------------------------------


@hookimpl
def pre_call(call: Call) -> None:
    cfg = runtime(call.host).for_workspace(call.workspace)
    request = call.request
    first = DECISION not in call.stash
    decision = decide(request, call.metadata, cfg, keep_region=not first)
    if decision.changed:
        request.provider, request.model, request.region = decision.provider, decision.model, decision.region
    if decision.pin:
        request.metadata[PIN_KEY] = True
    if first:
        call.stash[DECISION] = decision
        data = call.attributes["route"] = decision.to_dict()
    elif decision.changed:  # another plugin's reroute had to be corrected
        data = decision.to_dict()
        call.attributes.setdefault("route", {}).setdefault("adjustments", []).append({"attempt": call.attempt, **data})
    if decision.changed:
        call.emit(EVENT, attempt=call.attempt, **data)


@hookimpl
def on_failure(call: Call, error: BaseException, attempt: int) -> Recovery | None:
    """Reroute a retryable provider failure to the first untried route; ``None`` (let the
    default recovery retry or give up) when there is none or attempts are used up."""
    if isinstance(error, Denied) or not isinstance(error, ProviderError) or not error.retryable:
        return None
    if attempt >= call.max_attempts:
        return None
    cfg = runtime(call.host).for_workspace(call.workspace)
    if not cfg.reroute or cfg.error:
        return None
    request = call.request
    failures = call.stash.get(FAILURES)
    if failures is None:
        failures = call.stash[FAILURES] = {}
    key = (request.provider, request.model, request.region)
    failures[key] = failures.get(key, 0) + 1
    if failures[key] < cfg.reroute_after:
        return None  # let the default recovery retry this route first
    mine = {(p, m) for p, m, _ in failures}
    elsewhere = {pair for pair in call.tried_routes if pair not in mine}
    group = request.metadata.get("model_group")  # a model-list model: its other deployments first
    other = call.host.models.next_untried(group, call.tried_routes) if group else None
    if other is not None:
        route: Route | None = Route(other.name, other.upstream_model, request.region,
                                    f"deployment fallback: {request.provider} -> {other.name} ({group})")
    else:
        route = next_route(request, cfg, call.stash.get(DECISION), failures, call.host.registry.providers, elsewhere)
    if route is None:
        return None
    changes: dict[str, Any] = {"provider": route.provider, "model": route.model, "region": route.region}
    metadata = dict(request.metadata)
    if route.provider in catalog.GATEWAY_PROVIDERS and cfg.gateway_pin and "/" in route.model:
        metadata[PIN_KEY] = True
    else:
        metadata.pop(PIN_KEY, None)
    if metadata != request.metadata:
        changes["metadata"] = metadata
    reroutes = call.attributes.setdefault("route", {}).setdefault("reroutes", [])
    reroutes.append(
        {
            "attempt": attempt,
            "error": getattr(error, "code", "error"),
            "from": {"provider": request.provider, "model": request.model, "region": request.region},
            "to": {"provider": route.provider, "model": route.model, "region": route.region},
        }
    )
    same_provider = route.provider == request.provider
    delay = float(error.retry_after or 0.0) if same_provider else 0.0
    return Recovery("reroute", delay=delay, changes=changes, reason=route.reason)


# -- programmatic management (what the CLI uses) -------------------------------------------------


def _target(workspace: str | None, global_: bool) -> str:
    from synthhost.errors import UsageError

    if global_:
        if workspace not in (None, GLOBAL):
            raise UsageError("--global and --workspace are exclusive")
        return GLOBAL
    ws = workspace or "default"
    if ws == GLOBAL:
        raise UsageError("workspace '*' is the global configuration: use --global")
    from synthhost.workspace import validate_workspace

    return validate_workspace(ws, what="--workspace")


def set_config(
    host: Host,
    document: Mapping[str, Any],
    *,
    workspace: str | None = None,
    global_: bool = False,
    actor: str | None = None,
) -> int:
    """Validate and store ``document`` as the workspace's (or the global) routing
    configuration, replacing what was there; visible at once in ``host``. Returns the
    stored version."""
    from synthhost_routing import store

    version = store.save(host.engine, _target(workspace, global_), document, actor or os.environ.get("USER"))
    rt = _runtimes.get(host)
    if rt is not None:
        rt.reload()
    return version


def update_config(
    host: Host,
    changes: Mapping[str, Any],
    *,
    unset: Iterable[str] = (),
    workspace: str | None = None,
    global_: bool = False,
    actor: str | None = None,
) -> int:
    """Change some keys (dotted paths: ``plan``, ``region.data_residency``,
    ``fallbacks.gpt-4o``, ``models.gpt-4.1.context_window``) of the stored document."""
    from synthhost_routing import store
    from synthhost_routing.cli import set_path, unset_path

    target = _target(workspace, global_)
    stored = store.get(host.engine, target)
    document: dict[str, Any] = dict(stored.document) if stored else {}
    for path, value in changes.items():
        set_path(document, path, value)
    for path in unset:
        unset_path(document, path)
    is_global = target == GLOBAL
    return set_config(host, document, workspace=None if is_global else target, global_=is_global, actor=actor)


def routing_for(host: Host, workspace: str) -> Routing:
    """The effective, compiled configuration a call of ``workspace`` is routed with."""
    return runtime(host).for_workspace(workspace)


__all__ = [
    "EVENT",
    "FLAG",
    "MODEL_NOT_ALLOWED",
    "NO_COMPLIANT_REGION",
    "PROMPT_TOO_LONG",
    "ROUTING_CONFIG_INVALID",
    "routing_for",
    "runtime",
    "set_config",
    "update_config",
]
