"""What we send to the pack's workflows, and how their outputs become a host recovery.

Pure functions over the call: no I/O. Every workflow output is checked before it can
change the call; an output that does not check out is *refused* (:class:`Refused`),
never half-applied.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from synthhost.call import Call, Request, StashKey
from synthhost.errors import ProviderError

# (provider, model) -> regions this plugin saw fail; "*": tried in an attempt we did not
# see (another plugin answered that failure), so every region counts as tried.
TRIED = StashKey[dict[tuple[str, str], set[str | None]]]()
ANY_REGION = "*"

_SECRET_PARAM = re.compile(r"(api[_-]?key|secret|password|passwd|authorization|auth[_-]?token|access[_-]?token|"
                           r"bearer|credential)", re.I)
ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
FAMILIES = (("gpt-", "openai"), ("chatgpt-", "openai"), ("o1", "openai"), ("o3", "openai"), ("o4", "openai"),
            ("claude-", "anthropic"), ("gemini-", "google"))
FIRST_PARTY = frozenset({"openai", "anthropic", "google"})
FAILURE_TYPES = {
    "PROVIDER_TIMEOUT": "timeout",
    "PROVIDER_RATE_LIMITED": "rate_limit",
    "PROVIDER_AUTH": "auth",
    "PROVIDER_BAD_REQUEST": "bad_request",
    "PROVIDER_ERROR": "llm_error",
}


class Refused(Exception):
    """A workflow answered something the host will not apply (the reason says why)."""


# -- what the workflows get ----------------------------------------------------------------


def safe_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Request parameters minus anything that looks like a credential."""
    return {k: v for k, v in params.items() if not _SECRET_PARAM.search(str(k))}


def original_request(request: Request) -> dict[str, Any]:
    """The REAL request, as the provider received it (the original sent an empty prompt)."""
    return {
        "prompt": request.prompt,
        "messages": [dict(m) for m in request.messages],
        "provider": request.provider,
        "model": request.model,
        "region": request.region,
        "parameters": safe_params(request.params),
    }


def context(call: Call) -> dict[str, Any]:
    ids = {"workspace": call.workspace, "agent": call.agent, "step": call.step, "run_id": call.run_id,
           "trace_id": call.trace_id, "span_id": call.span_id, "user": call.user, "org": call.org}
    return {k: v for k, v in ids.items() if v is not None}


def _list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else []


def fallbacks(call: Call, key: str) -> list[Any]:
    """``fallback_models`` / ``fallback_providers`` / ``fallback_regions`` /
    ``fallback_routes`` from the request's metadata (agent.yaml ``metadata:``)."""
    return _list(call.request.metadata.get(key, call.metadata.get(key)))


def failure_fields(error: ProviderError) -> dict[str, Any]:
    return {"failure_reason": error.message[:2000] or error.code, "error_code": str(error.code)}


def note_tried(call: Call) -> None:
    """Remember the route of the attempt that just failed, with its region."""
    tried = call.stash.get(TRIED)
    if tried is None:
        tried = call.stash[TRIED] = {}
    request = call.request
    tried.setdefault((request.provider, request.model), set()).add(request.region)


def tried_routes(call: Call) -> list[dict[str, Any]]:
    """Every route tried so far: ours with their regions; the rest with region "*"."""
    seen = call.stash.get(TRIED) or {}
    routes = [{"provider": p, "model": m, "region": r} for (p, m), regions in seen.items() for r in regions]
    for provider, model in dict.fromkeys(call.tried_routes):
        if (provider, model) not in seen:
            routes.append({"provider": provider, "model": model, "region": ANY_REGION})
    return routes


def is_tried(call: Call, provider: str, model: str, region: str | None) -> bool:
    regions = (call.stash.get(TRIED) or {}).get((provider, model))
    if regions is not None:
        return region in regions or ANY_REGION in regions
    return (provider, model) in call.tried_routes


def retry_parameters(call: Call, error: ProviderError, attempt: int) -> dict[str, Any]:
    return {
        "original_request": original_request(call.request),
        **failure_fields(error),
        "retryable": bool(error.retryable),
        "status_code": int(error.status or 0),
        "attempt": attempt,
        "max_attempts": call.max_attempts,
        "base_delay_s": call.retry_initial_delay_s,
        "max_delay_s": call.retry_max_delay_s,
        "retry_after_s": float(error.retry_after or 0.0),
        "fallback_models": fallbacks(call, "fallback_models"),
        "context": context(call),
    }


def reroute_parameters(call: Call, error: ProviderError) -> dict[str, Any]:
    return {
        "original_request": original_request(call.request),
        **failure_fields(error),
        "tried_routes": tried_routes(call),
        "fallback_routes": [r for r in fallbacks(call, "fallback_routes") if isinstance(r, dict)],
        "fallback_providers": [str(p) for p in fallbacks(call, "fallback_providers")],
        "fallback_models": [str(m) for m in fallbacks(call, "fallback_models")],
        "fallback_regions": [str(r) for r in fallbacks(call, "fallback_regions")],
        "context": context(call),
    }


def recovery_parameters(call: Call, error: ProviderError, attempt: int) -> dict[str, Any]:
    return {
        "agent_id": call.agent or "",
        "failure_type": FAILURE_TYPES.get(str(error.code), "unknown"),
        "original_query": call.request.last_user_prompt,
        "failure_details": {"error_code": str(error.code), "status_code": error.status,
                            "message": error.message[:2000], "retryable": bool(error.retryable)},
        "original_request": original_request(call.request),
        "attempt": attempt,
        "max_attempts": call.max_attempts,
        "retry_delay": call.retry_initial_delay_s,
        "context": context(call),
    }


# -- what their outputs may do -------------------------------------------------------------


def _delay(value: Any, call: Call, error: ProviderError) -> float:
    try:
        delay = float(value or 0)
    except (TypeError, ValueError):
        raise Refused(f"delay_s {value!r} is not a number") from None
    if not math.isfinite(delay) or delay < 0:
        raise Refused(f"delay_s {value!r} is not a finite, non-negative number")
    delay = min(delay, call.retry_max_delay_s)
    return max(delay, float(error.retry_after or 0.0))


def bounded_delay(value: Any, most: float) -> float | None:
    """A workflow's ``delay_s`` within ``[0, most]``; ``None`` when it is not a number."""
    try:
        delay = float(value or 0.0)
    except (TypeError, ValueError):
        return None
    return min(max(delay, 0.0), most) if math.isfinite(delay) else None


def retry_decision(output: Any, call: Call, error: ProviderError) -> tuple[float, str] | None:
    """``(delay_s, reason)`` for ``{"action": "retry", "delay_s": N}``; ``None`` for
    ``give_up``; :class:`Refused` for anything else."""
    if not isinstance(output, dict):
        raise Refused(f"llm_retry output is not an object: {str(output)[:100]}")
    action = output.get("action")
    reason = str(output.get("reason") or "")[:300]
    if action in ("give_up", "none", None):
        return None
    if action != "retry":
        raise Refused(f"llm_retry action {action!r} is not retry or give_up")
    if not error.retryable:
        raise Refused(f"{error.code} is not retryable: the same request would fail again")
    return _delay(output.get("delay_s"), call, error), reason


def family(model: str) -> str | None:
    name = model.lower().rsplit("/", 1)[-1]
    return next((provider for prefix, provider in FAMILIES if name.startswith(prefix)), None)


def reroute_changes(output: Any, call: Call, providers: Mapping[str, Any]) -> tuple[dict[str, Any], str] | None:
    """``(changes, reason)`` for a usable ``{rerouted, final_provider, final_model,
    final_region}``; ``None`` when no route was found; :class:`Refused` for a route
    that was tried, an unknown provider, or a provider switch without a model it serves."""
    if not isinstance(output, dict):
        raise Refused(f"reroute_request output is not an object: {str(output)[:100]}")
    if not output.get("rerouted"):
        return None
    request = call.request
    provider = str(output.get("final_provider") or request.provider)
    model_value = output.get("final_model")
    if provider != request.provider and not model_value:
        raise Refused(f"switch to provider {provider!r} without a model for it")
    model = str(model_value or request.model)
    region = output.get("final_region") or request.region
    if region is not None:
        region = str(region)
    if provider not in providers:
        raise Refused(f"provider {provider!r} is not registered in this host")
    native = family(model)
    if provider in FIRST_PARTY and native is not None and native != provider:
        raise Refused(f"{provider} does not serve {model} (a {native} model)")
    if is_tried(call, provider, model, region):
        raise Refused(f"route {provider}/{model} ({region or 'no region'}) was already tried")
    changes: dict[str, Any] = {}
    if provider != request.provider:
        changes["provider"] = provider
    if model != request.model:
        changes["model"] = model
    if region != request.region:
        changes["region"] = region
    if not changes:
        raise Refused("the route is the one that just failed")
    return changes, str(output.get("reason") or "")[:300]


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise Refused("repaired messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    for message in value:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise Refused(f"repaired message {str(message)[:80]} has no valid role")
        content = message.get("content")
        if not isinstance(content, str | list) and content is not None:
            raise Refused("repaired message content must be a string or a list of parts")
        out.append(dict(message))
    if not any(m.get("role") == "user" and m.get("content") for m in out):
        raise Refused("the repaired request has no user message left")
    return out


def _repaired(output: Any) -> dict[str, Any] | None:
    """``agent_recovery``'s ``request`` when it answered ``repair``; None for ``none``/
    ``give_up``; :class:`Refused` for anything else."""
    if not isinstance(output, dict):
        raise Refused(f"agent_recovery output is not an object: {str(output)[:100]}")
    if output.get("action") in ("none", "give_up", None):
        return None
    if output.get("action") != "repair":
        raise Refused(f"agent_recovery action {output.get('action')!r} is not repair or none")
    repaired = output.get("request")
    if not isinstance(repaired, dict):
        raise Refused("agent_recovery returned no repaired request")
    return repaired


def repair_changes(output: Any, call: Call) -> tuple[dict[str, Any], float, str, str] | None:
    """``(changes, delay_s, strategy, reason)`` for ``{"action": "repair", "request":
    {"messages"?, "params"?}}``. ``params`` entries are merged over the current ones
    (``null`` removes one); a "repair" that changes nothing is refused (it would be a
    plain retry presented as a repair)."""
    repaired = _repaired(output)
    if repaired is None:
        return None
    request = call.request
    changes: dict[str, Any] = {}
    if repaired.get("messages") is not None:
        messages = _messages(repaired["messages"])
        if messages != request.messages:
            changes["messages"] = messages
    if repaired.get("params") is not None:
        if not isinstance(repaired["params"], dict):
            raise Refused("repaired params must be an object")
        params = dict(request.params)
        for key, value in repaired["params"].items():
            if _SECRET_PARAM.search(str(key)):
                raise Refused(f"a repair may not set credential parameter {key!r}")
            if value is None:
                params.pop(key, None)
            else:
                params[key] = value
        if params != request.params:
            changes["params"] = params
    if not changes:
        raise Refused("the repaired request is identical to the one that failed")
    delay = min(max(0.0, _finite(output.get("delay_s"))), call.retry_max_delay_s)
    strategy = str(output.get("strategy") or "repair")[:64]
    return changes, delay, strategy, str(output.get("reason") or "")[:300]


def tool_repair_arguments(output: Any, args: dict[str, Any]) -> dict[str, Any] | None:
    """The repaired arguments of ``{"action": "repair", "request": {"arguments": {...}}}``
    (``agent_recovery`` for a failed tool call), or None for ``none``/``give_up``. A
    "repair" that changes nothing is refused, as for calls."""
    repaired = _repaired(output)
    if repaired is None:
        return None
    arguments = repaired.get("arguments")
    if not isinstance(arguments, dict):
        raise Refused("agent_recovery returned no repaired arguments (request.arguments)")
    if arguments == args:
        raise Refused("the repaired arguments are identical to the ones that failed")
    return dict(arguments)


def _finite(value: Any) -> float:
    try:
        number = float(value or 0)
    except (TypeError, ValueError):
        return 0.0
    return number if math.isfinite(number) else 0.0
