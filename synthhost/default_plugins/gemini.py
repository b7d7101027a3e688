"""Registers the ``gemini`` provider (generateContent), configured by environment:
``GEMINI_API_KEY`` (or ``GOOGLE_API_KEY``), ``GEMINI_BASE_URL``, ``GEMINI_TIMEOUT``.
Several endpoints are configured in the model list (:mod:`synthhost.models`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterProvider

if TYPE_CHECKING:
    from synthhost.host import Host


def _gemini(host: Host) -> Any:
    from synthhost.providers import gemini
    from synthhost.providers.http import check_base_url, positive_seconds

    env = host.settings.env
    return gemini.GeminiProvider(
        check_base_url(env.get("GEMINI_BASE_URL") or gemini.DEFAULT_BASE_URL, "GEMINI_BASE_URL"),
        api_key=env.get("GEMINI_API_KEY") or env.get("GOOGLE_API_KEY") or None,
        timeout=positive_seconds(env.get("GEMINI_TIMEOUT"), 60.0, "GEMINI_TIMEOUT"),
    )


@hookimpl
def register_providers(register: RegisterProvider) -> None:
    register("gemini", _gemini)
