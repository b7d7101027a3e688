"""Settings read from the environment, once, when a host is built."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path


def home_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    return Path(env.get("SYNTHHOST_HOME") or Path.home() / ".synthhost")


def default_database_url(env: Mapping[str, str] | None = None) -> str:
    return f"sqlite:///{home_dir(env) / 'synthhost.db'}"


def _names(value: str | None) -> frozenset[str]:
    return frozenset(n.strip() for n in (value or "").split(",") if n.strip())


@dataclass(frozen=True)
class Settings:
    """``env`` keeps the whole environment mapping so plugins read their own variables
    (``host.settings.env.get("RUDDERSTACK_WRITE_KEY")``) from the same snapshot."""

    database_url: str = field(default_factory=default_database_url)
    redis_url: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    fail_closed: frozenset[str] = frozenset()
    raise_errors: bool = False
    flag_refresh_s: float = 1.0
    auto_migrate: bool = True
    shutdown_timeout_s: float = 10.0
    # How long Host.run waits for the database to take a run's rows before it reports
    # STORAGE_UNAVAILABLE (the rows stay queued, and are spooled if the process exits).
    run_flush_timeout_s: float = 30.0
    spool_dir: Path = field(default_factory=lambda: home_dir() / "spool")
    # gc.freeze() at the end of start-up (synthhost.gil.freeze_heap): on in serve/worker.
    gc_freeze: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        url = env.get("DATABASE_URL") or default_database_url(env)
        # Accept the plain libpq form users paste from their provider.
        if url.startswith(("postgres://", "postgresql://")):
            url = "postgresql+psycopg://" + url.split("://", 1)[1]
        return cls(
            database_url=url,
            redis_url=env.get("REDIS_URL") or None,
            env=env,
            fail_closed=_names(env.get("SYNTHHOST_FAIL_CLOSED")),
            raise_errors=env.get("SYNTHHOST_RAISE_ERRORS", "") not in ("", "0", "false"),
            flag_refresh_s=float(env.get("SYNTHHOST_FLAG_REFRESH_S", "1.0")),
            auto_migrate=env.get("SYNTHHOST_AUTO_MIGRATE", "1") not in ("0", "false"),
            shutdown_timeout_s=float(env.get("SYNTHHOST_SHUTDOWN_TIMEOUT", "10")),
            run_flush_timeout_s=float(env.get("SYNTHHOST_RUN_FLUSH_TIMEOUT_S", "30")),
            spool_dir=Path(env.get("SYNTHHOST_SPOOL_DIR") or home_dir(env) / "spool"),
            gc_freeze=env.get("SYNTHHOST_GC_FREEZE", "") not in ("", "0", "false"),
        )
