"""Console sign-in: an API key (``synthhost keys``) is exchanged for a signed session
cookie (HttpOnly, SameSite=Strict); forms that write carry a CSRF token derived from
the session.

The cookie holds the key's id, workspace and role, never the key. It is signed with
HMAC-SHA256 under ``SYNTHHOST_CONSOLE_SECRET`` (set it when several ``serve`` processes
share sessions; without it each process signs with its own random secret). Every
request re-checks that the key is still live (cached for the key cache's TTL), so a
revoked key's sessions end within the same bound as its API calls.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass

import sqlalchemy as sa

from synthhost.gateway.keys import KEYS, KeyInfo

COOKIE = "synthhost_session"
MAX_AGE_S = 12 * 3600
# A cookie longer than this is junk: refused before any decoding.
MAX_COOKIE_CHARS = 1000


@dataclass(frozen=True, slots=True)
class Session:
    key: KeyInfo
    sid: str
    expires: float

    @property
    def workspace(self) -> str:
        return self.key.workspace

    @property
    def is_admin(self) -> bool:
        return self.key.role == "admin"


class Sessions:
    def __init__(self, engine: sa.Engine, secret: str | None, ttl_s: float) -> None:
        self.engine = engine
        self.secret = (secret or secrets.token_urlsafe(32)).encode()
        self.ttl_s = ttl_s
        self._live: dict[str, tuple[float, bool]] = {}
        self._lock = threading.Lock()

    def _sign(self, payload: bytes) -> str:
        return hmac.new(self.secret, payload, hashlib.sha256).hexdigest()

    def issue(self, key: KeyInfo) -> str:
        """The cookie value for a session of ``key``."""
        payload = json.dumps({"k": key.id, "w": key.workspace, "r": key.role, "p": key.prefix,
                              "s": secrets.token_urlsafe(16), "e": int(time.time() + MAX_AGE_S)}).encode()
        return base64.urlsafe_b64encode(payload).decode().rstrip("=") + "." + self._sign(payload)

    def read(self, cookie: str | None) -> Session | None:
        """The session a cookie carries, or None (absent, forged, expired). No I/O."""
        if not cookie or len(cookie) > MAX_COOKIE_CHARS or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        try:
            payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except ValueError:
            return None
        if not hmac.compare_digest(self._sign(payload), signature):
            return None
        try:
            data = json.loads(payload)
            info = KeyInfo(str(data["k"]), str(data["w"]), str(data["r"]), str(data["p"]))
            expires = float(data["e"])
            sid = str(data["s"])
        except (ValueError, KeyError, TypeError):
            return None
        if expires < time.time():
            return None
        return Session(info, sid, expires)

    def csrf_token(self, session: Session) -> str:
        return self._sign(b"csrf:" + session.sid.encode())

    def csrf_ok(self, session: Session, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf_token(session), token or "")

    def key_live(self, key_id: str) -> bool:
        """Blocking (may query): is the key behind a session still not revoked?"""
        entry = self._live.get(key_id)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        query = sa.select(KEYS.c.revoked_at).where(KEYS.c.id == key_id)
        with self.engine.connect() as conn:
            row = conn.execute(query).first()
        live = row is not None and row.revoked_at is None
        with self._lock:
            if len(self._live) >= 10_000:
                self._live.clear()
            self._live[key_id] = (time.monotonic() + self.ttl_s, live)
        return live
