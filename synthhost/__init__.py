"""synthhost: an agent runtime host that wraps every LLM call in a chain of plugins."""

from synthhost.call import Call, Recovery, Request, Response, Stash, StashKey, Usage
from synthhost.errors import Denied, ErrorCode, ProviderError, SynthhostError, UsageError
from synthhost.hookspecs import hookimpl, hookspec
from synthhost.host import Host
from synthhost.registry import Stage
from synthhost.trace import RunResult, SpanRecord, Trace

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
    "SynthhostError",
    "Trace",
    "Usage",
    "UsageError",
    "hookimpl",
    "hookspec",
]
