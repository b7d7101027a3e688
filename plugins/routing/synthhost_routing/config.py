"""A workspace's routing configuration: the document (validated), merging, and the
compiled form the call path reads.

Stored documents are partial: only what a workspace set. The effective configuration
is built-in defaults ← the global document (workspace ``'*'``) ← the workspace's own,
merged key by key (mappings merge, lists and scalars replace).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from synthhost.errors import UsageError
from synthhost.model_info import lookup
from synthhost_routing import catalog
from synthhost_routing.catalog import GLOBAL as GLOBAL
from synthhost_routing.catalog import ModelInfo


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelDoc(_Strict):
    provider: str | None = None
    context_window: int | None = Field(default=None, gt=0)
    larger: str | None = None


class RegionDoc(_Strict):
    data_residency: str | None = None  # a zone: EU, US, ASIA, UK, CH, CA
    compliance: list[str] = Field(default_factory=list)  # GDPR, HIPAA, CCPA, PIPEDA
    preferred: str | None = None  # a region id or a zone
    default: str | None = None  # a region id or a zone; None: no region unless asked
    allowed: list[str] | None = None  # restrict every pick and fallback to these

    @field_validator("data_residency")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return _known(value.upper(), catalog.ZONES, "zone")

    @field_validator("compliance")
    @classmethod
    def _compliance(cls, value: list[str]) -> list[str]:
        return [_known(v.upper(), tuple(catalog.COMPLIANCE_ZONE), "compliance regime") for v in value]

    @field_validator("preferred", "default")
    @classmethod
    def _region_or_zone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.upper() in catalog.ZONES:
            return value.upper()
        return _known(value, tuple(catalog.REGION_ZONE), "region")

    @field_validator("allowed")
    @classmethod
    def _regions(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [_known(v, tuple(catalog.REGION_ZONE), "region") for v in value]


class RoutingDoc(_Strict):
    """Every field of a routing configuration (all optional in a stored document)."""

    workspace: str | None = None  # files only: which workspace the file is for
    plan: str | None = None
    on_disallowed: Literal["replace", "deny"] = "replace"
    plans: dict[str, list[str] | None] = Field(default_factory=dict)
    max_prompt_chars: int = Field(default=512_000, gt=0)
    max_prompt_tokens: int = Field(default=128_000, gt=0)
    warn_ratio: float = Field(default=0.8, gt=0, le=1)
    output_reserve_tokens: int = Field(default=1024, ge=0)
    context_fit: bool = True
    models: dict[str, ModelDoc] = Field(default_factory=dict)
    equivalents: list[dict[str, str]] = Field(default_factory=list)
    region: RegionDoc = Field(default_factory=RegionDoc)
    fallbacks: dict[str, list[str]] = Field(default_factory=dict)
    fallback_providers: list[str] = Field(default_factory=list)
    reroute: bool = True
    reroute_after: int = Field(default=1, ge=1)  # failures of a route before leaving it
    region_failover: bool = False
    gateway_pin_provider: bool = True


def _known(value: str, known: tuple[str, ...], what: str) -> str:
    if value in known:
        return value
    close = difflib.get_close_matches(value, known, n=1)
    if close:
        hint = f"did you mean {close[0]!r}?"
    else:
        hint = "known: " + ", ".join(known[:12]) + (", ..." if len(known) > 12 else "")
    raise ValueError(f"unknown {what} {value!r} ({hint})")


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else in ``over`` replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def validate(document: Mapping[str, Any], where: str = "routing config") -> RoutingDoc:
    """Validate a (merged) document; one line per problem, naming the field."""
    try:
        doc = RoutingDoc.model_validate(dict(document))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "(top level)"
            message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
            message = message.removeprefix("Value error, ")
            lines.append(f"{where}: {field}: {message}")
        raise UsageError("\n".join(lines)) from None
    plans = {**catalog.PLANS, **{k: tuple(v) if v is not None else None for k, v in doc.plans.items()}}
    if doc.plan is not None and doc.plan not in plans:
        raise UsageError(f"{where}: plan: unknown plan {doc.plan!r} (known: {', '.join(sorted(plans))})")
    return doc


@dataclass(frozen=True, slots=True)
class Routing:
    """The compiled configuration of one workspace (read on every call)."""

    source: str  # "defaults" | "global" | "workspace"
    plan: str | None
    allowed: frozenset[str] | None
    allowed_order: tuple[str, ...]
    on_disallowed: str
    max_chars: int
    max_tokens: int
    warn_ratio: float
    output_reserve: int
    context_fit: bool
    models: Mapping[str, ModelInfo]
    equivalents: Mapping[str, Mapping[str, str]]
    residency: str | None
    compliance: tuple[str, ...]
    preferred_region: str | None
    default_region: str | None
    allowed_regions: frozenset[str] | None
    fallbacks: Mapping[str, tuple[str, ...]]
    fallback_providers: tuple[str, ...]
    reroute: bool
    reroute_after: int
    region_failover: bool
    gateway_pin: bool
    error: str | None = None  # set when a stored document no longer compiles

    def native_provider(self, model: str) -> str | None:
        info = self.models.get(model)
        if info is not None and info.provider:
            return info.provider
        for prefix, provider in catalog.FAMILY_PREFIXES:
            if model.startswith(prefix):
                return provider
        return None

    def window(self, model: str) -> int | None:
        """The workspace's override, else genai-prices' context window (None: unknown)."""
        info = self.models.get(model)
        if info is not None and info.context_window is not None:
            return info.context_window
        return lookup(self.native_provider(model), model).context_window

    def is_allowed(self, model: str) -> bool:
        return self.allowed is None or model in self.allowed


def _equivalence_index(rows: list[Mapping[str, str]]) -> dict[str, Mapping[str, str]]:
    index: dict[str, Mapping[str, str]] = {}
    for row in rows:
        for name in row.values():
            index.setdefault(name, row)
    return index


_BUILTIN_EQUIVALENTS = _equivalence_index(list(catalog.EQUIVALENTS))


def compile_doc(doc: RoutingDoc, source: str) -> Routing:
    plans = {**catalog.PLANS, **{k: tuple(v) if v is not None else None for k, v in doc.plans.items()}}
    allowed_order = plans.get(doc.plan) if doc.plan is not None else None
    models: Mapping[str, ModelInfo] = catalog.MODELS
    if doc.models:
        merged = dict(catalog.MODELS)
        for name, m in doc.models.items():
            old = merged.get(name, ModelInfo())
            merged[name] = ModelInfo(
                m.provider if m.provider is not None else old.provider,
                m.context_window if m.context_window is not None else old.context_window,
                m.larger if m.larger is not None else old.larger,
            )
        models = merged
    equivalents = (
        _equivalence_index([*doc.equivalents, *catalog.EQUIVALENTS]) if doc.equivalents else _BUILTIN_EQUIVALENTS
    )
    region = doc.region
    return Routing(
        source=source,
        plan=doc.plan,
        allowed=frozenset(allowed_order) if allowed_order is not None else None,
        allowed_order=tuple(allowed_order or ()),
        on_disallowed=doc.on_disallowed,
        max_chars=doc.max_prompt_chars,
        max_tokens=doc.max_prompt_tokens,
        warn_ratio=doc.warn_ratio,
        output_reserve=doc.output_reserve_tokens,
        context_fit=doc.context_fit,
        models=models,
        equivalents=equivalents,
        residency=region.data_residency,
        compliance=tuple(dict.fromkeys(region.compliance)),
        preferred_region=region.preferred,
        default_region=region.default,
        allowed_regions=frozenset(region.allowed) if region.allowed is not None else None,
        fallbacks={k: tuple(v) for k, v in doc.fallbacks.items()},
        fallback_providers=tuple(doc.fallback_providers),
        reroute=doc.reroute,
        reroute_after=doc.reroute_after,
        region_failover=doc.region_failover,
        gateway_pin=doc.gateway_pin_provider,
    )


DEFAULTS = compile_doc(RoutingDoc(), "defaults")


def effective(global_doc: Mapping[str, Any] | None, workspace_doc: Mapping[str, Any] | None) -> Routing:
    """Compile defaults ← global ← workspace. A document that no longer validates (only a
    plugin upgrade can get here: writes are validated) yields a :class:`Routing` whose
    ``error`` makes the plugin deny the workspace's calls rather than route them
    unconstrained."""
    merged: dict[str, Any] = {}
    source = "defaults"
    if global_doc:
        merged, source = merge(merged, global_doc), "global"
    if workspace_doc:
        merged, source = merge(merged, workspace_doc), "workspace"
    if not merged:
        return DEFAULTS
    merged.pop("workspace", None)
    try:
        return compile_doc(validate(merged), source)
    except UsageError as exc:
        from dataclasses import replace

        return replace(DEFAULTS, source=source, error=exc.message)
