"""Backoff before a retry: min(max_delay, base * 2**(attempt-1)), with full jitter by
default (AWS "full jitter"; the original doubled without jitter, which synchronises
retry storms), and never shorter than the provider's Retry-After."""

from __future__ import annotations

import logging
import random
from typing import Any

try:  # inside StackStorm
    from st2common.runners.base_action import Action
except ImportError:  # outside StackStorm (tests, linters): the same constructor surface

    class Action:  # type: ignore[no-redef]
        def __init__(self, config: Any = None, action_service: Any = None) -> None:
            self.config = config or {}
            self.action_service = action_service
            self.logger = logging.getLogger(type(self).__name__)


class ComputeBackoff(Action):
    def run(self, attempt: int = 1, base_delay_s: float = 1, max_delay_s: float = 30, retry_after_s: float = 0,
            jitter: bool = True) -> dict[str, Any]:
        attempt = max(1, int(attempt))
        cap = max(0.0, min(float(max_delay_s), float(base_delay_s) * 2 ** (attempt - 1)))
        delay = random.uniform(0, cap) if jitter else cap
        delay = max(delay, float(retry_after_s or 0))
        return {"delay_s": round(delay, 3), "cap_s": round(cap, 3)}
