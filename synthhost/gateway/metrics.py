"""``/metrics``: Prometheus metrics of this process's host.

Call metrics come from an ``on_trace`` observer (:class:`MetricsPlugin`, registered in
the host ``synthhost serve`` builds), so calls made by runs count as well as gateway
calls. Gauges that describe shared state (outbox rows) are read from the database at
scrape time; the writer's queue depth is this process's.

Labels stay bounded: ``provider``/``model`` pairs past ``SYNTHHOST_METRICS_MAX_MODELS``
(default 200) are counted under ``model="other"`` (clients choose model names, and
the echo provider answers any); ``workspace`` labels are added only with
``SYNTHHOST_METRICS_WORKSPACE_LABEL=1``.

Under ``--workers > 1`` set ``PROMETHEUS_MULTIPROC_DIR`` (``synthhost serve`` does it
for you): counters and histograms are then summed over every worker process.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from synthhost.hookspecs import hookimpl
from synthhost.hooktiming import BUCKETS as HOOK_BUCKETS
from synthhost.hooktiming import HookTimings

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost.trace import Trace

NOT_DENIALS = ("UNKNOWN_PROVIDER", "CANCELLED", "STORAGE_UNAVAILABLE")
HOOK_DRAIN_INTERVAL_S = 1.0
MAX_HOST_STATS = 500
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


def _flag(env: Mapping[str, str], name: str) -> bool:
    return (env.get(name) or "").strip().lower() in ("1", "true", "yes", "on")


class Metrics:
    """The metric objects of one process (one per host, in their own registry)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.workspace_label = _flag(env, "SYNTHHOST_METRICS_WORKSPACE_LABEL")
        self.max_models = int(env.get("SYNTHHOST_METRICS_MAX_MODELS") or 200)
        self._models: set[tuple[str, str]] = set()
        self._lock = threading.Lock()
        self._series: dict[tuple[str, ...], tuple[Any, Any]] = {}
        self.registry = CollectorRegistry(auto_describe=True)
        ws = ("workspace",) if self.workspace_label else ()
        reg = self.registry
        self.calls = Counter("synthhost_calls", "Model calls, by provider, model and outcome (ok or error code).",
                             ("provider", "model", "status", *ws), registry=reg)
        self.duration = Histogram("synthhost_call_duration_seconds", "Model call wall time through the chain.",
                                  ("provider", "model", "status", *ws), buckets=BUCKETS, registry=reg)
        self.denials = Counter("synthhost_denials", "Calls stopped by a plugin, by code.", ("code", *ws),
                               registry=reg)
        self.tokens = Counter("synthhost_tokens", "Tokens, by provider, model and direction (input/output).",
                              ("provider", "model", "direction", *ws), registry=reg)
        self.cost = Counter("synthhost_cost_usd", "Cost in US dollars (calls priced by the cost plugin).",
                            ("provider", "model", *ws), registry=reg)
        self.http_requests = Counter("synthhost_http_requests", "HTTP requests of synthhost serve, by route "
                                     "template, method and status.", ("route", "method", "status"), registry=reg)
        self.http_duration = Histogram("synthhost_http_request_duration_seconds", "Time to the response's start "
                                       "(streams: to the first byte).", ("route",), buckets=BUCKETS, registry=reg)
        self._http: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.events = Counter("synthhost_events", "Events of calls and runs, by type and status "
                              "(stackstorm_execution, similarity flags, rate_limited, policy decisions...).",
                              ("type", "status"), registry=reg)
        self._event_types: set[str] = set()
        self.plugin_errors = Counter("synthhost_plugin_errors", "Plugin crashes on the call path (fail-open).",
                                     ("plugin", "hook"), registry=reg)
        self.hook_duration = Histogram("synthhost_plugin_hook_duration_seconds",
                                       "Time in each plugin's call hooks (pre_call, post_call, on_failure, "
                                       "on_trace), awaitables included.", ("plugin", "hook"),
                                       buckets=HOOK_BUCKETS, registry=reg)
        self.hook_timings = HookTimings()
        self._hooks_drained = time.monotonic()

    def drain_hook_timings(self) -> None:
        """Move the hook durations gathered since the last drain into the histogram, in
        bulk (one histogram update per bucket with samples, not one per call). Call it on
        the event loop's thread, where the timers are written."""
        self._hooks_drained = time.monotonic()
        for plugin, hook, buckets, total in self.hook_timings.drain():
            child = self.hook_duration.labels(plugin, hook)
            # The bulk form of Histogram.observe (same per-bucket, non-cumulative values).
            child._sum.inc(total)
            for value, n in zip(child._buckets, buckets, strict=True):
                if n:
                    value.inc(n)

    def model_labels(self, provider: str, model: str) -> tuple[str, str]:
        pair = (provider[:100], model[:200])
        if pair in self._models:
            return pair
        with self._lock:
            if len(self._models) < self.max_models:
                self._models.add(pair)
                return pair
        return "other", "other"

    def observe_http(self, route: str, method: str, status: int, seconds: float) -> None:
        children = self._http.get((route, method, status))
        if children is None:
            children = self._http[(route, method, status)] = (
                self.http_requests.labels(route, method, str(status)), self.http_duration.labels(route))
        children[0].inc()
        children[1].observe(seconds)

    def _children(self, provider: str, model: str, status: str, ws: tuple[str, ...]) -> tuple[Any, Any]:
        """The (calls, duration) series of one label set: ``labels()`` costs a lock and
        a tuple build per call, a dict look-up is enough once a series exists."""
        key = (provider, model, status, *ws)
        children = self._series.get(key)
        if children is None:
            children = self._series[key] = (self.calls.labels(provider, model, status, *ws),
                                            self.duration.labels(provider, model, status, *ws))
        return children

    def observe(self, trace: Trace) -> None:
        ws = (trace.workspace,) if self.workspace_label else ()
        for event in trace.events:
            kind = event.event_type
            if kind not in self._event_types:
                if len(self._event_types) >= self.max_models:
                    kind = "other"
                else:
                    self._event_types.add(kind)
            self.events.labels(kind, event.status).inc()
        for span in trace.spans:
            if span.kind != "call":
                continue
            attrs = span.attributes
            provider, model = self.model_labels(str(attrs.get("provider", "")), str(attrs.get("model", "")))
            status = "ok" if span.status == "ok" else str(span.error_code or span.status)
            calls, duration = self._children(provider, model, status, ws)
            calls.inc()
            if span.ended_at is not None:
                duration.observe(max(0.0, span.ended_at - span.started_at))
            code = span.error_code
            if code and not code.startswith("PROVIDER_") and code not in NOT_DENIALS:
                self.denials.labels(code, *ws).inc()
            usage = attrs.get("usage")
            if isinstance(usage, dict):
                for direction in ("input", "output"):
                    n = usage.get(f"{direction}_tokens")
                    if isinstance(n, int) and n > 0:
                        self.tokens.labels(provider, model, direction, *ws).inc(n)
            cost = attrs.get("cost_usd")
            if cost is not None:
                try:
                    value = float(cost)
                except (TypeError, ValueError):
                    value = 0.0
                if value > 0:
                    self.cost.labels(provider, model, *ws).inc(value)
            for fault in attrs.get("plugin_errors") or ():
                plugin, _, hook = str(fault).rpartition(".")
                self.plugin_errors.labels(plugin or hook, hook if plugin else "").inc()


class MetricsPlugin:
    """The host plugin feeding :class:`Metrics` (an observer: it never changes a call)."""

    __name__ = "synthhost.gateway.metrics"

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    @hookimpl
    def on_trace(self, trace: Trace) -> None:
        metrics = self.metrics
        metrics.observe(trace)
        if time.monotonic() - metrics._hooks_drained >= HOOK_DRAIN_INTERVAL_S:  # other workers' scrapes see it
            metrics.drain_hook_timings()


class HostCollector(Collector):
    """Scrape-time gauges: the writer's queue depth and the host's counters (this
    process), outbox rows by exporter and state, durable-run queues and live workers
    (shared, from the database)."""

    def __init__(self, host: Host) -> None:
        self.host = host

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("synthhost_writer_queue_depth", "Rows queued in this process's batched writer.")
        depth.add_metric([], float(self.host.writer.pending))
        yield depth
        outbox = GaugeMetricFamily("synthhost_outbox_rows", "Outbox rows by exporter and state.",
                                   labels=["exporter", "state"])
        lag = GaugeMetricFamily("synthhost_outbox_oldest_pending_age_seconds",
                                "Age of the oldest outbox row not yet delivered nor parked.", labels=["exporter"])
        if self.host.registry.exporters:
            from synthhost.outbox import queue_stats

            try:
                stats = queue_stats(self.host.engine, self.host.registry.exporters)
            except Exception:  # the database is away: /readyz says so; keep /metrics up
                stats = {}
            for exporter, row in sorted(stats.items()):
                for state in ("pending", "retrying", "in_flight", "parked"):
                    outbox.add_metric([exporter, state], float(row.get(state) or 0))
                lag.add_metric([exporter], float(row.get("oldest_pending_age_s") or 0.0))
        yield outbox
        yield lag
        yield self._host_stats()
        yield from self._durable()

    def _host_stats(self) -> Metric:
        """Every numeric counter of ``host.stats`` (writer rows, spool replays, cron,
        ``similarity.references_evicted``...), so a plugin's counter reaches /metrics
        without a metric of its own. The names are fixed in code; capped all the same."""
        family = GaugeMetricFamily("synthhost_host_stat", "Counters of this process's host (host.stats), "
                                   "by counter name.", labels=["counter"])
        numeric = [(k, v) for k, v in list(self.host.stats.items()) if isinstance(v, int | float)]
        for name, value in sorted(numeric)[:MAX_HOST_STATS]:
            family.add_metric([name], float(value))
        return family

    def _durable(self) -> Iterator[Metric]:
        """Durable-run queues (synthhost.durable), when the ``durable`` extra is there."""
        import importlib.util

        if importlib.util.find_spec("dbos") is None:
            return
        from synthhost import durable

        runs = GaugeMetricFamily("synthhost_durable_runs", "Durable runs waiting (queued) or executing (running).",
                                 labels=["queue", "state"])
        wait = GaugeMetricFamily("synthhost_durable_oldest_queued_age_seconds",
                                 "How long the oldest queued durable run has waited.", labels=["queue"])
        recent = GaugeMetricFamily("synthhost_durable_queue_wait_seconds",
                                   "Queue wait (enqueue to start) of the durable runs started in the last 5 minutes.",
                                   labels=["queue", "quantile"])
        workers = GaugeMetricFamily("synthhost_durable_workers", "Workers with a heartbeat younger than the TTL.")
        try:
            stats = durable.queue_stats(self.host)
            live = len(durable.live_workers(self.host))
        except Exception:  # the database is away: /readyz says so; keep /metrics up
            stats, live = {}, 0
        for queue, row in sorted(stats.items()):
            runs.add_metric([queue, "queued"], float(row["queued"]))
            runs.add_metric([queue, "running"], float(row["running"]))
            wait.add_metric([queue], float(row["oldest_queued_age_s"] or 0.0))
            if row["wait_p50_s"] is not None:
                recent.add_metric([queue, "0.5"], float(row["wait_p50_s"]))
                recent.add_metric([queue, "0.95"], float(row["wait_p95_s"]))
        workers.add_metric([], float(live))
        yield runs
        yield wait
        yield recent
        yield workers


def exposition(metrics: Metrics, host: Host) -> bytes:
    """The text exposition: this process's metrics, or every worker's in multiprocess
    mode, plus the scrape-time gauges. Blocking (reads the database): call in a thread."""
    registry: CollectorRegistry
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = metrics.registry
    extra = CollectorRegistry()
    extra.register(HostCollector(host))
    return generate_latest(registry) + generate_latest(extra)


def find_plugin(host: Host) -> MetricsPlugin | None:
    for plugin in host.pm.get_plugins():
        if isinstance(plugin, MetricsPlugin):
            return plugin
    return None


def attach(host: Host) -> Metrics:
    """The host's metrics: its :class:`MetricsPlugin`'s, or a new one registered now
    (before the host's first call; chains are computed lazily)."""
    plugin = find_plugin(host)
    if plugin is None:
        plugin = MetricsPlugin(Metrics(host.settings.env))
        host.plugins.register(plugin)
    host.hook_timings = plugin.metrics.hook_timings
    host.chains.invalidate()  # rebuilt with timed implementations
    return plugin.metrics


