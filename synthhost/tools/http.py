"""HTTP request templates as tools (``http:`` in an agent file): a host allow-list
checked on every request, headers from the environment, a timeout and a response cap."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from synthhost.tools import DEFAULT_TIMEOUT_S, Tool, ToolError
from synthhost.tools.schema import schema_validator
from synthhost.tools.spec import HttpSpec, url_placeholders

__all__ = ["env_headers", "http_tool"]

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def env_headers(headers: Mapping[str, str], env: Mapping[str, str]) -> dict[str, str]:
    """Header values with ``${NAME}`` replaced from ``env``; a missing variable is a
    ``ValueError`` naming it (never its value)."""
    out: dict[str, str] = {}
    for key, value in headers.items():
        def sub(m: re.Match[str], _key: str = key) -> str:
            name = m.group(1)
            if name not in env:
                raise ValueError(f"header {_key!r} names ${{{name}}}, which is not set")
            return env[name]

        out[key] = _ENV_REF.sub(sub, value)
    return out


def _default_parameters(spec: HttpSpec) -> dict[str, Any]:
    names = url_placeholders(spec.url)
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": names}


def http_tool(name: str, description: str, spec: HttpSpec, *, client: httpx.AsyncClient, env: Mapping[str, str],
              parameters: Mapping[str, Any] | None = None, timeout_s: float | None = None) -> Tool:
    """A :class:`Tool` that makes ``spec``'s request. Headers are resolved now (a missing
    variable fails here, when the run starts, not at the model's first call)."""
    headers = env_headers(spec.headers, env)
    allowed = {h.lower() for h in spec.allow_hosts}
    placeholders = set(url_placeholders(spec.url))
    timeout = timeout_s or DEFAULT_TIMEOUT_S
    schema = dict(parameters) if parameters is not None else _default_parameters(spec)

    async def invoke(args: dict[str, Any]) -> Any:
        url = spec.url
        for key in placeholders:
            if key not in args:
                raise ToolError(f"missing argument {key!r}", "TOOL_BAD_ARGUMENTS")
            url = url.replace("{" + key + "}", quote(str(args[key]), safe=""))
        host = urlsplit(url).hostname
        if host not in allowed:  # the template's host is checked at load; re-check what is sent
            raise ToolError(f"host {host!r} is not allowed", "TOOL_HOST_NOT_ALLOWED")
        rest = {k: v for k, v in args.items() if k not in placeholders}
        body = None if spec.method in ("GET", "DELETE") else rest
        query = rest if spec.method in ("GET", "DELETE") else None
        try:
            async with client.stream(spec.method, url, headers=headers, json=body, params=query,
                                     timeout=timeout) as response:
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > spec.max_bytes:
                        raise ToolError(f"response larger than max_bytes={spec.max_bytes}", "TOOL_RESPONSE_TOO_LARGE")
                    chunks.append(chunk)
        except httpx.TimeoutException:
            raise ToolError(f"HTTP request timed out after {timeout:g}s", "TOOL_TIMEOUT") from None
        except httpx.HTTPError as exc:
            raise ToolError(f"HTTP request failed: {type(exc).__name__}", "TOOL_HTTP_ERROR") from None
        text = b"".join(chunks).decode(response.encoding or "utf-8", errors="replace")
        if 300 <= response.status_code < 400:
            raise ToolError(f"HTTP {response.status_code}: redirects are not followed (to "
                            f"{response.headers.get('location', '?')[:200]})", "TOOL_HTTP_ERROR")
        if response.status_code >= 400:
            raise ToolError(f"HTTP {response.status_code}: {text[:500]}", "TOOL_HTTP_ERROR")
        return text

    return Tool(name, description, schema, invoke, timeout, "http", schema_validator(schema))
