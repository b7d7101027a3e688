"""Per-workspace feature flags.

Resolution for ``(workspace, flag)``: the kill switch (a forced row, workspace ``'!'``,
set with ``synthhost flags set FLAG off --workspace '*'``: every workspace, over their
own rows) → the workspace's row → the global row (workspace ``'*'``) → the default the
declaring plugin registered. Every row lives in
``feature_flags``; reads are served from an in-process snapshot (a dict look-up on the
hot path). A change made through this process's :class:`FlagStore` is visible at once
here; other processes poll the one-row ``flag_epoch`` table every
``SYNTHHOST_FLAG_REFRESH_S`` seconds (default 1 s) and reload when it moved, so a change
is visible everywhere within about that interval plus one reload (documented bound: 2 s
with the default).
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import sqlalchemy as sa

from synthhost.errors import UsageError
from synthhost.refresh import PolledSnapshot
from synthhost.registry import FlagSpec
from synthhost.storage.models import FeatureFlag, FlagEpoch, utcnow
from synthhost.workspace import validate_workspace

GLOBAL = "*"
FORCED = "!"  # not a valid workspace name: the kill switch's rows cannot collide with one

FLAGS = FeatureFlag.__table__  # type: ignore[attr-defined]
EPOCH = FlagEpoch.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class FlagState:
    name: str
    enabled: bool
    source: Literal["forced", "workspace", "global", "default"]
    default: bool
    plugin: str
    description: str


def _scope(workspace: str | None) -> str:
    """``None`` (or :data:`GLOBAL`) is the global row; anything else must be a valid
    workspace name (``''`` no longer means global)."""
    if workspace is None or workspace == GLOBAL:
        return GLOBAL
    return validate_workspace(workspace)


def suggest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    return f" (did you mean {close[0]!r}?)" if close else ""


class FlagStore(PolledSnapshot):
    thread_name = "synthhost-flags"

    def __init__(self, engine: sa.Engine, specs: Mapping[str, FlagSpec], refresh_s: float = 1.0) -> None:
        super().__init__(refresh_s)
        self.engine = engine
        self.specs = specs
        self.version = 0
        self._rows: dict[tuple[str, str], bool] = {}
        self._resolved: dict[str, dict[str, bool]] = {}
        self._token = -1
        self._lock = threading.Lock()

    # -- hot path ---------------------------------------------------------------------

    def resolved(self, workspace: str) -> Mapping[str, bool]:
        """Every declared flag's effective value for a workspace (cached)."""
        flags = self._resolved.get(workspace)
        if flags is None:
            rows = self._rows
            flags = {
                name: rows.get((FORCED, name), rows.get((workspace, name), rows.get((GLOBAL, name), spec.default)))
                for name, spec in self.specs.items()
            }
            self._resolved[workspace] = flags
        return flags

    def is_enabled(self, workspace: str, name: str) -> bool:
        return self.resolved(workspace)[name]

    # -- reads for people -------------------------------------------------------------

    def state(self, workspace: str | None = None) -> list[FlagState]:
        out = []
        for name, spec in sorted(self.specs.items()):
            if (FORCED, name) in self._rows:
                enabled, source = self._rows[(FORCED, name)], "forced"
            elif workspace is not None and (workspace, name) in self._rows:
                enabled, source = self._rows[(workspace, name)], "workspace"
            elif (GLOBAL, name) in self._rows:
                enabled, source = self._rows[(GLOBAL, name)], "global"
            else:
                enabled, source = spec.default, "default"
            out.append(FlagState(name, enabled, source, spec.default, spec.plugin, spec.description))  # type: ignore[arg-type]
        return out

    def check_name(self, name: str) -> None:
        if name not in self.specs:
            raise UsageError(f"unknown flag {name!r}{suggest(name, list(self.specs))}")

    # -- writes -----------------------------------------------------------------------

    def set(self, name: str, enabled: bool, *, workspace: str | None = None, actor: str | None = None,
            force: bool = False) -> None:
        """``force``: the kill switch, for every workspace over their own rows (``workspace``
        is then ignored); :meth:`unset` with ``force`` lifts it."""
        self.check_name(name)
        ws = FORCED if force else _scope(workspace)
        now = utcnow()
        with self.engine.begin() as conn:
            updated = conn.execute(
                FLAGS.update()
                .where(FLAGS.c.workspace_id == ws, FLAGS.c.flag_name == name)
                .values(is_enabled=enabled, updated_at=now, updated_by=actor)
            ).rowcount
            if not updated:
                conn.execute(
                    FLAGS.insert().values(
                        workspace_id=ws, flag_name=name, is_enabled=enabled,
                        updated_by=actor, created_at=now, updated_at=now,
                    )
                )
            self._bump(conn)
        self.reload()

    def unset(self, name: str, *, workspace: str | None = None, force: bool = False) -> bool:
        self.check_name(name)
        ws = FORCED if force else _scope(workspace)
        with self.engine.begin() as conn:
            removed = conn.execute(
                FLAGS.delete().where(FLAGS.c.workspace_id == ws, FLAGS.c.flag_name == name)
            ).rowcount
            self._bump(conn)
        self.reload()
        return bool(removed)

    @staticmethod
    def _bump(conn: sa.Connection) -> None:
        conn.execute(EPOCH.update().where(EPOCH.c.id == 1).values(epoch=EPOCH.c.epoch + 1))

    # -- loading and cross-process refresh ------------------------------------------

    def reload(self) -> None:
        with self.engine.connect() as conn:
            epoch = conn.execute(sa.select(EPOCH.c.epoch).where(EPOCH.c.id == 1)).scalar() or 0
            rows = {
                (r.workspace_id, r.flag_name): bool(r.is_enabled)
                for r in conn.execute(sa.select(FLAGS.c.workspace_id, FLAGS.c.flag_name, FLAGS.c.is_enabled))
            }
        with self._lock:
            self._rows = rows
            self._resolved = {}
            self._token = epoch
            self.version += 1

    def read_token(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(EPOCH.c.epoch).where(EPOCH.c.id == 1)).scalar() or 0)
