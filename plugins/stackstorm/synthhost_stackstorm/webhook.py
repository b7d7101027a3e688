"""Failure monitoring: post ``<pack>.agent_failure`` triggers off the call path.

A bounded queue and one daemon thread with a sync httpx client: a failing call never
waits for StackStorm. Best effort by design (it is monitoring, not the recovery
decision): one attempt per payload; a full queue drops and counts; failures are counted
and logged (rate-limited) and shown by the health check.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from typing import Any

import httpx

from synthhost_stackstorm.client import St2Error, post_webhook
from synthhost_stackstorm.config import Config

log = logging.getLogger("synthhost.stackstorm")

_STOP = object()
LOG_EVERY_S = 60.0


class WebhookSender:
    def __init__(self, config: Config, *, max_queue: int = 1000) -> None:
        self.config = config
        self.trigger = config.ref("agent_failure")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=max_queue)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._last_log = 0.0

    def send(self, payload: dict[str, Any]) -> None:
        """Queue a trigger payload; never blocks."""
        self._ensure_thread()
        try:
            self._queue.put_nowait(payload)
        except queue.Full:
            self.dropped += 1

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="synthhost-stackstorm-webhook", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        headers = {**self.config.auth_headers(), "Accept": "application/json"}
        with httpx.Client(base_url=self.config.api_url, headers=headers, verify=self.config.verify,
                          timeout=httpx.Timeout(self.config.http_timeout_s)) as http:
            while True:
                item = self._queue.get()
                try:
                    if item is _STOP:
                        return
                    post_webhook(http, self.trigger, item)
                    self.sent += 1
                except St2Error as exc:
                    self._failed(exc.message)
                except Exception as exc:  # never let the thread die
                    self._failed(f"{type(exc).__name__}: {exc}")
                finally:
                    self._queue.task_done()

    def _failed(self, message: str) -> None:
        self.failed += 1
        self.last_error = message[:300]
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            log.warning("stackstorm: failure webhook not delivered (%d so far): %s", self.failed, message)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued payload was posted (or failed); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self.flush(timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=1.0)
        self._thread.join(timeout=2.0)
        self._thread = None

    def stats(self) -> dict[str, int]:
        return {"sent": self.sent, "failed": self.failed, "dropped": self.dropped, "queued": self._queue.qsize()}
