"""The tools of one run: agent-file ``tools:`` entries resolved to :class:`Tool`\\ s, with
the resources they hold (MCP sessions, one HTTP client) opened when a step first needs
them and closed when the run ends."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from synthhost.errors import ErrorCode, SynthhostError, UsageError
from synthhost.tools import Tool
from synthhost.tools.spec import ToolSpec

if TYPE_CHECKING:
    import httpx

    from synthhost.host import Host
    from synthhost.runner import RunState

__all__ = ["ToolBox", "resolve_static", "search_dir"]


def search_dir(source: str) -> str | None:
    """The directory of the agent file a spec came from (where its tool modules may sit)."""
    path = Path(source)
    return str(path.resolve().parent) if path.is_file() else None


def resolve_static(host: Host, entry: ToolSpec, base_dir: str | None = None) -> list[Tool]:
    """A ``python`` or registered (``name``) entry's tool; raises ``ValueError`` with a
    one-line reason. (HTTP and MCP entries need the run's resources: :class:`ToolBox`.)"""
    from synthhost.tools.python import import_ref, python_tool

    if entry.python is not None:
        return [python_tool(import_ref(entry.python, base_dir), name=entry.name, description=entry.description,
                            timeout_s=entry.timeout_s)]
    assert entry.name is not None
    registered = host.registry.tools.get(entry.name)
    if registered is None:
        known = ", ".join(sorted(host.registry.tools)) or "none"
        raise ValueError(f"no plugin registered a tool {entry.name!r} (registered: {known})")
    return [registered[1].with_overrides(description=entry.description, timeout_s=entry.timeout_s)]


class ToolBox:
    def __init__(self, host: Host, base_dir: str | None = None, *, run: RunState | None = None) -> None:
        self.host = host
        self.base_dir = base_dir
        self.run = run
        self._stack = contextlib.AsyncExitStack()
        self._resolved: dict[int, list[Tool]] = {}  # by id() of the entry (entries live as long as the run)
        self._client: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ToolBox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close what the run opened. A server that fails to close is an event, not a
        failed run (its work is done); a cancellation still propagates."""
        try:
            await self.aclose()
        except Exception as error:
            run = self.run
            self.host.emit("tool_source_close_failed", status="error",
                           workspace=run.workspace if run else None, run_id=run.run_id if run else None,
                           trace_id=run.trace_id if run else None, error=f"{type(error).__name__}: {error}"[:500])

    async def aclose(self) -> None:
        await self._stack.aclose()

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            import httpx

            # Redirects are not followed: a redirect could leave the allow-list.
            self._client = httpx.AsyncClient(follow_redirects=False)
            self._stack.push_async_callback(self._client.aclose)
        return self._client

    async def _one(self, entry: ToolSpec) -> list[Tool]:
        if entry.http is not None:
            from synthhost.tools.http import http_tool

            assert entry.name is not None
            return [http_tool(entry.name, entry.description or "", entry.http, client=self._http(),
                              env=self.host.settings.env, parameters=entry.parameters, timeout_s=entry.timeout_s)]
        if entry.mcp is not None:
            from synthhost.tools.mcp import MissingTool, first_error, open_mcp_tools

            try:
                return await open_mcp_tools(entry.mcp, self._stack, timeout_s=entry.timeout_s, cwd=self.base_dir)
            except MissingTool as exc:
                raise UsageError(f"tool 'mcp': {exc}") from None
            except Exception as exc:
                where = " ".join(entry.mcp.command) if entry.mcp.command else entry.mcp.url
                cause = first_error(exc)
                raise SynthhostError(f"MCP server {where!r} is unavailable: {type(cause).__name__}: {cause}"[:500],
                                     code=ErrorCode.TOOL_ERROR) from None
        return resolve_static(self.host, entry, self.base_dir)

    async def resolve(self, entries: Sequence[ToolSpec]) -> dict[str, Tool]:
        """The step's tools by name. A name offered twice is an error."""
        tools: dict[str, Tool] = {}
        for entry in entries:
            found = self._resolved.get(id(entry))
            if found is None:
                try:
                    found = self._resolved[id(entry)] = await self._one(entry)
                except ValueError as exc:
                    raise UsageError(f"tool {entry.name or entry.python or entry.source!r}: {exc}") from None
            for tool in found:
                if tool.name in tools:
                    raise UsageError(f"two tools are named {tool.name!r} in one step")
                tools[tool.name] = tool
        return tools
