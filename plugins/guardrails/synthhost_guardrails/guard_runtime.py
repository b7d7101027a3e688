"""The in-process view of the stored guard sets: compiled once, refreshed at a bound.

``pipeline_for(workspace)`` is a dict look-up: the workspace's own set, else the global
set, else the built-in default. Every stored set is compiled when loaded (at start-up
and on reload, never on the call path: a ``hub:`` validator imports Guardrails AI, which
takes seconds). A daemon thread polls the row count of ``guardrail_sets`` every
``SYNTHHOST_GUARDRAILS_REFRESH_S`` seconds (default: the flag refresh interval) and
reloads when it moved, so other processes' changes apply within about that bound;
changes made through this process apply at once.

A stored set that no longer compiles here (it names a ``hub:`` validator and this
process lacks Guardrails AI or that validator's package) becomes a pipeline whose
``error`` denies every call of its workspaces: a guard that cannot run does not let
calls through unchecked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from synthhost.refresh import PolledSnapshot
from synthhost_guardrails.guardset import DEFAULT, GuardSetError, Pipeline, compile_document
from synthhost_guardrails.store import GLOBAL, SetVersion, change_token, current_sets

log = logging.getLogger("synthhost.guardrails")


def compile_row(row: SetVersion) -> Pipeline:
    try:
        return compile_document(row.document or {}, row.label)
    except GuardSetError as exc:
        log.error("guard set %s cannot be used in this process: %s", row.label, exc)
        return Pipeline(row.label, error=f"guard set {row.label} cannot run here: {exc}")


class GuardRuntime(PolledSnapshot):
    thread_name = "synthhost-guardrails"

    def __init__(self, engine: sa.Engine, refresh_s: float = 1.0) -> None:
        super().__init__(refresh_s)
        self.engine = engine
        self.version = 0  # bumped on every reload (tests and stats)
        self._pipelines: dict[str, Pipeline] = {}
        self._compiled: dict[tuple[str, int], Pipeline] = {}
        self._token = -1
        self._lock = threading.Lock()

    # -- hot path ---------------------------------------------------------------------

    def pipeline_for(self, workspace: str) -> Pipeline:
        pipelines = self._pipelines
        return pipelines.get(workspace) or pipelines.get(GLOBAL) or DEFAULT

    # -- loading ------------------------------------------------------------------------

    def reload(self) -> None:
        token = change_token(self.engine)
        rows = current_sets(self.engine)
        with self._lock:
            if token < self._token:
                return  # an older reload finishing late: keep the newer snapshot
            compiled: dict[tuple[str, int], Pipeline] = {}
            pipelines: dict[str, Pipeline] = {}
            for row in rows:
                if row.removed:
                    continue
                key = (row.workspace, row.version)
                pipeline = self._compiled.get(key)
                if pipeline is None or pipeline.error:  # retry a failed compile on reload
                    pipeline = compile_row(row)
                compiled[key] = pipelines[row.workspace] = pipeline
            self._compiled, self._pipelines = compiled, pipelines
            self._token = token
            self.version += 1

    def read_token(self) -> int:
        return change_token(self.engine)

    def stats(self) -> Mapping[str, Any]:
        broken = sum(1 for p in self._pipelines.values() if p.error)
        return {"sets": len(self._pipelines), "broken": broken, "reloads": self.version}
