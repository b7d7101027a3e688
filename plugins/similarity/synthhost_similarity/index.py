"""An in-process vector index: unit vectors in a preallocated float32 matrix.

Search is exact (one matrix-vector product and an argmax) up to ``exact_limit`` rows
(2048: 0.17 ms; 10k rows would cost 0.8 ms, 100k 8-20 ms on one core). Beyond that the
index answers in two stages: Hamming distances between 256-bit SimHash codes (sign bits
of a fixed random Gaussian projection; 3.2 MB at 100k rows, word-major, so the XOR, the
popcount and the sum are one numpy call each), then the pre-selected rows are rescored
exactly. The score returned is always the exact cosine of the row returned.

With the decision ``threshold`` (the call path and the logger always give it) the
pre-selection follows from it instead of being a fixed top-k. For a row at cosine ``c``
each code bit differs with probability ``acos(c) / pi``, independently, so its distance
is Binomial(256, acos(c) / pi) (:func:`cutoffs`):

1. rescore the rows within ``lo``, the median distance of a row *at* the threshold (a
   handful: a repeated or lightly edited prompt sits at 0-30); if one scores at or above
   the threshold the decision is made, and correct (the best row can only be better);
2. otherwise rescore every row within ``hi``, the distance a row at the threshold
   exceeds with probability at most ``MISS_PROBABILITY`` (1e-6; rows above the threshold
   are closer still). So "below the threshold" is what an exhaustive scan says except
   with probability 1e-6 per query at the border. If no code is that close (an
   unrelated prompt) the rows nearest the nearest code are rescored to name a match.

Each stage rescores at most ``candidates`` rows (stage 2: ``candidates * WIDEN``), the
closest when more qualify. Below the threshold the row named is the best of those
rescored: rows above ~0.7 are within ``hi``, so a near miss names the exhaustive best
(for 91-97 % of the benchmark's, best 0.6-0.85), an unrelated prompt some row below
the best (scores under ~0.3, no match either way). Without a threshold, the
``candidates`` closest codes are rescored.

``benchmarks/similarity.py --sizes 100000 --queries 300``: embed+search 0.40 ms p50 /
0.47 ms p95 (it was 2.3 / 2.5 ms with 1024-bit codes and 1024 rows always rescored),
the same decision as an exhaustive scan on every query and with the threshold placed
0.005 under each query's best score; prompts whose best is 0.6-0.85 (most rows to
rescore) 0.5 / 0.95 ms.

Measured and not taken: 512 or 1024 bits (the scan costs about 1 us per bit at 100k
rows, and 256 suffice once the cut-offs follow the threshold); 128 or 192 bits (their
``hi`` lets 2-6x more template siblings through, whose rescoring costs more than the
bits save); a low-dimensional float projection (16-64 random dims estimate a cosine
with a standard deviation of 0.16-0.33, against 0.04 for 256 sign bits, and einsum over
short rows is slower than the popcount); float16 copies (numpy's float16 einsum is
8-20x slower than float32); chunked scans (no faster); faiss-cpu (its binary range
search takes 0.1 ms where numpy's scan takes 0.23 ms, for 65 MB installed and a second
copy of the codes; its HNSW answers in 0.17 ms at 20k rows but with no bound on misses
and 0.1 ms per add).

Single-query products use ``np.einsum`` rather than ``@``: ``@`` goes to a
multi-threaded BLAS whose threads, on a busy machine, turn a 0.1 ms product into 10 ms
or more; einsum's loops are single-threaded SIMD and as fast for matrix-vector work.

Rows are appended; :meth:`VectorIndex.compact` drops rows in place (one pass over the
matrix, order kept): the store evicts the oldest logged prompts in batches with it once
a workspace's library is full (``SYNTHHOST_SIMILARITY_MAX_REFERENCES``). Removing a
known prompt (``known rm``) still rebuilds the index.
The codes are derived in memory from the stored vectors, so the projection's seed and
the code layout are not part of any stored format.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")

EXACT_LIMIT = 2048  # exact scan up to here: 0.17 ms; two-stage is cheaper above
CANDIDATES = 1024
CODE_BITS = 256
WIDEN = 8  # stage 2 rescores up to candidates x WIDEN rows
MISS_PROBABILITY = 1e-6  # per row at the threshold: the chance its code is beyond ``hi``
FALLBACK_SLACK = 6  # no row near: rescore those within the nearest distance + this
_WORDS = CODE_BITS // 64
_PROJECTION_SEED = 0x51_4D_17  # any fixed value: codes never leave the process


@dataclass(frozen=True, slots=True)
class Match(Generic[T]):
    row: int
    score: float
    item: T


_projections: dict[int, npt.NDArray[np.float32]] = {}
_projection_lock = threading.Lock()


def _dot(matrix: npt.NDArray[np.float32], vector: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    return np.einsum("ij,j->i", matrix, vector)


def _projection(dim: int) -> npt.NDArray[np.float32]:
    with _projection_lock:
        proj = _projections.get(dim)
        if proj is None:
            rng = np.random.default_rng(_PROJECTION_SEED)
            proj = rng.standard_normal((dim, CODE_BITS), dtype=np.float32)
            _projections[dim] = proj
        return proj


@lru_cache(maxsize=64)
def cutoffs(threshold: float, bits: int = CODE_BITS, miss: float = MISS_PROBABILITY) -> tuple[int, int]:
    """``(lo, hi)`` Hamming distances for a threshold: ``lo`` the median distance of a
    row at cosine ``threshold``, ``hi`` the smallest distance such a row exceeds with
    probability at most ``miss`` (Binomial(bits, acos(threshold) / pi) tail)."""
    p = math.acos(min(1.0, max(-1.0, threshold))) / math.pi
    lo = round(bits * p)
    tail = 0.0
    for hi in range(bits, -1, -1):
        tail += math.comb(bits, hi) * p**hi * (1 - p) ** (bits - hi)
        if tail > miss:
            return lo, max(lo, hi)
    return lo, max(lo, 0)


class VectorIndex(Generic[T]):
    """Rows of ``dim`` float32 unit vectors, each with a payload ``item``. Thread-safe:
    a lock guards appends and searches (a search at 100k rows holds it ~0.3 ms)."""

    def __init__(
        self,
        dim: int,
        *,
        capacity: int = 256,
        exact_limit: int = EXACT_LIMIT,
        candidates: int = CANDIDATES,
    ) -> None:
        self.dim = dim
        self.exact_limit = exact_limit
        self.candidates = candidates
        self._lock = threading.Lock()
        self._n = 0
        self._vecs = np.zeros((max(capacity, 1), dim), dtype=np.float32)
        # Word-major: each 64-bit word of every row's code is one contiguous run, so the
        # XOR and popcount over all rows are one call each.
        self._codes: npt.NDArray[np.uint64] = np.zeros((_WORDS, max(capacity, 1)), np.uint64)
        self._items: list[T] = []
        self._scratch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._compactions = 0  # a grow_ahead copy taken before a compaction is stale

    def __len__(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return int(self._vecs.shape[0])

    @property
    def nbytes(self) -> int:
        return int(self._vecs.nbytes + self._codes.nbytes)

    def items(self) -> list[T]:
        with self._lock:
            return list(self._items)

    def _codes_for(self, vecs: npt.NDArray[np.float32]) -> npt.NDArray[np.uint64]:
        """SimHash codes of ``vecs`` as a ``(CODE_BITS // 64, len(vecs))`` array."""
        proj = _projection(self.dim)
        # A query stays off the threaded BLAS (see above); bulk loads run in a worker
        # thread, where BLAS threads are welcome.
        if len(vecs) == 1:
            bits = np.einsum("j,jk->k", vecs[0], proj) > 0
            return np.packbits(bits).view(np.uint64).reshape(_WORDS, 1)
        packed = np.packbits(vecs @ proj > 0, axis=1)  # (n, CODE_BITS // 8) uint8
        return np.ascontiguousarray(packed.view(np.uint64).T)

    def _grow(self, needed: int) -> None:
        """Make room, under the lock (the fallback: :meth:`grow_ahead` usually did it)."""
        cap = self.capacity
        if needed <= cap:
            return
        while cap < needed:
            cap *= 2
        self._vecs, self._codes = self._copy_into(cap, self._n)

    def _copy_into(self, cap: int, rows: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint64]]:
        vecs = np.zeros((cap, self.dim), dtype=np.float32)
        vecs[:rows] = self._vecs[:rows]
        codes = np.zeros((self._codes.shape[0], cap), dtype=np.uint64)
        codes[:, :rows] = self._codes[:, :rows]
        return vecs, codes

    def needs_room(self, fill: float = 0.75) -> bool:
        return self._n >= fill * self.capacity

    def grow_ahead(self, fill: float = 0.75) -> bool:
        """Double the capacity before it runs out, copying outside the lock (searches
        and adds go on meanwhile), so no call on the event loop pays for copying a
        200 MB matrix. Run it from a worker thread. True if it grew."""
        with self._lock:
            if not self.needs_room(fill):
                return False
            copied, cap, compactions = self._n, self.capacity * 2, self._compactions
        vecs, codes = self._copy_into(cap, copied)  # the slow part, unlocked
        with self._lock:
            if self.capacity >= cap or self._compactions != compactions:
                return False  # an add had to grow, or rows moved, meanwhile
            n = self._n  # rows added during the copy
            vecs[copied:n] = self._vecs[copied:n]
            codes[:, copied:n] = self._codes[:, copied:n]
            self._vecs, self._codes = vecs, codes
            return True

    def add(self, vector: npt.NDArray[np.float32], item: T) -> int:
        return self.add_many(vector.reshape(1, -1), [item])

    def add_many(self, vectors: npt.NDArray[np.float32], items: list[T]) -> int:
        """Append rows (already L2-normalised); returns the first new row number."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if len(vectors) != len(items):
            raise ValueError("vectors and items differ in length")
        # The projection is the expensive part of a bulk load: do it outside the lock.
        codes = self._codes_for(vectors) if len(vectors) else None
        with self._lock:
            start = self._n
            end = start + len(vectors)
            self._grow(end)
            self._vecs[start:end] = vectors
            if codes is not None:
                self._codes[:, start:end] = codes
            self._items.extend(items)
            self._n = end
            return start

    def compact(self, keep: npt.NDArray[np.bool_]) -> int:
        """Drop the rows whose ``keep`` is False, in place, keeping the others' order
        (rows added after ``keep`` was made are kept). Returns how many were dropped.
        Row numbers change: a :class:`Match` from before names a different row after."""
        with self._lock:
            n = self._n
            mask = np.ones(n, dtype=bool)
            mask[: min(n, len(keep))] = keep[:n]
            rows = np.flatnonzero(mask)
            k = int(rows.size)
            if k == n:
                return 0
            self._vecs[:k] = self._vecs[rows]
            self._codes[:, :k] = self._codes[:, rows]
            self._items = [self._items[i] for i in rows]
            self._n = k
            self._compactions += 1
            return n - k

    def search(
        self,
        query: npt.NDArray[np.float32],
        *,
        exact: bool | None = None,
        threshold: float | None = None,
    ) -> Match[T] | None:
        """The most similar row (cosine = dot product of unit vectors), or ``None`` when
        the index is empty. ``exact`` forces (or forbids) the exhaustive scan; with a
        ``threshold`` the two-stage search decides as an exhaustive one would (see the
        module docstring)."""
        query = np.asarray(query, dtype=np.float32).reshape(self.dim)
        # The query's code needs no lock: make it before taking the lock, which the
        # logging thread's searches and the adds wait on.
        qcode = self._codes_for(query[None, :]) if not exact and self._n > self.exact_limit else None
        with self._lock:
            n = self._n
            if n == 0:
                return None
            vecs = self._vecs[:n]
            if exact or (exact is None and n <= self.exact_limit) or n <= self.candidates:
                scores = _dot(vecs, query)
                row = int(np.argmax(scores))
                return Match(row, float(scores[row]), self._items[row])
            if qcode is None:
                qcode = self._codes_for(query[None, :])
            dist = self._distances(qcode, n)
            if threshold is None:
                return self._best(self._nearest(dist, self.candidates), query)
            lo, hi = cutoffs(float(threshold))
            nearest = int(dist.min())  # skips the scans that would find nothing
            match = None
            if nearest <= lo:
                match = self._best(self._within(dist, lo, self.candidates), query)
                if match.score >= threshold:
                    return match
            if nearest <= hi:
                rows = self._within(dist, hi, self.candidates * WIDEN)
            else:  # nothing near (an unrelated prompt): name the best of the nearest
                rows = self._within(dist, nearest + FALLBACK_SLACK, self.candidates)
            wider = self._best(rows, query)
            return wider if match is None or wider.score > match.score else match

    def _best(self, rows: npt.NDArray[np.intp], query: npt.NDArray[np.float32]) -> Match[T]:
        scores = _dot(self._vecs[rows], query)
        best = int(np.argmax(scores))
        row = int(rows[best])
        return Match(row, float(scores[best]), self._items[row])

    def _distances(self, qcode: npt.NDArray[np.uint64], n: int) -> npt.NDArray[np.uint8]:
        """Hamming distance from the query's code to each row's (a view of a scratch
        buffer reused by the next search: callers hold the lock). uint8: a row whose 256
        bits all differ (the query's opposite) wraps to 0 and is merely rescored; the sum
        into uint16 costs 25 us more at 100k rows."""
        if self._scratch is None or self._scratch[2].size < n:
            cap = self.capacity  # fresh pages per search would cost more than the work
            self._scratch = (
                np.empty((_WORDS, cap), np.uint64),
                np.empty((_WORDS, cap), np.uint8),
                np.empty(cap, np.uint8),
            )
        xor, counts, dist = self._scratch[0][:, :n], self._scratch[1][:, :n], self._scratch[2][:n]
        np.bitwise_xor(self._codes[:, :n], qcode, out=xor)
        np.bitwise_count(xor, out=counts)
        np.add.reduce(counts, axis=0, out=dist)
        return dist

    @classmethod
    def _within(cls, dist: npt.NDArray[np.uint8], cutoff: int, cap: int) -> npt.NDArray[np.intp]:
        """The rows within ``cutoff``; the ``cap`` or so closest when more are."""
        rows = np.flatnonzero(dist <= cutoff)
        return cls._nearest(dist, cap) if rows.size > cap else rows

    @staticmethod
    def _nearest(dist: npt.NDArray[np.uint8], k: int) -> npt.NDArray[np.intp]:
        """About ``k`` rows with the smallest distances. Distances are small integers
        with many ties, where argpartition is slow: find the cut-off distance from a
        histogram, then take every row within it (ties at the cut-off bounded)."""
        hist = np.bincount(dist, minlength=CODE_BITS + 1)
        cutoff = int(np.searchsorted(np.cumsum(hist), k))
        rows = np.flatnonzero(dist <= cutoff)
        if rows.size > 4 * k:  # a huge tie at the cut-off: keep it bounded
            closer = np.flatnonzero(dist < cutoff)
            ties = np.flatnonzero(dist == cutoff)[:k]
            rows = np.concatenate([closer, ties])
        return rows

    def _hamming(self, query: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Every row's distance to ``query`` (a copy; for tests and diagnostics)."""
        with self._lock:
            return self._distances(self._codes_for(query[None, :]), self._n).copy()

    def _candidates(self, query: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.intp]:
        return self._nearest(self._hamming(query)[:n], self.candidates)
