"""Gateway API keys: created and revoked by ``synthhost keys``, checked on every request.

A key is ``sk-sh-`` plus 43 URL-safe characters (256 random bits). It is shown once;
the database keeps its SHA-256. A request's key is hashed, looked up by hash, and the
stored hash compared with :func:`hmac.compare_digest`. Look-ups are cached in process
for ``SYNTHHOST_FLAG_REFRESH_S`` seconds (the flag refresh bound), so a revocation is
seen by every ``serve`` process within that bound without a query per request.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from synthhost.call import new_id
from synthhost.errors import UsageError
from synthhost.storage.models import ApiKey, utcnow
from synthhost.workspace import validate_workspace

KEYS = ApiKey.__table__  # type: ignore[attr-defined]
PREFIX = "sk-sh-"
ROLES = ("member", "admin")
# A real key's length; anything longer is refused before hashing (no work for junk).
MAX_KEY_CHARS = 200


@dataclass(frozen=True, slots=True)
class KeyInfo:
    id: str
    workspace: str
    role: str
    prefix: str
    name: str | None = None
    created_at: datetime | None = None
    revoked_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "workspace": self.workspace, "role": self.role, "prefix": self.prefix,
                "name": self.name, "created_at": self.created_at.isoformat() if self.created_at else None,
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _info(row: Any) -> KeyInfo:
    return KeyInfo(row.id, row.workspace_id, row.role, row.prefix, row.name, row.created_at, row.revoked_at)


def create_key(engine: sa.Engine, workspace: str, role: str = "member", name: str | None = None) -> tuple[str, KeyInfo]:
    """A new key for ``workspace``: returns ``(key, info)``; the key is not stored."""
    validate_workspace(workspace)
    if role not in ROLES:
        raise UsageError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    if name is not None and (len(name) > 200 or not name.isprintable()):
        raise UsageError("--name: at most 200 printable characters")
    key = PREFIX + secrets.token_urlsafe(32)
    info = KeyInfo(new_id(), workspace, role, key[:12], name, utcnow())
    with engine.begin() as conn:
        conn.execute(sa.insert(KEYS).values(id=info.id, key_hash=hash_key(key), prefix=info.prefix,
                                            workspace_id=workspace, role=role, name=name,
                                            created_at=info.created_at))
    return key, info


def list_keys(engine: sa.Engine, workspace: str | None = None, *, include_revoked: bool = False) -> list[KeyInfo]:
    query = sa.select(KEYS).order_by(KEYS.c.created_at, KEYS.c.id)
    if workspace is not None:
        query = query.where(KEYS.c.workspace_id == workspace)
    if not include_revoked:
        query = query.where(KEYS.c.revoked_at.is_(None))
    with engine.connect() as conn:
        return [_info(row) for row in conn.execute(query)]


def revoke_key(engine: sa.Engine, key_id: str, workspace: str | None = None) -> bool:
    """Revoke by id (or by the key itself); True if a live key was revoked."""
    where = [KEYS.c.revoked_at.is_(None)]
    where.append(KEYS.c.key_hash == hash_key(key_id) if key_id.startswith(PREFIX) else KEYS.c.id == key_id)
    if workspace is not None:
        where.append(KEYS.c.workspace_id == workspace)
    with engine.begin() as conn:
        return bool(conn.execute(sa.update(KEYS).where(*where).values(revoked_at=utcnow())).rowcount)


class KeyCache:
    """Key → :class:`KeyInfo` (or ``None`` for unknown/revoked), cached ``ttl_s`` seconds.

    Negative answers are cached too (a client retrying a bad key costs no query), and
    the cache is bounded: when full it is emptied, which costs one query per key."""

    def __init__(self, engine: sa.Engine, ttl_s: float, max_entries: int = 10_000) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._cache: dict[str, tuple[float, KeyInfo | None]] = {}
        self._lock = threading.Lock()

    def _load(self, digest: str) -> KeyInfo | None:
        query = sa.select(KEYS).where(KEYS.c.key_hash == digest)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        # The index found the row by hash; compare once more in constant time so no
        # code path ever compares a secret with ``==``.
        if row is None or not hmac.compare_digest(row.key_hash, digest) or row.revoked_at is not None:
            return None
        return _info(row)

    def cached(self, key: str) -> tuple[bool, KeyInfo | None]:
        """``(hit, info)`` without I/O; ``hit`` is False when a look-up is needed."""
        if not key.startswith(PREFIX) or len(key) > MAX_KEY_CHARS:
            return True, None
        entry = self._cache.get(hash_key(key))
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def lookup(self, key: str) -> KeyInfo | None:
        """Blocking (may query): call from a worker thread."""
        hit, info = self.cached(key)
        if hit:
            return info
        digest = hash_key(key)
        info = self._load(digest)
        with self._lock:
            if len(self._cache) >= self.max_entries:
                self._cache.clear()
            self._cache[digest] = (time.monotonic() + self.ttl_s, info)
        return info
