"""Background threads hand the GIL back often, so that calls do not queue behind them.

A call on the event loop that waits on a socket (Redis for the rate limiter, a provider)
releases the GIL; when the reply arrives the loop must take it back. If a background
thread (the batched writer, the similarity logger, an exporter) is running Python at
that moment, CPython lets the loop wait up to the switch interval (5 ms) before forcing
a switch: one background batch turned a 70 µs Redis round trip into 5 ms, and with
several background threads busy the call path's p50 tripled (``benchmarks/overhead.py
--profile production``, rate limiting on against off).

So background loops do their work in small units and call :func:`pause` between them: a
zero-length sleep releases the GIL, and a thread waiting for it (the event loop) gets it
at once. A unit should hold the GIL for well under 100 µs-1 ms; :data:`CHUNK_ROWS` is
the row count the batched writer gives to one ``executemany``.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")

CHUNK_ROWS = 32
"""Rows per statement in background writes: SQLAlchemy prepares each row's parameters in
Python (about 10-30 µs a row here), all under one GIL hold."""


def pause() -> None:
    """Let a thread waiting for the GIL (the event loop with a reply to read) run now."""
    time.sleep(0)


def chunks(rows: Sequence[T], size: int = CHUNK_ROWS) -> Iterator[Sequence[T]]:
    """``rows`` in slices of ``size``, with a :func:`pause` before every slice but the first."""
    for start in range(0, len(rows), size):
        if start:
            pause()
        yield rows[start : start + size]


GEN0_THRESHOLD = 10_000
"""Allocations between young collections while the heap is frozen (CPython's default: 700)."""

_saved_thresholds: tuple[int, ...] | None = None


def freeze_heap() -> None:
    """Move every object alive now (modules, classes, plugin state, encodings: about
    200,000 objects once the production plugins are loaded) out of the collector's reach,
    and collect the young generation less often.

    CPython's full collections scan the whole heap: with the production plugin set a
    gen-2 pass took milliseconds, landing on whichever call allocated at that moment (a
    tail of its own, on top of the GIL convoy above). Objects made at start-up live as
    long as the process, so scanning them finds nothing. A call allocates a few hundred
    objects, nearly all freed by reference counting when it ends: a young collection
    every 700 allocations mostly walks the calls in flight (``GEN0_THRESHOLD`` makes that
    about 14 times rarer). Called by a host at the end of its start-up when
    ``SYNTHHOST_GC_FREEZE`` is on (``synthhost serve`` and ``synthhost worker`` turn it
    on): what is collected first is garbage already, so nothing leaks but cycles among
    start-up objects dropped later (a one-off, bounded by the start-up heap). The host
    undoes it when it stops (:func:`unfreeze_heap`)."""
    global _saved_thresholds
    gc.collect()
    gc.freeze()
    if _saved_thresholds is None:
        _saved_thresholds = gc.get_threshold()
        first, *rest = _saved_thresholds
        gc.set_threshold(max(first, GEN0_THRESHOLD), *rest)


def unfreeze_heap() -> None:
    """Give the frozen objects back to the collector, and its thresholds (a host
    stopped, the process goes on)."""
    global _saved_thresholds
    gc.unfreeze()
    if _saved_thresholds is not None:
        gc.set_threshold(*_saved_thresholds)
        _saved_thresholds = None
