"""Build a repaired request: the same conversation, smaller or simpler.

Returns ``request`` = ``{"messages": [...], "params": {...}}`` (the whole new messages
list and the parameters to change) and ``changed``: false when the strategy had
nothing to change, in which case the caller must not present it as a repair.
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


TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MARK = "\n[...]\n"


def _shorten(text: str, limit: int) -> str:
    """Collapse runs of spaces and blank lines; cut the middle out when still too long
    (the start states the task, the end usually holds the question)."""
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r"\n\s*\n+", "\n\n", text).strip()
    if len(text) <= limit:
        return text
    keep = max(0, limit - len(MARK))
    head = keep * 2 // 3
    return text[:head] + MARK + text[len(text) - (keep - head):]


def _last_user(messages: list[dict[str, Any]]) -> int | None:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return None


class RepairRequest(Action):
    def run(self, strategy: str, original_request: dict[str, Any], max_prompt_chars: int = 8000,
            min_max_tokens: int = 64) -> dict[str, Any]:
        messages = [dict(m) for m in original_request.get("messages") or [] if isinstance(m, dict)]
        params = dict(original_request.get("parameters") or {})
        new_messages = messages
        new_params: dict[str, Any] = {}
        summary = strategy
        if strategy == "reduce_max_tokens":
            for key in TOKEN_KEYS:
                value = params.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > min_max_tokens:
                    new_params[key] = max(min_max_tokens, value // 2)
                    summary = f"{key} {value} -> {new_params[key]}"
                    break
        elif strategy in ("simplify_query", "trim_history"):
            last = _last_user(messages)
            if last is not None:
                kept = [dict(m) for m in messages[:last] if m.get("role") == "system"] + [dict(messages[last])]
                if strategy == "simplify_query" and isinstance(kept[-1].get("content"), str):
                    kept[-1]["content"] = _shorten(kept[-1]["content"], max_prompt_chars)
                new_messages = kept
                before = sum(len(str(m.get("content") or "")) for m in messages)
                after = sum(len(str(m.get("content") or "")) for m in kept)
                summary = f"{strategy}: {len(messages)} -> {len(kept)} messages, {before} -> {after} chars"
        else:
            return {"changed": False, "strategy": strategy, "request": None,
                    "summary": f"unknown strategy {strategy!r}"}
        changed = bool(new_params) or new_messages != messages
        if not changed:
            summary = f"{strategy} changed nothing"
        return {"changed": changed, "strategy": strategy, "summary": summary,
                "request": {"messages": new_messages, "params": new_params} if changed else None}
