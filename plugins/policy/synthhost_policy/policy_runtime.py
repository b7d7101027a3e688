"""The in-process view of the stored sets: compiled once, refreshed at a bound.

A snapshot holds the current version of every enabled set; each is compiled the first
time a workspace that sees it makes a call, and compiled sets are reused across
snapshots by ``(workspace, name, version)``. A per-workspace :class:`Plan` (its sets +
the global ones, ordered) is cached until the snapshot changes. A daemon thread polls
the row count of ``policy_sets`` every ``SYNTHHOST_POLICY_REFRESH_S`` seconds (default:
the flag refresh interval, 1 s) and reloads when it moved, so other processes' changes
apply within about that bound; changes made through this process apply at once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from synthhost.refresh import PolledSnapshot
from synthhost_policy import pricing
from synthhost_policy.document import GLOBAL, policy_from_document
from synthhost_policy.engine import CompiledSet, Plan, compile_set
from synthhost_policy.store import SetVersion, change_token, current_sets

log = logging.getLogger("synthhost.policy")

Key = tuple[str, str, int]


class PolicyRuntime(PolledSnapshot):
    thread_name = "synthhost-policy"

    def __init__(self, engine: sa.Engine, refresh_s: float = 1.0) -> None:
        super().__init__(refresh_s)
        self.engine = engine
        self.version = 0  # bumped on every reload (tests and stats)
        self._stored: dict[Key, SetVersion] = {}
        self._by_workspace: dict[str, list[Key]] = {}
        self._compiled: dict[Key, CompiledSet] = {}
        self._plans: dict[str, Plan] = {}
        self._token = -1
        self._lock = threading.Lock()

    # -- hot path ---------------------------------------------------------------------

    def plan_for(self, workspace: str) -> Plan:
        plan = self._plans.get(workspace)
        if plan is None:
            plan = self._build_plan(workspace)
        return plan

    def _build_plan(self, workspace: str) -> Plan:
        with self._lock:
            stored, by_ws = self._stored, self._by_workspace
            keys = by_ws.get(workspace, []) + (by_ws.get(GLOBAL, []) if workspace != GLOBAL else [])
            sets = []
            for key in keys:
                compiled = self._compiled.get(key)
                if compiled is None:
                    compiled = self._compile(stored[key])
                    if compiled is None:
                        continue
                    self._compiled[key] = compiled
                sets.append(compiled)
            plan = Plan.build(workspace, sets)
            if self._stored is stored:  # not replaced while we built
                self._plans[workspace] = plan
            return plan

    @staticmethod
    def _compile(row: SetVersion) -> CompiledSet | None:
        try:
            policy = policy_from_document(row.document or {}, row.workspace)
            return compile_set(policy, row.workspace, row.version)
        except Exception as exc:
            # Validated at apply; only a CEL/plugin upgrade can get here. Skip loudly.
            log.error(
                "policy set %s v%s (%s) no longer compiles: %s",
                row.name,
                row.version,
                row.scope,
                exc,
            )
            return None

    # -- loading ------------------------------------------------------------------------

    def reload(self) -> None:
        with self.engine.connect() as conn:
            token = change_token(conn)
        rows = current_sets(self.engine)
        self._install(rows, token)

    def _install(self, rows: list[SetVersion], token: int) -> None:
        stored: dict[Key, SetVersion] = {}
        by_ws: dict[str, list[Key]] = {}
        for row in rows:
            if row.removed or not row.enabled:
                continue
            key = (row.workspace, row.name, row.version)
            stored[key] = row
            by_ws.setdefault(row.workspace, []).append(key)
        if any("request.estimated_cost" in _text(r.document) or "request.cost_known" in _text(r.document)
               for r in stored.values()):
            pricing.warm()  # off the call path: reload runs at start-up or in the poller
        with self._lock:
            if token < self._token:
                return  # a slower, older reload finishing late: keep the newer snapshot
            self._stored, self._by_workspace = stored, by_ws
            self._compiled = {k: v for k, v in self._compiled.items() if k in stored}
            self._plans = {}
            self._token = token
            self.version += 1

    def read_token(self) -> int:
        with self.engine.connect() as conn:
            return change_token(conn)

    def stats(self) -> Mapping[str, Any]:
        return {"sets": len(self._stored), "compiled": len(self._compiled), "reloads": self.version}


def _text(document: Any) -> str:
    return str(document) if document else ""
