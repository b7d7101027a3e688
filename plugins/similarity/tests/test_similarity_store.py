"""The per-workspace reference store: loading, incremental refresh, isolation."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_similarity
from synthhost.call import new_id
from synthhost.errors import UsageError
from synthhost.retention import prune
from synthhost.storage.models import utcnow
from synthhost_similarity import admin
from synthhost_similarity.embedders import HashedNgramEmbedder
from synthhost_similarity.models import vector_to_bytes
from synthhost_similarity.service import parse_max_references
from synthhost_similarity.store import REFS, Ref, ReferenceStore, text_hash

EMBEDDER = HashedNgramEmbedder()


def insert(engine: sa.Engine, workspace: str, text: str, *, age_s: float = 0.0, **kw: Any) -> str:
    ref_id = new_id()
    vector = EMBEDDER.embed([text])[0]
    values = {
        "id": ref_id,
        "workspace_id": workspace,
        "kind": "prompt",
        "text": text,
        "text_hash": text_hash(text),
        "embedder": EMBEDDER.name,
        "dim": 512,
        "vector": vector_to_bytes(vector),
        "created_at": utcnow() - timedelta(seconds=age_s),
        **kw,
    }
    with engine.begin() as conn:
        conn.execute(REFS.insert().values(**values))
    return ref_id


def test_similarity_store_loads_refreshes_and_isolates(make_host: Any) -> None:
    host = make_host(synthhost_similarity)
    host.migrate()
    engine = host.engine
    a = insert(engine, "w1", "first prompt about invoices")
    insert(engine, "w2", "first prompt about invoices")  # another workspace
    insert(engine, "w1", "same text, other embedder", embedder="openai:x")
    store = ReferenceStore(engine, EMBEDDER.name, refresh_s=0.0, overlap_s=15.0)

    lib = store.refresh("w1")
    assert lib.loaded and lib.ids == {a} and len(lib) == 1
    match = lib.search(EMBEDDER.embed(["first prompt about invoices"])[0])
    assert match is not None and match.item.id == a and match.score > 0.999

    # A row stamped before the newest one seen but committed later (another process's
    # batched writer): still picked up, as long as it is within the overlap window.
    late = insert(engine, "w1", "late committed prompt", age_s=5.0)
    too_late = insert(engine, "w1", "committed a minute after its stamp", age_s=60.0)
    store.refresh("w1")
    assert late in lib.ids and too_late not in lib.ids
    assert store.library("w2").ids == set()  # not loaded: nothing leaks across

    # Settings come with the same refresh.
    admin.save_settings(engine, "w1", threshold=Decimal("0.9"), action="warned")
    store.refresh("w1")
    assert (lib.threshold, lib.action) == (Decimal("0.90000"), "warned")


def test_similarity_store_refresh_is_bounded_by_interval(make_host: Any) -> None:
    host = make_host(synthhost_similarity)
    host.migrate()
    store = ReferenceStore(host.engine, EMBEDDER.name, refresh_s=3600.0)
    store.refresh("w1")
    assert not store.needs_refresh("w1")
    ref = insert(host.engine, "w1", "a prompt from another process")
    store.refresh("w1")  # not due: no query
    assert ref not in store.library("w1").ids
    store.refresh("w1", force=True)
    assert ref in store.library("w1").ids


def test_similarity_store_keeps_serving_when_a_refresh_fails(make_host: Any, monkeypatch: Any) -> None:
    host = make_host(synthhost_similarity)
    host.migrate()
    a = insert(host.engine, "w1", "a prompt about invoices")
    store = ReferenceStore(host.engine, EMBEDDER.name, refresh_s=0.0)
    store.refresh("w1")

    def down(*args: Any) -> None:
        raise sa.exc.OperationalError("SELECT", {}, Exception("database is away"))

    monkeypatch.setattr(store, "_refresh_locked", down)
    lib = store.refresh("w1")  # logged, not raised: the loaded index still answers
    match = lib.search(EMBEDDER.embed(["a prompt about invoices"])[0])
    assert match is not None and match.item.id == a
    with pytest.raises(sa.exc.OperationalError):
        store.refresh("w2")  # never loaded: nothing to serve, the caller decides


def _count(engine: sa.Engine, workspace: str, kind: str) -> int:
    query = sa.select(sa.func.count()).where(REFS.c.workspace_id == workspace, REFS.c.kind == kind)
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_similarity_store_bounds_logged_references_and_keeps_known_ones(make_host: Any, caplog: Any) -> None:
    host = make_host(synthhost_similarity)
    host.migrate()
    engine = host.engine
    texts = [f"logged prompt number {i} about topic {i * 7919 % 97}" for i in range(30)]
    known = [insert(engine, "w1", f"known secret recipe {i}", kind="known", age_s=1000.0) for i in range(4)]
    logged = [insert(engine, "w1", text, age_s=100.0 - i) for i, text in enumerate(texts)]  # oldest first
    other = insert(engine, "w2", texts[0], age_s=500.0)  # another workspace: its own bound
    unbounded = ReferenceStore(engine, EMBEDDER.name, refresh_s=0.0).refresh("w1")
    stats: Counter[str] = Counter()
    store = ReferenceStore(engine, EMBEDDER.name, refresh_s=0.0, max_references=10, stats=stats)

    with caplog.at_level("WARNING", logger="synthhost.similarity"):
        lib = store.refresh("w1")
        # 30 logged > 10: the oldest evicted down to 9 (90 %), every known one kept
        assert lib.prompts == 9 and len(lib) == 13
        assert set(known) <= lib.ids and lib.ids == set(known) | set(logged[21:])
        assert stats["similarity.references_evicted"] == 21
        # the table follows in the same refresh: the evicted rows are gone, known ones stay
        assert _count(engine, "w1", "prompt") == 9 and _count(engine, "w1", "known") == 4
        assert _count(engine, "w2", "prompt") == 1 and store.refresh("w2").ids == {other}

        # local adds (this process's prompts) keep it bounded as well
        for i in range(5):
            text = f"a fresh prompt {i}"
            ref = Ref(new_id(), "prompt", text, text_hash(text))
            assert lib.add(ref, text_hash(text), EMBEDDER.embed([text])[0])
        # 9 + 5: evicted at 11 back to 9, twice
        assert lib.prompts == 10 and len(lib) == 14 and set(known) <= lib.ids
        assert stats["similarity.references_evicted"] == 25
        assert text_hash(texts[21]) not in lib.hashes  # an evicted text may be logged again
    warnings = [r for r in caplog.records if "evicting the oldest" in r.getMessage()]
    assert len(warnings) == 1 and "w1" in warnings[0].getMessage()

    # decisions on surviving rows are those of the unbounded library
    for text in [f"known secret recipe {i}" for i in range(4)] + texts[26:]:
        vector = EMBEDDER.embed([text])[0]
        got, want = lib.search(vector, 0.85), unbounded.search(vector, 0.85)
        assert got is not None and want is not None
        assert got.item.id == want.item.id and got.score == pytest.approx(want.score)

    # a fresh process loading the table sees the bound too (known ones untouched)
    reloaded = ReferenceStore(engine, EMBEDDER.name, refresh_s=0.0, max_references=10).refresh("w1")
    assert reloaded.prompts <= 10 and set(known) <= reloaded.ids


def test_similarity_references_are_under_retention_known_ones_are_not(make_host: Any) -> None:
    host = make_host(synthhost_similarity)
    host.migrate()
    engine = host.engine
    assert host.registry.retention["prompt_references"].only == (("kind", "prompt"),)
    old_known = insert(engine, "w1", "an admin's known prompt", kind="known", age_s=40 * 86400.0)
    insert(engine, "w1", "an old logged prompt", age_s=40 * 86400.0)
    new = insert(engine, "w1", "a new logged prompt")
    env = {"SYNTHHOST_RETENTION_PROMPT_REFERENCES_DAYS": "30"}
    (result,) = [r for r in prune(engine, env, host.registry.retention) if r.table == "prompt_references"]
    assert result.rows == 1
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(REFS.c.id)).scalars()) == {old_known, new}


def test_similarity_max_references_setting() -> None:
    assert parse_max_references(None) == 100_000 and parse_max_references("") == 100_000
    assert parse_max_references("5_000") == 5000 and parse_max_references("0") == 0
    with pytest.raises(UsageError, match="SYNTHHOST_SIMILARITY_MAX_REFERENCES: 'lots'"):
        parse_max_references("lots")
