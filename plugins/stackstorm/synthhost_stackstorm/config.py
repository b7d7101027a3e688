"""Configuration from the environment (``host.settings.env``).

- ``STACKSTORM_API_URL`` (unset): the st2api base, ``https://st2/api`` (behind st2's
  nginx) or ``http://st2:9101`` (st2api itself); ``/v1`` is added unless the URL
  already ends with it, so ``https://st2/api/v1`` works too.
- ``STACKSTORM_API_KEY`` (unset): sent as ``St2-Api-Key``; never logged, never in events.
- ``STACKSTORM_AUTH_TOKEN`` (unset): instead of a key, sent as ``X-Auth-Token`` (tokens
  expire; prefer a key).
- ``ENABLE_STACKSTORM`` (unset): ``false``/``0``/``no``/``off`` is a global kill switch
  (the plugin is inert); any other value leaves the decision to the per-workspace flags.
- ``STACKSTORM_TIMEOUT`` (120): seconds StackStorm may spend on one failed attempt (every
  workflow asked about it, together); an execution still running then is cancelled.
- ``STACKSTORM_POLL_INTERVAL`` (1.0): seconds between ``GET /executions/{id}`` polls.
- ``STACKSTORM_HTTP_TIMEOUT`` (10): seconds for one HTTP request.
- ``STACKSTORM_VERIFY_SSL`` (true): ``false`` for st2's default self-signed
  certificate, or the path of a CA bundle.
- ``STACKSTORM_PACK`` (synthralos): the pack whose actions and trigger are used.

No URL, or neither key nor token: the plugin is inert (the health check says why).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

log = logging.getLogger("synthhost.stackstorm")

FALSE = frozenset({"0", "false", "no", "off"})
TRUE = frozenset({"1", "true", "yes", "on"})
DEFAULT_TIMEOUT_S = 120.0
DEFAULT_POLL_S = 1.0
DEFAULT_HTTP_TIMEOUT_S = 10.0


def api_base(url: str) -> str:
    """``https://st2/api`` → ``https://st2/api/v1``; ``https://st2/api/v1/`` → unchanged
    (trailing slash dropped); ``http://st2:9101`` → ``http://st2:9101/v1``."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


def _number(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        log.warning("%s=%r is not a number >= %s; using %s", name, raw, minimum, default)
        return default
    return value


def kill_switch(env: Mapping[str, str]) -> bool:
    """``ENABLE_STACKSTORM=false`` (or 0/no/off) turns the plugin off in this process."""
    return (env.get("ENABLE_STACKSTORM") or "").strip().lower() in FALSE


@dataclass(frozen=True, slots=True)
class Config:
    api_url: str
    api_key: str | None = field(default=None, repr=False)
    auth_token: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S
    poll_interval_s: float = DEFAULT_POLL_S
    http_timeout_s: float = DEFAULT_HTTP_TIMEOUT_S
    verify: bool | str = True
    pack: str = "synthralos"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> tuple[Config | None, str]:
        """``(config, "")`` when usable, else ``(None, why not)``."""
        if kill_switch(env):
            return None, "disabled by ENABLE_STACKSTORM=false"
        url = (env.get("STACKSTORM_API_URL") or "").strip()
        key = (env.get("STACKSTORM_API_KEY") or "").strip() or None
        token = (env.get("STACKSTORM_AUTH_TOKEN") or "").strip() or None
        missing = [name for name, value in (("STACKSTORM_API_URL", url),
                                            ("STACKSTORM_API_KEY", key or token)) if not value]
        if missing:
            return None, f"not configured ({' and '.join(missing)} unset): inert"
        if not url.startswith(("http://", "https://")):
            return None, f"STACKSTORM_API_URL must start with http:// or https:// (got {url[:60]!r}): inert"
        raw_verify = (env.get("STACKSTORM_VERIFY_SSL") or "").strip()
        verify: bool | str = True
        if raw_verify.lower() in FALSE:
            verify = False
        elif raw_verify and raw_verify.lower() not in TRUE:
            verify = raw_verify  # a CA bundle path
        return cls(
            api_url=api_base(url),
            api_key=key,
            auth_token=None if key else token,
            timeout_s=_number(env, "STACKSTORM_TIMEOUT", DEFAULT_TIMEOUT_S, 0.001),
            poll_interval_s=_number(env, "STACKSTORM_POLL_INTERVAL", DEFAULT_POLL_S, 0.0),
            http_timeout_s=_number(env, "STACKSTORM_HTTP_TIMEOUT", DEFAULT_HTTP_TIMEOUT_S, 0.001),
            verify=verify,
            pack=(env.get("STACKSTORM_PACK") or "").strip() or "synthralos",
        ), ""

    def auth_headers(self) -> dict[str, str]:
        if self.api_key:
            return {"St2-Api-Key": self.api_key}
        if self.auth_token:
            return {"X-Auth-Token": self.auth_token}
        return {}

    def ref(self, action: str) -> str:
        return f"{self.pack}.{action}"

    def describe(self) -> str:
        auth = "api key" if self.api_key else "auth token"
        return f"{self.api_url} ({auth}, pack {self.pack}, timeout {self.timeout_s:g}s)"
