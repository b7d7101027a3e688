"""An in-process vector index: unit vectors in a preallocated float32 matrix.

Search is exact (one matrix-vector product and an argmax) up to ``exact_limit`` rows.
Beyond that a single scan of 100k x 512 float32 (200 MB) costs 10-20 ms on one core, so
the index switches to two stages: Hamming distance over 1024-bit SimHash codes (sign
bits of a fixed random Gaussian projection, stored column-major so each 64-bit word is
one contiguous pass: 12.8 MB at 100k rows), then the ``candidates`` closest rows are
rescored exactly and the best of them is returned. The score is always an exact cosine;
only the choice of the row is approximate: in a cluster of near-duplicates the pick
may be a sibling of the very best row, a few hundredths lower. So that this does not
turn a block into an allow, a search given the ``threshold`` whose best candidate lands
just below it (within ``margin``) rescores eight times as many candidates before
answering. The benchmark measures how often the pick and the decision differ from an
exhaustive search.

Single-query products use ``np.einsum`` rather than ``@``: ``@`` goes to a
multi-threaded BLAS whose threads, on a busy machine, turn a 0.1 ms product into 10 ms
or more; einsum's loops are single-threaded SIMD and as fast for matrix-vector work.

Rows are append-only; removing a row means rebuilding the index (rare: ``known rm``).
The codes are derived in memory from the stored vectors, so the projection's seed and
the code layout are not part of any stored format.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

T = TypeVar("T")

EXACT_LIMIT = 16_384
CANDIDATES = 1024
CODE_BITS = 1024
WIDEN = 8  # candidates x WIDEN for a borderline answer
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


class VectorIndex(Generic[T]):
    """Rows of ``dim`` float32 unit vectors, each with a payload ``item``. Thread-safe:
    a lock guards appends and searches (a search at 100k rows holds it ~1 ms)."""

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
        self._codes: npt.NDArray[np.uint64] = np.zeros((CODE_BITS // 64, max(capacity, 1)), np.uint64)
        self._items: list[T] = []
        self._scratch: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

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
        single = len(vecs) == 1
        product = np.einsum("j,jk->k", vecs[0], proj)[None, :] if single else vecs @ proj
        bits = product > 0
        packed = np.packbits(bits, axis=1)  # (n, CODE_BITS // 8) uint8
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
            copied, cap = self._n, self.capacity * 2
        vecs, codes = self._copy_into(cap, copied)  # the slow part, unlocked
        with self._lock:
            if self.capacity >= cap:
                return False  # an add had to grow meanwhile
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

    def search(
        self,
        query: npt.NDArray[np.float32],
        *,
        exact: bool | None = None,
        threshold: float | None = None,
        margin: float = 0.05,
    ) -> Match[T] | None:
        """The most similar row (cosine = dot product of unit vectors), or ``None`` when
        the index is empty. ``exact`` forces (or forbids) the exhaustive scan;
        ``threshold`` widens a two-stage search whose answer is within ``margin`` below
        it."""
        query = np.asarray(query, dtype=np.float32).reshape(self.dim)
        with self._lock:
            n = self._n
            if n == 0:
                return None
            vecs = self._vecs[:n]
            if exact or (exact is None and n <= self.exact_limit) or n <= self.candidates:
                scores = _dot(vecs, query)
                row = int(np.argmax(scores))
                return Match(row, float(scores[row]), self._items[row])
            dist = self._distances(query, n)
            rows = self._nearest(dist, self.candidates)
            scores = _dot(vecs[rows], query)
            best = int(np.argmax(scores))
            score = float(scores[best])
            if threshold is not None and threshold - margin <= score < threshold:
                rows = self._nearest(dist, self.candidates * WIDEN)
                scores = _dot(vecs[rows], query)
                best = int(np.argmax(scores))
                score = float(scores[best])
            row = int(rows[best])
            return Match(row, score, self._items[row])

    def _distances(self, query: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.uint16]:
        """Hamming distance from the query's code to each row's (a view of a scratch
        buffer reused by the next search: callers hold the lock)."""
        qcode = self._codes_for(query.reshape(1, -1))[:, 0]
        if self._scratch is None or self._scratch[0].size < n:
            cap = self.capacity  # fresh pages per search would cost more than the work
            self._scratch = (np.empty(cap, np.uint64), np.empty(cap, np.uint8), np.empty(cap, np.uint16))
        buf, counts, dist = (a[:n] for a in self._scratch)
        codes = self._codes
        np.bitwise_xor(codes[0, :n], qcode[0], out=buf)
        np.bitwise_count(buf, out=counts)
        np.copyto(dist, counts)
        for word in range(1, codes.shape[0]):
            np.bitwise_xor(codes[word, :n], qcode[word], out=buf)
            np.bitwise_count(buf, out=counts)
            np.add(dist, counts, out=dist)
        return dist

    @staticmethod
    def _nearest(dist: npt.NDArray[np.uint16], k: int) -> npt.NDArray[np.intp]:
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

    def _candidates(self, query: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.intp]:
        return self._nearest(self._distances(query, n), self.candidates)
