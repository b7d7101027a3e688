"""Snapshots kept in step with the database by polling a cheap change token.

Flags, policy sets, routing configs and guard sets all follow one shape: the hot path
reads an in-process snapshot; a daemon thread reads a cheap token (a counter, a row
count) every ``refresh_s`` seconds and reloads the snapshot when it moved. Changes made
through this process reload at once; other processes see them within about one
interval. Subclasses implement :meth:`read_token` and :meth:`reload`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

log = logging.getLogger("synthhost.refresh")


class PolledSnapshot:
    thread_name = "synthhost-refresh"

    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._token: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def read_token(self) -> Any:
        """The current change token in the database (cheap: one small query)."""
        raise NotImplementedError

    def reload(self) -> None:
        """Load the snapshot and set ``self._token`` to the token it reflects."""
        raise NotImplementedError

    def poll_once(self) -> bool:
        """Reload if the token moved. True when it reloaded."""
        if self.read_token() != self._token:
            self.reload()
            return True
        return False

    def start(self) -> None:
        if self._thread is None and self.refresh_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._poll, name=self.thread_name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.poll_once()
            except Exception as exc:  # keep serving the last snapshot while the DB is away
                log.warning("%s: refresh failed: %s", self.thread_name, exc)
