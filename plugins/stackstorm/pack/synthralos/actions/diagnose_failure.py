"""Choose how to repair a failed LLM request.

Strategies (the request changes; the caller re-executes it):

- ``reduce_max_tokens``: halve ``max_tokens`` (not below ``min_max_tokens``): a shorter
  answer finishes sooner (timeouts, overloaded servers);
- ``simplify_query``: keep the system messages and the last user message, whitespace
  collapsed, cut to ``max_prompt_chars`` (prompts too long for the model);
- ``trim_history``: keep the system messages and the last user message (a request the
  provider rejected as too large, with a conversation behind it).

Authentication failures and rate limits have no repair: the request is not the problem.
"""

from __future__ import annotations

import logging
from typing import Any

try:  # inside StackStorm
    from st2common.runners.base_action import Action
except ImportError:  # outside StackStorm (tests, linters): the same constructor surface

    class Action:  # type: ignore[no-redef]
        def __init__(self, config: Any = None, action_service: Any = None) -> None:
            self.config = config or {}
            self.action_service = action_service
            self.logger = logging.getLogger(type(self).__name__)


CODE_TYPES = {
    "PROVIDER_TIMEOUT": "timeout",
    "PROVIDER_RATE_LIMITED": "rate_limit",
    "PROVIDER_AUTH": "auth",
    "PROVIDER_BAD_REQUEST": "bad_request",
    "PROVIDER_ERROR": "llm_error",
}


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _max_tokens(params: dict[str, Any]) -> int | None:
    for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


class DiagnoseFailure(Action):
    def run(self, original_request: dict[str, Any], failure_type: str = "unknown",
            failure_details: dict[str, Any] | None = None, max_prompt_chars: int = 8000,
            min_max_tokens: int = 64) -> dict[str, Any]:
        details = failure_details or {}
        kind = failure_type if failure_type not in ("unknown", "error") else CODE_TYPES.get(
            str(details.get("error_code") or ""), failure_type)
        messages = [m for m in original_request.get("messages") or [] if isinstance(m, dict)]
        params = original_request.get("parameters") or {}
        turns = [m for m in messages if m.get("role") != "system"]
        prompt_chars = sum(len(_text(m)) for m in messages)
        max_tokens = _max_tokens(params)
        can_shorten_answer = max_tokens is not None and max_tokens > min_max_tokens
        too_long = prompt_chars > max_prompt_chars
        has_history = len(turns) > 1

        if kind in ("auth", "rate_limit"):
            return self._none(f"{kind}: the request is not the problem, a repair cannot help")
        if kind == "bad_request":
            order = (("trim_history", has_history), ("simplify_query", too_long),
                     ("reduce_max_tokens", can_shorten_answer))
        else:  # timeout, llm_error, invalid_output, tool_failure, unknown
            order = (("reduce_max_tokens", can_shorten_answer), ("simplify_query", too_long),
                     ("trim_history", has_history))
        for strategy, applies in order:
            if applies:
                return {"repairable": True, "strategy": strategy, "failure_type": kind,
                        "reason": f"{strategy} after {kind} (prompt {prompt_chars} chars, {len(turns)} turns, "
                                  f"max_tokens {max_tokens})"}
        return self._none(f"{kind}: nothing to shorten (prompt {prompt_chars} chars, {len(turns)} turns, "
                          f"max_tokens {max_tokens})")

    @staticmethod
    def _none(reason: str) -> dict[str, Any]:
        return {"repairable": False, "strategy": "none", "reason": reason}
