"""The RudderStack exporter: one outbox batch → one ``POST /v1/batch``.

How the SDK is used, and why: the SDK's own queue is fire-and-forget (results only
through ``on_error``, batches cut by timing, 8-minute backoff by default, drops on
exit). The outbox already owns queueing, batching and retries, so the exporter uses the
real ``Client`` (with ``send=False``) only to build and validate each message exactly as
the SDK would send it, then hands the whole batch to the SDK's own transport
(``rudderstack.analytics.request.post``, what the SDK's consumer calls). The result is
observed per batch: it returns on HTTP 200 and raises ``APIError`` (with the status)
otherwise, or a ``requests`` exception when the data plane is unreachable.

Configuration (``host.settings.env``):

==============================  =======  =============================================
variable                        default  meaning here
==============================  =======  =============================================
``RUDDERSTACK_WRITE_KEY``       —        the source write key (Basic auth user); unset:
                                         the exporter is not configured, nothing queued
``RUDDERSTACK_DATA_PLANE_URL``  hosted   data plane base URL (``/v1/batch`` appended)
``RUDDERSTACK_BATCH_SIZE``      100      events per outbox claim = per request (the
                                         SDK's own ``upload_size``)
``RUDDERSTACK_FLUSH_INTERVAL``  10000    ms a partial batch may wait to fill (as the
                                         SDK's upload interval); shutdown sends at once
``RUDDERSTACK_RETRY_DELAY``     1000     ms, base of the retry backoff (doubling,
                                         jittered) for 5xx/429/network failures
``RUDDERSTACK_MAX_RETRIES``     3        doublings of that delay: the delay grows
                                         1 s, 2 s, 4 s, 8 s, then stays at
                                         RETRY_DELAY * 2**MAX_RETRIES. Retries never run
                                         out for retryable failures (nothing is dropped
                                         during an outage); a non-retryable 4xx parks
                                         the batch at once.
``RUDDERSTACK_CONCURRENCY``     4        batches in flight at once per host process
                                         (the SDK's ``thread``); more processes add more.
                                         With a 5 ms data plane one request at a time
                                         would cap a process at ~100 requests/s
==============================  =======  =============================================

The SDK's own retry loop (``max_retries``, default 10: about 8.5 minutes of backoff per
batch while ``flush()`` blocks) is never used, so a dead data plane costs one request per
backoff delay and never blocks anything; the HTTP timeout is 10 s per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from synthhost.errors import UsageError
from synthhost.outbox import PermanentSendError, RetryableSendError
from synthhost_rudderstack import sdk

DEFAULT_DATA_PLANE_URL = "https://hosted.rudderlabs.com"
# The data plane refuses bodies above 4 MB (the SDK's consumer cuts batches there too).
MAX_REQUEST_BYTES = 4 * 1024 * 1024 - 64 * 1024
REQUEST_TIMEOUT_S = 10.0


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UsageError(f"{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value}")
    return value


@dataclass(frozen=True)
class Config:
    write_key: str = field(repr=False)
    data_plane_url: str = DEFAULT_DATA_PLANE_URL
    max_retries: int = 3
    retry_delay_ms: int = 1000
    batch_size: int = 100
    flush_interval_ms: int = 10000
    concurrency: int = 4

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Config | None:
        key = (env.get("RUDDERSTACK_WRITE_KEY") or "").strip()
        if not key:
            return None
        url = (env.get("RUDDERSTACK_DATA_PLANE_URL") or "").strip() or DEFAULT_DATA_PLANE_URL
        return cls(
            write_key=key,
            data_plane_url=url.rstrip("/"),
            max_retries=_int(env, "RUDDERSTACK_MAX_RETRIES", 3, 0),
            retry_delay_ms=_int(env, "RUDDERSTACK_RETRY_DELAY", 1000, 1),
            batch_size=_int(env, "RUDDERSTACK_BATCH_SIZE", 100, 1),
            flush_interval_ms=_int(env, "RUDDERSTACK_FLUSH_INTERVAL", 10000, 0),
            concurrency=_int(env, "RUDDERSTACK_CONCURRENCY", 4, 1),
        )


def _retryable_status(status: Any) -> bool:
    if not isinstance(status, int):
        return True
    return status >= 500 or status in (408, 429) or status < 400


class RudderStackExporter:
    """``send(events)`` for the outbox (runs in the outbox worker's thread)."""

    max_attempts = None  # retryable failures are retried until the data plane is back

    def __init__(self, config: Config, *, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.config = config
        self.timeout_s = timeout_s
        self.batch_size = config.batch_size
        self.flush_interval_s = config.flush_interval_ms / 1000.0
        self.retry_delay_s = config.retry_delay_ms / 1000.0
        self.max_retry_delay_s = self.retry_delay_s * 2**config.max_retries
        self.concurrency = config.concurrency
        # A claim must outlive the longest send (a few chunks at the request timeout).
        self.claim_ttl_s = max(60.0, 4 * timeout_s)
        self._sdk = sdk.load()
        # send=False: the Client builds and validates messages, never queues or sends.
        self._client = self._sdk.Client(
            config.write_key, host=config.data_plane_url, send=False, sync_mode=True
        )

    def __repr__(self) -> str:  # never shows the write key
        return f"RudderStackExporter(data_plane_url={self.config.data_plane_url!r})"

    # -- messages -----------------------------------------------------------------------

    def message(self, event: Mapping[str, Any]) -> dict[str, Any]:
        """The SDK ``track`` message for one event (what goes into ``batch``)."""
        workspace = event["workspace_id"]
        context = event.get("context")
        properties: dict[str, Any] = dict(context) if isinstance(context, Mapping) else {"context": context}
        for key in ("workspace_id", "org_id", "user_id", "status", "latency_ms", "trace_id", "run_id", "span_id"):
            if event.get(key) is not None:
                properties[key] = event[key]
        properties["event_id"] = event["id"]
        traits = {"workspaceId": workspace}
        if event.get("org_id"):
            traits["organizationId"] = event["org_id"]
        created = event.get("created_at")
        timestamp = datetime.fromisoformat(created) if isinstance(created, str) else datetime.now(UTC)
        user = event.get("user_id")
        ok, msg = self._client.track(
            user_id=user or None,
            anonymous_id=None if user else workspace,
            event=event["event_type"],
            properties=properties,
            context={"groupId": workspace, "traits": traits, "app": {"name": "synthhost"}},
            timestamp=timestamp,
            message_id=event["id"],
        )
        if not ok:  # pragma: no cover - send=False always accepts
            raise RetryableSendError("the SDK refused the message")
        return dict(msg)

    # -- sending ------------------------------------------------------------------------

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        messages: list[tuple[str, dict[str, Any]]] = []
        bad: dict[str, str] = {}
        for event in events:
            try:
                msg = self.message(event)
            except (AssertionError, RuntimeError, ValueError, TypeError) as exc:
                bad[event["id"]] = f"{type(exc).__name__}: {str(exc)[:300]}"
                continue
            messages.append((event["id"], msg))
        if bad:
            # Park only the malformed events; the rest go back to the queue untouched.
            first = next(iter(bad.values()))
            raise PermanentSendError(f"{len(bad)} invalid event(s): {first}", event_ids=bad)
        chunks = self._chunks(messages)
        for i, chunk in enumerate(chunks):
            if not chunk:
                continue
            try:
                self._post([msg for _, msg in chunk])
            except (RetryableSendError, PermanentSendError) as exc:
                if len(chunks) == 1:
                    raise
                # This chunk and the later ones failed. Earlier chunks were accepted but
                # go back to the queue with them (at-least-once; messageId de-duplicates).
                later = [eid for c in chunks[i:] for eid, _ in c]
                raise type(exc)(str(exc), event_ids=later) from exc

    @staticmethod
    def _chunks(messages: list[tuple[str, dict[str, Any]]]) -> list[list[tuple[str, dict[str, Any]]]]:
        """Cut the batch where a request would pass the data plane's size limit."""
        # One encoding of the whole batch decides the common case (it fits); only a
        # batch that does not is measured message by message.
        if len(json.dumps([m for _, m in messages], default=str)) <= MAX_REQUEST_BYTES:
            return [messages]
        chunks: list[list[tuple[str, dict[str, Any]]]] = [[]]
        size = 0
        for item in messages:
            n = len(json.dumps(item[1], default=str))
            if chunks[-1] and size + n > MAX_REQUEST_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(item)
            size += n
        return chunks

    def _post(self, batch: list[dict[str, Any]]) -> None:
        import requests

        try:
            self._sdk.post(
                self.config.write_key,
                self.config.data_plane_url,
                gzip=True,
                timeout=self.timeout_s,
                batch=batch,
            )
        except self._sdk.APIError as exc:
            text = self._scrub(f"HTTP {exc.status}: {exc.code}: {str(exc.message)[:300]}")
            if _retryable_status(exc.status):
                raise RetryableSendError(text) from None
            raise PermanentSendError(text) from None
        except requests.RequestException as exc:
            raise RetryableSendError(self._scrub(self._describe(exc))) from None

    def _describe(self, exc: Exception) -> str:
        """``ConnectionError: http://host/v1/batch: Connection refused`` rather than
        urllib3's nested retry message."""
        reason = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
        detail = reason.group(1).strip() if reason else str(exc)[:300]
        return f"{type(exc).__name__}: {self.config.data_plane_url}/v1/batch: {detail}"

    def _scrub(self, text: str) -> str:
        return text.replace(self.config.write_key, "***")
