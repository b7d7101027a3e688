"""Workspace names: one validated type for the CLI, ``Host`` and the HTTP API.

A workspace name is 1-64 characters from ``A-Z a-z 0-9 . _ -``, starting with a letter
or a digit. ``'*'`` is not a workspace: it is the *global* scope of flags and
configuration rows, reachable only through an explicit ``--global`` (CLI) or
:data:`GLOBAL` (API), never by passing ``'*'`` or ``''`` as a workspace.
"""

from __future__ import annotations

import re

from synthhost.errors import UsageError

GLOBAL = "*"
MAX_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RULE = "1-64 characters from A-Z a-z 0-9 . _ -, starting with a letter or digit"


def is_valid_workspace(name: object) -> bool:
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


def validate_workspace(name: object, *, what: str = "workspace") -> str:
    """Return ``name`` when it is a valid workspace name, else raise :class:`UsageError`.

    The message names ``what`` (the flag or field) and never echoes more than 40
    characters of the bad value (control characters shown escaped).
    """
    if is_valid_workspace(name):
        return name  # type: ignore[return-value]
    if name == GLOBAL:
        raise UsageError(f"{what}: '*' is the global scope, not a workspace (use --global)")
    shown = repr(name)[:40] + ("..." if len(repr(name)) > 40 else "")
    raise UsageError(f"{what}: invalid workspace name {shown} ({RULE})")
