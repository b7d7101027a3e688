"""synthhost plugin: forward events from the event_logs outbox to RudderStack.

On whenever ``RUDDERSTACK_WRITE_KEY`` is set (see :mod:`synthhost_rudderstack.exporter`
for every variable); a workspace opts out with the flag ``disable_rudderstack_export``.
Every ``event_logs`` row of an active workspace becomes a ``track`` call: event name =
event type, ``messageId`` = event id (redelivery is idempotent), user = the event's user
(or ``anonymousId`` = the workspace), ``context.groupId`` = the workspace. Delivery,
retries and parking are the host outbox's (``synthhost queue stats``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from synthhost import hookimpl
from synthhost.registry import (
    RegisterCheck,
    RegisterExporter,
    RegisterFlag,
    RegisterGate,
    RegisterHealthCheck,
    Stage,
)

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost_rudderstack.exporter import RudderStackExporter

def __getattr__(name: str) -> Any:
    # Config and RudderStackExporter were importable from here: still are, loaded on first use.
    if name in ("Config", "RudderStackExporter"):
        from synthhost_rudderstack import exporter

        return getattr(exporter, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


NAME = "rudderstack"
FLAG = "disable_rudderstack_export"


def _gate(flags: Mapping[str, bool]) -> bool:
    return not flags[FLAG]


def make_exporter(host: Host) -> RudderStackExporter | None:
    """The outbox calls this at start-up; ``None`` (no write key) queues nothing."""
    # The exporter imports the outbox (SQLAlchemy): loaded here, not at plugin import.
    from synthhost_rudderstack.exporter import Config, RudderStackExporter

    config = Config.from_env(host.settings.env)
    return RudderStackExporter(config) if config is not None else None


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, False, "Stop forwarding this workspace's events to RudderStack.")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(_gate, order=Stage.TELEMETRY)


@hookimpl
def register_exporters(register: RegisterExporter) -> None:
    register(NAME, make_exporter)


def _health(host: Host) -> tuple[bool, str]:
    from synthhost_rudderstack.exporter import Config

    config = Config.from_env(host.settings.env)
    if config is None:
        return True, "not configured (RUDDERSTACK_WRITE_KEY unset)"
    from synthhost.outbox import queue_stats

    stats = queue_stats(host.engine, [NAME])[NAME]
    waiting = stats["pending"] + stats["retrying"] + stats["in_flight"]
    detail = (
        f"{config.data_plane_url}: {waiting} waiting, {stats['parked']} parked, "
        f"oldest {stats['oldest_pending_age_s'] or 0:.0f}s"
    )
    if stats["last_error"] and (stats["parked"] or stats["retrying"]):
        detail += f"; last error: {stats['last_error']}"
    return stats["parked"] == 0 and stats["retrying"] == 0, detail


@hookimpl
def register_health_checks(register: RegisterHealthCheck) -> None:
    register(NAME, _health)


@hookimpl
def register_checks(register: RegisterCheck) -> None:
    from synthhost_rudderstack.checks import data_plane

    # Step 6 of the checklist: RudderStack comes with phase 4.
    register("rudderstack", data_plane, phase=4)
