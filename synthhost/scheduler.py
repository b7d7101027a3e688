"""The scheduler: runs agents that have a cron ``schedule``, with failure backoff.

State lives in the host table ``cron_jobs`` (one row per workspace and agent), so it
survives restarts and is shared by every scheduler process on the same database:

- **Due**: a job is due when ``next_run_at <= now`` (UTC). A new job's first run is its
  next tick; a job whose ticks were missed (the scheduler was down) runs once, then
  continues from the next tick after now — missed ticks are never replayed in bulk.
- **Claim**: a process runs a due tick only after
  ``UPDATE ... SET next_run_at = :next WHERE id = :id AND next_run_at = :seen AND NOT
  disabled AND not running`` changed one row, so two processes never run the same tick.
  The claim takes a lease (``running_until``), renewed while the run lasts.
- **Overlap**: a tick that arrives while the previous run still holds its lease is
  skipped and counted (``skipped``, event ``cron_run_skipped``).
- **Backoff** (flag ``enable_cron_backoff``, per workspace, default off): after the n-th
  consecutive failure (a run whose result is not ok) the job does not run again until
  ``delay = min(initial * multiplier^(n-1), max)`` has passed, at the first tick of its
  schedule at or after that; after ``max_failures`` consecutive failures it is disabled
  until ``synthhost schedule enable``. A success resets the count. With the flag off,
  failures are still counted and shown but neither delay nor disable; a job disabled
  earlier (or by hand) stays disabled until re-enabled.

Settings (environment): ``SYNTHHOST_CRON_BACKOFF_INITIAL_S`` (60),
``SYNTHHOST_CRON_BACKOFF_MULTIPLIER`` (2), ``SYNTHHOST_CRON_BACKOFF_MAX_S`` (86400),
``SYNTHHOST_CRON_BACKOFF_MAX_FAILURES`` (10; 0 = never disable),
``SYNTHHOST_CRON_POLL_S`` (5: how often other processes' changes are read),
``SYNTHHOST_CRON_LEASE_S`` (600: a crashed scheduler's job is free again after this).

With the defaults the 24 h cap is never reached: the 10th failure (delay 60 * 2**9 s ≈
8.5 h) disables the job; the cap would first apply at failure 12 (60 * 2**11 s ≈ 34 h).
The defaults are the original system's; raise ``MAX_FAILURES`` (or set it to 0) for a
job that should keep retrying at most once a day.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import sqlalchemy as sa
from croniter import croniter
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Field, SQLModel

from synthhost.agent import AgentSpec, load_agent, resolve_inputs
from synthhost.default_plugins.scheduler import FLAG
from synthhost.errors import UsageError
from synthhost.storage.models import utcnow
from synthhost.traces import redact, secret_values

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from synthhost.host import Host
    from synthhost.trace import RunResult

log = logging.getLogger("synthhost.scheduler")

Clock = Callable[[], datetime]
Sleep = Callable[[float], Any]

ERROR_CAP = 2000  # characters of an error kept in ``cron_jobs.last_error``


# -- the table ----------------------------------------------------------------------------


def _ts(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=nullable))


class CronJob(SQLModel, table=True):
    """A scheduled agent's state (host migration ``0003_cron_jobs``)."""

    __tablename__ = "cron_jobs"
    __table_args__ = (sa.UniqueConstraint("workspace_id", "agent", name="uq_cron_jobs"),)

    id: int | None = Field(default=None, primary_key=True)
    workspace_id: str = Field(max_length=200)
    agent: str = Field(max_length=200)
    schedule: str | None = Field(default=None, max_length=200)
    next_run_at: datetime | None = _ts()
    failures: int = 0
    disabled: bool = False
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    last_run_at: datetime | None = _ts()
    last_status: str | None = Field(default=None, max_length=20)
    last_run_id: str | None = Field(default=None, max_length=32)
    skipped: int = 0
    running_by: str | None = Field(default=None, max_length=100)
    running_until: datetime | None = _ts()
    updated_at: datetime = Field(
        default_factory=utcnow, sa_column=sa.Column(sa.DateTime(timezone=True), nullable=False)
    )


JOBS: sa.Table = CronJob.__table__  # type: ignore[attr-defined]


# -- time ---------------------------------------------------------------------------------


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; every time here is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def next_tick(schedule: str, after: datetime) -> datetime:
    """The first tick of ``schedule`` strictly after ``after`` (UTC)."""
    result: datetime = croniter(schedule, after.astimezone(UTC)).get_next(datetime)
    return result.astimezone(UTC)


def tick_at_or_after(schedule: str, when: datetime) -> datetime:
    """The first tick of ``schedule`` at or after ``when``."""
    return next_tick(schedule, when - timedelta(microseconds=1))


# -- backoff ------------------------------------------------------------------------------


def _env_number(env: Mapping[str, str], name: str, default: float, *, minimum: float, integer: bool = False) -> float:
    raw = env.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise UsageError(f"{name}: expected {kind}, got {raw!r}") from None
    if not value >= minimum:  # also refuses NaN
        raise UsageError(f"{name}: must be >= {minimum:g}, got {raw!r}")
    return value


@dataclass(frozen=True)
class BackoffPolicy:
    """``delay(n) = min(initial_s * multiplier^(n-1), max_s)`` after the n-th consecutive
    failure; disabled at ``max_failures`` (0: never)."""

    initial_s: float = 60.0
    multiplier: float = 2.0
    max_s: float = 86400.0
    max_failures: int = 10

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> BackoffPolicy:
        env = os.environ if env is None else env
        prefix = "SYNTHHOST_CRON_BACKOFF_"
        initial = _env_number(env, prefix + "INITIAL_S", cls.initial_s, minimum=0)
        policy = cls(
            initial_s=initial,
            multiplier=_env_number(env, prefix + "MULTIPLIER", cls.multiplier, minimum=1),
            max_s=_env_number(env, prefix + "MAX_S", max(cls.max_s, initial), minimum=initial),
            max_failures=int(_env_number(env, prefix + "MAX_FAILURES", cls.max_failures, minimum=0, integer=True)),
        )
        return policy

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th consecutive failure."""
        try:
            return min(self.initial_s * self.multiplier ** max(failures - 1, 0), self.max_s)
        except OverflowError:
            return self.max_s

    def disables(self, failures: int) -> bool:
        return self.max_failures > 0 and failures >= self.max_failures


@dataclass(frozen=True)
class Decision:
    """What a failure does to the job: when it runs next, the backoff delay applied (None
    when none), and whether it is now disabled."""

    next_run_at: datetime | None
    delay_s: float | None = None
    disable: bool = False


def after_failure(
    schedule: str, failures: int, failed_at: datetime, scheduled_next: datetime | None,
    policy: BackoffPolicy, backoff: bool,
) -> Decision:
    """The consequence of the ``failures``-th consecutive failure at ``failed_at``;
    ``scheduled_next`` is the tick the job was already set to run at."""
    if not backoff:
        return Decision(scheduled_next)
    if policy.disables(failures):
        return Decision(scheduled_next, disable=True)
    delay = policy.delay(failures)
    resume = tick_at_or_after(schedule, failed_at + timedelta(seconds=delay))
    return Decision(max(resume, scheduled_next) if scheduled_next else resume, delay)


# -- state --------------------------------------------------------------------------------


@dataclass
class JobState:
    """A ``cron_jobs`` row."""

    id: int
    workspace: str
    agent: str
    schedule: str | None
    next_run_at: datetime | None
    failures: int
    disabled: bool
    last_error: str | None
    last_run_at: datetime | None
    last_status: str | None
    last_run_id: str | None
    skipped: int
    running_by: str | None
    running_until: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> JobState:
        return cls(
            id=row["id"], workspace=row["workspace_id"], agent=row["agent"], schedule=row["schedule"],
            next_run_at=aware(row["next_run_at"]), failures=int(row["failures"] or 0),
            disabled=bool(row["disabled"]), last_error=row["last_error"],
            last_run_at=aware(row["last_run_at"]), last_status=row["last_status"],
            last_run_id=row["last_run_id"], skipped=int(row["skipped"] or 0), running_by=row["running_by"],
            running_until=aware(row["running_until"]), updated_at=aware(row["updated_at"]),
        )

    @property
    def key(self) -> tuple[str, str]:
        return (self.workspace, self.agent)

    def running(self, now: datetime) -> bool:
        return self.running_until is not None and self.running_until > now

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        def iso(value: datetime | None) -> str | None:
            return value.isoformat().replace("+00:00", "Z") if value else None

        return {
            "workspace": self.workspace, "agent": self.agent, "schedule": self.schedule,
            "next_run_at": iso(self.next_run_at), "failures": self.failures, "disabled": self.disabled,
            "running": self.running(now or utcnow()), "last_run_at": iso(self.last_run_at),
            "last_status": self.last_status, "last_run_id": self.last_run_id, "last_error": self.last_error,
            "skipped": self.skipped, "updated_at": iso(self.updated_at),
        }


class CronStore:
    """Reads and atomic updates of ``cron_jobs`` (synchronous; the scheduler calls it in
    worker threads)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    # reads

    def list(self, workspace: str | None = None) -> list[JobState]:
        query = sa.select(JOBS).order_by(JOBS.c.workspace_id, JOBS.c.agent)
        if workspace is not None:
            query = query.where(JOBS.c.workspace_id == workspace)
        with self.engine.connect() as conn:
            return [JobState.from_row(r) for r in conn.execute(query).mappings()]

    def get(self, workspace: str, agent: str) -> JobState | None:
        query = sa.select(JOBS).where(JOBS.c.workspace_id == workspace, JOBS.c.agent == agent)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return JobState.from_row(row) if row else None

    def find(self, agent: str, workspace: str | None = None) -> JobState:
        """The job named ``agent`` (in ``workspace``, or in the only workspace that has
        one). Raises :class:`UsageError`."""
        matches = [j for j in self.list(workspace) if j.agent == agent]
        if len(matches) == 1:
            return matches[0]
        if matches:
            spaces = ", ".join(j.workspace for j in matches)
            raise UsageError(f"agent {agent!r} is scheduled in several workspaces ({spaces}): pass --workspace")
        known = ", ".join(sorted({j.agent for j in self.list(workspace)})) or "none"
        where = f" in workspace {workspace!r}" if workspace else ""
        raise UsageError(f"no scheduled agent {agent!r}{where} (known: {known})")

    # writes

    def ensure(self, workspace: str, agent: str, schedule: str, now: datetime) -> JobState:
        """The job's row, created on first sight (first run: the next tick). A changed
        schedule reschedules it from now; failures and disabled are kept."""
        values = {"workspace_id": workspace, "agent": agent, "schedule": schedule,
                  "next_run_at": next_tick(schedule, now), "failures": 0, "disabled": False,
                  "skipped": 0, "updated_at": now}
        with self.engine.begin() as conn:
            dialect = conn.dialect.name
            if dialect in ("sqlite", "postgresql"):
                insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
                stmt = insert(JOBS).values(**values).on_conflict_do_nothing(
                    index_elements=["workspace_id", "agent"])
                conn.execute(stmt)
            else:  # pragma: no cover - other databases: insert, tolerate the race
                try:
                    with conn.begin_nested():
                        conn.execute(JOBS.insert().values(**values))
                except sa.exc.IntegrityError:
                    pass
        state = self.get(workspace, agent)
        assert state is not None
        if state.schedule != schedule or state.next_run_at is None:
            with self.engine.begin() as conn:
                conn.execute(
                    JOBS.update()
                    .where(JOBS.c.id == state.id, JOBS.c.schedule.is_not_distinct_from(state.schedule))
                    .values(schedule=schedule, next_run_at=next_tick(schedule, now), updated_at=now)
                )
            state = self.get(workspace, agent)
            assert state is not None
        return state

    def claim(self, job: JobState, next_run_at: datetime, now: datetime, lease_until: datetime, owner: str) -> bool:
        """Take the tick ``job.next_run_at``: true for exactly one caller per tick."""
        stmt = (
            JOBS.update()
            .where(
                JOBS.c.id == job.id,
                JOBS.c.next_run_at == job.next_run_at,
                JOBS.c.disabled.is_(sa.false()),
                sa.or_(JOBS.c.running_until.is_(None), JOBS.c.running_until <= now),
            )
            .values(next_run_at=next_run_at, last_run_at=now, running_by=owner, running_until=lease_until,
                    updated_at=now)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    def skip(self, job: JobState, next_run_at: datetime, now: datetime) -> bool:
        """Skip the tick ``job.next_run_at`` because the previous run still holds its
        lease: true for exactly one caller per tick."""
        stmt = (
            JOBS.update()
            .where(
                JOBS.c.id == job.id,
                JOBS.c.next_run_at == job.next_run_at,
                JOBS.c.disabled.is_(sa.false()),
                JOBS.c.running_until > now,
            )
            .values(next_run_at=next_run_at, skipped=JOBS.c.skipped + 1, updated_at=now)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).rowcount == 1

    @staticmethod
    def _release(owner: str) -> dict[str, Any]:
        # Only our own lease: if it expired and another process took the job, keep theirs.
        mine = JOBS.c.running_by == owner
        return {"running_by": sa.case((mine, None), else_=JOBS.c.running_by),
                "running_until": sa.case((mine, None), else_=JOBS.c.running_until)}

    def renew(self, job_id: int, owner: str, lease_until: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(JOBS.update().where(JOBS.c.id == job_id, JOBS.c.running_by == owner)
                         .values(running_until=lease_until))

    def record_success(self, job_id: int, owner: str, run_id: str, now: datetime) -> None:
        with self.engine.begin() as conn:
            conn.execute(JOBS.update().where(JOBS.c.id == job_id).values(
                failures=0, last_status="ok", last_error=None, last_run_id=run_id, updated_at=now,
                **self._release(owner)))

    def record_failure(
        self, job_id: int, owner: str, run_id: str | None, error: str, now: datetime,
        decide: Callable[[int, datetime | None], Decision],
    ) -> tuple[JobState, Decision]:
        """Count a failure and apply ``decide(failures, next_run_at)``, in one
        transaction (the row stays locked between the two updates)."""
        with self.engine.begin() as conn:
            conn.execute(JOBS.update().where(JOBS.c.id == job_id).values(
                failures=JOBS.c.failures + 1, last_status="error", last_error=error[:ERROR_CAP],
                last_run_id=run_id, updated_at=now, **self._release(owner)))
            row = JobState.from_row(conn.execute(sa.select(JOBS).where(JOBS.c.id == job_id)).mappings().one())
            decision = decide(row.failures, row.next_run_at)
            if decision.disable or decision.next_run_at != row.next_run_at:
                conn.execute(JOBS.update().where(JOBS.c.id == job_id).values(
                    next_run_at=decision.next_run_at, disabled=row.disabled or decision.disable))
                row.next_run_at, row.disabled = decision.next_run_at, row.disabled or decision.disable
        return row, decision

    def release(self, job_id: int, owner: str, status: str, now: datetime) -> None:
        """The run was cancelled (Ctrl-C, SIGTERM): free the job, count nothing."""
        with self.engine.begin() as conn:
            conn.execute(JOBS.update().where(JOBS.c.id == job_id, JOBS.c.running_by == owner).values(
                last_status=status, updated_at=now, running_by=None, running_until=None))

    def set_enabled(self, job: JobState, enabled: bool, now: datetime) -> JobState:
        """Disable, or re-enable: clears failures and any backoff (next run: the next
        tick)."""
        values: dict[str, Any] = {"disabled": not enabled, "updated_at": now}
        if enabled:
            values["failures"] = 0
            if job.schedule:
                values["next_run_at"] = next_tick(job.schedule, now)
        with self.engine.begin() as conn:
            conn.execute(JOBS.update().where(JOBS.c.id == job.id).values(**values))
        state = self.get(job.workspace, job.agent)
        assert state is not None
        return state


# -- jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """An agent to run on its schedule, in a workspace."""

    spec: AgentSpec
    workspace: str

    @property
    def agent(self) -> str:
        return self.spec.name

    @property
    def schedule(self) -> str:
        assert self.spec.schedule is not None
        return self.spec.schedule

    @property
    def key(self) -> tuple[str, str]:
        return (self.workspace, self.agent)

    @property
    def label(self) -> str:
        return f"{self.workspace}/{self.agent}"


def load_jobs(paths: Iterable[str | Path], workspace: str | None = None) -> list[Job]:
    """Agents with a ``schedule`` from files and directories (their ``*.yaml``/``*.yml``;
    those without a schedule are ignored). A file named explicitly must have one. Raises
    :class:`UsageError`."""
    if workspace is not None and not workspace.strip():
        raise UsageError("--workspace: must not be empty")
    jobs: dict[tuple[str, str], tuple[Job, str]] = {}
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            specs = [load_agent(p) for p in files]
            specs = [s for s in specs if s.schedule]
        else:
            spec = load_agent(path)
            if not spec.schedule:
                raise UsageError(f"{path}: agent {spec.name!r} has no schedule (add e.g. schedule: \"0 * * * *\")")
            specs = [spec]
        for spec in specs:
            try:
                resolve_inputs(spec, {})
            except UsageError as exc:
                raise UsageError(f"{exc.message} (a scheduled run has no inputs: give it a default)") from None
            job = Job(spec, workspace or spec.workspace)
            if job.key in jobs:
                raise UsageError(f"{spec.source}: agent {job.label} is also defined in {jobs[job.key][1]}")
            jobs[job.key] = (job, spec.source)
    if not jobs:
        raise UsageError(f"no agent with a schedule in {', '.join(map(str, paths)) or 'no paths'}")
    return [job for job, _ in jobs.values()]


# -- the scheduler ------------------------------------------------------------------------


Kind = Literal["ok", "error", "skipped", "cancelled"]


@dataclass
class Outcome:
    """What happened to one tick of one job."""

    job: Job
    kind: Kind
    scheduled_for: datetime
    run_id: str | None = None
    error: str | None = None
    failures: int = 0
    next_run_at: datetime | None = None
    delay_s: float | None = None
    disabled: bool = False
    duration_ms: float = 0.0


@dataclass
class Summary:
    runs: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    outcomes: list[Outcome] = field(default_factory=list)


def _owner() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Scheduler:
    """Runs ``jobs`` through ``host.run`` when due. ``clock`` returns aware UTC datetimes
    (tests inject one); ``on_outcome`` sees every finished or skipped tick."""

    def __init__(
        self,
        host: Host,
        jobs: Sequence[Job],
        *,
        clock: Clock = utcnow,
        policy: BackoffPolicy | None = None,
        poll_s: float | None = None,
        lease_s: float | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        durable: bool = False,
    ) -> None:
        env = host.settings.env
        self.host = host
        self.durable = durable
        self.jobs = list(jobs)
        self.clock = clock
        self.policy = policy or BackoffPolicy.from_env(env)
        self.poll_s = poll_s if poll_s is not None else _env_number(env, "SYNTHHOST_CRON_POLL_S", 5.0, minimum=0.01)
        self.lease_s = lease_s if lease_s is not None else _env_number(env, "SYNTHHOST_CRON_LEASE_S", 600.0,
                                                                       minimum=1)
        self.on_outcome = on_outcome
        self.store = CronStore(host.engine)
        self.owner = _owner()
        self.summary = Summary()
        self.states: dict[tuple[str, str], JobState] = {}
        self._secrets = secret_values(env)

    # -- one pass -------------------------------------------------------------------------

    async def prepare(self) -> None:
        """Create or update every job's row."""
        now = self.clock()
        for job in self.jobs:
            self.states[job.key] = await anyio.to_thread.run_sync(
                self.store.ensure, job.workspace, job.agent, job.schedule, now)

    async def run_pending(self, max_runs: int | None = None) -> Summary:
        """Run every job due now (concurrently) and wait for them: ``--once``."""
        if not self.states:
            await self.prepare()
        async with anyio.create_task_group() as tg:
            await self._pass(tg, max_runs)
        return self.summary

    async def _refresh(self) -> None:
        workspaces = {job.workspace for job in self.jobs}
        rows = await anyio.to_thread.run_sync(
            lambda: [s for w in sorted(workspaces) for s in self.store.list(w)])
        by_key = {s.key: s for s in rows}
        now = self.clock()
        for job in self.jobs:
            state = by_key.get(job.key)
            if state is None:  # deleted under us (db downgrade, manual clean-up): start afresh
                state = await anyio.to_thread.run_sync(self.store.ensure, job.workspace, job.agent,
                                                       job.schedule, now)
            self.states[job.key] = state

    async def _pass(self, tg: TaskGroup, max_runs: int | None) -> None:
        await self._refresh()
        now = self.clock()
        for job in self.jobs:
            state = self.states[job.key]
            if state.disabled or state.next_run_at is None or state.next_run_at > now:
                continue
            if max_runs is not None and self.summary.runs >= max_runs:
                return
            seen = state.next_run_at
            following = next_tick(job.schedule, now)  # missed ticks collapse into this one run
            if state.running(now):
                if await anyio.to_thread.run_sync(self.store.skip, state, following, now):
                    state.next_run_at = following
                    self._skipped(job, seen, following)
                continue
            lease = now + timedelta(seconds=self.lease_s)
            if not await anyio.to_thread.run_sync(self.store.claim, state, following, now, lease, self.owner):
                self.host.stats["cron.claims_lost"] += 1  # another scheduler took it
                continue
            state.next_run_at, state.running_by, state.running_until = following, self.owner, lease
            self.summary.runs += 1
            self.host.stats["cron.runs"] += 1
            tg.start_soon(self._execute, job, state.id, seen)

    def _skipped(self, job: Job, seen: datetime, following: datetime) -> None:
        self.summary.skipped += 1
        self.host.stats["cron.skipped"] += 1
        self.host.emit("cron_run_skipped", workspace=job.workspace, agent=job.agent,
                       scheduled_for=seen.isoformat(), reason="previous run still running",
                       next_run_at=following.isoformat())
        self._report(Outcome(job, "skipped", seen, next_run_at=following))

    # -- one run --------------------------------------------------------------------------

    async def _renew(self, job_id: int) -> None:
        while True:
            await anyio.sleep(self.lease_s / 3)
            until = self.clock() + timedelta(seconds=self.lease_s)
            try:
                await anyio.to_thread.run_sync(self.store.renew, job_id, self.owner, until)
            except Exception as exc:  # the run goes on; the lease may lapse
                log.warning("could not renew the lease of cron job %s: %s", job_id, exc)

    async def _execute(self, job: Job, job_id: int, scheduled_for: datetime) -> None:
        started = time.perf_counter()
        result: RunResult | None = None
        crash: str | None = None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._renew, job_id)
                try:
                    result = await (self._durable(job, scheduled_for) if self.durable
                                    else self.host.run(job.spec, workspace=job.workspace))
                except Exception as exc:  # never takes the scheduler down; counts as a failure
                    crash = f"{type(exc).__name__}: {exc}"
                finally:
                    tg.cancel_scope.cancel()
        except BaseException:  # cancelled: free the job for the next tick, count nothing
            with anyio.CancelScope(shield=True):
                try:
                    await anyio.to_thread.run_sync(self.store.release, job_id, self.owner, "cancelled",
                                                   self.clock())
                except Exception as exc:
                    log.warning("could not release cron job %s: %s", job_id, exc)
            self._report(Outcome(job, "cancelled", scheduled_for))
            raise
        duration = (time.perf_counter() - started) * 1000
        try:
            await self._record(job, job_id, scheduled_for, result, crash, duration)
        except Exception as exc:  # database away: the lease lapses and the job is free again
            self.host.stats["cron.db_errors"] += 1
            log.error("could not record the outcome of %s: %s", job.label, exc)

    async def _durable(self, job: Job, scheduled_for: datetime) -> RunResult:
        """The tick as a durable run on the workers, waited for (so overlap, backoff and
        re-enable work as in process). Its id comes from ``cron:<job>:<tick>``: one run
        per tick however many schedulers claim or retry it."""
        from synthhost import durable

        key = f"cron:{job.workspace}/{job.agent}:{scheduled_for.astimezone(UTC).isoformat()}"
        run_id = await anyio.to_thread.run_sync(functools.partial(
            durable.enqueue, self.host, job.spec, inputs={}, workspace=job.workspace, key=key))
        return await durable.wait(self.host, run_id)

    async def _record(self, job: Job, job_id: int, scheduled_for: datetime, result: RunResult | None,
                      crash: str | None, duration: float) -> None:
        now = self.clock()
        run_id = result.run_id if result else None
        if result is not None and result.ok:
            await anyio.to_thread.run_sync(self.store.record_success, job_id, self.owner, result.run_id, now)
            self.summary.ok += 1
            self._report(Outcome(job, "ok", scheduled_for, run_id=run_id, duration_ms=duration,
                                 next_run_at=self.states[job.key].next_run_at))
            return
        code = (result.error_code if result else None) or "ERROR"
        message = crash or (result.error_message if result else None) or "run failed"
        error = str(redact(f"{code}: {' '.join(message.split())}", self._secrets))
        backoff = self.host.flags.is_enabled(job.workspace, FLAG)

        def decide(failures: int, scheduled_next: datetime | None) -> Decision:
            return after_failure(job.schedule, failures, now, scheduled_next, self.policy, backoff)

        state, decision = await anyio.to_thread.run_sync(
            self.store.record_failure, job_id, self.owner, run_id, error, now, decide)
        self.states[job.key] = state
        self.summary.failed += 1
        self.host.stats["cron.failures"] += 1
        trace_id = result.trace_id if result else None
        self.host.emit("cron_run_failed", workspace=job.workspace, status="error", agent=job.agent,
                       scheduled_for=scheduled_for.isoformat(), error_code=code, error=error,
                       failures=state.failures, backoff=backoff, run_id=run_id, trace_id=trace_id)
        if decision.disable:
            self.host.emit("cron_job_disabled", workspace=job.workspace, status="error", agent=job.agent,
                           reason="max_failures", failures=state.failures,
                           max_failures=self.policy.max_failures, run_id=run_id, trace_id=trace_id)
        elif decision.delay_s is not None:
            self.host.emit("cron_backoff", workspace=job.workspace, agent=job.agent, delay_s=decision.delay_s,
                           failures=state.failures, next_run_at=_iso(decision.next_run_at), run_id=run_id,
                           trace_id=trace_id)
        self._report(Outcome(job, "error", scheduled_for, run_id=run_id, error=error, failures=state.failures,
                             next_run_at=state.next_run_at, delay_s=decision.delay_s, disabled=state.disabled,
                             duration_ms=duration))

    def _report(self, outcome: Outcome) -> None:
        self.summary.outcomes.append(outcome)
        if self.on_outcome is not None:
            try:
                self.on_outcome(outcome)
            except Exception as exc:  # printing must not stop scheduling
                log.warning("on_outcome failed: %s", exc)

    # -- the loop -------------------------------------------------------------------------

    def _next_wake(self, now: datetime) -> datetime:
        due = [s.next_run_at for s in self.states.values() if not s.disabled and s.next_run_at is not None]
        return min([*due, now + timedelta(seconds=self.poll_s)])

    async def serve(
        self, *, until: float | None = None, max_runs: int | None = None, sleep: Sleep = anyio.sleep,
    ) -> Summary:
        """Run jobs when due until ``until`` seconds have passed on the clock, ``max_runs``
        runs have started, or the caller cancels (Ctrl-C). Runs in flight are waited
        for (or, on cancellation, recorded as cancelled and their jobs freed)."""
        deadline = None if until is None else self.clock() + timedelta(seconds=until)
        await self.prepare()
        async with anyio.create_task_group() as tg:
            while True:
                now = self.clock()
                if deadline is not None and now >= deadline:
                    break
                try:
                    await self._pass(tg, max_runs)
                except (sa.exc.OperationalError, sa.exc.InterfaceError) as exc:  # database away: keep trying
                    log.warning("scheduler: database error, retrying in %.1f s: %s", self.poll_s, exc)
                    self.host.stats["cron.db_errors"] += 1
                if max_runs is not None and self.summary.runs >= max_runs:
                    break
                now = self.clock()
                wake = self._next_wake(now)
                if deadline is not None:
                    wake = min(wake, deadline)
                await sleep(max((wake - now).total_seconds(), 0.01))
        return self.summary


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None
