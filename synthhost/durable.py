"""Durable runs: agent runs as DBOS workflows, executed by ``synthhost worker`` processes.

A durable run is enqueued (``synthhost run --durable``, :meth:`Host.enqueue`,
``POST /v1/runs`` with ``"durable": true``, the scheduler) on a DBOS queue stored in the
database synthhost already uses (PostgreSQL: the ``dbos`` schema, or the schema of the
URL's ``search_path``; SQLite: a file next to the database, ``<db>.dbos``: one machine
only). Any number of workers, on any number of machines, dequeue from it. Each run is a
DBOS workflow; each model call and each tool call is one DBOS step (:mod:`synthhost.steps`:
a plain agent step is one step; a looped step's loop runs at workflow level and each of
its model turns and tool calls is a step): after a crash the run resumes at its first
unfinished step; completed steps return their checkpoint.

A run DBOS gives up on (past ``SYNTHHOST_MAX_RECOVERY_ATTEMPTS``, default 100; an error
escaping the workflow; cancelled in DBOS) while its row still says queued/running is
recorded by :meth:`Worker.reconcile`. ``SYNTHHOST_DRILL_CRASH_BEFORE_CHECKPOINT=<step>``
(crash drills): the worker exits (137) once that step's rows are written, before its
checkpoint.

Recovery without a control plane: every worker has its own DBOS executor id and writes
a heartbeat to ``durable_workers`` every ``SYNTHHOST_WORKER_HEARTBEAT_S`` (2 s). A live
worker that finds one silent for ``SYNTHHOST_WORKER_TTL_S`` (30 s) deletes its row (one
winner) and asks DBOS to recover that executor's pending workflows, which puts them back
on their queue for any worker of the same application version. A worker that stops
(SIGTERM) marks its row silent at once, so what it left unfinished is taken over at the
next heartbeat of another worker.

Limits: ``--concurrency`` per worker, ``SYNTHHOST_QUEUE_CONCURRENCY`` over all workers,
``SYNTHHOST_WORKSPACE_CONCURRENCY`` per workspace over all workers (the queue is
partitioned by workspace). Runs carry the application version (``SYNTHHOST_APP_VERSION``,
default synthhost's version): a worker only executes runs of its own version, so a new
version's workers start beside the old ones, which drain what they hold and stop.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import metadata
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from synthhost.call import new_id
from synthhost.errors import ErrorCode, UsageError
from synthhost.steps import scoped
from synthhost.storage.models import DurableWorker, Run
from synthhost.storage.writer import KEEP_FIRST

if TYPE_CHECKING:
    from dbos import DBOSClient

    from synthhost.agent import AgentSpec
    from synthhost.host import Host
    from synthhost.runner import RunState
    from synthhost.trace import RunResult

log = logging.getLogger("synthhost.durable")

QUEUE = "synthhost-runs"
WORKFLOW = "synthhost.run"
APP_NAME = "synthhost"
RUNS = Run.__table__  # type: ignore[attr-defined]
WORKERS = DurableWorker.__table__  # type: ignore[attr-defined]
FINISHED = ("ok", "error", "cancelled")
# DBOS' end states of a workflow that did not return, and what a run left unfinished by
# one is recorded with (Worker.reconcile, every RECONCILE_EVERY heartbeats).
DBOS_ENDED = {
    "MAX_RECOVERY_ATTEMPTS_EXCEEDED": "the run's workers died more than SYNTHHOST_MAX_RECOVERY_ATTEMPTS={} "
                                      "times while executing it; it is not recovered again",
    "ERROR": "the durable run's workflow failed",
    "CANCELLED": "run cancelled",
}
RECONCILE_EVERY = 5
RECONCILE_LIMIT = 1000


def _require_dbos() -> None:
    try:
        import dbos  # noqa: F401
    except ImportError:
        raise UsageError("durable runs need the 'durable' extra: pip install 'synthhost[durable]'") from None


def _number(env: Mapping[str, str], name: str, default: float | None, low: float, high: float) -> float | None:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
        if not low <= value <= high:
            raise ValueError
    except ValueError:
        raise UsageError(f"{name}={raw!r}: expected a number from {low:g} to {high:g}") from None
    return value


@dataclass(frozen=True)
class DurableConfig:
    """Where DBOS keeps its state and what this process's runs are tagged with."""

    system_url: str
    schema: str
    app_version: str
    heartbeat_s: float
    ttl_s: float
    queue_concurrency: int | None
    workspace_concurrency: int | None
    max_recovery_attempts: int = 100

    @classmethod
    def from_env(cls, database_url: str, env: Mapping[str, str]) -> DurableConfig:
        url = sa.make_url(database_url)
        if url.drivername.startswith("sqlite"):
            if not url.database or url.database == ":memory:":
                raise UsageError("durable runs need a database file or PostgreSQL (DATABASE_URL is in memory)")
            system_url, schema = f"sqlite:///{url.database}.dbos", "dbos"
        else:
            options = str(url.query.get("options", ""))
            # A search_path in the URL (the tests' per-test schemas) holds DBOS' tables too.
            schema = options.split("search_path=", 1)[1].split(",")[0].split()[0] if "search_path=" in options \
                else "dbos"
            system_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
        schema = env.get("SYNTHHOST_DBOS_SCHEMA") or schema
        heartbeat = _number(env, "SYNTHHOST_WORKER_HEARTBEAT_S", 2.0, 0.05, 3600)
        ttl = _number(env, "SYNTHHOST_WORKER_TTL_S", 30.0, 0.1, 86400)
        queue = _number(env, "SYNTHHOST_QUEUE_CONCURRENCY", None, 1, 1_000_000)
        workspace = _number(env, "SYNTHHOST_WORKSPACE_CONCURRENCY", None, 1, 1_000_000)
        attempts = _number(env, "SYNTHHOST_MAX_RECOVERY_ATTEMPTS", 100, 0, 1_000_000)
        assert heartbeat is not None and ttl is not None and attempts is not None
        return cls(system_url, schema, env.get("SYNTHHOST_APP_VERSION") or _version(), heartbeat, ttl,
                   None if queue is None else int(queue), None if workspace is None else int(workspace),
                   int(attempts))

    @classmethod
    def of(cls, host: Host) -> DurableConfig:
        return cls.from_env(host.settings.database_url, host.settings.env)


def _version() -> str:
    try:
        return metadata.version("synthhost")
    except metadata.PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "0"


def run_id_for(key: str) -> str:
    """The run id (and DBOS workflow id) of an idempotency key (``cron:<job>:<tick>``)."""
    import hashlib

    return hashlib.sha256(key.encode()).hexdigest()[:32]


# -- enqueueing (any process) -------------------------------------------------------------


_clients: dict[tuple[str, str], DBOSClient] = {}
_clients_lock = threading.Lock()


def _client(system_url: str, schema: str) -> DBOSClient:
    """One DBOS client per system database in this process (closed by :func:`close_clients`)."""
    from dbos import DBOS, DBOSClient

    with _clients_lock:
        client = _clients.get((system_url, schema))
        if client is None:
            DBOS.migrate(system_url, schema=schema)  # a worker may not have created it yet
            client = _clients[(system_url, schema)] = DBOSClient(
                system_database_url=system_url, dbos_system_schema=schema, application_name=APP_NAME)
        return client


def close_clients() -> None:
    """Close this process's DBOS clients (a host's stop; a later enqueue opens one again)."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.destroy()


def client_for(host: Host) -> DBOSClient:
    _require_dbos()
    config = DurableConfig.of(host)
    return _client(config.system_url, config.schema)


def enqueue(
    host: Host, spec: AgentSpec, *, inputs: Mapping[str, Any], workspace: str | None = None,
    user: str | None = None, org: str | None = None, key: str | None = None, queue: str = QUEUE,
) -> str:
    """Queue a durable run; returns its run id (also its DBOS workflow id). The run row
    exists (``queued``) before the run is on the queue. ``key`` makes enqueueing
    idempotent: the run id is derived from it, so the same key twice is one run (the
    scheduler's ``cron:<job>:<tick>``). Blocking (database I/O)."""
    from synthhost.agent import resolve_inputs

    _require_dbos()
    config = DurableConfig.of(host)
    ws = workspace or spec.workspace
    resolved = resolve_inputs(spec, dict(inputs))
    run_id = run_id_for(key) if key else new_id()
    request = {
        "run_id": run_id, "spec": spec.model_dump(mode="json"), "source": spec.source or spec.name,
        "inputs": dict(inputs), "workspace": ws, "user": user, "org": org,
        "salt": os.urandom(16).hex(),  # the run's ids derive from it (synthhost.call.IdScope)
    }
    now = datetime.now(UTC)
    host.writer.submit_values(RUNS, {
        "id": run_id, "trace_id": run_id, "workspace_id": ws, "user_id": user, "org_id": org,
        "agent": spec.name, "name": spec.name, "status": "queued", "started_at": now, "ended_at": None,
        "input": resolved, "output": None, "error_code": None, "error_message": None,
        "attributes": {"durable": True, "queue": queue, "app_version": config.app_version},
    }, upsert_on=(KEEP_FIRST, "id"))  # a second scheduler's enqueue never rewinds a run
    host.writer.flush_sync(host.settings.run_flush_timeout_s)
    client = _client(config.system_url, config.schema)
    client.enqueue({"queue_name": queue, "workflow_name": WORKFLOW, "workflow_id": run_id,
                    "app_version": config.app_version, "queue_partition_key": ws}, request)
    return run_id


def cancel(host: Host, run_id: str) -> str:
    """Cancel a durable run: a queued run never starts; a running one stops at its next
    step boundary (the worker records it ``cancelled``). Returns the run's status after."""
    client = client_for(host)
    with host.engine.connect() as conn:
        status = conn.execute(sa.select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar()
    if status is None:
        raise UsageError(f"no run {run_id!r}")
    if status in FINISHED:
        return str(status)
    if not is_durable(client, run_id):
        raise UsageError(f"run {run_id!r} is not a durable run (an in-process run stops with its process)")
    client.cancel_workflow(run_id)
    with host.engine.begin() as conn:  # a queued run has no worker to record it
        conn.execute(RUNS.update().where(RUNS.c.id == run_id, RUNS.c.status == "queued")
                     .values(status="cancelled", ended_at=datetime.now(UTC), error_code="CANCELLED",
                             error_message="run cancelled"))
        return str(conn.execute(sa.select(RUNS.c.status).where(RUNS.c.id == run_id)).scalar())


def is_durable(client: DBOSClient, run_id: str) -> bool:
    from dbos._error import DBOSNonExistentWorkflowError

    try:
        client.retrieve_workflow(run_id).get_status()
    except DBOSNonExistentWorkflowError:
        return False
    return True


def run_status(host: Host, run_id: str) -> dict[str, Any] | None:
    with host.engine.connect() as conn:
        row = conn.execute(sa.select(RUNS).where(RUNS.c.id == run_id)).mappings().first()
    return dict(row) if row is not None else None


def result_of(host: Host, row: Mapping[str, Any]) -> RunResult:
    """A finished run's :class:`RunResult` from its rows (run and step spans)."""
    from synthhost.storage.models import Span
    from synthhost.trace import RunResult, StepResult

    spans = Span.__table__  # type: ignore[attr-defined]
    with host.engine.connect() as conn:
        steps = conn.execute(sa.select(spans).where(spans.c.run_id == row["id"], spans.c.kind == "step")
                             .order_by(spans.c.started_at)).mappings().all()
    attributes = row["attributes"] or {}
    started, ended = row["started_at"], row["ended_at"]
    result = RunResult(
        row["id"], row["trace_id"], row["workspace_id"], row["agent"] or row["name"], row["status"],
        output=row["output"], error_code=row["error_code"], error_message=row["error_message"],
        cost_usd=attributes.get("cost_usd"),
        duration_ms=(ended - started).total_seconds() * 1000 if started and ended else 0.0,
    )
    for span in steps:
        attrs = span["attributes"] or {}
        result.steps.append(StepResult(span["name"], span["status"], attrs.get("output"), attrs.get("model"),
                                       span["error_code"], span["error_message"], span["id"]))
    return result


async def wait(host: Host, run_id: str, poll_s: float = 0.1) -> RunResult:
    """Wait until a durable run has finished (on whichever worker) and return it."""
    import anyio

    while True:
        row = await anyio.to_thread.run_sync(run_status, host, run_id)
        if row is not None and row["status"] in FINISHED:
            return await anyio.to_thread.run_sync(result_of, host, row)
        await anyio.sleep(poll_s)


WAIT_WINDOW_S = 300


def queue_stats(host: Host) -> dict[str, dict[str, Any]]:
    """Per queue: runs waiting (``queued``), executing (``running``), the oldest waiting
    run's age, and the queue wait (enqueue to start) p50/p95 of the runs started in the
    last five minutes, in seconds."""
    client = client_for(host)
    now = time.time() * 1000
    stats: dict[str, dict[str, Any]] = {}

    def row(queue: str | None) -> dict[str, Any]:
        return stats.setdefault(queue or QUEUE, {"queued": 0, "running": 0, "oldest_queued_age_s": None,
                                                 "wait_p50_s": None, "wait_p95_s": None, "started_5m": 0})

    for wf in client.list_queued_workflows(load_input=False, load_output=False):
        entry = row(wf.queue_name)
        if wf.status == "ENQUEUED":
            entry["queued"] += 1
            age = max(0.0, (now - (wf.created_at or now)) / 1000)
            entry["oldest_queued_age_s"] = max(age, entry["oldest_queued_age_s"] or 0.0)
        else:
            entry["running"] += 1
    since = datetime.fromtimestamp(now / 1000 - WAIT_WINDOW_S, UTC).isoformat()
    waits: dict[str, list[float]] = {}
    for wf in client.list_workflows(name=WORKFLOW, dequeued_after=since, load_input=False, load_output=False,
                                    limit=10_000, sort_desc=True):
        if wf.dequeued_at and wf.created_at:
            waits.setdefault(wf.queue_name or QUEUE, []).append(max(0.0, (wf.dequeued_at - wf.created_at) / 1000))
    for queue, values in waits.items():
        values.sort()
        entry = row(queue)
        entry["started_5m"] = len(values)
        entry["wait_p50_s"] = round(values[len(values) // 2], 3)
        entry["wait_p95_s"] = round(values[min(len(values) - 1, int(len(values) * 0.95))], 3)
    return stats


def live_workers(host: Host) -> list[dict[str, Any]]:
    config = DurableConfig.of(host)
    cutoff = datetime.now(UTC) - timedelta(seconds=config.ttl_s)
    with host.engine.connect() as conn:
        rows = conn.execute(sa.select(WORKERS).where(WORKERS.c.heartbeat_at >= cutoff)).mappings().all()
    return [dict(r) for r in rows]


# -- executing (synthhost worker) ---------------------------------------------------------

_worker_host: Host | None = None
_active: set[str] = set()  # runs executing in this process


def _workflow(max_recovery_attempts: int) -> Any:
    """The run workflow, registered with DBOS once per process (before launch)."""
    from dbos import DBOS

    @DBOS.workflow(name=WORKFLOW, max_recovery_attempts=max_recovery_attempts)
    async def durable_run(request: dict[str, Any]) -> dict[str, Any]:
        from synthhost.agent import parse_agent
        from synthhost.runner import run_agent

        host = _worker_host
        assert host is not None, "durable runs execute in synthhost worker"
        spec = parse_agent(json.dumps(request["spec"]), request["source"])
        salt, run_id = request["salt"], request["run_id"]

        async def step(run: RunState, name: str, body: Any) -> Any:
            record = await scoped(salt, f"{run.run_id}:{name}", body)
            # The step's rows (cost, events, spans) are durable before its checkpoint: a
            # replayed step is not executed again, so nothing would write them later.
            await host.wait_for_rows()
            if name == host.settings.env.get("SYNTHHOST_DRILL_CRASH_BEFORE_CHECKPOINT"):
                os._exit(137)  # crash drill: the step's rows are written, its checkpoint is not
            return record

        async def boundary(run: RunState, name: str, body: Any) -> Any:
            return await DBOS.run_step_async({"name": name}, step, run, name, body)

        async def run() -> Any:
            return await run_agent(host, spec, inputs=request["inputs"], workspace=request["workspace"],
                                   user=request["user"], org=request["org"], run_id=run_id, boundary=boundary)

        _active.add(run_id)
        try:
            result = await scoped(salt, f"{run_id}:run", run)
        finally:
            _active.discard(run_id)
        return {"run_id": result.run_id, "status": result.status, "output": result.output}

    return durable_run


_registered = threading.Lock()
_WORKFLOW: Any = None


def register_workflow(max_recovery_attempts: int = 100) -> None:
    global _WORKFLOW
    with _registered:
        if _WORKFLOW is None:
            _WORKFLOW = _workflow(max_recovery_attempts)


class Worker:
    """DBOS launched in this process on the host's database, listening to ``queues``,
    plus the heartbeat and recovery thread. ``start``/``stop`` block (call them from a
    thread, not the event loop)."""

    def __init__(self, host: Host, *, queues: tuple[str, ...] = (QUEUE,), concurrency: int = 4) -> None:
        _require_dbos()
        self.host = host
        self.config = DurableConfig.of(host)
        self.queues = queues
        self.concurrency = concurrency
        self.executor_id = f"{socket.gethostname()[:60]}:{os.getpid()}:{os.urandom(4).hex()}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.recovered: list[str] = []

    def start(self) -> None:
        global _worker_host
        from dbos import DBOS

        register_workflow(self.config.max_recovery_attempts)
        _worker_host = self.host
        DBOS(config={
            "name": APP_NAME, "system_database_url": self.config.system_url,
            "dbos_system_schema": self.config.schema, "application_version": self.config.app_version,
            "executor_id": self.executor_id, "log_level": os.environ.get("SYNTHHOST_DBOS_LOG_LEVEL", "WARNING"),
        })
        DBOS.listen_queues(list(self.queues))
        DBOS.launch()
        # DBOS refuses a per-worker or per-workspace limit above the global one; past it,
        # the global one binds anyway. Without a workspace limit, the partition is only
        # there so that every enqueue may name its workspace.
        total = self.config.queue_concurrency
        per_worker = min(self.concurrency, total or self.concurrency)
        per_workspace = min(self.config.workspace_concurrency or total or 1_000_000, total or 1_000_000)
        for name in self.queues:
            DBOS.register_queue(
                name, worker_concurrency=per_worker, global_concurrency=self.config.queue_concurrency,
                partition_concurrency=per_workspace,
                polling_interval_sec=float(self.host.settings.env.get("SYNTHHOST_QUEUE_POLL_S") or 0.2),
                on_conflict="always_update",
            )
        self._beat(first=True)
        self._thread = threading.Thread(target=self._loop, name="synthhost-durable-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """Stop taking runs, give the runs in flight ``timeout`` seconds, then abandon
        the rest as a crash would (nothing more written for them) and mark this
        worker's heartbeat silent: the next heartbeat of another worker puts them back
        on the queue, without waiting for the TTL."""
        global _worker_host
        from dbos import DBOS
        from dbos import _dbos as dbos_internals

        from synthhost.call import IdScope

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        instance = dbos_internals._dbos_global_instance
        try:
            # What DBOS.destroy does first (dequeuing stops), without its cancelling of the
            # runs in flight at the end of the wait: those must stop without writing.
            for event in getattr(instance, "background_thread_stop_events", []):
                event.set()
            deadline = time.monotonic() + timeout
            active = getattr(instance, "_active_workflows_set", None)  # until DBOS has recorded them done

            def busy() -> bool:
                return bool(_active) or (active is not None and bool(active.activeList()))

            while busy() and time.monotonic() < deadline:
                time.sleep(0.05)
            if _active:
                log.warning("worker stopping: %d run(s) unfinished after %gs, handed to other workers",
                            len(_active), timeout)
                IdScope.abandoned = True
            DBOS.destroy()
        finally:
            with self.host.engine.begin() as conn:
                conn.execute(WORKERS.update().where(WORKERS.c.executor_id == self.executor_id)
                             .values(heartbeat_at=datetime.fromtimestamp(0, UTC)))
            _worker_host = None

    def _loop(self) -> None:
        beats = 0
        while not self._stop.wait(self.config.heartbeat_s):
            beats += 1
            try:
                self._beat()
                self.recover_dead()
                if beats % RECONCILE_EVERY == 0:
                    self.reconcile()
            except Exception as exc:  # the database may be away: try at the next beat
                log.warning("durable heartbeat failed: %s: %s", type(exc).__name__, exc)

    def _beat(self, first: bool = False) -> None:
        now = datetime.now(UTC)
        with self.host.engine.begin() as conn:
            updated = conn.execute(WORKERS.update().where(WORKERS.c.executor_id == self.executor_id)
                                   .values(heartbeat_at=now)).rowcount
            if not updated:
                conn.execute(WORKERS.insert().values(
                    executor_id=self.executor_id, hostname=socket.gethostname()[:200], pid=os.getpid(),
                    app_version=self.config.app_version, queues=",".join(self.queues)[:1000],
                    concurrency=self.concurrency, started_at=now, heartbeat_at=now))

    def reconcile(self) -> list[str]:
        """Record the runs DBOS ended without them finishing: a workflow past
        ``SYNTHHOST_MAX_RECOVERY_ATTEMPTS`` (its workers kept dying), one an error escaped
        (``ERROR``), or one cancelled in DBOS while its run row still says ``queued`` or
        ``running``. They become ``error`` (``RUN_FAILED``, with the reason) or
        ``cancelled``; runs already finished are left alone. Returns the run ids changed."""
        from dbos import DBOS

        failed = DBOS.list_workflows(status=list(DBOS_ENDED), name=WORKFLOW, limit=RECONCILE_LIMIT,
                                     sort_desc=True, load_input=False)
        changed: list[str] = []
        for wf in failed:
            status, code, message = "error", ErrorCode.RUN_FAILED, DBOS_ENDED[wf.status]
            if wf.status == "CANCELLED":
                status, code = "cancelled", ErrorCode.CANCELLED
            elif wf.status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED":
                message = message.format(self.config.max_recovery_attempts)
            elif wf.error is not None:
                message += f": {type(wf.error).__name__}: {' '.join(str(wf.error).split())[:500]}"
            with self.host.engine.begin() as conn:
                if conn.execute(RUNS.update().where(RUNS.c.id == wf.workflow_id,
                                                    RUNS.c.status.in_(("queued", "running")))
                                .values(status=status, ended_at=datetime.now(UTC), error_code=code,
                                        error_message=message)).rowcount:
                    changed.append(wf.workflow_id)
        for run_id in changed:
            log.warning("durable run %s ended in DBOS without finishing: recorded it", run_id)
        return changed

    def recover_dead(self) -> list[str]:
        """Hand the pending runs of every worker of this version silent past the TTL to
        the queue again. Each dead worker is claimed by deleting its row: one winner."""
        from dbos import DBOS

        cutoff = datetime.now(UTC) - timedelta(seconds=self.config.ttl_s)
        with self.host.engine.connect() as conn:
            dead = conn.execute(sa.select(WORKERS.c.executor_id).where(
                WORKERS.c.heartbeat_at < cutoff, WORKERS.c.app_version == self.config.app_version,
                WORKERS.c.executor_id != self.executor_id)).scalars().all()
        taken = []
        for executor in dead:
            with self.host.engine.begin() as conn:
                won = conn.execute(WORKERS.delete().where(WORKERS.c.executor_id == executor,
                                                          WORKERS.c.heartbeat_at < cutoff)).rowcount
            if won:
                handles = DBOS._recover_pending_workflows([executor])
                log.warning("worker %s silent for %gs: %d run(s) back on the queue",
                            executor, self.config.ttl_s, len(handles))
                taken.append(executor)
                self.recovered.extend(h.get_workflow_id() for h in handles)
        return taken
