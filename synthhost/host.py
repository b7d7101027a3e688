"""The host: plugins, flags, storage and providers, and the lifecycle around them.

The call chain itself lives in :mod:`synthhost.chain`, runs in :mod:`synthhost.runner`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, cast

import anyio
import sqlalchemy as sa

from synthhost import gil
from synthhost.call import Call, Response, StreamDelta, new_id
from synthhost.chain import Chains
from synthhost.errors import StorageUnavailable, UnknownProvider
from synthhost.flags import FlagStore
from synthhost.models import Deployment, ModelList, build_provider, env_api_key_names
from synthhost.outbox import OUTBOX_INSERT, OutboxWorker, outbox_rows
from synthhost.plugins import PluginSet, running_under_tests
from synthhost.registry import Provider, RegistrationError, Registry
from synthhost.settings import Settings
from synthhost.storage import db, spool
from synthhost.storage.models import EventLog, utcnow
from synthhost.storage.writer import BatchedWriter
from synthhost.trace import EventRecord
from synthhost.traces import Redactor, redact, secret_values
from synthhost.workspace import validate_workspace

if TYPE_CHECKING:
    from synthhost.agent import AgentSpec
    from synthhost.hooktiming import HookTimings
    from synthhost.streaming import ResponseStream
    from synthhost.trace import RunResult, StepResult

log = logging.getLogger("synthhost")

EVENTS = EventLog.__table__  # type: ignore[attr-defined]


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    if not raw.isdigit() or int(raw) < 1:
        from synthhost.errors import UsageError

        raise UsageError(f"{name}={raw!r}: expected a positive integer")
    return int(raw)


class _Redactor:
    """Masks secrets in a row's JSON columns (runs in the writer thread)."""

    JSON_COLUMNS = ("attributes", "input", "output", "context", "error_message")

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self.redact = Redactor(secrets)

    def __call__(self, values: dict[str, Any]) -> dict[str, Any]:
        redact_ = self.redact
        for column in self.JSON_COLUMNS:
            value = values.get(column)
            if value is not None:
                values[column] = redact_(value)
        return values


def _deployment_provider(deployment: Deployment, host: Host) -> Provider:
    return cast(Provider, build_provider(deployment, host.settings.env))


class Host:
    """One host process's view of plugins, flags, storage and providers.

    Public attributes plugins may use (from ``startup(host)`` or ``call.host``):

    - ``settings``: :class:`synthhost.settings.Settings` (``settings.env`` has the env).
    - ``registry``: what plugins registered (flags, gates, providers, exporters...).
    - ``engine``: the SQLAlchemy (sync) engine. Reads off the call path only, or in a
      worker thread (``anyio.to_thread.run_sync``).
    - ``writer``: the batched writer; ``host.writer.submit(row)`` queues an SQLModel row
      (never blocks, group-committed in the background); ``await host.writer.flush()``.
    - ``flags``: the flag store; ``host.flags.is_enabled(workspace, name)`` is a dict
      look-up; ``host.flags.set(name, enabled, workspace=None)`` writes through.
    - ``stats``: ``collections.Counter`` of host counters (``plugin_errors``...).
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        plugins: Iterable[ModuleType | object] = (),
        load_entrypoints: bool | None = None,
    ) -> None:
        self.settings = settings or Settings.from_env()
        self.stats: Counter[str] = Counter()
        # Per-plugin hook durations (synthhost.hooktiming), set by whoever exports them
        # (``synthhost serve``'s /metrics) before the first call; None: hooks are not timed.
        self.hook_timings: HookTimings | None = None
        self._froze_heap = False
        self.plugins = PluginSet()
        self.plugins.register_defaults()
        if load_entrypoints is None:
            load_entrypoints = not running_under_tests()
        if load_entrypoints:
            self.plugins.load_entrypoints(self.settings.env)
        self.plugins.register_all(plugins)
        self.pm = self.plugins.pm
        self.registry = self._collect_registrations()
        self.models = self._load_models()
        self.engine = db.create_engine(self.settings.database_url)
        self.writer = BatchedWriter(self.engine, stats=self.stats, max_pending=_positive_int(
            self.settings.env, "SYNTHHOST_WRITER_MAX_PENDING", 50_000))
        self._secrets = secret_values(self.settings.env)
        # A deployment's key may sit under any variable name: redact those values too.
        extra = [v for k in env_api_key_names(self.models) if len(v := self.settings.env.get(k, "")) >= 8]
        self._secrets = sorted({*self._secrets, *extra}, key=len, reverse=True)
        redactor = _Redactor(self._secrets)
        for table in ("spans", "runs", "event_logs"):
            self.writer.transforms[table] = redactor
        self.flags = FlagStore(self.engine, self.registry.flags, self.settings.flag_refresh_s)
        self.chains = Chains(self)
        self._providers: dict[str, Provider] = {}
        self._started = False
        self._outbox: Any = None
        self._on_emit: list[Callable[[dict[str, Any]], None]] = []
        # Events of runs in progress, by run id: emit() appends in O(1), whatever the
        # number of concurrent runs (no per-event scan of listeners).
        self._run_events: dict[str, list[EventRecord]] = {}
        self._valid_workspaces: set[str] = set()
        # Where the outbox is delivered: ``inline`` (threads of this process, the
        # default), ``worker`` (``synthhost worker`` processes deliver; this process only
        # queues) or ``off`` (queued, delivered by nobody until a worker runs).
        self.delivery = (self.settings.env.get("SYNTHHOST_DELIVERY") or "inline").strip().lower()
        if self.delivery not in ("inline", "worker", "off"):
            from synthhost.errors import UsageError

            raise UsageError(f"SYNTHHOST_DELIVERY={self.delivery!r}: expected inline, worker or off")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Host:
        return cls(Settings.from_env(env), **kwargs)

    # -- registration ------------------------------------------------------------------

    def _collect_registrations(self) -> Registry:
        """Call every registration hook impl on its own, with callbacks bound to the
        plugin, so the registry knows who declared what."""
        reg = Registry()
        hook = self.pm.hook

        def declare(hook_name: str, impl: Any, register: Callable[..., None]) -> None:
            if impl.function(register=register) is not None:
                raise RegistrationError(f"plugin {impl.plugin_name!r}: {hook_name} must return None "
                                        "(declare through the register callback)")

        for impl in hook.register_flags.get_hookimpls():
            declare("register_flags", impl, lambda name, default=False, description="", _p=impl.plugin_name:
                    reg.add_flag(_p, name, default, description))
        for impl in hook.register_gate.get_hookimpls():
            p = impl.plugin_name
            declare("register_gate", impl, lambda gate, _p=p, **kw: reg.add_gate(_p, gate, **kw))
        for impl in hook.register_migrations.get_hookimpls():
            p = impl.plugin_name
            declare("register_migrations", impl, lambda path, _p=p: reg.add_migrations(_p, path))
        for impl in hook.register_providers.get_hookimpls():
            p = impl.plugin_name
            builtin = self.plugins.info[p].default if p in self.plugins.info else False
            declare("register_providers", impl, lambda name, factory, _p=p, _b=builtin:
                    reg.add_provider(_p, name, factory, builtin=_b))
        for impl in hook.register_exporters.get_hookimpls():
            p = impl.plugin_name
            declare("register_exporters", impl, lambda name, factory, _p=p, **kw:
                    reg.add_exporter(_p, name, factory, **kw))
        for impl in hook.register_health_checks.get_hookimpls():
            p = impl.plugin_name
            declare("register_health_checks", impl, lambda name, check, _p=p: reg.add_health_check(_p, name, check))
        for impl in hook.register_checks.get_hookimpls():
            p = impl.plugin_name
            declare("register_checks", impl, lambda name, check, _p=p, **kw: reg.add_check(_p, name, check, **kw))
        for impl in hook.register_retention.get_hookimpls():
            p = impl.plugin_name
            declare("register_retention", impl, lambda table, time_column="created_at", _p=p, **kw:
                    reg.add_retention(_p, table, time_column, **kw))
        for impl in hook.register_routes.get_hookimpls():
            p = impl.plugin_name
            declare("register_routes", impl, lambda path, endpoint, _p=p, **kw: reg.add_route(_p, path, endpoint, **kw))
        for impl in hook.register_tools.get_hookimpls():
            p = impl.plugin_name
            declare("register_tools", impl, lambda tool, _p=p, **kw: reg.add_tool(_p, tool, **kw))
        for name, gate in reg.gates.items():
            if isinstance(gate.gate, str) and gate.gate not in reg.flags:
                raise RegistrationError(f"plugin {name!r} is gated by undeclared flag {gate.gate!r}")
        return reg

    def _load_models(self) -> ModelList:
        """The model list; each deployment is also a provider named after it."""
        models = ModelList.from_env(self.settings.env)
        for d in models.deployments.values():
            self.registry.add_provider("synthhost.models", d.name, functools.partial(_deployment_provider, d))
        return models

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._started:
            return
        if self.settings.auto_migrate:
            await anyio.to_thread.run_sync(self.migrate)
        await anyio.to_thread.run_sync(self.flags.reload)
        self.flags.start()
        self.writer.start()
        if self.registry.exporters and self.delivery == "inline":
            self._outbox = OutboxWorker(self)
            self._outbox.start()
        self._started = True
        for impl in self.chains.ordered_all("startup"):
            await self.chains.call_plain(impl, {"host": self})
        # After the plugins' startup: tables plugins define lazily are known by now.
        await anyio.to_thread.run_sync(self._replay_spool)
        if self.settings.gc_freeze:
            gil.freeze_heap()
            self._froze_heap = True

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        deadline = self.settings.shutdown_timeout_s
        with anyio.CancelScope(shield=True), anyio.move_on_after(deadline):
            for impl in reversed(self.chains.ordered_all("shutdown")):
                try:
                    await self.chains.call_plain(impl, {"host": self})
                except Exception as exc:
                    log.error("plugin %s failed to shut down: %s", impl.plugin_name, exc)
            for provider in self._providers.values():
                aclose = getattr(provider, "aclose", None)
                if aclose is not None:
                    with contextlib.suppress(Exception):
                        await aclose()
        await anyio.to_thread.run_sync(self._stop_threads, abandon_on_cancel=False)
        if self._froze_heap:  # a process that goes on without this host collects as before
            self._froze_heap = False
            gil.unfreeze_heap()

    def _replay_spool(self) -> None:
        """Rows an earlier process could not write (database down at its exit). Rows of
        a table no plugin has defined stay in the spool, counted and reported."""
        from sqlmodel import SQLModel

        unknown: Counter[str] = Counter()
        for path in spool.pending(self.settings.spool_dir):
            try:
                rows, kept = spool.split(path, dict(SQLModel.metadata.tables))
            except (OSError, ValueError) as exc:
                log.error("spool file %s is unreadable, left in place: %s", path.name, exc)
                self.stats["spool_files_unreadable"] += 1
                continue
            for table, values, upsert_on in rows:
                self.writer.submit_values(table, values, upsert_on=upsert_on)
            if not self.writer.flush_sync(self.settings.shutdown_timeout_s):
                continue  # the database is still away: try again next start
            self.stats["spool_rows_replayed"] += len(rows)
            if kept:
                spool.keep(path, kept)
                for line in kept:
                    unknown[str(json.loads(line).get("table"))] += 1
            else:
                path.unlink()
                self.stats["spool_files_replayed"] += 1
        if unknown:
            self.stats["spool_rows_unknown_table"] += sum(unknown.values())
            log.error("spool: %d rows of unknown tables kept in %s (%s)", sum(unknown.values()),
                      self.settings.spool_dir, ", ".join(f"{t}: {n}" for t, n in sorted(unknown.items())))
            self.emit("spool_rows_kept", status="error", workspace="*", rows=sum(unknown.values()),
                      tables=dict(sorted(unknown.items())), spool_dir=str(self.settings.spool_dir))

    def _stop_threads(self) -> None:
        if (durable := sys.modules.get("synthhost.durable")) is not None:  # only when it was used
            durable.close_clients()
        self.writer.close(self.settings.shutdown_timeout_s, self.settings.spool_dir)
        if self._outbox is not None:
            self._outbox.stop(self.settings.shutdown_timeout_s)
        self.flags.stop()
        self.engine.dispose()

    async def __aenter__(self) -> Host:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def migrate(self, revision: str = "heads") -> None:
        db.upgrade(self.engine, self.registry.migrations, revision)

    # -- services for plugins ----------------------------------------------------------

    def emit(
        self,
        event_type: str,
        *,
        call: Call | None = None,
        workspace: str | None = None,
        status: str = "success",
        latency_ms: float | None = None,
        user: str | None = None,
        org: str | None = None,
        run_id: str | None = None,
        trace_id: str | None = None,
        span_id: str | None = None,
        **context: Any,
    ) -> str:
        """Queue an ``event_logs`` row (and its outbox entries); returns the event id.
        Never blocks and never raises on the call path."""
        event_id = new_id()
        created = utcnow()
        the_run = run_id or (call.run_id if call else None)
        the_span = span_id or (call.span_id if call else None)
        values: dict[str, Any] = {
            "id": event_id,
            "workspace_id": workspace or (call.workspace if call else "default"),
            "user_id": user or (call.user if call else None),
            "org_id": org or (call.org if call else None),
            "event_type": event_type,
            "status": status,
            "context": context,
            "latency_ms": latency_ms,
            "trace_id": trace_id or (call.trace_id if call else None),
            "run_id": the_run,
            "span_id": the_span,
            "created_at": created,
        }
        self.writer.submit_values(EVENTS, values)
        if self.registry.exporters:
            for row in outbox_rows(self, values):
                self.writer.submit_values(OUTBOX_INSERT, row.values())
        if the_run is not None and (sink := self._run_events.get(the_run)) is not None:
            sink.append(EventRecord(event_id, event_type, status, created.timestamp(), context, the_span))
        for listener in self._on_emit:  # debugging/test hooks only; runs use _run_events
            listener(values)
        self.stats[f"events.{event_type}"] += 1
        return event_id

    @contextlib.contextmanager
    def collect_run_events(self, run: Any) -> Iterator[None]:
        """Gather the events emitted for ``run`` (a ``RunState``) into ``run.events``."""
        self._run_events[run.run_id] = run.events
        try:
            yield
        finally:
            self._run_events.pop(run.run_id, None)

    def _check_workspace(self, workspace: str) -> None:
        """Refuse a name that is not a workspace (``'*'``, ``''``, control characters...):
        a call must never write the global scope's rows. Valid names are remembered (a
        set look-up on the hot path), at most 10,000."""
        validate_workspace(workspace)
        if len(self._valid_workspaces) >= 10_000:
            self._valid_workspaces.clear()
        self._valid_workspaces.add(workspace)

    async def wait_for_rows(self) -> None:
        """Wait until the database has taken every row queued so far, at most
        ``SYNTHHOST_RUN_FLUSH_TIMEOUT_S``; then :class:`StorageUnavailable` (the rows
        stay queued; at exit they are spooled, never dropped)."""
        timeout = self.settings.run_flush_timeout_s
        if not await self.writer.flush(timeout):
            raise StorageUnavailable(
                f"the database did not take this run's rows within {timeout:g}s "
                "(SYNTHHOST_RUN_FLUSH_TIMEOUT_S); they stay queued and are spooled if the process exits")

    def redact(self, text: str) -> str:
        """Mask secrets (this host's secret env values, key-shaped strings) in text
        bound for a log line."""
        return str(redact(text, self._secrets))

    def is_active(self, plugin: str, workspace: str) -> bool:
        """Is this plugin's gate on for this workspace?"""
        return plugin in self.chains.active(workspace)

    def provider(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            spec = self.registry.providers.get(name)
            if spec is None:
                known = ", ".join(sorted(self.registry.providers))
                raise UnknownProvider(f"unknown provider {name!r} (known: {known})")
            provider = self._providers[name] = spec.factory(self)
        return provider

    def redis_url(self) -> str | None:
        return self.settings.redis_url

    # -- calls and runs -----------------------------------------------------------------

    async def complete(
        self,
        *,
        model: str,
        messages: list[dict[str, Any]] | str,
        workspace: str = "default",
        params: Mapping[str, Any] | None = None,
        user: str | None = None,
        org: str | None = None,
        agent: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        max_attempts: int = 3,
        on_delta: Callable[[StreamDelta], None] | None = None,
    ) -> Response:
        """Run one model call through the plugin chain. ``model`` is
        ``"provider/model"`` (``"echo/echo-1"``, ``"openai/gpt-4o-mini"``); a bare name
        uses the ``echo`` provider. ``on_delta`` streams: a provider that can passes the
        answer's pieces to it as they arrive (see :meth:`stream`). Raises
        :class:`synthhost.Denied` or :class:`synthhost.ProviderError` on failure."""
        from synthhost.runner import complete_standalone

        if workspace not in self._valid_workspaces:
            self._check_workspace(workspace)
        await self.start()
        return await complete_standalone(
            self, model=model, messages=messages, workspace=workspace, params=params, user=user,
            org=org, agent=agent, metadata=metadata, max_attempts=max_attempts, on_delta=on_delta,
        )

    def stream(self, **kwargs: Any) -> ResponseStream:
        """:meth:`complete` with the answer streamed: ``async with host.stream(model=...,
        messages=...) as stream: async for delta in stream: ...``; then
        ``stream.response`` is the whole answer (see :mod:`synthhost.streaming`)."""
        from synthhost.streaming import ResponseStream

        return ResponseStream(self, kwargs)

    async def run(
        self,
        spec: AgentSpec,
        *,
        inputs: Mapping[str, Any] | None = None,
        workspace: str | None = None,
        user: str | None = None,
        org: str | None = None,
        on_step: Callable[[int, int, StepResult], None] | None = None,
        run_id: str | None = None,
        on_delta: Callable[[StreamDelta], None] | None = None,
    ) -> RunResult:
        """Run an agent's steps through the plugin chain; the run's rows are durable
        before this returns. ``on_step(index, total, step)`` is called as each step
        ends (1-based index), for live progress. ``run_id`` (a fresh 32-hex id) lets a
        caller name the run before it starts (the HTTP API answers 202 with it).
        ``on_delta`` receives the last step's answer (every model turn of it) as it
        streams."""
        from synthhost.runner import run_agent

        self._check_workspace(workspace or spec.workspace)
        await self.start()
        return await run_agent(self, spec, inputs=inputs or {}, workspace=workspace, user=user, org=org,
                               on_step=on_step, run_id=run_id, on_delta=on_delta)

    async def enqueue(
        self,
        spec: AgentSpec,
        *,
        inputs: Mapping[str, Any] | None = None,
        workspace: str | None = None,
        user: str | None = None,
        org: str | None = None,
        key: str | None = None,
        queue: str | None = None,
    ) -> str:
        """Queue a durable run for ``synthhost worker`` processes (the ``durable``
        extra; see :mod:`synthhost.durable`) and return its run id at once. ``key``
        makes it idempotent (the same key is the same run). Follow it with
        :meth:`wait_run`."""
        from synthhost import durable

        self._check_workspace(workspace or spec.workspace)
        await self.start()
        return await anyio.to_thread.run_sync(functools.partial(
            durable.enqueue, self, spec, inputs=inputs or {}, workspace=workspace, user=user, org=org, key=key,
            queue=queue or durable.QUEUE))

    async def wait_run(self, run_id: str) -> RunResult:
        """Wait for a durable run to finish, on whichever worker, and return it."""
        from synthhost import durable

        return await durable.wait(self, run_id)

    # -- sync wrappers for apps without an event loop -----------------------------------

    def complete_sync(self, **kwargs: Any) -> Response:
        async def main() -> Response:
            async with self:
                return await self.complete(**kwargs)

        return anyio.run(main)

    def run_sync(self, spec: AgentSpec, **kwargs: Any) -> RunResult:
        async def main() -> RunResult:
            async with self:
                return await self.run(spec, **kwargs)

        return anyio.run(main)

    def wait_for_events(self, timeout: float = 5.0) -> bool:
        """Test helper: flush the writer."""
        return self.writer.flush_sync(timeout)

    def count(self, table: sa.Table | str, **where: Any) -> int:
        """Count rows (tests and CLI)."""
        tbl = table if isinstance(table, sa.Table) else sa.table(table)
        query = sa.select(sa.func.count()).select_from(tbl)
        for key, value in where.items():
            query = query.where(sa.column(key) == value)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar() or 0)

    def elapsed(self, started: float) -> float:
        return (time.perf_counter() - started) * 1000.0
