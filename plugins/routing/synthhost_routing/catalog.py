"""What the router knows before any configuration: models, plans, regions.

Every look-up here is by exact name. The original matched plan allow-lists by substring
(so ``gpt-4o`` "allowed" ``gpt-4o-mini``) while its optimiser matched exactly; here a
name is allowed only if it is listed, character for character. Dated ids
(``gpt-4o-2024-08-06``) are distinct models: list them if a plan should allow them.

Workspaces extend or override the model table and the plans in their routing config
(``models:``, ``plans:``, ``equivalents:``); regions are fixed here on purpose, since a
region's jurisdiction is not a per-workspace opinion (restrict with ``region.allowed``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """``provider``: who serves the model natively (``None``: unknown, any provider may).
    ``context_window``: prompt + output tokens it accepts (a workspace override; the
    default comes from genai-prices). ``larger``: the same provider's
    model to move to when a prompt does not fit (followed as a chain)."""

    provider: str | None = None
    context_window: int | None = None
    larger: str | None = None


def _m(provider: str, larger: str | None = None) -> ModelInfo:
    return ModelInfo(provider, None, larger)


# Who serves a model natively and which larger model a prompt that does not fit moves
# to: opinions kept here. Context windows (and prices) are facts: they come from
# genai-prices (synthhost.model_info), which knows over a thousand models, with workspace
# overrides in the routing config (``models.<name>.context_window``).
MODELS: Mapping[str, ModelInfo] = {
    # OpenAI
    "gpt-3.5-turbo": _m("openai", "gpt-4o-mini"),
    "gpt-4": _m("openai", "gpt-4o"),
    "gpt-4-turbo": _m("openai", "gpt-4.1"),
    "gpt-4o": _m("openai", "gpt-4.1"),
    "gpt-4o-mini": _m("openai", "gpt-4.1-mini"),
    "gpt-4.1": _m("openai"),
    "gpt-4.1-mini": _m("openai"),
    "gpt-4.1-nano": _m("openai"),
    "o1": _m("openai"),
    "o1-mini": _m("openai", "o3-mini"),
    "o3": _m("openai"),
    "o3-mini": _m("openai"),
    "o4-mini": _m("openai"),
    "gpt-5": _m("openai"),
    "gpt-5-mini": _m("openai"),
    "gpt-5-nano": _m("openai"),
    # Anthropic
    "claude-3-haiku-20240307": _m("anthropic"),
    "claude-3-5-haiku-latest": _m("anthropic"),
    "claude-3-5-sonnet-latest": _m("anthropic"),
    "claude-3-7-sonnet-latest": _m("anthropic"),
    "claude-sonnet-4-0": _m("anthropic"),
    "claude-opus-4-0": _m("anthropic"),
    # Google
    "gemini-1.5-flash": _m("google"),
    "gemini-1.5-pro": _m("google"),
    "gemini-2.0-flash": _m("google"),
    "gemini-2.5-flash": _m("google"),
    "gemini-2.5-pro": _m("google"),
}

# Provider inference for models not in the table (only for "who can serve it", never
# for plan allow-lists).
FAMILY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-", "openai"),
    ("chatgpt-", "openai"),
    ("claude-", "anthropic"),
    ("gemini-", "google"),
)

# Capability classes across providers: a reroute to another provider takes the model of
# the same row (it never sends one provider's model name to another). First row wins.
EQUIVALENTS: tuple[Mapping[str, str], ...] = (
    {"openai": "gpt-4o", "anthropic": "claude-3-5-sonnet-latest", "google": "gemini-1.5-pro"},
    {"openai": "gpt-4o-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.0-flash"},
    {"openai": "gpt-4.1", "anthropic": "claude-sonnet-4-0", "google": "gemini-2.5-pro"},
    {"openai": "gpt-4.1-mini", "anthropic": "claude-3-5-haiku-latest", "google": "gemini-2.5-flash"},
    {"openai": "gpt-3.5-turbo", "anthropic": "claude-3-haiku-20240307", "google": "gemini-1.5-flash"},
    {"openai": "o3", "anthropic": "claude-opus-4-0", "google": "gemini-2.5-pro"},
)

_FREE = (
    "gpt-4o-mini",
    "gpt-3.5-turbo",
    "claude-3-5-haiku-latest",
    "claude-3-haiku-20240307",
    "gemini-2.0-flash",
    "gemini-1.5-flash",
)
_TEAM = (
    "gpt-4o",
    "gpt-4.1-mini",
    "claude-3-5-sonnet-latest",
    "gemini-1.5-pro",
    "gemini-2.5-flash",
    *_FREE,
)

# Plan → allow-list, in replacement preference order (a disallowed model is replaced by
# the first listed model the provider can serve and the prompt fits). ``None``: all.
PLANS: Mapping[str, tuple[str, ...] | None] = {
    "free": _FREE,
    "team": _TEAM,
    "pro": None,
    "enterprise": None,
}

# Providers that accept any model name: the offline simulator, and gateways (whose
# model names carry the upstream provider: ``openai/gpt-4o``).
UNIVERSAL_PROVIDERS = frozenset({"echo"})
GATEWAY_PROVIDERS = frozenset({"archgw"})
# The gateway provider's name, and the request-metadata key that pins its upstream (here,
# not in :mod:`synthhost_routing.gateway`, so that the call hooks need not import httpx).
GATEWAY_NAME = "archgw"
PIN_KEY = "archgw.pin_provider"
# The configuration every workspace inherits is stored under this workspace id.
GLOBAL = "*"

# -- regions ----------------------------------------------------------------------------

# Jurisdictions. UK (eu-west-2) and Switzerland (eu-central-2) are not EU even though
# their ids start with "eu-": zones are looked up, never guessed from a prefix.
ZONES = ("EU", "US", "ASIA", "UK", "CH", "CA")

# Zone → region naming family → regions, primary first.
ZONE_REGIONS: Mapping[str, Mapping[str, tuple[str, ...]]] = {
    "EU": {
        "default": ("eu-west-1", "eu-central-1", "eu-west-3", "eu-north-1", "eu-south-1"),
        "gcp": ("europe-west4", "europe-west1", "europe-west3", "europe-west9", "europe-north1"),
        "azure": ("westeurope", "northeurope", "francecentral", "germanywestcentral", "swedencentral"),
    },
    "US": {
        "default": ("us-east-1", "us-west-2", "us-east-2", "us-west-1"),
        "gcp": ("us-central1", "us-east4", "us-east5", "us-west1"),
        "azure": ("eastus", "eastus2", "westus", "westus3"),
    },
    "ASIA": {
        "default": ("ap-southeast-1", "ap-northeast-1", "ap-south-1"),
        "gcp": ("asia-southeast1", "asia-northeast1", "asia-east1"),
        "azure": ("southeastasia", "japaneast"),
    },
    "UK": {"default": ("eu-west-2",), "gcp": ("europe-west2",), "azure": ("uksouth",)},
    "CH": {"default": ("eu-central-2",), "gcp": ("europe-west6",), "azure": ("switzerlandnorth",)},
    "CA": {"default": ("ca-central-1",), "gcp": ("northamerica-northeast1",), "azure": ("canadacentral",)},
}

REGION_ZONE: Mapping[str, str] = {
    region: zone for zone, families in ZONE_REGIONS.items() for regions in families.values() for region in regions
}
REGION_FAMILY: Mapping[str, str] = {
    region: family for families in ZONE_REGIONS.values() for family, regions in families.items() for region in regions
}

# How a provider names its regions (anything else: the "default" AWS-style ids).
PROVIDER_FAMILY: Mapping[str, str] = {
    "google": "gcp",
    "gemini": "gcp",
    "vertex": "gcp",
    "vertex_ai": "gcp",
    "azure": "azure",
    "azure_openai": "azure",
}

# Compliance regime → the zone it keeps data in, in precedence order when a call names
# several that disagree. PIPEDA is Canada's (the original sent it to the US).
COMPLIANCE_ZONE: Mapping[str, str] = {"GDPR": "EU", "HIPAA": "US", "CCPA": "US", "PIPEDA": "CA"}


def family(provider: str) -> str:
    return PROVIDER_FAMILY.get(provider, "default")


def zone_regions(zone: str, fam: str) -> tuple[str, ...]:
    families = ZONE_REGIONS.get(zone, {})
    return families.get(fam) or families.get("default", ())
