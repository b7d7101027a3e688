"""Registers the ``anthropic`` provider (the Messages API), configured by environment:
``ANTHROPIC_API_KEY``, ``ANTHROPIC_BASE_URL``, ``ANTHROPIC_TIMEOUT``. Several endpoints are
configured in the model list (:mod:`synthhost.models`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterProvider

if TYPE_CHECKING:
    from synthhost.host import Host


def _anthropic(host: Host) -> Any:
    from synthhost.providers import anthropic
    from synthhost.providers.http import check_base_url, positive_seconds

    env = host.settings.env
    return anthropic.AnthropicProvider(
        check_base_url(env.get("ANTHROPIC_BASE_URL") or anthropic.DEFAULT_BASE_URL, "ANTHROPIC_BASE_URL"),
        api_key=env.get("ANTHROPIC_API_KEY") or None,
        timeout=positive_seconds(env.get("ANTHROPIC_TIMEOUT"), 60.0, "ANTHROPIC_TIMEOUT"),
    )


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("anthropic", _anthropic)
