"""Engines and migrations. SQLite is the embedded default; PostgreSQL via psycopg 3."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

HOST_MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    return str(value)


def json_dumps(value: Any) -> str:
    return json.dumps(value, default=_json_default, separators=(",", ":"))


SUPPORTED = ("sqlite", "postgresql")


def check_url(url: str) -> None:
    """A :class:`UsageError` (naming ``DATABASE_URL``, never echoing a password) unless
    ``url`` is a SQLite or PostgreSQL URL."""
    from synthhost.errors import UsageError

    hint = "expected sqlite:///PATH or postgresql+psycopg://USER@HOST:PORT/DB"
    try:
        parsed = sa.engine.make_url(url)
        parsed.port  # noqa: B018  # parses the port: a broken one raises here
    except (sa.exc.ArgumentError, ValueError, TypeError):
        raise UsageError(f"DATABASE_URL: not a database URL ({hint})") from None
    if parsed.get_backend_name() not in SUPPORTED:
        raise UsageError(f"DATABASE_URL: {parsed.get_backend_name()!r} databases are not supported ({hint})")


def create_engine(url: str) -> sa.Engine:
    check_url(url)
    if is_sqlite(url):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            json_serializer=json_dumps,
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets readers (CLI, other processes) work while the writer commits.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    try:
        return sa.create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, json_serializer=json_dumps
        )
    except ModuleNotFoundError as exc:
        # The PostgreSQL driver is an extra: a SQLite-only install stays small.
        from synthhost.errors import UsageError

        hint = " (pip install 'synthhost[postgres]')" if "psycopg" in str(exc) else ""
        raise UsageError(f"DATABASE_URL: the database driver is not installed: {exc.name}{hint}") from None


def alembic_config(url: str, plugin_migrations: Mapping[str, Path]) -> Config:
    """One Alembic environment; the host's versions plus one branch per plugin."""
    cfg = Config()
    cfg.set_main_option("script_location", str(HOST_MIGRATIONS))
    locations = [str(HOST_MIGRATIONS / "versions")] + [str(p) for p in plugin_migrations.values()]
    cfg.set_main_option("version_locations", " ".join(locations))
    cfg.set_main_option("path_separator", "space")
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: sa.Engine, plugin_migrations: Mapping[str, Path], revision: str = "heads") -> None:
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)), plugin_migrations)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: sa.Engine, plugin_migrations: Mapping[str, Path], revision: str) -> None:
    cfg = alembic_config(str(engine.url.render_as_string(hide_password=False)), plugin_migrations)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def current(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(MigrationContext.configure(conn).get_current_heads())


def heads(engine: sa.Engine, plugin_migrations: Mapping[str, Path]) -> set[str]:
    cfg = alembic_config(str(engine.url), plugin_migrations)
    return set(ScriptDirectory.from_config(cfg).get_heads())


def is_current(engine: sa.Engine, plugin_migrations: Mapping[str, Path]) -> bool:
    return current(engine) == heads(engine, plugin_migrations)
