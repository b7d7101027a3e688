"""A Model Context Protocol server for the tool tests (the official SDK's server): over
stdio by default, streamable HTTP with ``--http PORT``."""

from __future__ import annotations

import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("synthhost-tests")


@server.tool()
def pid() -> int:
    """This server's process id (a test checks the session's process ends with the run)."""
    return os.getpid()


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def fail(reason: str) -> str:
    """Always fails."""
    raise ToolError(reason)  # the SDK sends a ToolError's message; other exceptions are masked


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
