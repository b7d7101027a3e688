"""The routing decision (pure: no I/O) and the choice of the next route after a failure.

Order of the checks, as in the original pipeline: prompt length → plan tier → context
window → region. Each step only looks at names exactly (no substring matching).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from synthhost.call import Request
from synthhost.errors import Denied
from synthhost.tokens import prompt_tokens
from synthhost_routing import catalog

if TYPE_CHECKING:
    from synthhost_routing.config import Routing

# Denial codes (stable: they appear in run records, events and exports).
PROMPT_TOO_LONG = "PROMPT_TOO_LONG"
MODEL_NOT_ALLOWED = "MODEL_NOT_ALLOWED"
NO_COMPLIANT_REGION = "NO_COMPLIANT_REGION"
ROUTING_CONFIG_INVALID = "ROUTING_CONFIG_INVALID"


@dataclass(slots=True)
class Decision:
    provider: str
    model: str
    region: str | None
    original: tuple[str, str, str | None]
    zone: str | None = None  # the jurisdiction every route of this call must stay in
    need: int = 0  # prompt tokens + output reserve
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    factors: dict[str, Any] = field(default_factory=dict)
    fallback_regions: tuple[str, ...] = ()
    pin: bool = False

    @property
    def changed(self) -> bool:
        return (self.provider, self.model, self.region) != self.original

    def to_dict(self) -> dict[str, Any]:
        provider, model, region = self.original
        out: dict[str, Any] = {
            "reason": "; ".join(self.reasons) if self.reasons else "unchanged",
            "changed": self.changed,
            "provider": self.provider,
            "model": self.model,
            "region": self.region,
            "original_provider": provider,
            "original_model": model,
            "original_region": region,
            "factors": dict(self.factors),
        }
        if self.fallback_regions:
            out["fallback_regions"] = list(self.fallback_regions)
        if self.warnings:
            out["warnings"] = list(self.warnings)
        if self.pin:
            out["pinned_provider"] = True
        return out


@dataclass(frozen=True, slots=True)
class Route:
    provider: str
    model: str
    region: str | None
    reason: str


# -- helpers ----------------------------------------------------------------------------


def prompt_chars(messages: Sequence[Mapping[str, Any]]) -> int:
    """``len(request.prompt)`` without building the string."""
    total = parts = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
            parts += 1
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, dict):
                    total += len(str(part.get("text", "")))
                    parts += 1
    return total + max(parts - 1, 0)


def split_gateway(provider: str, model: str) -> tuple[str | None, str]:
    """A gateway's model names carry the upstream: ``openai/gpt-4o`` → (openai, gpt-4o)."""
    if provider in catalog.GATEWAY_PROVIDERS:
        upstream, sep, name = model.partition("/")
        if sep and upstream and name:
            return upstream, name
    return None, model


def join_gateway(cfg: Routing, provider: str, upstream: str | None, name: str) -> str:
    if provider not in catalog.GATEWAY_PROVIDERS:
        return name
    prefix = cfg.native_provider(name) or upstream
    return f"{prefix}/{name}" if prefix else name


def servable(cfg: Routing, provider: str, name: str) -> bool:
    """Can ``provider`` serve model ``name``? Never sends one provider's model name to
    another provider (the original's reroute kept ``gpt-4`` on Anthropic)."""
    if provider in catalog.UNIVERSAL_PROVIDERS or provider in catalog.GATEWAY_PROVIDERS:
        return True
    native = cfg.native_provider(name)
    return native is None or native == provider


def fits(cfg: Routing, name: str, need: int) -> bool:
    window = cfg.window(name)
    return window is None or need <= window


def output_reserve(params: Mapping[str, Any], cfg: Routing) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return cfg.output_reserve


def _region_ok(cfg: Routing, region: str) -> bool:
    return cfg.allowed_regions is None or region in cfg.allowed_regions


def _zone_candidates(cfg: Routing, zone: str, fam: str) -> list[str]:
    return [r for r in catalog.zone_regions(zone, fam) if _region_ok(cfg, r)]


def _as_list(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return []


# -- the decision ----------------------------------------------------------------------


def decide(request: Request, metadata: Mapping[str, Any], cfg: Routing, *, keep_region: bool = False) -> Decision:
    """Where this request should go. Raises :class:`Denied` for a prompt over the limit,
    a model the plan forbids (``on_disallowed: deny`` or nothing allowed is servable), or
    a zone with no permitted region. ``keep_region``: a later attempt keeps the region it
    already has when that region is still compliant (a failover is not undone)."""
    if cfg.error:
        raise Denied(ROUTING_CONFIG_INVALID, f"the workspace's routing configuration is invalid: {cfg.error}")
    chars = prompt_chars(request.messages)
    tokens = prompt_tokens(request)  # the host's shared estimator (tiktoken for OpenAI models)
    if chars > cfg.max_chars or tokens > cfg.max_tokens:
        raise Denied(
            PROMPT_TOO_LONG,
            f"prompt is ~{tokens} tokens ({chars} characters); the limit is {cfg.max_tokens} tokens "
            f"and {cfg.max_chars} characters",
            prompt_chars=chars,
            prompt_tokens=tokens,
            max_prompt_tokens=cfg.max_tokens,
            max_prompt_chars=cfg.max_chars,
        )
    provider = request.provider
    decision = Decision(provider, request.model, request.region, (provider, request.model, request.region))
    decision.factors.update(prompt_chars=chars, prompt_tokens=tokens)
    if tokens >= cfg.warn_ratio * cfg.max_tokens or chars >= cfg.warn_ratio * cfg.max_chars:
        decision.warnings.append(f"prompt is ~{tokens} tokens, near the {cfg.max_tokens}-token limit")
    need = decision.need = tokens + output_reserve(request.params, cfg)
    upstream, name = split_gateway(provider, request.model)
    original_name = name

    if cfg.allowed is not None:
        decision.factors["plan"] = cfg.plan
        if name not in cfg.allowed:
            pick = None
            if cfg.on_disallowed == "replace":
                pick = next((m for m in cfg.allowed_order if servable(cfg, provider, m) and fits(cfg, m, need)), None)
            if pick is None:
                raise Denied(
                    MODEL_NOT_ALLOWED,
                    f"model {name!r} is not in plan {cfg.plan!r}"
                    + ("" if cfg.on_disallowed == "deny" else f" and no allowed model is available on {provider!r}"),
                    model=name,
                    plan=cfg.plan,
                    provider=provider,
                )
            decision.reasons.append(f"plan {cfg.plan}: {name} is not allowed, {pick} is")
            name = pick

    window = cfg.window(name)
    if window is not None:
        decision.factors["context_window"] = window
        if cfg.context_fit and need > window:
            bigger = _larger(cfg, provider, name, need)
            if bigger is None:
                decision.warnings.append(
                    f"~{need} tokens (prompt + output) may not fit {name} ({window}); no larger allowed model"
                )
            else:
                decision.reasons.append(
                    f"context: ~{need} tokens (prompt + output) exceed {name}'s {window}; {bigger} fits"
                )
                decision.factors["context_window"] = cfg.window(bigger)
                name = bigger
    if name != original_name:
        decision.model = join_gateway(cfg, provider, upstream, name)

    _choose_region(decision, cfg, metadata, provider, request.region if keep_region else None)
    if provider in catalog.GATEWAY_PROVIDERS and cfg.gateway_pin and "/" in decision.model:
        decision.pin = True
    return decision


def _larger(cfg: Routing, provider: str, name: str, need: int) -> str | None:
    """Follow the ``larger`` chain to the first allowed, servable model that fits."""
    seen = {name}
    info = cfg.models.get(name)
    current = info.larger if info is not None else None
    while current and current not in seen:
        seen.add(current)
        window = cfg.window(current)
        if cfg.is_allowed(current) and servable(cfg, provider, current) and window is not None and need <= window:
            return current
        info = cfg.models.get(current)
        current = info.larger if info is not None else None
    return None


def _resolve_region(value: str, fam: str) -> str | None:
    """A region id as itself; a zone name as that zone's primary region for ``fam``."""
    if value in catalog.REGION_ZONE:
        return value
    zone = value.upper()
    if zone in catalog.ZONE_REGIONS:
        regions = catalog.zone_regions(zone, fam)
        return regions[0] if regions else None
    return None


def _choose_region(
    decision: Decision, cfg: Routing, metadata: Mapping[str, Any], provider: str, current: str | None
) -> None:
    """Priority: data residency > compliance > preferred > user region > default. A
    higher-priority input fixes the zone; lower ones choose inside it or are ignored.
    The workspace's residency and compliance outrank the call's (metadata
    ``data_residency``, ``compliance``), so a caller cannot move a GDPR workspace out of
    the EU; the call's preferences (``preferred_region``, ``user_region``) only choose."""
    fam = catalog.family(provider)
    warnings = decision.warnings
    # The workspace's constraints come first (a caller cannot weaken them); a call's own
    # only apply where the workspace has none. Within each: residency > compliance.
    asked = metadata.get("data_residency")
    asked_zone = asked.upper() if isinstance(asked, str) and asked.upper() in catalog.ZONES else None
    if isinstance(asked, str) and asked_zone is None:
        warnings.append(f"unknown data residency {asked!r} ignored")
    call_compliance: list[str] = []
    for name in _as_list(metadata.get("compliance")):
        if name.upper() in catalog.COMPLIANCE_ZONE:
            call_compliance.append(name.upper())
        else:
            warnings.append(f"compliance {name!r} has no regional rule; ignored for region choice")
    ws_regime = next((c for c in catalog.COMPLIANCE_ZONE if c in cfg.compliance), None)
    call_regime = next((c for c in catalog.COMPLIANCE_ZONE if c in call_compliance), None)
    ranked = [
        ("data_residency", cfg.residency),
        ("compliance", catalog.COMPLIANCE_ZONE[ws_regime] if ws_regime else None),
        ("data_residency", asked_zone),
        ("compliance", catalog.COMPLIANCE_ZONE[call_regime] if call_regime else None),
    ]
    zone, source = next(((z, src) for src, z in ranked if z), (None, None))
    if asked_zone and asked_zone != zone:
        warnings.append(
            f"call asked for data residency {asked_zone}; the workspace keeps the call in {zone} ({source})"
        )
    compliance = [c for c in catalog.COMPLIANCE_ZONE if c in cfg.compliance or c in call_compliance]
    if compliance:
        decision.factors["compliance"] = compliance
        clashing = [c for c in compliance if catalog.COMPLIANCE_ZONE[c] != zone]
        if clashing:
            warnings.append(f"compliance {', '.join(clashing)} points elsewhere; {source} keeps the call in {zone}")
    if zone is not None:
        decision.factors["zone"] = zone
        if source == "data_residency":
            decision.factors["data_residency"] = zone

    region: str | None = None
    region_source: str | None = None
    if current is not None and _region_ok(cfg, current) and (zone is None or catalog.REGION_ZONE.get(current) == zone):
        region, region_source = current, "kept"
    else:
        for src, value in (
            ("preferred", metadata.get("preferred_region")),
            ("preferred", cfg.preferred_region),
            ("user_region", metadata.get("user_region")),
            ("default", cfg.default_region),
        ):
            if not isinstance(value, str) or not value:
                continue
            candidate = _resolve_region(value, fam)
            if candidate is None:
                warnings.append(f"{src} region {value!r} is unknown; ignored")
            elif zone is not None and catalog.REGION_ZONE.get(candidate) != zone:
                warnings.append(f"{src} region {candidate} ignored: outside {zone} ({source})")
            elif not _region_ok(cfg, candidate):
                warnings.append(f"{src} region {candidate} ignored: not in the allowed regions")
            else:
                region, region_source = candidate, src
                break
        if region is None and zone is not None:
            candidates = _zone_candidates(cfg, zone, fam)
            if not candidates:
                raise Denied(
                    NO_COMPLIANT_REGION,
                    f"no allowed region in {zone} ({source}) for provider {provider!r}",
                    zone=zone,
                    provider=provider,
                )
            region, region_source = candidates[0], source

    if region is None:
        return  # nothing asks for a region: leave the request as it is
    decision.region = region
    decision.factors["region_source"] = region_source
    home = zone or catalog.REGION_ZONE.get(region)
    if decision.zone is None:
        decision.zone = zone
    if home is not None:
        # Fallbacks never leave the zone: a GDPR call has only EU regions to go to.
        decision.fallback_regions = tuple(r for r in _zone_candidates(cfg, home, fam) if r != region)


# -- after a failure ---------------------------------------------------------------------


def _resolve_entry(entry: str, provider: str, providers: Collection[str]) -> tuple[str, str]:
    """``provider/model`` when ``provider`` is registered in the host; otherwise the whole
    entry is a model name on the current provider (a gateway's ``openai/gpt-4o``)."""
    head, sep, rest = entry.partition("/")
    if sep and rest and head in providers:
        return head, rest
    return provider, entry


def _region_for(cfg: Routing, provider: str, current: str | None, zone: str | None) -> tuple[bool, str | None]:
    """The region a route to ``provider`` takes: the current one if the provider names
    regions the same way, else the primary of the same zone. (False, None): no region
    of that provider is allowed in the zone."""
    if current is None:
        return True, None
    fam = catalog.family(provider)
    if catalog.REGION_FAMILY.get(current) == fam:
        return True, current
    home = zone or catalog.REGION_ZONE.get(current)
    if home is None:
        return True, current
    candidates = _zone_candidates(cfg, home, fam)
    return (True, candidates[0]) if candidates else (False, None)


def next_route(
    request: Request,
    cfg: Routing,
    decision: Decision | None,
    tried: Collection[tuple[str, str, str | None]],
    providers: Collection[str],
    tried_pairs: Collection[tuple[str, str]] = (),
) -> Route | None:
    """The first untried route: another region of the same zone (when
    ``region_failover``), then the model's configured fallbacks, then its equivalent on
    each fallback provider. Every candidate is checked like the first decision: a
    registered provider that serves the model, allowed by the plan, fitting the prompt,
    in the call's zone. ``tried_pairs``: (provider, model) routes tried with an unknown
    region (rerouted by another plugin); they count as tried in every region."""
    provider, model, region = request.provider, request.model, request.region
    zone = decision.zone if decision is not None else None
    need = decision.need if decision is not None else 0
    _, name = split_gateway(provider, model)

    def untried(p: str, m: str, r: str | None) -> bool:
        return (p, m, r) not in tried and (p, m) not in tried_pairs

    if cfg.region_failover and region is not None:
        home = zone or catalog.REGION_ZONE.get(region)
        if home is not None:
            for r in _zone_candidates(cfg, home, catalog.family(provider)):
                if r != region and untried(provider, model, r):
                    return Route(provider, model, r, f"region failover {region} -> {r}")

    candidates: list[tuple[str, str, str]] = []
    for entry in cfg.fallbacks.get(model) or cfg.fallbacks.get(name) or ():
        p, m = _resolve_entry(entry, provider, providers)
        candidates.append((p, m, "fallback"))
    row = cfg.equivalents.get(name)
    if row is not None:
        for target in cfg.fallback_providers:
            equivalent = row.get(target)
            if equivalent is None:
                continue
            # A call that goes through a gateway stays in it; otherwise the host's own
            # provider of that name serves the equivalent.
            if provider in catalog.GATEWAY_PROVIDERS:
                candidates.append((provider, f"{target}/{equivalent}", f"equivalent on {target} via {provider}"))
            elif target in providers:
                candidates.append((target, equivalent, f"equivalent on {target}"))

    for p, m, why in candidates:
        if p not in providers:
            continue
        _, bare = split_gateway(p, m)
        if not cfg.is_allowed(bare) or not servable(cfg, p, bare) or not fits(cfg, bare, need):
            continue
        ok, to_region = _region_for(cfg, p, region, zone)
        if ok and untried(p, m, to_region):
            where = f" in {to_region}" if to_region else ""
            return Route(p, m, to_region, f"{why}: {provider}/{model} -> {p}/{m}{where}")
    return None
