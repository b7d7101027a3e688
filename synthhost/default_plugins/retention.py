"""The host's own log tables age out like plugins' (``synthhost db prune``)."""

from __future__ import annotations

from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterRetention


@hookimpl
def register_retention(register: RegisterRetention) -> None:
    register("event_logs", "created_at")
    register("runs", "started_at")
    register("spans", "started_at")
    # Only what every exporter took: pending and parked rows are work, not history.
    register("outbox", "created_at", only={"state": "delivered"})
