"""The per-workspace reference store: loading, incremental refresh, isolation."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_similarity
from synthhost.call import new_id
from synthhost.storage.models import utcnow
from synthhost_similarity import admin
from synthhost_similarity.embedders import HashedNgramEmbedder
from synthhost_similarity.models import vector_to_bytes
from synthhost_similarity.store import REFS, ReferenceStore, text_hash

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
