"""Rows the database could not take before the process had to exit.

JSON lines, one row each: ``{"table", "upsert_on", "values"}``; datetimes, decimals and
bytes are encoded so that :func:`replay` can restore the column types. A host replays
(and deletes) the spool files when it starts.
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
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            table = tables.get(row["table"])
            if table is None:
                continue  # the plugin that owned it is gone: nothing can take the row
            upsert = tuple(row["upsert_on"]) if row.get("upsert_on") else None
            yield table, {k: _decode(v) for k, v in row["values"].items()}, upsert
