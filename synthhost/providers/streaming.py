"""Assembling an OpenAI-style stream (``chat.completion.chunk`` events) into one
:class:`~synthhost.call.Response`, passing each piece on as a
:class:`~synthhost.call.StreamDelta`: text, and tool calls whose arguments arrive in
fragments keyed by ``index``."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from synthhost.call import Response, StreamDelta, ToolCallRequest, Usage

__all__ = ["StreamAssembler"]


@dataclass
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass
class StreamAssembler:
    on_delta: Callable[[StreamDelta], None] | None = None
    text: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)
    finish_reason: str = "stop"
    model: str | None = None
    usage: Any = None

    def feed_line(self, line: str) -> bool:
        """One line of the event stream; ``False`` at ``data: [DONE]``."""
        if not line.startswith("data:"):
            return True
        data = line[5:].strip()
        if data == "[DONE]":
            return False
        if data:
            self.feed(json.loads(data))
        return True

    def feed(self, chunk: Mapping[str, Any]) -> None:
        self.model = self.model or chunk.get("model")
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            if choice.get("finish_reason"):
                self.finish_reason = str(choice["finish_reason"])
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str) and content:
                self.text.append(content)
                self._emit(StreamDelta(text=content))
            for item in delta.get("tool_calls") or ():
                self._tool_fragment(item)

    def _tool_fragment(self, item: Mapping[str, Any]) -> None:
        index = int(item.get("index", len(self.tool_calls)))
        parts = self.tool_calls.setdefault(index, _ToolCallParts())
        function = item.get("function") or {}
        parts.id = parts.id or str(item.get("id") or "")
        parts.name = parts.name or str(function.get("name") or "")
        arguments = function.get("arguments") or ""
        if arguments:
            parts.arguments.append(arguments)
        self._emit(StreamDelta(index=index, id=item.get("id"), name=function.get("name"), arguments=arguments))

    def _emit(self, delta: StreamDelta) -> None:
        if self.on_delta is not None:
            self.on_delta(delta)

    def response(self, *, model: str, provider: str, usage: Callable[[Any], Usage]) -> Response:
        calls = [ToolCallRequest(p.id or f"call_{i + 1}", p.name, "".join(p.arguments) or "{}")
                 for i, p in sorted(self.tool_calls.items()) if p.name]
        return Response(text="".join(self.text), model=self.model or model, provider=provider, usage=usage(self.usage),
                        finish_reason=self.finish_reason, tool_calls=calls)
