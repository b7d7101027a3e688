"""Count a failed LLM call in the StackStorm datastore.

Key ``failures.<provider>.<error_code>`` (pack-local: ``synthralos:failures...``), an
integer kept for ``ttl_s`` seconds after the last failure. Read it with
``st2 key get synthralos:failures.openai.PROVIDER_TIMEOUT``, or from a rule's criteria,
to alert on failure bursts.
"""

from __future__ import annotations

import logging
import re
from typing import Any

try:  # inside StackStorm
    from st2common.runners.base_action import Action
except ImportError:  # outside StackStorm (tests, linters): the same constructor surface

    class Action:  # type: ignore[no-redef]
        def __init__(self, config: Any = None, action_service: Any = None) -> None:
            self.config = config or {}
            self.action_service = action_service
            self.logger = logging.getLogger(type(self).__name__)


def _part(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", value or "unknown")[:64]


class RecordFailure(Action):
    def run(self, workspace: str = "default", provider: str = "unknown", model: str = "unknown",
            error_code: str = "PROVIDER_ERROR", failure_reason: str = "", attempt: int = 1, trace_id: str = "",
            ttl_s: int = 3600) -> dict[str, Any]:
        key = f"failures.{_part(provider)}.{_part(error_code)}"
        count = 1
        if self.action_service is not None:
            previous = self.action_service.get_value(key, local=True)
            count = int(previous or 0) + 1
            self.action_service.set_value(key, str(count), ttl=ttl_s, local=True)
        message = (f"{provider}/{model} failed with {error_code} on attempt {attempt} "
                   f"(workspace {workspace}, trace {trace_id or '-'}): {failure_reason[:200]}")
        self.logger.info(message)
        return {"key": key, "count": count, "message": message}
