"""The host's own deployment checks (``synthhost check``): database, migrations and
tables, environment, Redis, cron backoff state, flags against the rollout phases, the
outbox and the spool. Plugins add theirs through the same hook."""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from synthhost.checks import PHASE_FLAGS, CheckResult, failed, passed, skipped, warned
from synthhost.hookspecs import hookimpl

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost.registry import RegisterCheck

# The checklist's tables, and the plugin that defines each (the host's own: None).
CHECKLIST_TABLES = {"model_cost_logs": "cost", "prompt_similarity_logs": "similarity",
                    "event_logs": None, "feature_flags": None}
# Variables that only work together: some set and some not is a broken configuration.
ENV_GROUPS = (("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY"),
              ("RUDDERSTACK_WRITE_KEY", "RUDDERSTACK_DATA_PLANE_URL"),
              ("STACKSTORM_API_URL", "STACKSTORM_API_KEY"))
OPTIONAL_ENV = ("REDIS_URL", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_HOST", "RUDDERSTACK_WRITE_KEY",
                "RUDDERSTACK_DATA_PLANE_URL", "STACKSTORM_API_URL", "STACKSTORM_API_KEY", "ENABLE_STACKSTORM")
POSITIVE_INT_ENV = ("RUDDERSTACK_MAX_RETRIES", "RUDDERSTACK_RETRY_DELAY", "RUDDERSTACK_BATCH_SIZE",
                    "RUDDERSTACK_FLUSH_INTERVAL")
DB_FIX = "check DATABASE_URL and that the database server is up (synthhost health)"
STUCK_AFTER_S = 900.0


def _needs_db(check: Callable[[Host], CheckResult]) -> Callable[[Host], CheckResult]:
    """A check that reads the database says in one line whether the database is down or
    its schema is behind, instead of raising."""

    @functools.wraps(check)
    def wrapped(host: Host) -> CheckResult:
        import sqlalchemy as sa

        try:
            return check(host)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0][:160]
            try:
                with host.engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
            except sa.exc.DBAPIError:
                return failed(f"database unreachable: {reason}", DB_FIX)
            return failed(f"schema not migrated: {reason}", "synthhost db upgrade")

    return wrapped


@hookimpl
def register_checks(register: RegisterCheck) -> None:
    register("database", database)
    register("migrations", migrations)
    register("tables", tables)
    register("environment", environment)
    register("redis", redis)
    register("cron_backoff", cron_backoff)
    register("outbox", outbox)
    register("spool", spool)
    register("retention", retention)
    register("flags_phase_order", flags_phase_order, phase=1)


@_needs_db
def database(host: Host) -> CheckResult:
    with host.engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")
    url = host.engine.url
    where = f"{url.get_backend_name()} at {url.host or url.database}"
    if url.get_backend_name() == "sqlite":
        return warned(f"reachable: {where} (embedded SQLite: one machine, one writer)",
                      "set DATABASE_URL=postgresql+psycopg://USER@HOST:5432/DB for more than one process")
    return passed(f"reachable: {where}")


@_needs_db
def migrations(host: Host) -> CheckResult:
    from synthhost.storage import db

    applied = db.current(host.engine)
    heads = db.heads(host.engine, host.registry.migrations)
    pending = sorted(heads - applied)
    if pending:
        return failed(f"{len(pending)} of {len(heads)} branches not at head ({', '.join(pending)})",
                      "synthhost db upgrade")
    return passed(f"every branch at head ({len(heads)} branches)")


@_needs_db
def tables(host: Host) -> CheckResult:
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    import synthhost.scheduler  # noqa: F401  # cron_jobs joins the metadata

    present = set(sa.inspect(host.engine).get_table_names())
    expected = {t for t, plugin in CHECKLIST_TABLES.items() if plugin is None or plugin in host.plugins.info}
    # Every table the host's and the loaded plugins' models define (other installed
    # plugins' models may be imported in this process too: not theirs), and every
    # table with a declared retention.
    packages = {"synthhost"} | {info.module.split(".")[0] for info in host.plugins.info.values()}
    for package in sorted(packages - {"synthhost"}):
        # Plugins load their models lazily; by convention they live in ``<package>.models``.
        with contextlib.suppress(ModuleNotFoundError):
            importlib.import_module(f"{package}.models")
    for mapper in SQLModel._sa_registry.mappers:
        table = getattr(mapper.class_, "__table__", None)
        if table is not None and mapper.class_.__module__.split(".")[0] in packages:
            expected.add(table.name)
    expected |= set(host.registry.retention)
    missing = sorted(expected - present)
    if missing:
        return failed(f"missing: {', '.join(missing)}", "synthhost db upgrade")
    absent = [t for t, plugin in CHECKLIST_TABLES.items() if plugin is not None and plugin not in host.plugins.info]
    note = f"; not installed: {', '.join(f'{t} ({CHECKLIST_TABLES[t]} plugin)' for t in absent)}" if absent else ""
    return passed(f"{len(expected)} tables present{note}")


def environment(host: Host) -> CheckResult:
    """Names only: a value is never printed."""
    env = host.settings.env
    problems: list[str] = []
    if not (env.get("DATABASE_URL") or "").strip():
        problems.append("DATABASE_URL is not set (the embedded SQLite default is for one machine)")
    for group in ENV_GROUPS:
        set_ = [n for n in group if (env.get(n) or "").strip()]
        if set_ and len(set_) < len(group):
            problems.append(f"{', '.join(set_)} set without {', '.join(n for n in group if n not in set_)}")
    for name in POSITIVE_INT_ENV:
        raw = (env.get(name) or "").strip()
        if raw and not (raw.isdigit() and int(raw) >= (0 if name == "RUDDERSTACK_MAX_RETRIES" else 1)):
            problems.append(f"{name} is not a positive integer")
    flag = (env.get("ENABLE_STACKSTORM") or "").strip().lower()
    if flag and flag not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        problems.append("ENABLE_STACKSTORM is not true or false")
    if problems:
        return failed("; ".join(problems), "set the named variables (see docs/operations.md, Environment)")
    present = [n for n in OPTIONAL_ENV if (env.get(n) or "").strip()]
    return passed(f"DATABASE_URL set; optional set: {', '.join(present) or 'none'}")


def redis(host: Host) -> CheckResult:
    url = host.settings.redis_url
    if not url:
        return skipped("REDIS_URL not set: rate limits and their counters are per process",
                       "set REDIS_URL=redis://HOST:6379/0 for limits shared by every process")
    import redis as redis_lib

    client = redis_lib.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    try:
        client.ping()
        version = client.info("server").get("redis_version", "?")
    except redis_lib.RedisError as exc:
        return failed(f"REDIS_URL unreachable ({type(exc).__name__})", "check REDIS_URL and that Redis is up")
    finally:
        client.close()
    return passed(f"reachable (Redis {version})")


@_needs_db
def cron_backoff(host: Host) -> CheckResult:
    """Backoff state lives in ``cron_jobs`` (the database, shared by every process)."""
    import sqlalchemy as sa

    from synthhost.scheduler import CronJob

    t = CronJob.__table__  # type: ignore[attr-defined]
    with host.engine.connect() as conn:
        jobs, failing = conn.execute(
            sa.select(sa.func.count(), sa.func.count().filter(t.c.failures > 0))).one()
    return passed(f"cron_jobs readable: {jobs} jobs, {failing} with failures")


@_needs_db
def outbox(host: Host) -> CheckResult:
    from synthhost.outbox import queue_stats

    stats = queue_stats(host.engine, list(host.registry.exporters))
    if not stats:
        return skipped("no exporter installed: nothing is queued")
    raw = (host.settings.env.get("SYNTHHOST_CHECK_OUTBOX_STUCK_S") or "").strip()
    try:
        limit = float(raw) if raw else STUCK_AFTER_S
    except ValueError:
        return failed("SYNTHHOST_CHECK_OUTBOX_STUCK_S is not a number of seconds", "set it to seconds, e.g. 900")
    parked = {n: s["parked"] for n, s in stats.items() if s["parked"]}
    stuck = {n: s["oldest_pending_age_s"] for n, s in stats.items()
             if (s["oldest_pending_age_s"] or 0) > limit}
    if parked:
        return failed("parked: " + ", ".join(f"{n} {c}" for n, c in sorted(parked.items())),
                      "see `synthhost queue stats` for the last error, fix it, then `synthhost queue retry-parked`")
    if stuck:
        return failed("stuck: " + ", ".join(f"{n} oldest {age:.0f} s" for n, age in sorted(stuck.items())),
                      "is a worker running (SYNTHHOST_DELIVERY)? is the receiver up? see `synthhost queue stats`")
    waiting = sum(s["pending"] + s["retrying"] + s["in_flight"] for s in stats.values())
    return passed(f"{len(stats)} exporters, {waiting} waiting, nothing parked or older than {limit:g} s")


@_needs_db
def retention(host: Host) -> CheckResult:
    from synthhost.retention import GLOBAL, load_policies, scopes

    declared = host.registry.retention
    applied = scopes(host.settings.env, declared, load_policies(host.engine))
    forever = sorted(t for t in declared if not any(s.table == t and s.workspace == GLOBAL for s in applied))
    if forever:
        return warned(f"kept forever: {', '.join(forever)}",
                      "synthhost retention set DAYS --global (and --table/--workspace for exceptions)")
    days = sorted({f"{s.days:g}" for s in applied if s.workspace == GLOBAL}, key=float)
    own = sorted({s.workspace for s in applied if s.workspace != GLOBAL})
    note = f"; own retention: {', '.join(own)}" if own else ""
    return passed(f"{len(declared)} tables pruned after {'/'.join(days)} days{note}")


def spool(host: Host) -> CheckResult:
    from synthhost.storage import spool as spool_files

    waiting = spool_files.summary(host.settings.spool_dir)
    if waiting:
        return failed(f"{sum(waiting.values())} rows in {host.settings.spool_dir}",
                      "start a host with the database reachable (synthhost worker): it replays the spool")
    return passed("empty")


@_needs_db
def flags_phase_order(host: Host) -> CheckResult:
    """Per workspace with its own flag rows (and the global row): a later phase on while
    an earlier one is off is a warning (the checklist enables them in order)."""
    host.flags.reload()
    declared = host.registry.flags
    phases = {p: [f for f in names if f in declared] for p, names in PHASE_FLAGS.items()}
    phases = {p: names for p, names in phases.items() if names}  # phases whose plugins are installed
    from synthhost.flags import FORCED

    present = _flag_scopes(host)
    forced = sorted(s.name for s in host.flags.state() if s.source == "forced")
    scopes = sorted((present - {FORCED}) | {"*"})
    out_of_order = []
    for scope in scopes:
        resolved = host.flags.resolved(scope)
        on = {p for p, names in phases.items() if any(resolved[f] for f in names)}
        for later in sorted(on):
            earlier_off = [p for p in phases if p < later and p not in on]
            if earlier_off:
                label = "global" if scope == "*" else scope
                out_of_order.append(f"{label}: phase {later} on, phase {', '.join(map(str, earlier_off))} off")
                break
    if forced:
        out_of_order.insert(0, f"kill switch on for {', '.join(forced)} (every workspace)")
    if out_of_order:
        return warned("; ".join(out_of_order),
                      "enable phases in order (docs/operations.md, Enable phases); lift a kill switch with "
                      "`synthhost flags unset FLAG --workspace '*'`")
    return passed(f"{len(scopes)} scopes follow the phase order")


def _flag_scopes(host: Host) -> set[str]:
    import sqlalchemy as sa

    from synthhost.flags import FLAGS

    with host.engine.connect() as conn:
        return set(conn.execute(sa.select(FLAGS.c.workspace_id).distinct()).scalars())
