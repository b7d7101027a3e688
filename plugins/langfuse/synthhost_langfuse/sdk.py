"""The real Langfuse SDK, kept to itself, with every export's outcome observed.

Isolation from the embedding application:

- The SDK gets a private :class:`TracerProvider` (never the global one): it neither
  installs a global provider nor adds its processor to the app's, so the app's
  exporters never see Langfuse spans and Langfuse never sees the app's spans.
- Observations are built in an empty OpenTelemetry context, so a trace exported while
  the app has a span active does not become a child of the app's trace.
- The client is kept out of the SDK's per-public-key singleton table, so an app that
  uses Langfuse with the same key keeps its own client (and we keep ours).
- The OTLP exporter sends only Langfuse's headers: the app's ``OTEL_EXPORTER_OTLP_*
  HEADERS`` (its collector's credentials) are not forwarded to Langfuse.

Outcomes: the SDK's batch processor only logs export failures. The span exporter is
wrapped (:class:`ObservedExporter`), so each export batch's result is recorded per
trace; :meth:`LangfuseBackend.export` creates a trace's observations, calls the SDK's
``flush()`` and then knows, for every span it created, whether Langfuse accepted it.

Timestamps: ``start_observation`` takes no start time, so the private provider's tracer
starts each span at the planned time and pins its end time; ids come from the plan too
(our trace id, the first 16 hex digits of our span ids), through the provider's id
generator. This keeps re-sends idempotent: Langfuse upserts by id.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import logging
import re
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
from opentelemetry import context as otel_context
from opentelemetry import trace as trace_api
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.util._decorator import _agnosticcontextmanager

from synthhost_langfuse.config import LangfuseConfig
from synthhost_langfuse.locks import KeyedLocks
from synthhost_langfuse.mapping import Observation, TracePlan

log = logging.getLogger("synthhost.langfuse")

OTLP_LOGGER = "opentelemetry.exporter.otlp.proto.http"
_STATUS = re.compile(r"code: (\d{3})")


def sdk_version() -> str:
    try:
        return importlib.metadata.version("langfuse")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover
        return "unknown"


def langfuse_headers(public_key: str, secret_key: str) -> dict[str, str]:
    """The headers the SDK's own exporter sends (``x-langfuse-ingestion-version: 4``
    enables real-time processing of OTLP spans)."""
    token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode("ascii")
    return {
        "Authorization": f"Basic {token}",
        "x-langfuse-sdk-name": "python",
        "x-langfuse-sdk-version": sdk_version(),
        "x-langfuse-public-key": public_key,
        "x-langfuse-ingestion-version": "4",
    }


# -- planned ids and times -------------------------------------------------------------


class _Plan(threading.local):
    trace_id: int | None = None
    span_id: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None


class _PlannedIds(IdGenerator):
    def __init__(self, plan: _Plan) -> None:
        self._plan = plan
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        return self._plan.span_id or self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        return self._plan.trace_id or self._random.generate_trace_id()


def _pin_end(span: trace_api.Span, end_ns: int) -> None:
    """Whatever end time the SDK passes (events end at "now"), end at the planned one."""
    original = span.end

    def end(end_time: int | None = None) -> None:
        original(end_time=end_ns)

    span.end = end  # type: ignore[method-assign]


class _PlannedTracer(trace_api.Tracer):
    """Delegates to the provider's tracer; applies the thread's plan, if any."""

    def __init__(self, inner: trace_api.Tracer, plan: _Plan) -> None:
        self._inner = inner
        self._plan = plan

    def start_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace_api.SpanKind = trace_api.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        plan = self._plan
        if plan.start_ns is not None:
            start_time = plan.start_ns
        span = self._inner.start_span(
            name, context=context, kind=kind, attributes=attributes, links=links, start_time=start_time,
            record_exception=record_exception, set_status_on_exception=set_status_on_exception,
        )
        if plan.end_ns is not None:
            _pin_end(span, plan.end_ns)
        return span

    @_agnosticcontextmanager
    def start_as_current_span(
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace_api.SpanKind = trace_api.SpanKind.INTERNAL,
        attributes: Any = None,
        links: Any = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> Iterator[trace_api.Span]:
        span = self.start_span(name, context, kind, attributes, links, start_time, record_exception,
                               set_status_on_exception)
        with trace_api.use_span(span, end_on_exit=end_on_exit, record_exception=record_exception,
                                set_status_on_exception=set_status_on_exception) as current:
            yield current


class PrivateTracerProvider(TracerProvider):
    """A provider of our own: always samples (the app's ``OTEL_TRACES_SAMPLER`` must
    not thin out Langfuse exports), takes ids and times from the plan."""

    def __init__(self, plan: _Plan) -> None:
        super().__init__(
            sampler=ALWAYS_ON,
            resource=Resource.create({"service.name": "synthhost"}),
            id_generator=_PlannedIds(plan),
            shutdown_on_exit=False,
        )
        self._plan = plan

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace_api.Tracer:
        return _PlannedTracer(super().get_tracer(*args, **kwargs), self._plan)


# -- observing export results ------------------------------------------------------------


@dataclass
class _Ticket:
    expected: frozenset[int]
    accepted: set[int] = field(default_factory=set)
    failed: set[int] = field(default_factory=set)
    error: str | None = None
    status: int | None = None


@dataclass(frozen=True, slots=True)
class Outcome:
    ok: bool
    error: str | None = None
    status: int | None = None  # the HTTP status of the failed request, when there was one

    @property
    def permanent(self) -> bool:
        """Langfuse refused the payload itself (400/413/422): re-sending cannot help."""
        return self.status in (400, 413, 422)


class _Capture(logging.Handler):
    """Collects the OTLP exporter's error lines on the exporting thread only: the
    exporter returns a bare FAILURE and logs the reason."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self._local = threading.local()

    @contextlib.contextmanager
    def collect(self) -> Iterator[list[str]]:
        lines: list[str] = []
        self._local.lines = lines
        try:
            yield lines
        finally:
            self._local.lines = None

    def emit(self, record: logging.LogRecord) -> None:
        lines = getattr(self._local, "lines", None)
        if lines is not None:
            with contextlib.suppress(Exception):
                lines.append(record.getMessage())


_CAPTURE = _Capture()
logging.getLogger(OTLP_LOGGER).addHandler(_CAPTURE)


class _Responses(threading.local):
    """The last HTTP answer seen on this thread (a ``requests`` response hook)."""

    status: int | None = None
    reason: str | None = None

    def hook(self, response: Any, *args: Any, **kwargs: Any) -> None:
        self.status, self.reason = response.status_code, response.reason


class ObservedExporter(SpanExporter):
    """Wraps the OTLP exporter: records each batch's result for the spans we track."""

    def __init__(self, inner: SpanExporter, responses: _Responses | None = None) -> None:
        self.inner = inner
        self._responses = responses or _Responses()
        self._lock = threading.Lock()
        self._tickets: dict[int, _Ticket] = {}
        self.requests_ok = 0
        self.requests_failed = 0
        self.last_error: str | None = None

    def track(self, trace_id: int, span_ids: frozenset[int]) -> _Ticket:
        ticket = _Ticket(span_ids)
        with self._lock:
            self._tickets[trace_id] = ticket
        return ticket

    def untrack(self, trace_id: int) -> None:
        with self._lock:
            self._tickets.pop(trace_id, None)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        responses = self._responses
        responses.status = responses.reason = None
        with _CAPTURE.collect() as lines:
            try:
                result = self.inner.export(spans)
            except Exception as exc:  # an exporter bug must still count as a failure
                lines.append(f"{type(exc).__name__}: {exc}")
                result = SpanExportResult.FAILURE
        ok = result is SpanExportResult.SUCCESS
        error: str | None = None
        status: int | None = None
        if not ok:
            status = responses.status
            if status is None and lines and (m := _STATUS.search(lines[-1])):
                status = int(m.group(1))
            detail = lines[-1] if lines else "export failed"
            if status:
                error = f"HTTP {status} {responses.reason or ''}".rstrip() + f" ({detail})"
            else:
                error = f"no response from Langfuse ({detail})"
        with self._lock:
            if ok:
                self.requests_ok += 1
            else:
                self.requests_failed += 1
                self.last_error = error
            for span in spans:
                ctx = span.context
                if ctx is None:
                    continue
                ticket = self._tickets.get(ctx.trace_id)
                if ticket is None or ctx.span_id not in ticket.expected:
                    continue
                if ok:
                    ticket.accepted.add(ctx.span_id)
                    ticket.failed.discard(ctx.span_id)
                else:
                    ticket.failed.add(ctx.span_id)
                    ticket.error, ticket.status = error, status
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def build_otlp_exporter(config: LangfuseConfig, session: Any = None) -> OTLPSpanExporter:
    """What the SDK would build for itself (same endpoint, auth and headers), built here
    so it can be observed, and cleared of the app's ``OTEL_EXPORTER_OTLP_HEADERS``."""
    headers = langfuse_headers(config.public_key, config.secret_key)
    compression = Compression.NoCompression if config.compression == "none" else Compression.Gzip
    exporter = OTLPSpanExporter(endpoint=config.endpoint, headers=headers, timeout=config.timeout_s,
                                compression=compression, session=session)
    client = getattr(exporter, "_client", None)
    if client is not None and isinstance(getattr(client, "_headers", None), dict):
        own = {k: v for k, v in client._headers.items() if k.lower() in ("user-agent", "content-type")}
        own.update({k.lower(): v for k, v in headers.items()})
        if compression is Compression.Gzip:
            own["Content-Encoding"] = "gzip"
        client._headers = own
    else:  # pragma: no cover - an OTel release that moved the field
        log.warning("langfuse: could not isolate OTLP headers from OTEL_EXPORTER_OTLP_HEADERS")
    return exporter


# -- the backend -------------------------------------------------------------------------


def _private_client(config: LangfuseConfig, provider: TracerProvider, exporter: SpanExporter) -> Any:
    """A ``Langfuse`` client that is ours alone: the SDK keys clients by public key and
    silently hands out the first one (with its provider and base URL) to any later
    ``Langfuse(public_key=same)``. Construct ours with the slot empty, then put back
    whatever was there, so neither the app nor a later host shares it."""
    from langfuse import Langfuse
    from langfuse._client.resource_manager import LangfuseResourceManager

    manager: Any = LangfuseResourceManager
    instances = getattr(manager, "_instances", None)
    lock = getattr(manager, "_lock", None)
    kwargs: dict[str, Any] = {
        "public_key": config.public_key, "secret_key": config.secret_key, "base_url": config.base_url,
        "timeout": max(1, round(config.timeout_s)), "tracer_provider": provider, "span_exporter": exporter,
        "environment": config.environment, "release": config.release, "flush_at": config.flush_at,
        "flush_interval": config.flush_interval_s, "sample_rate": 1.0, "tracing_enabled": True,
    }
    if not isinstance(instances, dict) or lock is None:  # pragma: no cover - SDK internals moved
        log.warning("langfuse: SDK client table not found; the client may be shared per public key")
        return Langfuse(**kwargs)
    with lock:
        previous = instances.pop(config.public_key, None)
        try:
            return Langfuse(**kwargs)
        finally:
            instances.pop(config.public_key, None)
            if previous is not None:
                instances[config.public_key] = previous


class LangfuseBackend:
    """One SDK client + private provider + observed exporter, per host."""

    def __init__(self, config: LangfuseConfig) -> None:
        self.config = config
        self._plan = _Plan()
        self.provider = PrivateTracerProvider(self._plan)
        responses = _Responses()
        session = requests.Session()
        session.hooks["response"].append(responses.hook)
        self.exporter = ObservedExporter(build_otlp_exporter(config, session), responses)
        self.client = _private_client(config, self.provider, self.exporter)
        if not getattr(self.client, "_tracing_enabled", True):
            raise RuntimeError("Langfuse tracing is disabled in this process (LANGFUSE_TRACING_ENABLED=false)")
        self._closed = False
        self._inflight = KeyedLocks()  # one export of a given trace at a time

    # -- building ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _planned(self, trace_id: int, obs: Observation) -> Iterator[None]:
        plan = self._plan
        plan.trace_id, plan.span_id, plan.start_ns, plan.end_ns = trace_id, obs.span_id, obs.start_ns, obs.end_ns
        try:
            yield
        finally:
            plan.trace_id = plan.span_id = plan.start_ns = plan.end_ns = None

    def emit(self, plan: TracePlan) -> None:
        """Create the plan's observations (no I/O: they queue in the batch processor)."""
        from langfuse import propagate_attributes

        token = otel_context.attach(otel_context.Context())  # never inherit the app's span
        try:
            with propagate_attributes(
                user_id=plan.user_id, session_id=plan.session_id, tags=plan.tags or None,
                trace_name=plan.trace_name, metadata=plan.metadata or None,
            ):
                created: dict[str, Any] = {}
                for obs in plan.observations:
                    with self._planned(plan.trace_id, obs):
                        if obs.parent is None:
                            made = self.client.start_observation(name=obs.name, as_type=obs.as_type, **obs.fields)
                        elif obs.as_type == "event":
                            made = created[obs.parent].create_event(name=obs.name, **obs.fields)
                        else:
                            made = created[obs.parent].start_observation(
                                name=obs.name, as_type=obs.as_type, **obs.fields
                            )
                    created[obs.key] = made
                for obs in reversed(plan.observations):
                    if obs.as_type != "event":
                        created[obs.key].end(end_time=obs.end_ns)
        finally:
            otel_context.detach(token)

    # -- exporting --------------------------------------------------------------------

    def export(self, plans: Sequence[TracePlan]) -> dict[str, Outcome]:
        """Send traces and wait until Langfuse accepted them or the SDK gave up
        (``timeout`` with its retries). Returns an outcome per run id."""
        if self._closed:
            return {p.run_id: Outcome(False, "langfuse exporter is shut down") for p in plans}
        outcomes: dict[str, Outcome] = {}
        with self._inflight.hold(p.trace_id for p in plans):
            tickets = {p.run_id: self.exporter.track(p.trace_id, p.span_ids) for p in plans}
            try:
                queued = 0
                for plan in plans:
                    try:
                        self.emit(plan)
                    except Exception as exc:  # a mapping/SDK bug: this trace fails, others go on
                        log.exception("langfuse: could not build trace %s", plan.run_id)
                        tickets[plan.run_id].error = f"could not build trace: {type(exc).__name__}: {exc}"
                    queued += len(plan.observations)
                    # Stay well under the processor's 2048-span queue, even with
                    # SYNTHHOST_LANGFUSE_CONCURRENCY > 1 (other threads queue too).
                    if queued >= 500:
                        self.client.flush()
                        queued = 0
                self.client.flush()
            finally:
                for plan in plans:
                    self.exporter.untrack(plan.trace_id)
        for plan in plans:
            t = tickets[plan.run_id]
            if t.accepted >= t.expected:
                outcomes[plan.run_id] = Outcome(True)
            elif t.failed:
                outcomes[plan.run_id] = Outcome(False, t.error, t.status)
            else:
                missing = len(t.expected - t.accepted)
                outcomes[plan.run_id] = Outcome(
                    False, t.error or f"{missing} of {len(t.expected)} spans never reached the exporter"
                )
        return outcomes

    def shutdown(self, timeout_s: float) -> bool:
        """Flush and stop the SDK within ``timeout_s``; False if it did not finish."""
        if self._closed:
            return True
        self._closed = True

        def stop() -> None:
            try:
                self.client.shutdown()  # flush + stop the SDK's consumer threads
            finally:
                self.provider.shutdown()  # stop the batch processor's worker

        thread = threading.Thread(target=stop, name="synthhost-langfuse-shutdown", daemon=True)
        started = time.monotonic()
        thread.start()
        thread.join(max(0.0, timeout_s))
        if thread.is_alive():
            log.warning("langfuse: shutdown did not finish within %.1fs", time.monotonic() - started)
            return False
        return True
