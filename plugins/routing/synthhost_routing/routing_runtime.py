"""The in-process view of ``routing_configs``: every workspace's configuration compiled
once, looked up with one dict access per call.

Changes made through this process apply at once (the writer reloads); a daemon thread
polls the table's change token every ``SYNTHHOST_ROUTING_REFRESH_S`` seconds (default:
the flag refresh interval) so other processes' changes apply within about that bound.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa

from synthhost.refresh import PolledSnapshot
from synthhost_routing.config import DEFAULTS, GLOBAL, Routing, effective
from synthhost_routing.store import change_token, load_all

log = logging.getLogger("synthhost.routing")


class RoutingRuntime(PolledSnapshot):
    thread_name = "synthhost-routing"

    def __init__(self, engine: sa.Engine, refresh_s: float = 1.0) -> None:
        super().__init__(refresh_s)
        self.engine = engine
        self.reloads = 0
        self._configs: dict[str, Routing] = {}
        self._default: Routing = DEFAULTS
        self._token = -1
        self._lock = threading.Lock()

    def for_workspace(self, workspace: str) -> Routing:
        return self._configs.get(workspace) or self._default

    def reload(self) -> None:
        with self.engine.connect() as conn:
            token = change_token(conn)
        stored = load_all(self.engine)
        global_doc = stored[GLOBAL].document if GLOBAL in stored else None
        configs: dict[str, Routing] = {}
        for workspace, row in stored.items():
            if workspace != GLOBAL:
                configs[workspace] = effective(global_doc, row.document)
        default = effective(global_doc, None)
        for workspace, cfg in [("*", default), *configs.items()]:
            if cfg.error:
                log.error("routing config of %s no longer compiles; its calls are denied: %s", workspace, cfg.error)
        with self._lock:
            if token < self._token:
                return  # an older reload finishing late
            self._configs, self._default, self._token = configs, default, token
            self.reloads += 1

    def read_token(self) -> int:
        with self.engine.connect() as conn:
            return change_token(conn)

    def stats(self) -> Mapping[str, Any]:
        return {"workspaces": len(self._configs), "reloads": self.reloads}
