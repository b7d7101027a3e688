"""Parameter types shared by every command (host and plugins)."""

from __future__ import annotations

from typing import Any

import click

from synthhost.errors import UsageError
from synthhost.workspace import validate_workspace


class WorkspaceName(click.ParamType):
    """A workspace name (:mod:`synthhost.workspace`): ``'*'`` and ``''`` are refused;
    the global scope is ``--global`` where a command has one."""

    name = "workspace"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return validate_workspace(value)
        except UsageError as exc:  # click names the option: keep just the reason
            self.fail(exc.message.split(": ", 1)[-1], param, ctx)


WORKSPACE = WorkspaceName()


def scope_of(workspace: str | None, is_global: bool) -> str | None:
    """``--workspace W`` or ``--global`` (exactly one) → the workspace, or None for global."""
    if workspace is not None and is_global:
        raise UsageError("--workspace and --global: choose one")
    if workspace is None and not is_global:
        raise UsageError("say where: --workspace NAME, or --global for every workspace's default")
    return workspace
