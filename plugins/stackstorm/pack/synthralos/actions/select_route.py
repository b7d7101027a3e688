"""Select a route the call has not tried.

Candidates, in order: explicit ``fallback_routes``; ``fallback_models`` on the current
provider; ``fallback_providers`` (a first-party provider gets the *equivalent* model,
never another family's model name; a gateway or private provider keeps the model
name); ``fallback_regions`` for the current provider and model. A candidate is skipped
when a first-party provider (openai, anthropic, google) is asked for another family's
model, or when it was tried (same provider, model and region; a tried region "*"
covers every region).
"""

from __future__ import annotations

import logging
from typing import Any

try:  # inside StackStorm
    from st2common.runners.base_action import Action
except ImportError:  # outside StackStorm (tests, linters): the same constructor surface

    class Action:  # type: ignore[no-redef]
        def __init__(self, config: Any = None, action_service: Any = None) -> None:
            self.config = config or {}
            self.action_service = action_service
            self.logger = logging.getLogger(type(self).__name__)


FAMILIES = (
    ("gpt-", "openai"), ("chatgpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"),
    ("claude-", "anthropic"), ("gemini-", "google"),
)
FIRST_PARTY = frozenset({"openai", "anthropic", "google"})
# Capability classes across providers: a provider switch takes the model of the same row.
EQUIVALENTS = (
    {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet-latest", "google": "gemini-1.5-pro"},
    {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.0-flash"},
    {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4-0", "google": "gemini-2.5-pro"},
    {"openai": "gpt-4.1-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.5-flash"},
)


def family(model: str) -> str | None:
    name = model.lower().rsplit("/", 1)[-1]
    for prefix, provider in FAMILIES:
        if name.startswith(prefix):
            return provider
    return None


def serves(provider: str, model: str) -> bool:
    """False only when a first-party provider is asked for another family's model;
    gateways and private providers may serve anything."""
    native = family(model)
    return not (provider in FIRST_PARTY and native is not None and native != provider)


def equivalent(model: str, provider: str) -> str | None:
    for row in EQUIVALENTS:
        if model in row.values() and provider in row:
            return row[provider]
    return None


def _tried(tried: list[dict[str, Any]], provider: str, model: str, region: Any) -> bool:
    for route in tried:
        same = route.get("provider") == provider and route.get("model") == model
        if same and route.get("region", "*") in ("*", region):
            return True
    return False


class SelectRoute(Action):
    def run(self, original_request: dict[str, Any], tried_routes: list[dict[str, Any]] | None = None,
            fallback_routes: list[dict[str, Any]] | None = None, fallback_providers: list[str] | None = None,
            fallback_models: list[str] | None = None, fallback_regions: list[str] | None = None) -> dict[str, Any]:
        provider = str(original_request.get("provider") or "")
        model = str(original_request.get("model") or "")
        region = original_request.get("region")
        tried = list(tried_routes or [])
        if not _tried(tried, provider, model, region):
            tried.append({"provider": provider, "model": model, "region": region})  # the route that just failed
        candidates: list[tuple[str, str, Any, str]] = []
        for route in fallback_routes or []:
            if isinstance(route, dict) and route.get("provider") and route.get("model"):
                candidates.append((str(route["provider"]), str(route["model"]), route.get("region", region),
                                   "fallback route"))
        for other in fallback_models or []:
            candidates.append((provider, str(other), region, "fallback model"))
        skipped: list[str] = []
        for other_provider in fallback_providers or []:
            if other_provider in FIRST_PARTY:  # its own family only: the equivalent model, or none
                other_model = equivalent(model, str(other_provider)) or (
                    model if family(model) == other_provider else None)
            else:  # a gateway or private provider: the same model name
                other_model = model
            if other_model is None:
                skipped.append(f"{other_provider}: no known equivalent of {model}")
                continue
            candidates.append((str(other_provider), other_model, region, "equivalent on another provider"))
        for other_region in fallback_regions or []:
            candidates.append((provider, model, other_region, "fallback region"))
        for cand_provider, cand_model, cand_region, why in candidates:
            if not serves(cand_provider, cand_model):
                skipped.append(f"{cand_provider} does not serve {cand_model}")
            elif _tried(tried, cand_provider, cand_model, cand_region):
                skipped.append(f"{cand_provider}/{cand_model} ({cand_region or 'any region'}) already tried")
            else:
                return {"found": True, "provider": cand_provider, "model": cand_model, "region": cand_region,
                        "reason": f"{why} after {provider}/{model} failed", "skipped": skipped}
        return {"found": False, "provider": None, "model": None, "region": None,
                "reason": f"no untried valid route among {len(candidates)} candidates", "skipped": skipped}
