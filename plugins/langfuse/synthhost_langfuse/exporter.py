"""Delivery: the outbox exporter (``run_finished`` → load the trace → Langfuse) and the
synchronous path used by ``on_trace`` when ``enable_async_trace_export`` is off.

No silent loss: an outbox row is marked delivered only after :meth:`send` returned,
and :meth:`send` returns only when Langfuse accepted every span of every trace in the
batch. A failed trace raises :class:`RetryableSendError` for its event (the outbox
keeps it pending with its error, counts it and retries with backoff); a payload
Langfuse refuses outright (400/413/422) raises :class:`PermanentSendError` (parked,
re-queued by ``synthhost queue retry-parked``). A run whose rows are missing is parked
too. Re-sends reuse the same trace and observation ids, so Langfuse upserts them.

Sync mode: :meth:`export_now` exports the in-memory trace and waits. On success it marks
the run's pending ``run_finished`` outbox row delivered, so the outbox does not send it
again; if that row is not committed yet, :meth:`send` skips runs this process already
exported (``exported`` cache), and a run sent by another process is at worst sent
twice, which Langfuse de-duplicates by id. One export per run at a time in a process.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from synthhost.outbox import PermanentSendError, RetryableSendError
from synthhost.storage.models import utcnow
from synthhost.trace import Trace
from synthhost.traces import load_traces
from synthhost_langfuse.config import EVENT_TYPES as EVENT_TYPES
from synthhost_langfuse.config import EXPORTER_NAME as EXPORTER_NAME
from synthhost_langfuse.config import LangfuseConfig
from synthhost_langfuse.locks import KeyedLocks
from synthhost_langfuse.mapping import TracePlan, plan_trace
from synthhost_langfuse.redact import Redactor
from synthhost_langfuse.sdk import LangfuseBackend, Outcome

if TYPE_CHECKING:
    from synthhost.host import Host

log = logging.getLogger("synthhost.langfuse")



class _Recent:
    """A bounded set of run ids exported by this process (oldest forgotten first)."""

    def __init__(self, maxlen: int = 50_000) -> None:
        self._items: OrderedDict[str, None] = OrderedDict()
        self._maxlen = maxlen
        self._lock = threading.Lock()

    def add(self, key: str) -> None:
        with self._lock:
            self._items[key] = None
            self._items.move_to_end(key)
            while len(self._items) > self._maxlen:
                self._items.popitem(last=False)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class LangfuseExporter:
    """One per host. The outbox reads its tuning attributes once, at start."""

    def __init__(self, host: Host, config: LangfuseConfig, *, name: str = EXPORTER_NAME) -> None:
        self.host = host
        self.config = config
        self.name = name
        self.redactor = Redactor(host.settings.env, max_chars=config.max_field_chars)
        # Outbox lane tuning.
        self.batch_size = config.batch_size
        # One batch at a time by default: the work is CPU under the GIL (building spans,
        # encoding them) and the SDK's processor sends one request at a time anyway; a
        # second thread measured slower (thread switching), not faster.
        self.concurrency = config.concurrency
        # Let a partial batch wait to fill: fewer, larger exports and fewer outbox
        # transactions competing with the call path's commits (SQLite has one writer).
        self.flush_interval_s = config.flush_interval_s_outbox
        self.retry_delay_s = config.retry_delay_s
        self.max_retry_delay_s = config.max_retry_delay_s
        self.claim_ttl_s = max(60.0, config.timeout_s * 8)
        self.stats: Counter[str] = Counter()
        self.last_error: str | None = None
        self.last_ok: bool | None = None
        self.exported = _Recent()
        self._runs = KeyedLocks()
        self._backend: LangfuseBackend | None = None
        self._backend_lock = threading.Lock()
        self._closed = False

    # -- the SDK, created on first use (no threads in hosts that never export) ---------

    @property
    def backend(self) -> LangfuseBackend:
        backend = self._backend
        if backend is None:
            with self._backend_lock:
                if self._closed:
                    raise RetryableSendError("langfuse exporter is closed")
                if self._backend is None:
                    self._backend = LangfuseBackend(self.config)
                    log.info("langfuse: exporting to %s", self.config.base_url)
                backend = self._backend
        return backend

    def plan(self, trace: Trace) -> TracePlan:
        return plan_trace(trace, self.redactor, max_observations=self.config.max_observations)

    def _count(self, key: str, n: int = 1) -> None:
        self.stats[key] += n
        self.host.stats[f"langfuse.{key}"] += n

    # -- exporting ----------------------------------------------------------------------

    def export_traces(self, traces: Sequence[Trace], *, force: bool = False) -> dict[str, Outcome]:
        """Export traces and wait for the outcome (per run id). Without ``force``, runs
        this process already exported are skipped (reported ok)."""
        outcomes: dict[str, Outcome] = {}
        with self._runs.hold(t.run_id for t in traces):
            todo = [t for t in traces if force or t.run_id not in self.exported]
            for run_id in {t.run_id for t in traces} - {t.run_id for t in todo}:
                outcomes[run_id] = Outcome(True)
                self._count("skipped")
            if not todo:
                return outcomes
            plans: list[TracePlan] = []
            for trace in todo:
                try:
                    plans.append(self.plan(trace))
                except Exception as exc:  # a mapping bug: park this one, keep the others
                    log.exception("langfuse: could not map run %s", trace.run_id)
                    outcomes[trace.run_id] = Outcome(False, f"could not map trace: {exc}", 400)
            try:
                results = self.backend.export(plans)
            except RetryableSendError as exc:
                results = {p.run_id: Outcome(False, str(exc)) for p in plans}
            except Exception as exc:  # the SDK could not be set up: keep the runs for later
                log.exception("langfuse: export failed")
                results = {p.run_id: Outcome(False, f"{type(exc).__name__}: {exc}") for p in plans}
            for run_id, outcome in results.items():
                if outcome.ok:
                    self.exported.add(run_id)
            outcomes.update(results)
        for outcome in outcomes.values():
            self.last_ok = outcome.ok
            if not outcome.ok:
                self.last_error = outcome.error
        self._count("exported", sum(1 for t in todo if outcomes[t.run_id].ok))
        self._count("failed", sum(1 for t in todo if not outcomes[t.run_id].ok))
        return outcomes

    def export_now(self, trace: Trace) -> Outcome:
        """The synchronous path (``enable_async_trace_export`` off): export, wait, and
        on success mark the run's outbox row delivered. Runs in a worker thread."""
        outcome = self.export_traces([trace])[trace.run_id]
        if outcome.ok:
            self.mark_delivered([trace.run_id])
        else:
            log.warning("langfuse: trace of run %s not accepted (%s); the outbox will retry it",
                        trace.run_id, outcome.error)
        return outcome

    def mark_delivered(self, run_ids: Sequence[str]) -> int:
        """Mark this exporter's undelivered ``run_finished`` rows of these runs delivered:
        their traces were just accepted. Rows in flight are included: the outbox's own
        updates never move a delivered row back, so a concurrent sender cannot undo it."""
        if not run_ids:
            return 0
        try:
            from synthhost.outbox import DELIVERED, EVENTS, IN_FLIGHT, OUTBOX, PARKED, PENDING

            now = utcnow()
            events = sa.select(EVENTS.c.id).where(
                EVENTS.c.run_id.in_(list(run_ids)), EVENTS.c.event_type.in_(EVENT_TYPES)
            )
            stmt = (
                sa.update(OUTBOX)
                .where(OUTBOX.c.exporter == self.name, OUTBOX.c.state.in_((PENDING, IN_FLIGHT, PARKED)),
                       OUTBOX.c.event_id.in_(events.scalar_subquery()))
                .values(state=DELIVERED, delivered_at=now, last_attempt_at=now, attempts=OUTBOX.c.attempts + 1,
                        claimed_by=None, claimed_until=None)
            )
            with self.host.engine.begin() as conn:
                return int(conn.execute(stmt).rowcount or 0)
        except Exception as exc:  # only an optimisation: the outbox would re-send, idempotently
            log.debug("langfuse: could not mark outbox rows delivered: %s", exc)
            return 0

    # -- the outbox exporter protocol ---------------------------------------------------

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        run_of: dict[str, str] = {}
        for event in events:
            run_id = event.get("run_id") or (event.get("context") or {}).get("run_id")
            if run_id:
                run_of[str(event["id"])] = str(run_id)
        if not run_of:
            return
        # One load for the whole batch (three queries): a query per trace was a fifth
        # of the lane's time.
        todo = [r for r in dict.fromkeys(run_of.values()) if r not in self.exported]
        traces: dict[str, Trace] = load_traces(self.host.engine, todo) if todo else {}
        missing = [e for e, r in run_of.items() if r in todo and r not in traces]
        outcomes = self.export_traces(list(traces.values())) if traces else {}
        failed = {r: o for r, o in outcomes.items() if not o.ok}
        retry = [e for e, r in run_of.items() if r in failed and not failed[r].permanent]
        refused = [e for e, r in run_of.items() if r in failed and failed[r].permanent]
        if retry:
            errors = sorted({o.error or "?" for o in failed.values()})
            raise RetryableSendError(
                f"{len({run_of[e] for e in retry})} of {len(run_of)} traces not accepted by Langfuse: "
                + "; ".join(errors)[:500],
                event_ids=retry,
            )
        if refused or missing:
            self._count("parked", len(refused) + len(missing))
            reasons = sorted({o.error or "?" for o in failed.values()} | ({"run not found"} if missing else set()))
            raise PermanentSendError("; ".join(reasons)[:500], event_ids=refused + missing)

    def close(self) -> None:
        """Called by the outbox when it stops: flush and stop the SDK within a bound."""
        with self._backend_lock:
            self._closed = True
            backend = self._backend
        if backend is not None:
            timeout = min(max(1.0, self.config.timeout_s + 1.0), float(self.host.settings.shutdown_timeout_s))
            backend.shutdown(timeout)

    # -- reporting ----------------------------------------------------------------------

    def health(self) -> tuple[bool, str]:
        """Healthy unless the latest export failed (the outbox holds those traces)."""
        sent, failed = self.stats["exported"], self.stats["failed"]
        detail = f"exporting to {self.config.base_url}: {sent} traces accepted, {failed} failed"
        if self.last_error and failed:
            detail += f" (last error: {self.last_error})"
        return self.last_ok is not False, detail
