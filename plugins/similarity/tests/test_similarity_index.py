"""The in-process vector index: exact search, two-stage search, growth."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from synthhost_similarity.index import VectorIndex, cutoffs


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


def at_cosine(query: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit row at exactly ``cos`` from the unit ``query`` (up to float32 rounding)."""
    noise = rng.standard_normal(query.shape[-1])
    noise -= (noise @ query) * query
    return unit(cos * query + np.sqrt(1 - cos * cos) * noise / np.linalg.norm(noise))


def borderline_index(seed: int) -> tuple[VectorIndex[int], np.ndarray, np.ndarray]:
    """Per query: one row just above 0.85, a crowd of rows just below it (template
    siblings), and unrelated rows; so the threshold search has to go past stage 1."""
    rng = np.random.default_rng(seed)
    dim = 128
    queries = unit(rng.standard_normal((40, dim)))
    rows = [unit(rng.standard_normal((4000, dim)))]
    for q in queries:
        rows.append(np.stack([at_cosine(q, c, rng) for c in rng.uniform(0.70, 0.849, 60)]))
        rows.append(at_cosine(q, float(rng.uniform(0.851, 0.87)), rng)[None, :])
    matrix = np.concatenate(rows).astype(np.float32)
    order = rng.permutation(len(matrix))
    matrix = matrix[order]
    index: VectorIndex[int] = VectorIndex(dim, exact_limit=500, candidates=128)
    index.add_many(matrix, list(range(len(matrix))))
    return index, matrix, queries


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_similarity_threshold_search_decides_as_exhaustive_search_at_the_borderline(seed: int) -> None:
    index, matrix, queries = borderline_index(seed)
    for query in queries:
        exact = index.search(query, exact=True)
        assert exact is not None and exact.score > 0.85
        # At the real threshold, just below and exactly at the best score: the fast
        # search must find a row at or above it, as the exhaustive scan does.
        for threshold in (0.85, exact.score - 1e-4, exact.score):
            fast = index.search(query, threshold=threshold)
            assert fast is not None and fast.score >= threshold
            assert fast.score == pytest.approx(float(matrix[fast.item] @ query), abs=1e-5)
        # Just above the best: no row qualifies; the best row is still named exactly.
        fast = index.search(query, threshold=exact.score + 1e-4)
        assert fast is not None and fast.row == exact.row and fast.score == pytest.approx(exact.score, abs=1e-6)


def test_similarity_threshold_search_below_the_threshold_reports_the_best_near_row() -> None:
    """Rows that score above ~0.7 are within the stage-2 cut-off: a near miss names the
    row an exhaustive scan names, with its exact score."""
    rng = np.random.default_rng(8)
    dim = 128
    queries = unit(rng.standard_normal((30, dim)))
    rows = [unit(rng.standard_normal((3000, dim)))]
    for q in queries:
        rows.append(np.stack([at_cosine(q, c, rng) for c in rng.uniform(0.6, 0.8, 20)]))
    matrix = np.concatenate(rows).astype(np.float32)
    index: VectorIndex[int] = VectorIndex(dim, exact_limit=500, candidates=64)
    index.add_many(matrix, list(range(len(matrix))))
    for query in queries:
        exact = index.search(query, exact=True)
        fast = index.search(query, threshold=0.85)
        assert exact is not None and fast is not None
        assert fast.row == exact.row and fast.score == pytest.approx(exact.score, abs=1e-6)


def test_similarity_threshold_search_with_nothing_near_still_names_a_row() -> None:
    """An unrelated prompt: no code within the cut-off; the answer is the best of the
    nearest codes, an exact cosine, and below the threshold like the exhaustive one."""
    rng = np.random.default_rng(9)
    matrix = clustered(5000, 128, seed=9)
    index: VectorIndex[int] = VectorIndex(128, exact_limit=500, candidates=128)
    index.add_many(matrix, list(range(len(matrix))))
    for query in unit(rng.standard_normal((20, 128))):
        fast = index.search(query, threshold=0.85)
        exact = index.search(query, exact=True)
        assert fast is not None and exact is not None
        assert fast.score == pytest.approx(float(matrix[fast.item] @ query), abs=1e-5)
        assert fast.score <= exact.score + 1e-6 and (fast.score >= 0.85) == (exact.score >= 0.85)


def test_similarity_opposite_rows_and_zero_vectors_are_harmless() -> None:
    """A row whose code differs in every bit wraps to distance 0 in the uint8 sum: it is
    rescored and loses. A zero query (a text with no features) scores 0 everywhere."""
    rng = np.random.default_rng(10)
    matrix = unit(rng.standard_normal((3000, 64)))
    query = matrix[17].copy()
    index: VectorIndex[int] = VectorIndex(64, exact_limit=100, candidates=50)
    index.add_many(np.concatenate([-query[None, :], matrix]), list(range(-1, 3000)))
    assert index._hamming(query)[0] == 0  # the opposite row
    match = index.search(query, threshold=0.85)
    assert match is not None and match.item == 17 and match.score == pytest.approx(1.0, abs=1e-5)
    zero = index.search(np.zeros(64, np.float32), threshold=0.85)
    assert zero is not None and zero.score == 0.0


def test_similarity_cutoffs_follow_the_binomial_model() -> None:
    lo, hi = cutoffs(0.85)
    assert 40 <= lo <= 50 < hi < 90  # 256 * acos(0.85) / pi = 45.3
    previous = (0, 0)
    for t in (1.0, 0.95, 0.9, 0.85, 0.7, 0.5, 0.0):
        current = cutoffs(t)
        assert current[0] <= current[1] and current >= previous  # looser for lower t
        previous = current
    assert cutoffs(1.0) == (0, 0) and cutoffs(1.5) == (0, 0)
    # The model, checked by simulation: rows at cosine 0.85 beyond ``lo`` about half the
    # time, beyond ``hi`` never.
    rng = np.random.default_rng(11)
    query = unit(rng.standard_normal(256))
    rows = np.stack([at_cosine(query, 0.85, rng) for _ in range(4000)]).astype(np.float32)
    index: VectorIndex[int] = VectorIndex(256, exact_limit=10)
    index.add_many(rows, list(range(len(rows))))
    dist = index._hamming(query.astype(np.float32)).astype(int)
    assert 0.4 < float(np.mean(dist <= lo)) < 0.65 and int(dist.max()) <= hi


def test_similarity_index_compact_drops_rows_in_place_and_keeps_search_exact() -> None:
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((600, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    index: VectorIndex[int] = VectorIndex(32, capacity=8, exact_limit=64, candidates=16)
    index.add_many(vecs, list(range(600)))
    keep = np.ones(600, dtype=bool)
    keep[:250] = False  # the oldest
    keep[400:420] = False
    assert index.compact(keep[:500]) == 270  # rows beyond the mask are kept
    survivors = np.flatnonzero(keep)
    assert index.items() == survivors.tolist() and len(index) == 330
    for q in range(0, 600, 7):  # same decision as an exhaustive scan over the survivors
        got = index.search(vecs[q], threshold=0.5)
        scores = vecs[survivors] @ vecs[q]
        assert got is not None and got.item == int(survivors[np.argmax(scores)])
        assert got.score == pytest.approx(float(scores.max()), abs=1e-5)
    # keeping every row changes nothing, and adds go on after a compaction
    assert index.compact(np.ones(330, dtype=bool)) == 0
    index.add(vecs[0], 0)
    match = index.search(vecs[0])
    assert match is not None and match.item == 0
