"""What the host knows about a model before calling it: context window and list price,
from genai-prices' public API (``calc_price``), never from a hand-kept list. A model
genai-prices does not know is *unknown* (``known=False``, every figure ``None``), never
guessed."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache


@dataclass(frozen=True, slots=True)
class ModelMeta:
    known: bool
    provider_id: str | None = None
    model_id: str | None = None
    context_window: int | None = None
    input_usd_per_mtok: Decimal | None = None
    output_usd_per_mtok: Decimal | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "known": self.known, "provider_id": self.provider_id, "model_id": self.model_id,
            "context_window": self.context_window,
            "input_usd_per_mtok": None if self.input_usd_per_mtok is None else str(self.input_usd_per_mtok),
            "output_usd_per_mtok": None if self.output_usd_per_mtok is None else str(self.output_usd_per_mtok),
        }


UNKNOWN = ModelMeta(known=False)


@lru_cache(maxsize=4096)
def lookup(provider: str | None, model: str) -> ModelMeta:
    """Metadata of ``model`` as priced by genai-prices provider ``provider`` (``None``:
    let genai-prices find the provider from the model name)."""
    import genai_prices

    # Priced on 1,000 tokens and scaled: a million would land in long-context tiers.
    try:
        inp = genai_prices.calc_price(genai_prices.Usage(input_tokens=1000), model, provider_id=provider)
        out = genai_prices.calc_price(genai_prices.Usage(output_tokens=1000), model, provider_id=provider)
    except (LookupError, ValueError):
        return UNKNOWN
    return ModelMeta(
        known=True, provider_id=inp.provider.id, model_id=inp.model.id, context_window=inp.model.context_window,
        input_usd_per_mtok=Decimal(inp.total_price) * 1000, output_usd_per_mtok=Decimal(out.total_price) * 1000,
    )
