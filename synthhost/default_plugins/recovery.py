"""Default recovery: retry retryable errors with exponential backoff and full jitter.

It answers last (``Stage.RECOVERY``), so any plugin that wants to reroute or repair
(StackStorm, routing) is asked first. Denials (policy, rate limit, guardrails) and
non-retryable provider errors (auth, bad request) are never retried. A provider's
``retry_after`` is honoured as the minimum delay. A call to a model-list model
(:mod:`synthhost.models`) first falls back, without delay, to the model's other untried
deployments.
"""

from __future__ import annotations

import random

from synthhost.call import Call, Recovery
from synthhost.errors import Denied, ProviderError
from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterGate, Stage


def backoff(attempt: int, initial: float, cap: float, rng: random.Random | None = None) -> float:
    """Full jitter (AWS): uniform(0, min(cap, initial * 2**(attempt-1)))."""
    return (rng or random).uniform(0, min(cap, initial * 2 ** (attempt - 1)))


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(None, order={"on_failure": Stage.RECOVERY})


@hookimpl(trylast=True)
def on_failure(call: Call, error: BaseException, attempt: int) -> Recovery:
    if isinstance(error, Denied):
        return Recovery("give_up", reason=f"denied: {error.code}")
    if not isinstance(error, ProviderError) or not error.retryable:
        return Recovery("give_up", reason=f"not retryable: {getattr(error, 'code', 'error')}")
    if attempt >= call.max_attempts:
        return Recovery("give_up", reason=f"{attempt} attempts made")
    group = call.request.metadata.get("model_group")
    if group and (other := call.host.models.next_untried(group, call.tried_routes)) is not None:
        # Another deployment of the same model: try it at once, backoff is for retries.
        return Recovery("reroute", changes={"provider": other.name, "model": other.upstream_model},
                        reason=f"fallback to deployment {other.name} of {group}")
    delay = backoff(attempt, call.retry_initial_delay_s, call.retry_max_delay_s)
    if error.retry_after:
        delay = max(delay, error.retry_after)
    return Recovery("retry", delay=delay, reason=f"retryable {getattr(error, 'code', 'error')}")
