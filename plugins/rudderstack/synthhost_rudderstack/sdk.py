"""Import rudder-sdk-python without its side effect.

``rudderstack.analytics.get_env`` runs ``load_dotenv()`` at import: it would copy a
``.env`` (from the CWD, or from above the installed package) into ``os.environ`` of the
embedding process. We import the SDK lazily, the first time an exporter is built, with
``dotenv.load_dotenv`` replaced by a no-op for the duration of the import, and restore
``os.environ`` exactly as it was in case anything else in the import touched it.
"""

from __future__ import annotations

import os
import sys
import threading
from types import SimpleNamespace
from typing import Any

_lock = threading.Lock()
_sdk: SimpleNamespace | None = None


def _restore_environ(saved: dict[str, str]) -> None:
    for key in set(os.environ) - set(saved):
        del os.environ[key]
    for key, value in saved.items():
        if os.environ.get(key) != value:
            os.environ[key] = value


def load() -> Any:
    """``(Client, post, APIError, VERSION)`` of the SDK, imported without side effects."""
    global _sdk
    with _lock:
        if _sdk is not None:
            return _sdk
        fresh = "rudderstack.analytics.get_env" not in sys.modules
        saved = dict(os.environ) if fresh else {}
        original = None
        if fresh:
            import dotenv

            original = dotenv.load_dotenv
            dotenv.load_dotenv = lambda *args, **kwargs: False
        try:
            from rudderstack.analytics.client import Client
            from rudderstack.analytics.request import APIError, post
            from rudderstack.analytics.version import VERSION
        finally:
            if fresh:
                import dotenv

                dotenv.load_dotenv = original  # type: ignore[assignment]
                _restore_environ(saved)
        _sdk = SimpleNamespace(Client=Client, post=post, APIError=APIError, VERSION=VERSION)
        return _sdk
