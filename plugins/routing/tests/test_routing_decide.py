"""The routing decision on its own (no host, no database): length limits, exact plan
tiers, context-window fit, region priority, compliance-constrained fallbacks, and the
choice of the next route after a failure."""

from __future__ import annotations

from typing import Any

import pytest

from synthhost import Denied, Request
from synthhost.errors import UsageError
from synthhost_routing import catalog
from synthhost_routing.config import Routing, compile_doc, validate
from synthhost_routing.decide import (
    MODEL_NOT_ALLOWED,
    NO_COMPLIANT_REGION,
    PROMPT_TOO_LONG,
    decide,
    next_route,
    prompt_chars,
)

PROVIDERS = ("echo", "openai", "anthropic", "google", "archgw")


def cfg(**doc: Any) -> Routing:
    return compile_doc(validate(doc), "workspace")


def req(model: str, provider: str = "echo", chars: int = 10, **params: Any) -> Request:
    # " the" is one token for tiktoken and 4 characters: the shared estimator counts
    # ~chars/4 tokens for OpenAI and other models alike.
    text = (" the" * (chars // 4 + 1))[:chars]
    return Request(model=model, provider=provider, messages=[{"role": "user", "content": text}], params=params)


def tokens(n: int) -> int:
    """Characters for a prompt of ``n`` estimated tokens."""
    return n * 4


# -- length --------------------------------------------------------------------------------


def test_prompt_chars_counts_like_request_prompt() -> None:
    r = Request(
        model="m",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "image_url"}]},
            {"role": "user", "content": "two"},
        ],
    )
    assert prompt_chars(r.messages) == len(r.prompt)


@pytest.mark.parametrize(("chars", "doc"), [(513_000, {}), (4_001, {"max_prompt_tokens": 1000})])
def test_over_the_limit_is_denied_with_a_stable_code(chars: int, doc: dict[str, Any]) -> None:
    with pytest.raises(Denied) as info:
        decide(req("gpt-4o", chars=chars), {}, cfg(**doc))
    assert info.value.code == PROMPT_TOO_LONG == "PROMPT_TOO_LONG"
    assert info.value.details["prompt_chars"] == chars
    assert "limit" in info.value.message


def test_near_the_limit_warns() -> None:
    d = decide(req("gpt-4o", chars=tokens(900)), {}, cfg(max_prompt_tokens=1000))
    assert not d.changed
    assert any("near the 1000-token limit" in w for w in d.warnings)


# -- plan tiers: exact names only -------------------------------------------------------------


def test_team_plan_keeps_gpt_4o_mini() -> None:
    """The original allowed it by substring, then replaced it by exact match."""
    d = decide(req("gpt-4o-mini"), {}, cfg(plan="team"))
    assert (d.model, d.changed) == ("gpt-4o-mini", False)
    assert d.factors["plan"] == "team"


def test_a_listed_prefix_does_not_allow_a_longer_name() -> None:
    # free lists gpt-4o-mini: "gpt-4o" is a substring of it but is not allowed
    d = decide(req("gpt-4o"), {}, cfg(plan="free"))
    assert d.model == "gpt-4o-mini"
    assert "plan free: gpt-4o is not allowed" in d.to_dict()["reason"]
    # and a dated id of an allowed model is a different model
    d = decide(req("gpt-4o-mini-2024-07-18"), {}, cfg(plan="team"))
    assert d.model == "gpt-4o"


def test_replacement_is_a_model_the_provider_serves() -> None:
    d = decide(req("claude-3-5-sonnet-latest", provider="anthropic"), {}, cfg(plan="free"))
    assert d.model == "claude-3-5-haiku-latest"
    d = decide(req("gemini-2.5-pro", provider="google"), {}, cfg(plan="free"))
    assert d.model == "gemini-2.0-flash"


def test_custom_plans_and_deny_mode() -> None:
    custom = cfg(plan="gold", plans={"gold": ["gpt-4.1"]})
    assert decide(req("gpt-4.1"), {}, custom).model == "gpt-4.1"
    with pytest.raises(Denied) as info:
        decide(req("o3"), {}, cfg(plan="team", on_disallowed="deny"))
    assert info.value.code == MODEL_NOT_ALLOWED
    with pytest.raises(Denied) as info:  # nothing in the plan is served by this provider
        decide(
            req("llama-3-70b", provider="openai"),
            {},
            cfg(plan="only-claude", plans={"only-claude": ["claude-3-5-haiku-latest"]}),
        )
    assert info.value.code == MODEL_NOT_ALLOWED


def test_no_plan_allows_everything() -> None:
    assert not decide(req("o3"), {}, cfg()).changed


# -- context window -------------------------------------------------------------------------------


def test_a_prompt_that_does_not_fit_moves_to_a_larger_model() -> None:
    d = decide(req("gpt-4", chars=tokens(10_000)), {}, cfg())
    assert d.model == "gpt-4o"
    assert d.factors["context_window"] == 128_000
    assert "context" in d.to_dict()["reason"]


def test_output_reserve_counts() -> None:
    # 7,000 prompt tokens fit gpt-4's 8,192 with the default 1,024 reserve...
    assert not decide(req("gpt-4", chars=tokens(7_000)), {}, cfg()).changed
    # ...but not with max_tokens=2000
    assert decide(req("gpt-4", chars=tokens(7_000), max_tokens=2000), {}, cfg()).model == "gpt-4o"


def test_the_larger_chain_respects_the_plan() -> None:
    # gpt-3.5-turbo (16k) -> gpt-4o-mini (128k) is allowed on free
    assert decide(req("gpt-3.5-turbo", chars=tokens(20_000)), {}, cfg(plan="free")).model == "gpt-4o-mini"
    # gpt-4o-mini -> gpt-4.1-mini is not on free: keep the model, warn
    big = tokens(127_500)
    d = decide(req("gpt-4o-mini", chars=big), {}, cfg(plan="free", max_prompt_tokens=200_000, max_prompt_chars=10**6))
    assert not d.changed
    assert any("no larger allowed model" in w for w in d.warnings)
    d = decide(req("gpt-4o-mini", chars=big), {}, cfg(plan="team", max_prompt_tokens=200_000, max_prompt_chars=10**6))
    assert d.model == "gpt-4.1-mini"


def test_context_fit_can_be_switched_off_and_models_extended() -> None:
    assert not decide(req("gpt-4", chars=tokens(10_000)), {}, cfg(context_fit=False)).changed
    custom = cfg(
        models={"local-8k": {"context_window": 8000, "larger": "local-32k"}, "local-32k": {"context_window": 32000}}
    )
    assert decide(req("local-8k", provider="openai", chars=tokens(9000)), {}, custom).model == "local-32k"


def test_gateway_models_keep_their_upstream_and_pin_it() -> None:
    d = decide(req("openai/gpt-4", provider="archgw", chars=tokens(10_000)), {}, cfg())
    assert (d.provider, d.model, d.pin) == ("archgw", "openai/gpt-4o", True)
    # an alias is left to the gateway: not pinned
    d = decide(req("fast", provider="archgw"), {}, cfg())
    assert (d.model, d.pin) == ("fast", False)
    assert not decide(req("openai/gpt-4o", provider="archgw"), {}, cfg(gateway_pin_provider=False)).pin


# -- regions ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("region_doc", "metadata", "expected", "source"),
    [
        ({}, {}, None, None),  # nothing asks for a region: none is set
        ({"default": "us-east-1"}, {}, "us-east-1", "default"),
        ({"default": "us-east-1"}, {"user_region": "EU"}, "eu-west-1", "user_region"),
        (
            {"default": "us-east-1"},
            {"user_region": "EU", "preferred_region": "ap-northeast-1"},
            "ap-northeast-1",
            "preferred",
        ),
        ({"preferred": "us-west-2"}, {"compliance": "GDPR"}, "eu-west-1", "compliance"),
        ({"preferred": "eu-central-1", "compliance": ["GDPR"]}, {}, "eu-central-1", "preferred"),
        ({"data_residency": "US", "compliance": ["GDPR"]}, {}, "us-east-1", "data_residency"),
        ({"data_residency": "EU"}, {"data_residency": "US", "user_region": "us-east-2"}, "eu-west-1", "data_residency"),
        ({}, {"data_residency": "asia"}, "ap-southeast-1", "data_residency"),
        ({"compliance": ["HIPAA"]}, {"user_region": "eu-west-1"}, "us-east-1", "compliance"),
        ({"compliance": ["PIPEDA"]}, {}, "ca-central-1", "compliance"),
        # a caller cannot weaken the workspace's constraints...
        ({"compliance": ["GDPR"]}, {"data_residency": "US"}, "eu-west-1", "compliance"),
        # ...but a call's own residency outranks its own compliance
        ({}, {"data_residency": "US", "compliance": "GDPR"}, "us-east-1", "data_residency"),
    ],
)
def test_region_priority(
    region_doc: dict[str, Any], metadata: dict[str, Any], expected: str | None, source: str | None
) -> None:
    """data residency > compliance > preferred > user region > default; a higher one fixes
    the zone, lower ones choose inside it."""
    d = decide(req("gpt-4o"), metadata, cfg(region=region_doc))
    assert d.region == expected
    assert d.factors.get("region_source") == source


def test_conflicts_are_reported() -> None:
    d = decide(req("gpt-4o"), {"preferred_region": "us-east-1"}, cfg(region={"compliance": ["GDPR"]}))
    assert d.region == "eu-west-1"
    assert "preferred region us-east-1 ignored: outside EU (compliance)" in d.warnings
    d = decide(req("gpt-4o"), {}, cfg(region={"data_residency": "US", "compliance": ["GDPR"]}))
    assert any("GDPR points elsewhere" in w for w in d.warnings)


EU_PROVIDERS = ("echo", "openai", "google", "azure", "archgw")


@pytest.mark.parametrize("provider", EU_PROVIDERS)
@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"preferred_region": "us-east-1"},
        {"user_region": "eu-west-2"},
        {"user_region": "US"},
        {"preferred_region": "eu-central-2"},
    ],
)
def test_gdpr_fallbacks_never_leave_the_eu(provider: str, metadata: dict[str, Any]) -> None:
    d = decide(req("gpt-4o", provider=provider), metadata, cfg(region={"compliance": ["GDPR"], "default": "us-east-1"}))
    assert d.region is not None and d.fallback_regions
    regions = [d.region, *d.fallback_regions]
    assert all(catalog.REGION_ZONE[r] == "EU" for r in regions), regions
    # London and Zurich start with "eu-" and are not in the EU
    assert not {"eu-west-2", "eu-central-2", "europe-west2", "europe-west6", "us-east-1"} & set(regions)


def test_gdpr_reroutes_never_leave_the_eu() -> None:
    routing = cfg(
        region={"compliance": ["GDPR"]},
        region_failover=True,
        fallbacks={"gpt-4o": ["anthropic/claude-3-5-sonnet-latest"]},
        fallback_providers=["google"],
    )
    request = req("gpt-4o", provider="openai")
    d = decide(request, {"preferred_region": "us-east-1"}, routing)
    request.region = d.region
    tried: dict[tuple[str, str, str | None], int] = {}
    seen = []
    while True:
        tried[(request.provider, request.model, request.region)] = 1
        route = next_route(request, routing, d, tried, PROVIDERS)
        if route is None:
            break
        seen.append(route)
        request.provider, request.model, request.region = route.provider, route.model, route.region
    assert seen, "some untried route exists"
    assert all(catalog.REGION_ZONE[r.region] == "EU" for r in seen if r.region), seen
    assert ("google", "gemini-1.5-pro", "europe-west4") in [(r.provider, r.model, r.region) for r in seen]
    assert len({(r.provider, r.model, r.region) for r in seen}) == len(seen)  # never the same route twice


def test_allowed_regions_restrict_and_can_leave_nothing() -> None:
    d = decide(req("gpt-4o"), {}, cfg(region={"compliance": ["GDPR"], "allowed": ["eu-central-1", "us-east-1"]}))
    assert (d.region, d.fallback_regions) == ("eu-central-1", ())
    with pytest.raises(Denied) as info:
        decide(req("gpt-4o"), {}, cfg(region={"data_residency": "EU", "allowed": ["us-east-1"]}))
    assert info.value.code == NO_COMPLIANT_REGION


def test_a_later_attempt_keeps_a_compliant_region() -> None:
    routing = cfg(region={"compliance": ["GDPR"]})
    r = req("gpt-4o")
    r.region = "eu-central-1"  # a failover chose it
    assert decide(r, {}, routing, keep_region=True).region == "eu-central-1"
    r.region = "us-east-1"  # someone else moved it out of the zone: corrected
    assert decide(r, {}, routing, keep_region=True).region == "eu-west-1"


# -- next route -----------------------------------------------------------------------------------------


def test_provider_switch_switches_the_model_name() -> None:
    routing = cfg(fallback_providers=["anthropic", "google"])
    request = req("gpt-4o", provider="openai")
    route = next_route(request, routing, None, {("openai", "gpt-4o", None): 1}, PROVIDERS)
    assert route is not None
    assert (route.provider, route.model) == ("anthropic", "claude-3-5-sonnet-latest")
    tried = {("openai", "gpt-4o", None): 1, ("anthropic", "claude-3-5-sonnet-latest", None): 1}
    route = next_route(request, routing, None, tried, PROVIDERS)
    assert route is not None and (route.provider, route.model) == ("google", "gemini-1.5-pro")


def test_fallback_entries_are_checked_like_the_first_decision() -> None:
    routing = cfg(
        plan="team",
        fallbacks={
            "gpt-4o": [
                "anthropic/gpt-4o",  # the original's bug: one provider's name sent to another
                "o3",  # not on the team plan
                "mistral/mistral-large",  # provider not registered
                "gpt-4o-mini",  # bare: same provider
            ]
        },
    )
    route = next_route(req("gpt-4o", provider="openai"), routing, None, {("openai", "gpt-4o", None): 1}, PROVIDERS)
    assert route is not None and (route.provider, route.model) == ("openai", "gpt-4o-mini")


def test_no_untried_route_means_none() -> None:
    routing = cfg(fallbacks={"a": ["b"], "b": ["a"]})
    tried = {("echo", "a", None): 1, ("echo", "b", None): 1}
    assert next_route(req("b"), routing, None, tried, PROVIDERS) is None
    # a route another plugin tried (region unknown) counts as tried too
    assert next_route(req("b"), routing, None, {("echo", "b", None): 1}, PROVIDERS, tried_pairs={("echo", "a")}) is None


def test_gateway_reroute_switches_upstream_inside_the_gateway() -> None:
    routing = cfg(fallback_providers=["anthropic"])
    route = next_route(
        req("openai/gpt-4o", provider="archgw"), routing, None, {("archgw", "openai/gpt-4o", None): 1}, ("archgw",)
    )
    assert route is not None and (route.provider, route.model) == ("archgw", "anthropic/claude-3-5-sonnet-latest")


# -- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"plna": "team"}, "plna: unknown field"),
        ({"plan": "platinum"}, "plan: unknown plan 'platinum'"),
        ({"region": {"preferred": "eu-west-9"}}, "region.preferred: unknown region 'eu-west-9' (did you mean"),
        (
            {"region": {"compliance": ["GDRP"]}},
            "region.compliance: unknown compliance regime 'GDRP' (did you mean 'GDPR'?)",
        ),
        ({"region": {"data_residency": "MARS"}}, "region.data_residency: unknown zone 'MARS'"),
        ({"max_prompt_tokens": 0}, "max_prompt_tokens: Input should be greater than 0"),
    ],
)
def test_invalid_documents_are_refused_naming_the_field(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as info:
        validate(doc)
    assert message in info.value.message
