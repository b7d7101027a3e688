"""synthhost plugin: export runs to Langfuse as traces, spans and generations.

Flags: ``enable_langfuse_export`` (default off; the gate, at ``Stage.TELEMETRY``) and
``enable_async_trace_export`` (default on). Settings: ``LANGFUSE_PUBLIC_KEY``,
``LANGFUSE_SECRET_KEY``, ``LANGFUSE_BASE_URL`` (wins) or ``LANGFUSE_HOST``, plus the
SDK's ``LANGFUSE_TIMEOUT``, ``LANGFUSE_TRACING_ENVIRONMENT``, ``LANGFUSE_RELEASE``.
Without keys the plugin is inert: it says so once (log line and ``synthhost health``)
and queues nothing.

Delivery goes through the host outbox: the exporter ``langfuse`` receives each
``run_finished`` event, loads the run's trace from the store and exports it with the
real SDK, waiting for Langfuse's answer (see :mod:`synthhost_langfuse.exporter`). In
async mode (the default) nothing on the call path waits: ``on_trace`` returns at once.
With ``enable_async_trace_export`` off, ``on_trace`` exports the trace itself and the
run reports done only once Langfuse accepted it (or the export definitively failed; the
outbox then retries it).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from synthhost import Stage, hookimpl
from synthhost_langfuse.config import EVENT_TYPES, EXPORTER_NAME, LangfuseConfig, load_config

if TYPE_CHECKING:
    import click

    from synthhost.host import Host
    from synthhost.registry import (
        RegisterCheck,
        RegisterExporter,
        RegisterFlag,
        RegisterGate,
        RegisterHealthCheck,
    )
    from synthhost.trace import Trace
    from synthhost_langfuse.exporter import LangfuseExporter

log = logging.getLogger("synthhost.langfuse")

PLUGIN = "langfuse"
EXPORT_FLAG = "enable_langfuse_export"
ASYNC_FLAG = "enable_async_trace_export"

__all__ = ["ASYNC_FLAG", "EXPORT_FLAG", "PLUGIN", "LangfuseExporter", "exporter_for"]


@dataclass
class _State:
    config: LangfuseConfig | None
    inert_reason: str
    exporter: LangfuseExporter | None


# One state per host (a module plugin is shared by every host in the process).
_STATES: weakref.WeakKeyDictionary[Any, _State] = weakref.WeakKeyDictionary()
_SAID_INERT: set[str] = set()


def __getattr__(name: str) -> Any:
    if name == "LangfuseExporter":  # exported, but the SDK behind it loads on first use
        from synthhost_langfuse.exporter import LangfuseExporter

        return LangfuseExporter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _state(host: Host) -> _State:
    state = _STATES.get(host)
    if state is None:
        # The SDK and OpenTelemetry load here (once per host), not at plugin import.
        from synthhost_langfuse.exporter import LangfuseExporter

        config, reason = load_config(host.settings.env)
        exporter = LangfuseExporter(host, config) if config is not None else None
        state = _STATES[host] = _State(config, reason, exporter)
    return state


def exporter_for(host: Host) -> LangfuseExporter | None:
    """This host's exporter, or ``None`` when Langfuse is not configured."""
    return _state(host).exporter


# -- registration --------------------------------------------------------------------------


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(EXPORT_FLAG, False, "Export runs to Langfuse (traces, spans, generations).")
    register(ASYNC_FLAG, True, "Export Langfuse traces off the call path; off: a run reports done "
                               "only once Langfuse accepted its trace.")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(EXPORT_FLAG, order=Stage.TELEMETRY)


@hookimpl
def register_exporters(register: RegisterExporter) -> None:
    # The factory returns None without keys: the outbox then queues nothing for us.
    register(EXPORTER_NAME, exporter_for, event_types=list(EVENT_TYPES), batch_size=100)


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    register(PLUGIN, _health)


@hookimpl
def register_checks(register: RegisterCheck) -> None:
    from synthhost_langfuse.checks import delivery

    register(PLUGIN, delivery, phase=2)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_langfuse.cli import langfuse_group

    cli.add_command(langfuse_group, "langfuse")


def _health(host: Host) -> tuple[bool, str]:
    state = _state(host)
    if state.exporter is None:
        return True, f"inert: {state.inert_reason}"
    return state.exporter.health()


# -- lifecycle -----------------------------------------------------------------------------


@hookimpl
def startup(host: Host) -> None:
    state = _state(host)
    if state.exporter is None and state.inert_reason not in _SAID_INERT:
        _SAID_INERT.add(state.inert_reason)
        log.info("langfuse: inert (%s): no traces will be exported", state.inert_reason)


# No shutdown hook: the SDK is flushed and stopped by the exporter's close(), which the
# outbox calls after its last send (stopping it earlier would fail the final drain).


# -- the trace hook ------------------------------------------------------------------------


@hookimpl
def on_trace(trace: Trace, host: Host) -> Awaitable[None] | None:
    """Async mode: return at once (the outbox delivers ``run_finished``). Sync mode:
    return an awaitable that exports the trace in a worker thread and waits."""
    state = _STATES.get(host)
    if state is None or state.exporter is None:
        return None
    exporter = state.exporter
    if exporter.host.flags.is_enabled(trace.workspace, ASYNC_FLAG):
        return None
    return _export_and_wait(exporter, trace)


async def _export_and_wait(exporter: LangfuseExporter, trace: Trace) -> None:
    import anyio  # once per run in sync mode, off the per-call path

    await anyio.to_thread.run_sync(exporter.export_now, trace)
