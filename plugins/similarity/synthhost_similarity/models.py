"""The similarity plugin's tables (created by its own Alembic branch, ``similarity``).

Column conventions follow the host's (``synthhost.storage.models``): 32-hex ids made on
the writer side, timezone-aware UTC times, ``workspace_id``/``user_id``/``org_id``
tenant columns (``user`` is a reserved word in PostgreSQL). Vectors are raw float32
bytes (little-endian, ``dim * 4`` bytes), never JSON.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import numpy as np
import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from synthhost.storage.models import ts_column
from synthhost_similarity.embedders import Vector

PROMPT_CAP = 1000  # prompt_similarity_logs.prompt
REFERENCE_TEXT_CAP = 4000  # prompt_references.text
LOG_REFERENCE_TEXT_CAP = 500  # prompt_similarity_logs.reference_text (and kept in memory)

KINDS = ("prompt", "known")
ACTIONS = ("allowed", "flagged", "warned", "blocked")


def vector_to_bytes(vector: Vector) -> bytes:
    return np.asarray(vector, dtype="<f4").tobytes()


def vector_from_bytes(data: bytes, dim: int) -> Vector:
    vec = np.frombuffer(data, dtype="<f4")
    if vec.size != dim:
        raise ValueError(f"stored vector has {vec.size} floats, expected {dim}")
    return vec.astype(np.float32)


class PromptReference(SQLModel, table=True):
    """One entry of a workspace's reference library: an earlier prompt or a curated
    known prompt, with its vector for one embedder."""

    __tablename__ = "prompt_references"
    __table_args__ = (sa.Index("ix_prompt_references_ws_emb_time", "workspace_id", "embedder", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)
    kind: str = Field(max_length=10)
    text: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    text_hash: str = Field(max_length=64)
    embedder: str = Field(max_length=100)
    dim: int
    vector: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    created_at: datetime = ts_column()


class PromptSimilarityLog(SQLModel, table=True):
    """One checked prompt: its score against the closest reference and what was done."""

    __tablename__ = "prompt_similarity_logs"
    __table_args__ = (sa.Index("ix_prompt_similarity_logs_ws_time", "workspace_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    org_id: str | None = Field(default=None, max_length=200)
    run_id: str | None = Field(default=None, max_length=32, index=True)
    span_id: str | None = Field(default=None, max_length=32)
    trace_id: str | None = Field(default=None, max_length=32)
    prompt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    prompt_hash: str = Field(max_length=64)
    # NULL when the workspace had no reference yet (nothing to compare with).
    score: Decimal | None = Field(default=None, sa_column=sa.Column(sa.Numeric(6, 5), nullable=True))
    threshold: Decimal = Field(sa_column=sa.Column(sa.Numeric(6, 5), nullable=False))
    method: str = Field(max_length=120)
    reference_id: str | None = Field(default=None, max_length=32)
    reference_kind: str | None = Field(default=None, max_length=10)
    reference_text: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    action: str = Field(max_length=10)
    mode: str = Field(max_length=10)  # "check" (on the call path) or "log" (background)
    latency_ms: float | None = None
    created_at: datetime = ts_column()


class SimilaritySettings(SQLModel, table=True):
    """Per-workspace settings (NULL: the default) and the reference-library epoch,
    bumped whenever references are removed so other processes rebuild their index."""

    __tablename__ = "similarity_settings"

    workspace_id: str = Field(primary_key=True, max_length=200)
    threshold: Decimal | None = Field(default=None, sa_column=sa.Column(sa.Numeric(6, 5), nullable=True))
    action: str | None = Field(default=None, max_length=10)
    epoch: int = 0
    updated_at: datetime = ts_column()


class SimilarityQueued(SQLModel, table=True):
    """A prompt waiting to be logged (``enable_similarity_logging``): written on the call
    path by the batched writer, taken by whichever process delivers (see
    ``synthhost_similarity.logger``), deleted once its log row is committed."""

    __tablename__ = "similarity_queue"
    __table_args__ = (sa.Index("ix_similarity_queue_time", "created_at"),)

    id: str = Field(primary_key=True, max_length=32)
    workspace_id: str = Field(max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    org_id: str | None = Field(default=None, max_length=200)
    run_id: str | None = Field(default=None, max_length=32)
    span_id: str | None = Field(default=None, max_length=32)
    trace_id: str | None = Field(default=None, max_length=32)
    prompt: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    created_at: datetime = ts_column()
    claimed_by: str | None = Field(default=None, max_length=64)
    claimed_until: datetime | None = Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True),
                                                                             nullable=True))
