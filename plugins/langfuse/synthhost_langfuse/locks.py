"""Per-key mutual exclusion: one holder per key at a time, so the same run (or trace)
is never exported twice concurrently while different ones proceed in parallel."""

from __future__ import annotations

import threading
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any


class KeyedLocks:
    """Reference-counted locks per key, so the table stays small. Keys are taken in
    sorted order, so two holders of overlapping key sets cannot deadlock."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[Hashable, list[Any]] = {}

    @contextmanager
    def hold(self, keys: Iterable[Any]) -> Iterator[None]:
        ordered = sorted(set(keys))
        with self._guard:
            entries = []
            for key in ordered:
                entry = self._locks.setdefault(key, [threading.Lock(), 0])
                entry[1] += 1
                entries.append(entry)
        for entry in entries:
            entry[0].acquire()
        try:
            yield
        finally:
            for entry in reversed(entries):
                entry[0].release()
            with self._guard:
                for key, entry in zip(ordered, entries, strict=True):
                    entry[1] -= 1
                    if entry[1] == 0:
                        self._locks.pop(key, None)
