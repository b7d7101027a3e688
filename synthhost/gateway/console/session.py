"""Console sign-in: an API key (``synthhost keys``) is exchanged for a signed session
cookie (HttpOnly, SameSite=Strict); forms that write carry a CSRF token derived from
the session.

The cookie holds the key's id, workspace and role, never the key. Its HMAC-SHA256 is
keyed by the key's stored hash (plus ``SYNTHHOST_CONSOLE_SECRET`` when set), so every
``serve`` process sharing the database accepts it with no shared configuration, a
revoked key's sessions end with it (within the key cache's TTL), and forging one needs
the key or the database. Set ``SYNTHHOST_CONSOLE_SECRET`` (one value everywhere) so
that reading the database is not enough either.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

from synthhost.gateway.keys import KEYS, KeyInfo, hash_key

COOKIE = "synthhost_session"
MAX_AGE_S = 12 * 3600
# A cookie longer than this is junk: refused before any decoding.
MAX_COOKIE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Session:
    key: KeyInfo
    sid: str
    expires: float
    mac_key: bytes = field(repr=False)

    @property
    def workspace(self) -> str:
        return self.key.workspace

    @property
    def is_admin(self) -> bool:
        return self.key.role == "admin"


def _mac(mac_key: bytes, payload: bytes) -> str:
    return hmac.new(mac_key, payload, hashlib.sha256).hexdigest()


class Sessions:
    def __init__(self, engine: sa.Engine, secret: str | None, ttl_s: float) -> None:
        self.engine = engine
        self.secret = (secret or "").encode()
        self.ttl_s = ttl_s
        self._keys: dict[str, tuple[float, str | None]] = {}  # key id -> (until, live key's hash)
        self._lock = threading.Lock()

    def _mac_key(self, key_hash: str) -> bytes:
        return hashlib.sha256(self.secret + b"\0console-session\0" + key_hash.encode()).digest()

    def issue(self, key: str, info: KeyInfo) -> str:
        """The cookie value for a session of ``key`` (just checked: ``info``)."""
        payload = json.dumps({"k": info.id, "w": info.workspace, "r": info.role, "p": info.prefix,
                              "s": secrets.token_urlsafe(16), "e": int(time.time() + MAX_AGE_S)}).encode()
        body = base64.urlsafe_b64encode(payload).decode().rstrip("=")
        return body + "." + _mac(self._mac_key(hash_key(key)), payload)

    def _live_hash(self, key_id: str) -> str | None:
        """The stored hash of a live key, None when unknown or revoked; cached ``ttl_s``."""
        entry = self._keys.get(key_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        query = sa.select(KEYS.c.key_hash, KEYS.c.revoked_at).where(KEYS.c.id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        live = row.key_hash if row is not None and row.revoked_at is None else None
        with self._lock:
            if len(self._keys) >= 10_000:
                self._keys.clear()
            self._keys[key_id] = (time.monotonic() + self.ttl_s, live)
        return live

    def read(self, cookie: str | None) -> Session | None:
        """Blocking (may query): the session a cookie carries, or None (absent, forged,
        expired, or its key revoked)."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            data = json.loads(payload)
            info = KeyInfo(str(data["k"]), str(data["w"]), str(data["r"]), str(data["p"]))
            expires, sid = float(data["e"]), str(data["s"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time() or not 1 <= len(info.id) <= 64:
            return None
        key_hash = self._live_hash(info.id)
        if key_hash is None:
            return None
        mac_key = self._mac_key(key_hash)
        if not hmac.compare_digest(_mac(mac_key, payload), signature):
            return None
        return Session(info, sid, expires, mac_key)

    @staticmethod
    def csrf_token(session: Session) -> str:
        return _mac(session.mac_key, b"csrf:" + session.sid.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")
