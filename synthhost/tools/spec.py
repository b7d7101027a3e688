"""The ``tools:`` entries of an agent file (pydantic models; the loader turns their
errors into ``FILE:LINE: FIELD: problem`` lines).

::

    tools:
      - python: my_pkg.tools:add            # a typed function; name = the function's
      - name: weather                       # a tool a plugin registered
      - name: ticket_status                 # an HTTP request template
        description: Look up a ticket.
        http:
          url: https://api.example.com/tickets/{id}
          allow_hosts: [api.example.com]
          headers: {Authorization: "Bearer ${EXAMPLE_TOKEN}"}
      - mcp: {command: [python, -m, my_pkg.mcp_server]}   # or {url: http://host/mcp}
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = ["HttpSpec", "McpSpec", "ToolSpec", "url_placeholders"]

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MAX_HTTP_BYTES = 16 << 20


def url_placeholders(url: str) -> list[str]:
    return _PLACEHOLDER.findall(url)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HttpSpec(_Model):
    """An HTTP request template. ``{name}`` placeholders in the URL's path or query are
    filled from the arguments (URL-encoded); the other arguments go in the query string
    (GET, DELETE) or the JSON body. Header values may name environment variables
    (``${NAME}``), read from the host's environment when the request is made."""

    url: str
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    allow_hosts: list[str] = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    max_bytes: int = Field(default=1 << 20, ge=1, le=MAX_HTTP_BYTES)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be an absolute http(s) URL, got {value!r}")
        if "{" in (parts.netloc or ""):
            raise ValueError("placeholders may fill the path or query, never the host")
        return value

    @model_validator(mode="after")
    def _host_allowed(self) -> HttpSpec:
        host = urlsplit(self.url).hostname
        if host not in {h.lower() for h in self.allow_hosts}:
            raise ValueError(f"url host {host!r} is not in allow_hosts ({', '.join(self.allow_hosts)})")
        return self


class McpSpec(_Model):
    """A Model Context Protocol server: a command started over stdio, or a streamable
    HTTP ``url``. ``tools`` limits which of its tools are exposed (default: all)."""

    command: list[str] | None = Field(default=None, min_length=1)
    url: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    tools: list[str] | None = None

    @model_validator(mode="after")
    def _one_transport(self) -> McpSpec:
        if (self.command is None) == (self.url is None):
            raise ValueError("give exactly one of command (stdio) or url (streamable HTTP)")
        if self.url is not None and urlsplit(self.url).scheme not in ("http", "https"):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        return self


class ToolSpec(_Model):
    """One ``tools:`` entry: a registered tool by ``name``, or one of the sources
    ``python``, ``http`` (needs ``name``) or ``mcp``."""

    name: str | None = None
    description: str | None = None
    python: str | None = None
    http: HttpSpec | None = None
    mcp: McpSpec | None = None
    parameters: dict[str, Any] | None = None
    timeout_s: float | None = Field(default=None, gt=0, le=3600, allow_inf_nan=False)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not _TOOL_NAME.match(value):
            raise ValueError(f"tool name must be 1-64 letters, digits, '_' or '-', got {value!r}")
        return value

    @field_validator("python")
    @classmethod
    def _ref(cls, value: str | None) -> str | None:
        if value is not None:
            module, sep, attr = value.partition(":")
            if not sep or not module or not attr or any(c.isspace() for c in value):
                raise ValueError(f"python must be 'package.module:function', got {value!r}")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ToolSpec:
        sources = [k for k in ("python", "http", "mcp") if getattr(self, k) is not None]
        if len(sources) > 1:
            raise ValueError(f"a tool has one source, got {' and '.join(sources)}")
        if not sources and self.name is None:
            raise ValueError("a tool needs a name (a registered tool) or a source: python, http or mcp")
        if self.http is not None and self.name is None:
            raise ValueError("an http tool needs a name")
        if self.mcp is not None and (self.name or self.description or self.parameters):
            raise ValueError("an mcp entry takes its tools' names, descriptions and schemas from the server")
        if self.parameters is not None and (self.python is not None or not sources):
            raise ValueError("parameters are derived from the function (python) or the plugin; give them "
                             "only for http tools")
        return self

    @property
    def source(self) -> str:
        return next((k for k in ("python", "http", "mcp") if getattr(self, k) is not None), "plugin")
