"""Per-workspace call chains: which plugins act, in which order, and how each hook
implementation is called (sync or async, isolated, fail-open or fail-closed).

A workspace's active set is the plugins whose gate is on for it. For each distinct
active set the chain of every call hook is computed once from
``pm.subset_hook_caller(hook, remove_plugins=inactive)`` and sorted by the plugins'
declared stage; workspaces with the same active set share it. The cache is keyed by
the flag store's version, so a flag change rebuilds it on the next call. On the hot
path a call costs two dict look-ups to find its chain. The workspace → chain map is
bounded (``SYNTHHOST_CHAIN_CACHE_SIZE``, default 10,000 workspaces; oldest out first).

Implementations are called one by one (not through pluggy's multicall) so that each
one's failure is isolated and attributed, and so ``async def`` implementations are
awaited in order.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from synthhost.call import Call, Recovery, Response
from synthhost.errors import Denied, ErrorCode
from synthhost.hookspecs import spec_names
from synthhost.registry import Stage
from synthhost.tools import ToolCall, ToolResult

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost.trace import Trace

log = logging.getLogger("synthhost.chain")

CALL_HOOKS = ("pre_call", "post_call", "on_failure", "on_trace", "pre_tool", "post_tool", "on_tool_failure",
              "holds_stream")


@dataclass(frozen=True, slots=True)
class Impl:
    plugin_name: str
    function: Any
    argnames: tuple[str, ...]
    order: int
    fail_closed: bool


@dataclass(frozen=True, slots=True)
class Chain:
    active: frozenset[str]
    pre_call: tuple[Impl, ...]
    post_call: tuple[Impl, ...]
    on_failure: tuple[Impl, ...]
    on_trace: tuple[Impl, ...]
    pre_tool: tuple[Impl, ...]
    post_tool: tuple[Impl, ...]
    on_tool_failure: tuple[Impl, ...]
    # Plugins that may need the whole answer before a streaming caller gets any of it:
    # empty for most active sets, so a streamed call asks nobody.
    holds_stream: tuple[Impl, ...]


class Chains:
    def __init__(self, host: Host) -> None:
        self.host = host
        self._by_workspace: dict[str, tuple[int, Chain]] = {}
        # Workspaces remembered (SYNTHHOST_CHAIN_CACHE_SIZE); chains themselves are shared
        # per distinct active-plugin set, of which there are few.
        self.max_workspaces = max(1, int(host.settings.env.get("SYNTHHOST_CHAIN_CACHE_SIZE") or 10_000))
        self._by_active: dict[frozenset[str], Chain] = {}
        self._pm_plugins: tuple[str, ...] = ()

    def invalidate(self) -> None:
        """Forget every computed chain (after a plugin was registered late)."""
        self._by_workspace.clear()
        self._by_active.clear()

    # -- building -----------------------------------------------------------------

    def _gate_on(self, plugin: str, flags: Mapping[str, bool]) -> bool:
        spec = self.host.registry.gates.get(plugin)
        if spec is None or spec.gate is None:
            return True
        if isinstance(spec.gate, str):
            return bool(flags.get(spec.gate, False))
        try:
            return bool(spec.gate(flags))
        except Exception as exc:
            log.error("gate of plugin %s failed, treating as off: %s", plugin, exc)
            return False

    def _impls(self, hook: str, remove: set[object]) -> tuple[Impl, ...]:
        caller = self.host.pm.subset_hook_caller(hook, remove_plugins=remove)
        gates = self.host.registry.gates
        fail_closed_names = self.host.settings.fail_closed
        timings = self.host.hook_timings if hook in CALL_HOOKS else None  # lifecycle hooks: not timed
        # pluggy lists impls in reverse call order; reverse so ties keep pluggy's order.
        impls = []
        for position, hi in enumerate(reversed(caller.get_hookimpls())):
            spec = gates.get(hi.plugin_name)
            order = spec.order_for(hook) if spec else int(Stage.DEFAULT)
            if hook == "on_failure" and hi.opts.get("trylast") and not spec:
                order = int(Stage.RECOVERY)
            closed = (spec.fail_closed if spec else False) or hi.plugin_name in fail_closed_names
            function = hi.function if timings is None else timings.wrap(hi.plugin_name, hook, hi.function)
            impls.append((order, position, Impl(hi.plugin_name, function, tuple(hi.argnames), order, closed)))
        impls.sort(key=lambda t: (t[0], t[1]))
        return tuple(i for _, _, i in impls)

    def _build(self, active: frozenset[str]) -> Chain:
        pm = self.host.pm
        remove = {pm.get_plugin(name) for name in self.host.plugins.order if name not in active}
        remove.discard(None)
        return Chain(active, *(self._impls(hook, remove) for hook in CALL_HOOKS))

    def active(self, workspace: str) -> frozenset[str]:
        return self.for_workspace(workspace).active

    def for_workspace(self, workspace: str) -> Chain:
        flags_version = self.host.flags.version
        cached = self._by_workspace.get(workspace)
        if cached is not None and cached[0] == flags_version:
            return cached[1]
        flags = self.host.flags.resolved(workspace)
        active = frozenset(n for n in self.host.plugins.order if self._gate_on(n, flags))
        chain = self._by_active.get(active)
        if chain is None:
            chain = self._by_active[active] = self._build(active)
        by_workspace = self._by_workspace
        if workspace not in by_workspace and len(by_workspace) >= self.max_workspaces:
            # Bounded: evict the oldest entry (dicts keep insertion order). An evicted
            # workspace costs one flag resolution on its next call, nothing more.
            del by_workspace[next(iter(by_workspace))]
        by_workspace[workspace] = (flags_version, chain)
        return chain

    def ordered_all(self, hook: str) -> tuple[Impl, ...]:
        """Every plugin's impl of a lifecycle hook, in stage order (not gated)."""
        return self._impls(hook, set())

    # -- calling ------------------------------------------------------------------

    @staticmethod
    async def call_plain(impl: Impl, kwargs: Mapping[str, Any]) -> Any:
        result = impl.function(*[kwargs[name] for name in impl.argnames])
        if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
            result = await result
        return result

    def fault(self, impl: Impl, hook: str, exc: Exception, call: Call | ToolCall | None, workspace: str) -> None:
        """Record a crashed plugin; deny the call if the plugin is fail-closed."""
        host = self.host
        host.stats["plugin_errors"] += 1
        host.stats[f"plugin_errors.{impl.plugin_name}"] += 1
        message = host.redact(f"{type(exc).__name__}: {exc}")[:500]
        log.warning("plugin %s failed in %s: %s", impl.plugin_name, hook, message)
        if isinstance(call, ToolCall):
            call.emit("plugin_error", status="error", plugin=impl.plugin_name, hook=hook, error=message,
                      fail_closed=impl.fail_closed)
        else:
            host.emit(
                "plugin_error", call=call, workspace=workspace, status="error",
                plugin=impl.plugin_name, hook=hook, error=message, fail_closed=impl.fail_closed,
            )
        if call is not None:
            call.attributes.setdefault("plugin_errors", []).append(f"{impl.plugin_name}.{hook}")
        if host.settings.raise_errors:
            raise exc
        if impl.fail_closed and hook in ("pre_call", "post_call", "pre_tool", "post_tool"):
            raise Denied(ErrorCode.PLUGIN_ERROR, f"plugin {impl.plugin_name} failed in {hook}: {message}",
                         plugin=impl.plugin_name) from exc

    async def pre_call(self, chain: Chain, call: Call) -> Response | None:
        kwargs = {"call": call}
        for impl in chain.pre_call:
            try:
                result = impl.function(*[kwargs[n] for n in impl.argnames])
                if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                    result = await result
            except Denied:
                raise
            except Exception as exc:
                self.fault(impl, "pre_call", exc, call, call.workspace)
                continue
            if result is not None:
                if not isinstance(result, Response):
                    self.fault(impl, "pre_call", TypeError(f"returned {_shown(result)}, not a Response or None"),
                               call, call.workspace)
                    continue
                call.attributes["short_circuit_by"] = impl.plugin_name
                return result
        return None

    async def post_call(self, chain: Chain, call: Call, response: Response) -> None:
        kwargs = {"call": call, "response": response}
        for impl in chain.post_call:
            try:
                result = impl.function(*[kwargs[n] for n in impl.argnames])
                if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                    result = await result
            except Denied:
                raise
            except Exception as exc:
                self.fault(impl, "post_call", exc, call, call.workspace)
                continue
            if result is not None:
                self.fault(impl, "post_call", TypeError(f"returned {_shown(result)}, not None"), call, call.workspace)

    def holds_stream(self, chain: Chain, call: Call) -> str | None:
        """The first active plugin that holds this call's stream (see the hookspec),
        or ``None``. A crash holds it (the safe side) after the usual ``plugin_error``."""
        kwargs = {"call": call}
        for impl in chain.holds_stream:
            try:
                result = impl.function(*[kwargs[n] for n in impl.argnames])
            except Denied:
                return impl.plugin_name  # its pre_call will say why; hold meanwhile
            except Exception as exc:
                self.fault(impl, "holds_stream", exc, call, call.workspace)
                return impl.plugin_name
            if result is None or result is False:
                continue
            if result is not True:
                self.fault(impl, "holds_stream", TypeError(f"returned {_shown(result)}, not a bool or None"),
                           call, call.workspace)
            return impl.plugin_name
        return None

    async def on_failure(self, chain: Chain, call: Call, error: BaseException, attempt: int) -> Recovery | None:
        kwargs = {"call": call, "error": error, "attempt": attempt}
        for impl in chain.on_failure:
            try:
                result = impl.function(*[kwargs[n] for n in impl.argnames])
                if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                    result = await result
            except Exception as exc:
                self.fault(impl, "on_failure", exc, call, call.workspace)
                continue
            if result is not None:
                if not isinstance(result, Recovery):
                    self.fault(impl, "on_failure", TypeError(f"returned {_shown(result)}, not a Recovery or None"),
                               call, call.workspace)
                    continue
                call.attributes.setdefault("recoveries", []).append(
                    {"by": impl.plugin_name, "action": result.action, "reason": result.reason,
                     "attempt": attempt}
                )
                return result
        return None

    async def pre_tool(self, chain: Chain, tool: ToolCall) -> ToolResult | None:
        kwargs = {"tool": tool}
        for impl in chain.pre_tool:
            try:
                result = impl.function(*[kwargs[n] for n in impl.argnames])
                if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                    result = await result
            except Denied:
                raise
            except Exception as exc:
                self.fault(impl, "pre_tool", exc, tool, tool.workspace)
                continue
            if result is not None:
                if not isinstance(result, ToolResult):
                    self.fault(impl, "pre_tool", TypeError(f"returned {_shown(result)}, not a ToolResult or None"),
                               tool, tool.workspace)
                    continue
                tool.attributes["short_circuit_by"] = impl.plugin_name
                return result
        return None

    async def post_tool(self, chain: Chain, tool: ToolCall, result: ToolResult) -> None:
        kwargs = {"tool": tool, "result": result}
        for impl in chain.post_tool:
            try:
                answer = impl.function(*[kwargs[n] for n in impl.argnames])
                if answer is not None and (type(answer) is CoroutineType or inspect.isawaitable(answer)):
                    answer = await answer
            except Denied:
                raise
            except Exception as exc:
                self.fault(impl, "post_tool", exc, tool, tool.workspace)
                continue
            if answer is not None:
                self.fault(impl, "post_tool", TypeError(f"returned {_shown(answer)}, not None"), tool, tool.workspace)

    async def on_tool_failure(self, chain: Chain, tool: ToolCall, result: ToolResult,
                              attempt: int) -> Recovery | ToolResult | None:
        kwargs = {"tool": tool, "result": result, "attempt": attempt}
        for impl in chain.on_tool_failure:
            try:
                answer = impl.function(*[kwargs[n] for n in impl.argnames])
                if answer is not None and (type(answer) is CoroutineType or inspect.isawaitable(answer)):
                    answer = await answer
            except Exception as exc:
                self.fault(impl, "on_tool_failure", exc, tool, tool.workspace)
                continue
            if answer is not None:
                if not isinstance(answer, Recovery | ToolResult):
                    self.fault(impl, "on_tool_failure", TypeError(
                        f"returned {_shown(answer)}, not a Recovery, a ToolResult or None"), tool, tool.workspace)
                    continue
                tool.attributes.setdefault("recoveries", []).append(
                    {"by": impl.plugin_name, "attempt": attempt,
                     "action": answer.action if isinstance(answer, Recovery) else "repair"})
                return answer
        return None

    async def on_trace(self, trace: Trace) -> None:
        chain = self.for_workspace(trace.workspace)
        kwargs = {"trace": trace, "host": self.host}
        for impl in chain.on_trace:
            try:
                result = impl.function(*[kwargs[n] for n in impl.argnames])
                if result is not None and (type(result) is CoroutineType or inspect.isawaitable(result)):
                    result = await result
            except Exception as exc:
                self.fault(impl, "on_trace", exc, None, trace.workspace)
                continue
            if result is not None:
                self.fault(impl, "on_trace", TypeError(f"returned {_shown(result)}, not None"), None, trace.workspace)


def _shown(value: object) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}{'...' if len(text) > 60 else ''}"


assert set(CALL_HOOKS) <= set(spec_names())
