"""What registration hooks declare: flags, gates and stages, providers, exporters,
migrations, health checks, deployment checks and HTTP routes. The host fills one :class:`Registry` at start-up."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from synthhost.call import Call, Request, Response
    from synthhost.checks import CheckResult
    from synthhost.host import Host
    from synthhost.tools import Tool


# OpenAI's rule for function names, which every provider here accepts.
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Stage(IntEnum):
    """Where a plugin sits in the chain: lower runs first. Numbers only compare within
    one hook, but they are all distinct so every name stays a real member.

    ``pre_call``: route → policy → rate limit → input guardrails → similarity → others.
    ``post_call``: cost → output guardrails → similarity log → others → telemetry. Cost
    comes *before* output guardrails (DESIGN.md had it after): the provider has charged
    for the tokens even when a guardrail then rejects the output, so the cost row must
    be written before a guardrail's ``Denied`` stops the chain.
    ``on_failure``: observers (``SETTLE``: rate-limit refunds; cost) → others → default
    recovery. ``SETTLE`` is also where the rate limiter corrects its token charge in
    ``post_call``, before anything can reject the output.
    Leave gaps: third-party plugins pick any int in between."""

    SETTLE = 50
    ROUTE = 100
    COST = 150
    POLICY = 200
    GUARD_OUTPUT = 250
    RATE_LIMIT = 300
    SIMILARITY_LOG = 350
    GUARD_INPUT = 400
    SIMILARITY = 500
    DEFAULT = 600
    TELEMETRY = 900
    RECOVERY = 1000


@dataclass(frozen=True, slots=True)
class FlagSpec:
    name: str
    default: bool = False
    description: str = ""
    plugin: str = ""


Gate = str | Callable[[Mapping[str, bool]], bool] | None


@dataclass(frozen=True, slots=True)
class GateSpec:
    plugin: str
    gate: Gate = None
    order: Mapping[str, int] = field(default_factory=dict)
    fail_closed: bool = False

    def order_for(self, hook: str) -> int:
        return self.order.get(hook, self.order.get("*", int(Stage.DEFAULT)))


class Provider(Protocol):
    """``complete`` answers a request. Optional attributes: ``supports_tools = False``
    makes the agent loop refuse a step with tools on this provider (default: assumed to
    speak OpenAI's tool-calling format); ``call.on_delta`` set means the caller streams."""

    async def complete(self, request: Request, *, call: Call) -> Response: ...


ProviderFactory = Callable[["Host"], Provider]


@dataclass(frozen=True, slots=True)
class ProviderSpec:
    name: str
    factory: ProviderFactory
    plugin: str
    builtin: bool = False


class Exporter(Protocol):
    def send(self, events: Sequence[Mapping[str, Any]]) -> None: ...


# ``None``: not configured in this host (e.g. no credentials); nothing is queued for it.
ExporterFactory = Callable[["Host"], Exporter | None]


@dataclass(frozen=True, slots=True)
class ExporterSpec:
    name: str
    factory: ExporterFactory
    plugin: str
    event_types: frozenset[str] | None = None
    batch_size: int = 20


HealthCheck = Callable[["Host"], "tuple[bool, str] | Awaitable[tuple[bool, str]]"]

# A ``synthhost check`` item: ``check(host)`` returns (or awaits to) a CheckResult.
Check = Callable[["Host"], "CheckResult | Awaitable[CheckResult]"]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    """A deployment check (see :mod:`synthhost.checks`)."""

    name: str
    check: Check
    plugin: str
    phase: int = 0


@dataclass(frozen=True, slots=True)
class RetentionSpec:
    """A table whose rows age out (see :mod:`synthhost.retention`)."""

    table: str
    time_column: str
    plugin: str
    only: tuple[tuple[str, Any], ...] = ()  # column == value conditions a row must meet too


class RegisterFlag(Protocol):
    def __call__(self, name: str, default: bool = False, description: str = "") -> None: ...


class RegisterGate(Protocol):
    def __call__(
        self, gate: Gate, *, order: int | Mapping[str, int] = ..., fail_closed: bool = ...
    ) -> None: ...


class RegisterMigrations(Protocol):
    def __call__(self, path: str | Path) -> None: ...


class RegisterProvider(Protocol):
    def __call__(self, name: str, factory: ProviderFactory) -> None: ...


class RegisterCheck(Protocol):
    def __call__(self, name: str, check: Check, *, phase: int = 0) -> None: ...


class RegisterRetention(Protocol):
    def __call__(self, table: str, time_column: str = "created_at", *,
                 only: Mapping[str, Any] | None = None) -> None: ...


class RegisterExporter(Protocol):
    def __call__(
        self,
        name: str,
        factory: ExporterFactory,
        event_types: Sequence[str] | None = None,
        batch_size: int = 20,
    ) -> None: ...


class RegisterHealthCheck(Protocol):
    def __call__(self, name: str, check: HealthCheck) -> None: ...


# An ASGI endpoint as Starlette takes it: ``async def endpoint(request) -> Response``.
RouteEndpoint = Callable[..., Any]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    path: str
    endpoint: RouteEndpoint
    plugin: str
    methods: tuple[str, ...] = ("GET",)
    auth: bool = True
    name: str | None = None


class RegisterRoute(Protocol):
    def __call__(
        self, path: str, endpoint: RouteEndpoint, *, methods: Sequence[str] = ("GET",), auth: bool = True,
        name: str | None = None,
    ) -> None: ...


class RegistrationError(Exception):
    """Two plugins declared the same name, or a declaration is malformed."""


@dataclass
class Registry:
    flags: dict[str, FlagSpec] = field(default_factory=dict)
    gates: dict[str, GateSpec] = field(default_factory=dict)
    migrations: dict[str, Path] = field(default_factory=dict)
    providers: dict[str, ProviderSpec] = field(default_factory=dict)
    exporters: dict[str, ExporterSpec] = field(default_factory=dict)
    health_checks: dict[str, tuple[str, HealthCheck]] = field(default_factory=dict)
    checks: dict[str, CheckSpec] = field(default_factory=dict)
    retention: dict[str, RetentionSpec] = field(default_factory=dict)
    routes: dict[str, RouteSpec] = field(default_factory=dict)
    tools: dict[str, tuple[str, Tool]] = field(default_factory=dict)  # name -> (plugin, tool)

    def add_flag(self, plugin: str, name: str, default: bool = False, description: str = "") -> None:
        existing = self.flags.get(name)
        if existing is not None and existing.default != default:
            raise RegistrationError(
                f"flag {name!r} declared by {existing.plugin!r} (default {existing.default}) "
                f"and by {plugin!r} (default {default})"
            )
        if existing is None:
            self.flags[name] = FlagSpec(name, bool(default), description, plugin)

    def add_gate(
        self,
        plugin: str,
        gate: Gate,
        *,
        order: int | Mapping[str, int] = Stage.DEFAULT,
        fail_closed: bool = False,
    ) -> None:
        orders = {"*": int(order)} if isinstance(order, int) else {k: int(v) for k, v in order.items()}
        self.gates[plugin] = GateSpec(plugin, gate, orders, fail_closed)

    def add_migrations(self, plugin: str, path: str | Path) -> None:
        self.migrations[plugin] = Path(path)

    def add_provider(self, plugin: str, name: str, factory: ProviderFactory, *, builtin: bool = False) -> None:
        """``builtin``: a default plugin's provider, which an installed plugin's provider
        of the same name replaces (a plugin may bring its own ``anthropic``)."""
        existing = self.providers.get(name)
        if existing is not None and existing.builtin and not builtin:
            self.providers[name] = ProviderSpec(name, factory, plugin)
            return
        if existing is not None and builtin and not existing.builtin:
            return
        if name in self.providers:
            raise RegistrationError(
                f"provider {name!r} registered by {self.providers[name].plugin!r} and {plugin!r}"
            )
        self.providers[name] = ProviderSpec(name, factory, plugin, builtin)

    def add_exporter(
        self,
        plugin: str,
        name: str,
        factory: ExporterFactory,
        event_types: Sequence[str] | None = None,
        batch_size: int = 20,
    ) -> None:
        if name in self.exporters:
            raise RegistrationError(f"exporter {name!r} registered twice")
        types = frozenset(event_types) if event_types is not None else None
        self.exporters[name] = ExporterSpec(name, factory, plugin, types, batch_size)

    def add_health_check(self, plugin: str, name: str, check: HealthCheck) -> None:
        self.health_checks[name] = (plugin, check)

    def add_check(self, plugin: str, name: str, check: Check, *, phase: int = 0) -> None:
        if name in self.checks:
            raise RegistrationError(f"check {name!r} registered by {self.checks[name].plugin!r} and {plugin!r}")
        if not callable(check):
            raise RegistrationError(f"plugin {plugin!r}: check {name!r} is not callable")
        if isinstance(phase, bool) or not isinstance(phase, int) or not 0 <= phase <= 4:
            raise RegistrationError(f"plugin {plugin!r}: check {name!r}: phase {phase!r} is not 0-4")
        self.checks[name] = CheckSpec(name, check, plugin, phase)

    def add_retention(self, plugin: str, table: str, time_column: str = "created_at",
                      only: Mapping[str, Any] | None = None) -> None:
        existing = self.retention.get(table)
        if existing is not None and existing.plugin != plugin:
            raise RegistrationError(f"retention for table {table!r} registered by {existing.plugin!r} "
                                    f"and {plugin!r}")
        self.retention[table] = RetentionSpec(table, time_column, plugin, tuple(sorted((only or {}).items())))

    def add_route(
        self, plugin: str, path: str, endpoint: RouteEndpoint, *, methods: Sequence[str] = ("GET",),
        auth: bool = True, name: str | None = None,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/") or "//" in path:
            raise RegistrationError(f"plugin {plugin!r}: route path {path!r} must start with one '/'")
        if not callable(endpoint):
            raise RegistrationError(f"plugin {plugin!r}: route {path!r}: endpoint is not callable")
        if path in self.routes:
            raise RegistrationError(f"route {path!r} registered by {self.routes[path].plugin!r} and {plugin!r}")
        verbs = tuple(m.upper() for m in methods)
        self.routes[path] = RouteSpec(path, endpoint, plugin, verbs, bool(auth), name)

    def add_tool(self, plugin: str, tool: Any, *, name: str | None = None, description: str | None = None,
                 timeout_s: float | None = None) -> None:
        """A plugin's tool: a :class:`~synthhost.tools.Tool` or a typed function."""
        from synthhost.tools import Tool
        from synthhost.tools.python import python_tool

        try:
            if isinstance(tool, Tool):
                tool = tool.with_overrides(name=name, description=description, timeout_s=timeout_s)
            else:
                tool = python_tool(tool, name=name, description=description, timeout_s=timeout_s, source="plugin")
        except ValueError as exc:
            raise RegistrationError(f"plugin {plugin!r}: tool {name or getattr(tool, '__name__', tool)!r}: {exc}") \
                from None
        if not _TOOL_NAME.match(tool.name):
            raise RegistrationError(f"plugin {plugin!r}: tool name {tool.name!r} must match {_TOOL_NAME.pattern}")
        if tool.name in self.tools:
            raise RegistrationError(f"tool {tool.name!r} registered by {self.tools[tool.name][0]!r} and {plugin!r}")
        self.tools[tool.name] = (plugin, tool)
