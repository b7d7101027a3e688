"""Registers the offline ``echo`` provider (the embedded default)."""

from __future__ import annotations

from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterProvider


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    from synthhost.providers import echo  # anyio: only once a host is built

    register("echo", echo.factory)
