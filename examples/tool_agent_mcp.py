"""A tiny Model Context Protocol server for examples/tool-agent.yaml, written with the
official ``mcp`` SDK. Over stdio by default (the agent starts it); ``--http PORT`` serves
streamable HTTP on 127.0.0.1 instead."""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

server = MCPServer("synthhost-example")

ARTICLES = {
    "kb-1": "Reset a password from Settings > Security > Reset password.",
    "kb-2": "Invoices are emailed on the first working day of each month.",
}


@server.tool()
def search_kb(query: str) -> str:
    """Search the help-centre articles; returns the best match's id and text."""
    words = set(query.lower().split())
    best = max(ARTICLES, key=lambda k: len(words & set(ARTICLES[k].lower().split())))
    return f"{best}: {ARTICLES[best]}"


@server.tool()
def fail_always(reason: str) -> str:
    """A tool that always fails (to show how a tool error reaches the model)."""
    raise ToolError(reason)  # the SDK sends a ToolError's message; other exceptions are masked


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
