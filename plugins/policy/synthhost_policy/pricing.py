"""``request.estimated_cost``: a cheap, cached USD estimate for policy conditions.

estimate = prompt_tokens * input price + max_tokens (when the request sets it, else 0)
* output price, with the per-token prices of genai-prices for (provider, model). A model
genai-prices does not know has **no** estimate (``None``, null in CEL, and
``request.cost_known`` false): never 0.0, which would let an unknown or misspelt model
through a cost ceiling. Prices are looked
up once per (provider, model) per process; the first look-up loads the price data
(~0.2 s), so :func:`warm` is called off the call path when a loaded policy reads
``request.estimated_cost``.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

_lock = threading.Lock()
_prices: dict[tuple[str, str], tuple[float, float] | None] = {}
_MILLION = 1_000_000
_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def _lookup(provider: str, model: str) -> tuple[float, float] | None:
    try:
        from genai_prices import Usage, calc_price
    except ImportError:  # pragma: no cover - optional at runtime
        return None
    usage = Usage(input_tokens=_MILLION, output_tokens=_MILLION)
    for provider_id in (provider, None):
        try:
            price = calc_price(usage, model, provider_id=provider_id)
        except LookupError:
            continue
        except Exception:  # pragma: no cover - bad data must not break a call
            break
        return (float(price.input_price) / _MILLION, float(price.output_price) / _MILLION)
    return None


def per_token(provider: str, model: str) -> tuple[float, float] | None:
    """(input, output) USD per token, or None when genai-prices does not know the model."""
    key = (provider, model)
    found = _prices.get(key)
    if found is None:
        with _lock:
            found = _prices.get(key)
            if found is None:
                found = _prices[key] = _lookup(provider, model)
    return found


def output_budget(params: Mapping[str, Any]) -> int:
    for key in _OUTPUT_KEYS:
        value = params.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return 0


def estimate(provider: str, model: str, prompt_tokens: int, params: Mapping[str, Any]) -> float | None:
    prices = per_token(provider, model)
    if prices is None:
        return None
    input_price, output_price = prices
    return prompt_tokens * input_price + output_budget(params) * output_price


def known(provider: str, model: str) -> bool:
    return per_token(provider, model) is not None


def warm() -> None:
    """Load the price data (call from a worker thread)."""
    per_token("openai", "gpt-4o-mini")
