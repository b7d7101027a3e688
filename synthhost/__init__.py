"""synthhost: an agent runtime host that wraps every LLM call in a chain of plugins."""

from typing import TYPE_CHECKING, Any

from synthhost.call import Call, Recovery, Request, Response, Stash, StashKey, StreamDelta, ToolCallRequest, Usage
from synthhost.errors import Denied, ErrorCode, ProviderError, SynthhostError, UsageError
from synthhost.hookspecs import hookimpl, hookspec
from synthhost.registry import Stage
from synthhost.tools import Tool, ToolCall, ToolError, ToolResult
from synthhost.trace import RunResult, SpanRecord, Trace

if TYPE_CHECKING:
    from synthhost.host import Host


def __getattr__(name: str) -> Any:
    # Host pulls in SQLAlchemy, Alembic and the writer: import it on first use so
    # that plugins (``from synthhost import hookimpl``) and ``synthhost --help`` stay cheap.
    if name == "Host":
        from synthhost.host import Host

        globals()["Host"] = Host
        return Host
    raise AttributeError(f"module 'synthhost' has no attribute {name!r}")

__all__ = [
    "Call",
    "Denied",
    "ErrorCode",
    "Host",
    "ProviderError",
    "Recovery",
    "Request",
    "Response",
    "RunResult",
    "SpanRecord",
    "Stage",
    "Stash",
    "StashKey",
    "StreamDelta",
    "SynthhostError",
    "Tool",
    "ToolCall",
    "ToolCallRequest",
    "ToolError",
    "ToolResult",
    "Trace",
    "Usage",
    "UsageError",
    "hookimpl",
    "hookspec",
]
