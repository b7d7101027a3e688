"""Registers the ``openai`` provider: any OpenAI-compatible chat-completions endpoint."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterProvider

if TYPE_CHECKING:
    from synthhost.host import Host


def _factory(host: Host) -> Any:
    from synthhost.providers import openai  # httpx client set-up only when used

    return openai.factory(host)


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("openai", _factory)
