"""The in-process vector index: exact search, two-stage search, growth."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from synthhost_similarity.index import VectorIndex


def unit(rows: np.ndarray) -> np.ndarray:
    rows = rows.astype(np.float32)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def clustered(n: int, dim: int = 128, seed: int = 0) -> np.ndarray:
    """Rows in tight-ish clusters (templated prompts), so near neighbours compete."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((max(1, n // 50), dim)))
    picks = rng.integers(0, len(centres), n)
    return unit(centres[picks] + 0.35 * unit(rng.standard_normal((n, dim))))


def test_similarity_index_empty_and_exact_search() -> None:
    index: VectorIndex[str] = VectorIndex(4)
    assert index.search(unit(np.ones(4))) is None
    index.add(unit(np.array([1.0, 0, 0, 0])), "x")
    index.add(unit(np.array([0, 1.0, 0, 0])), "y")
    match = index.search(unit(np.array([0.2, 1.0, 0, 0])))
    assert match is not None and match.item == "y" and match.row == 1
    assert match.score == pytest.approx(1 / np.sqrt(1.04), abs=1e-6)


def test_similarity_index_grows_by_doubling_and_keeps_rows() -> None:
    rows = clustered(1000, 32)
    index: VectorIndex[int] = VectorIndex(32, capacity=8)
    for i, row in enumerate(rows[:600]):
        index.add(row, i)
    index.add_many(rows[600:], list(range(600, 1000)))
    assert len(index) == 1000 and index.capacity == 1024
    assert index.items() == list(range(1000))
    for i in (0, 7, 8, 599, 600, 999):
        match = index.search(rows[i], exact=True)
        assert match is not None and match.item == i and match.score == pytest.approx(1.0, abs=1e-5)


def test_similarity_two_stage_search_finds_what_exhaustive_search_finds() -> None:
    rows = clustered(6000, 128, seed=1)
    index: VectorIndex[int] = VectorIndex(128, exact_limit=1000, candidates=256)
    index.add_many(rows, list(range(len(rows))))
    rng = np.random.default_rng(2)
    agree = 0
    for i in rng.integers(0, len(rows), 100):
        query = unit(rows[i] + 0.25 * unit(rng.standard_normal(128)))
        fast = index.search(query)
        exact = index.search(query, exact=True)
        assert fast is not None and exact is not None
        # The fast path always reports an exact cosine for the row it picked.
        assert fast.score == pytest.approx(float(rows[fast.item] @ query), abs=1e-5)
        assert fast.score <= exact.score + 1e-6
        agree += fast.item == exact.item
    assert agree >= 97


def test_similarity_two_stage_search_bounds_ties() -> None:
    """Thousands of identical rows tie at Hamming distance 0: the candidate set stays
    bounded and the answer is still exact."""
    row = unit(np.ones(64))
    index: VectorIndex[int] = VectorIndex(64, exact_limit=100, candidates=50)
    index.add_many(np.repeat(row[None, :], 5000, axis=0), list(range(5000)))
    assert len(index._candidates(row, 5000)) <= 200
    match = index.search(row)
    assert match is not None and match.score == pytest.approx(1.0, abs=1e-5)


def test_similarity_index_concurrent_adds_and_searches() -> None:
    rows = clustered(4000, 64, seed=3)
    index: VectorIndex[int] = VectorIndex(64, capacity=4, exact_limit=500)
    errors: list[BaseException] = []

    def writer(start: int) -> None:
        try:
            for i in range(start, 4000, 4):
                index.add(rows[i], i)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def reader() -> None:
        try:
            for i in range(300):
                match = index.search(rows[i])
                assert match is None or -1.0 <= match.score <= 1.0 + 1e-5
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(index) == 4000 and sorted(index.items()) == list(range(4000))


def test_similarity_grow_ahead_keeps_rows_added_during_the_copy() -> None:
    rows = clustered(1000, 64, seed=4)
    index: VectorIndex[int] = VectorIndex(64, capacity=1024, exact_limit=100, candidates=50)
    index.add_many(rows[:800], list(range(800)))
    assert index.needs_room() and not VectorIndex(64, capacity=1024).needs_room()
    adder = threading.Thread(target=lambda: [index.add(rows[i], i) for i in range(800, 1000)])
    adder.start()
    grew = index.grow_ahead()
    adder.join()
    assert grew and index.capacity == 2048 and len(index) == 1000
    assert not index.grow_ahead()  # 1000 / 2048: nothing to do
    for i in (0, 799, 800, 901, 999):
        exact = index.search(rows[i], exact=True)
        fast = index.search(rows[i])  # the codes were carried over too
        assert exact is not None and exact.item == i
        assert fast is not None and fast.item == i
