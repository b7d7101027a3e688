"""Tools an agent can call: what a tool is, the context tool hooks receive, and the
result the model sees.

A tool comes from one of four sources: a plugin's ``register_tools`` hook, a typed Python
function (``python: pkg.module:function``), an HTTP request template (``http:``) or a
Model Context Protocol server (``mcp:``). Whatever the source, the host calls it the same
way (:func:`synthhost.agent_loop.call_tool`): ``pre_tool`` hooks, argument validation, the
tool under its timeout, ``post_tool`` hooks, a ``tool`` span and an event.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from synthhost.call import Stash

if TYPE_CHECKING:
    from synthhost.host import Host

__all__ = ["RegisterTool", "Tool", "ToolCall", "ToolError", "ToolResult", "ToolSource"]

ToolSource = str  # "python", "http", "mcp", or "plugin"

# Called with the validated arguments; returns anything JSON-serialisable (or text).
Invoke = Callable[[dict[str, Any]], Awaitable[Any]]

DEFAULT_TIMEOUT_S = 30.0
# A failed tool call is tried at most this often (see the on_tool_failure hook).
MAX_TOOL_ATTEMPTS = 3
# The most text of one tool result the model is sent (and a span records).
MAX_RESULT_CHARS = 100_000


class ToolError(Exception):
    """Raised by a tool (or its source) for a failure the model should read: bad
    arguments, an HTTP error status, an MCP error result. ``code`` is stable."""

    def __init__(self, message: str, code: str = "TOOL_ERROR") -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Tool:
    """A callable tool: its name as the model sees it, a description, a JSON Schema for
    its arguments, and ``invoke(args)``. ``validate(args)`` (optional) checks and coerces
    the arguments before ``invoke``, raising :class:`ToolError` on bad ones."""

    name: str
    description: str
    parameters: Mapping[str, Any]
    invoke: Invoke
    timeout_s: float = DEFAULT_TIMEOUT_S
    source: ToolSource = "plugin"
    validate: Callable[[dict[str, Any]], dict[str, Any]] | None = None

    def with_overrides(self, *, name: str | None = None, description: str | None = None,
                       timeout_s: float | None = None) -> Tool:
        """This tool with the given fields replaced (``None`` keeps a field)."""
        return dataclasses.replace(self, name=name or self.name,
                                   description=self.description if description is None else description,
                                   timeout_s=timeout_s or self.timeout_s)

    def definition(self) -> dict[str, Any]:
        """The OpenAI ``tools`` entry (the wire form every provider here speaks)."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": dict(self.parameters)}}


@dataclass(slots=True)
class ToolResult:
    """What a tool call produced. ``content`` is the text the model is sent; ``post_tool``
    hooks may rewrite it (a guardrail redacting a secret). ``is_error``: the tool failed
    (bad arguments, timeout, an exception, a denial); the model still sees ``content``."""

    content: str
    is_error: bool = False
    error_code: str | None = None
    value: Any = None


@dataclass(slots=True)
class ToolCall:
    """The context of one tool call, passed to ``pre_tool`` and ``post_tool``.

    ``args`` may be changed in place by ``pre_tool`` (a policy rewriting an argument);
    the tool receives them as they stand after the last ``pre_tool``. ``attributes`` are
    recorded on the tool's span. ``call_id`` is the model's ``tool_call_id``."""

    host: Host
    tool: Tool
    args: dict[str, Any]
    call_id: str
    workspace: str = "default"
    user: str | None = None
    org: str | None = None
    agent: str | None = None
    step: str | None = None
    run_id: str | None = None
    trace_id: str = ""
    span_id: str = ""
    parent_span_id: str | None = None
    turn: int = 1
    attributes: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)  # the agent's metadata
    stash: Stash = field(default_factory=Stash)
    started_at: float = field(default_factory=time.time)

    @property
    def name(self) -> str:
        return self.tool.name

    @property
    def source(self) -> str:
        return self.tool.source

    def emit(self, event_type: str, *, status: str = "success", **context: Any) -> None:
        """Record an event for this tool call (tenant, run, trace and span ids filled in)."""
        self.host.emit(event_type, workspace=self.workspace, user=self.user, org=self.org, run_id=self.run_id,
                       trace_id=self.trace_id, span_id=self.span_id, status=status, tool=self.name, **context)


class RegisterTool(Protocol):
    def __call__(self, tool: Tool | Callable[..., Any], *, name: str | None = None,
                 description: str | None = None, timeout_s: float | None = None) -> None: ...
