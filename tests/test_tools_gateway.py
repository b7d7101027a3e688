"""Tool calls through ``synthhost serve``'s ``/v1/chat/completions`` with the official
OpenAI SDK: the model's tool calls come back in ``message.tool_calls`` (and as stream
chunks), so clients can run their own tool loop through the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from synthhost.gateway.keys import create_key
from synthhost.host import Host
from tests.gateway_server import serving

TOOLS = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
SCRIPT = {"echo_tool_calls": [[{"name": "weather", "arguments": {"city": "Oslo"}}]]}


@pytest.fixture
def served(make_host: Any) -> Iterator[tuple[Host, str]]:
    host = make_host()
    with serving(host) as url:
        yield host, url


def test_tool_calls_come_back_through_the_gateway(served: tuple[Host, str]) -> None:
    host, url = served
    key, _ = create_key(host.engine, "team-t")
    with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as sdk:
        reply = sdk.chat.completions.create(model="echo/m", messages=[{"role": "user", "content": "weather?"}],
                                            tools=TOOLS, extra_body=SCRIPT)  # type: ignore[arg-type]
        chunks: list[Any] = list(sdk.chat.completions.create(
            model="echo/m", messages=[{"role": "user", "content": "weather?"}], tools=TOOLS,  # type: ignore[arg-type]
            stream=True, extra_body=SCRIPT))
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "tool_calls" and message.content is None
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.id == "call_1_1" and call.function.name == "weather"  # type: ignore[union-attr]
    assert call.function.arguments == '{"city": "Oslo"}'  # type: ignore[union-attr]
    # Relayed as the provider streams them (OpenAI's shape): the id and name with the first
    # fragment, the arguments in pieces that concatenate to the whole.
    streamed = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert {t.index for t in streamed} == {0}
    assert (streamed[0].id, streamed[0].function and streamed[0].function.name) == ("call_1_1", "weather")
    assert all(t.id is None for t in streamed[1:])
    assert "".join(t.function.arguments or "" for t in streamed if t.function) == '{"city": "Oslo"}'
