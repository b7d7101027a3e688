"""Rows the database could not take before the process had to exit.

JSON lines, one row each: ``{"table", "upsert_on", "values"}``; datetimes, decimals and
bytes are encoded so that replay can restore the column types. A host replays the spool
files once every plugin has started (so plugin tables are known), deletes what the
database took, and keeps, in the file, rows whose table is still unknown.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterable, Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    if isinstance(value, Decimal):
        return {"__dec__": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"__b64__": base64.b64encode(bytes(value)).decode()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and len(value) == 1:
        (key, inner), = value.items()
        if key == "__dt__":
            return datetime.fromisoformat(inner)
        if key == "__dec__":
            return Decimal(inner)
        if key == "__b64__":
            return base64.b64decode(inner)
    return value


def write(directory: Path, items: Iterable[tuple[sa.Table, dict[str, Any], tuple[str, ...] | None]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"spool-{int(time.time() * 1000)}-{os.getpid()}.jsonl"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for table, values, upsert_on in items:
            row = {"table": table.name, "upsert_on": upsert_on,
                   "values": {k: _encode(v) for k, v in values.items()}}
            fh.write(json.dumps(row, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    tmp.rename(path)
    return path


def pending(directory: Path) -> list[Path]:
    return sorted(directory.glob("spool-*.jsonl")) if directory.is_dir() else []


def read(path: Path, tables: dict[str, sa.Table]) -> Iterator[tuple[sa.Table, dict[str, Any], tuple[str, ...] | None]]:
    """The rows of ``path`` whose table is known (see :func:`split` for the rest)."""
    known, _ = split(path, tables)
    yield from known


def split(path: Path, tables: dict[str, sa.Table]) -> tuple[
        list[tuple[sa.Table, dict[str, Any], tuple[str, ...] | None]], list[str]]:
    """``(rows of known tables, raw lines of unknown tables)``. A row is never dropped: a
    table nobody has defined yet (its plugin is not installed, or not started) keeps its
    line for :func:`keep` to write back."""
    known: list[tuple[sa.Table, dict[str, Any], tuple[str, ...] | None]] = []
    unknown: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            table = tables.get(row["table"])
            if table is None:
                unknown.append(line if line.endswith("\n") else line + "\n")
                continue
            upsert = tuple(row["upsert_on"]) if row.get("upsert_on") else None
            known.append((table, {k: _decode(v) for k, v in row["values"].items()}, upsert))
    return known, unknown


def keep(path: Path, lines: list[str]) -> None:
    """Replace ``path`` by just ``lines`` (atomically: written, synced, renamed)."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.writelines(lines)
        fh.flush()
        os.fsync(fh.fileno())
    tmp.replace(path)


def summary(directory: Path) -> dict[str, int]:
    """Rows waiting in the spool, by table (for ``synthhost health``)."""
    counts: dict[str, int] = {}
    for path in pending(directory):
        try:
            with path.open(encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        name = str(json.loads(line).get("table"))
                        counts[name] = counts.get(name, 0) + 1
        except (OSError, ValueError):
            counts["<unreadable>"] = counts.get("<unreadable>", 0) + 1
    return counts
