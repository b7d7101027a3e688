"""The plugin manager: default plugins plus the ``synthhost`` entry-point group.

``SYNTHHOST_LOAD_PLUGINS`` is an allow-list of entry-point names (comma-separated); set
but empty means "no installed plugins"; unset means all. Default plugins (the echo, OpenAI,
Anthropic and Gemini providers, default recovery, the scheduler's flag) are always
registered. Entry points are scanned once per process (cached) and loaded lazily when a
host is built; loading is idempotent.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from types import ModuleType

import pluggy

from synthhost import hookspecs
from synthhost.registry import RegistrationError

DEFAULT_PLUGINS: tuple[str, ...] = (
    "synthhost.default_plugins.echo",
    "synthhost.default_plugins.openai",
    "synthhost.default_plugins.anthropic",
    "synthhost.default_plugins.gemini",
    "synthhost.default_plugins.recovery",
    "synthhost.default_plugins.scheduler",
    "synthhost.default_plugins.retention",
    "synthhost.default_plugins.checks",
)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    distribution: str | None
    version: str | None
    module: str
    default: bool


@cache
def _entry_points() -> tuple[importlib.metadata.EntryPoint, ...]:
    return tuple(importlib.metadata.entry_points(group="synthhost"))


def plugin_name(plugin: object) -> str:
    """The name a plugin registers under when no entry point names it: ``synthhost_cost``
    (or ``synthhost_cost.plugin``) → ``cost``, a default plugin → its module's last part,
    anything else → its ``__name__``."""
    name = str(getattr(plugin, "__name__", None) or type(plugin).__name__)
    if name.startswith("synthhost.default_plugins."):
        return name.rsplit(".", 1)[-1]
    top = name.split(".", 1)[0]
    return top.removeprefix("synthhost_") if top.startswith("synthhost_") else name


def allowed_names(env: Mapping[str, str]) -> frozenset[str] | None:
    raw = env.get("SYNTHHOST_LOAD_PLUGINS")
    if raw is None:
        return None
    return frozenset(n.strip() for n in raw.split(",") if n.strip())


def running_under_tests() -> bool:
    return bool(getattr(sys, "_called_from_test", False))


class PluginSet:
    """A plugin manager with attribution: which distribution supplied each plugin."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("synthhost")
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.order: list[str] = []

    def register(
        self,
        plugin: ModuleType | object,
        name: str | None = None,
        *,
        distribution: str | None = None,
        version: str | None = None,
        default: bool = False,
    ) -> str:
        name = name or plugin_name(plugin)
        if self.pm.has_plugin(name) or self.pm.is_registered(plugin):
            return name  # idempotent
        self.pm.register(plugin, name=name)
        wrappers = [impl for caller in self.pm.get_hookcallers(plugin) or [] for impl in caller.get_hookimpls()
                    if impl.plugin_name == name and (impl.wrapper or impl.hookwrapper)]
        if wrappers:
            self.pm.unregister(plugin, name=name)
            hooks = ", ".join(sorted({w.function.__name__ for w in wrappers}))
            raise RegistrationError(
                f"plugin {name!r}: hook wrappers are not supported ({hooks}): synthhost calls each "
                "implementation on its own, in stage order; use pre_call and post_call/on_failure instead")
        module = getattr(plugin, "__name__", type(plugin).__module__)
        self.info[name] = PluginInfo(name, distribution, version, str(module), default)
        self.order.append(name)
        return name

    def register_defaults(self) -> None:
        version = _version("synthhost")
        for module_name in DEFAULT_PLUGINS:
            module = importlib.import_module(module_name)
            self.register(module, module_name.rsplit(".", 1)[-1], distribution="synthhost",
                          version=version, default=True)

    def load_entrypoints(self, env: Mapping[str, str]) -> list[str]:
        allowed = allowed_names(env)
        loaded = []
        for ep in _entry_points():
            if allowed is not None and ep.name not in allowed:
                continue
            if self.pm.has_plugin(ep.name) or self.pm.is_blocked(ep.name):
                continue
            plugin = ep.load()
            dist = ep.dist
            self.register(plugin, ep.name, distribution=dist.name if dist else None,
                          version=dist.version if dist else None)
            loaded.append(ep.name)
        return loaded

    def register_all(self, plugins: Iterable[ModuleType | object]) -> None:
        for plugin in plugins:
            self.register(plugin)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None
