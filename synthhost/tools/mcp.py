"""Model Context Protocol servers as tool sources, through the official ``mcp`` SDK:
one client session per server per run (stdio subprocess or streamable HTTP), its tools
listed and exposed, the session closed when the run ends."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from synthhost.tools import DEFAULT_TIMEOUT_S, Tool, ToolError
from synthhost.tools.schema import schema_validator
from synthhost.tools.spec import McpSpec

__all__ = ["open_mcp_tools"]


async def open_mcp_tools(spec: McpSpec, stack: contextlib.AsyncExitStack, *,
                         timeout_s: float | None = None, cwd: str | None = None) -> list[Tool]:
    """Connect (the session lives as long as ``stack``) and return the server's tools.
    A stdio command runs in ``cwd`` (the agent file's directory); ``python`` as its
    program means this host's interpreter, so the server sees the same packages."""
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    server: Any
    if spec.command is not None:
        program = sys.executable if spec.command[0] in ("python", "python3") else spec.command[0]
        params = StdioServerParameters(command=program, args=spec.command[1:], env=dict(spec.env) or None, cwd=cwd)
        # The server's stderr goes to this process's own (sys.stderr may be a capture
        # without a file descriptor, under click's runner or pytest).
        server = stdio_client(params, errlog=_process_stderr(stack))
    else:
        server = spec.url
    timeout = timeout_s or DEFAULT_TIMEOUT_S
    client = await stack.enter_async_context(Client(server, read_timeout_seconds=timeout))
    listed = await client.list_tools()
    wanted = set(spec.tools) if spec.tools is not None else None
    tools = []
    for item in listed.tools:
        if wanted is not None and item.name not in wanted:
            continue
        schema = dict(item.input_schema or {"type": "object"})
        tools.append(Tool(item.name, item.description or "", schema, _invoker(client, item.name), timeout, "mcp",
                          schema_validator(schema)))
    missing = sorted((wanted or set()) - {t.name for t in tools})
    if missing:
        raise MissingTool(f"the MCP server has no tool {missing[0]!r} "
                          f"(it has: {', '.join(sorted(t.name for t in listed.tools)) or 'none'})")
    return tools


class MissingTool(LookupError):
    """An agent file names a tool the server does not have (the file is wrong)."""


def _process_stderr(stack: contextlib.AsyncExitStack) -> TextIO:
    stream = sys.__stderr__
    try:
        if stream is not None:
            stream.fileno()
            return stream
    except (OSError, ValueError):
        pass
    devnull = open(os.devnull, "w")  # noqa: SIM115  # closed with the run's stack
    stack.callback(devnull.close)
    return devnull


def _invoker(client: Any, name: str) -> Any:
    async def invoke(args: dict[str, Any]) -> Any:
        result = await client.call_tool(name, args)
        text = _result_text(result.content, result.structured_content)
        if result.is_error:
            raise ToolError(text or "the MCP tool reported an error", "TOOL_ERROR")
        return text

    return invoke


def _result_text(content: Any, structured: Mapping[str, Any] | None) -> str:
    parts = [str(getattr(c, "text", "")) for c in content or () if getattr(c, "type", None) == "text"]
    if parts:
        return "\n".join(parts)
    return json.dumps(structured) if structured is not None else ""


def first_error(exc: BaseException) -> BaseException:
    """The first leaf of an exception group (task groups wrap a server's failure)."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc
