"""The shared prompt-token estimator (synthhost.tokens) and its users."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from synthhost import tokens
from synthhost.call import Request


def test_openai_models_are_counted_with_tiktoken_others_by_characters() -> None:
    sentence = "The quick brown fox jumps over the lazy dog."
    text = sentence * 20
    assert tokens.method_for("gpt-4o-mini") == "tiktoken:cl100k_base"
    assert tokens.method_for("claude-sonnet-4-5", "anthropic") == "chars/4"
    real = tokens.count_text(text, "gpt-4o-mini")
    assert tokens.count_text(sentence, "gpt-4o-mini") == 10 and 180 <= real <= 200  # BPE tokens, not 880 / 4
    assert tokens.count_text(text, "claude-sonnet-4-5", "anthropic") == -(-len(text) // 4)
    # An OpenAI-compatible provider counts like OpenAI whatever the model's name.
    assert tokens.count_text(text, "my-finetune", "openai") == real


def test_messages_add_chat_framing_and_the_estimate_is_memoised_per_request() -> None:
    request = Request(model="gpt-4o", provider="openai",
                      messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}])
    n = tokens.prompt_tokens(request)
    assert n == tokens.PER_REPLY + 2 * tokens.PER_MESSAGE + tokens.count_text("Be brief.", "gpt-4o") + \
        tokens.count_text("Hello there", "gpt-4o")
    assert request.token_memo is not None and request.token_memo[1] == n
    request.messages.append({"role": "user", "content": "and one more question"})
    assert tokens.prompt_tokens(request) > n  # a changed request is counted again
    request.model = "claude-sonnet-4-5"
    request.provider = "anthropic"
    assert tokens.prompt_tokens(request) == tokens.count_messages(request.messages, "claude-sonnet-4-5", "anthropic")


def test_the_rate_limiter_reserves_the_shared_estimate_plus_the_output_budget() -> None:
    from synthhost_ratelimit.runtime import estimate_tokens

    request = Request(model="gpt-4o", provider="openai", messages=[{"role": "user", "content": "x" * 400}],
                      params={"max_tokens": 50})
    call = cast(Any, SimpleNamespace(request=request))
    assert estimate_tokens(call, 1000) == tokens.prompt_tokens(request) + 50
    assert tokens.prompt_tokens(request) < 100 + tokens.PER_MESSAGE + tokens.PER_REPLY  # not chars/4
