"""Registers the offline ``echo`` provider (the embedded default)."""

from __future__ import annotations

from synthhost.hookspecs import hookimpl
from synthhost.providers import echo
from synthhost.registry import RegisterProvider


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("echo", echo.factory)
