"""The openai provider's tool calling against a loopback server speaking OpenAI's wire
format: tools and tool_choice sent, tool calls parsed, tool results sent back; streamed
text and tool-call argument deltas assembled, post_call seeing the whole answer."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from synthhost import hookimpl
from synthhost.agent import parse_agent
from synthhost.call import Call, Response, StreamDelta

pytestmark = pytest.mark.anyio

KEY = "sk-test-TOOLS-0123456789abcdef"


def tool_turn() -> dict[str, Any]:
    return {"id": "c1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [
                    {"id": "call_a", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 5}'}},
                    {"id": "call_b", "type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 1}'}},
                ]}}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}}


def final_turn(text: str) -> dict[str, Any]:
    return {"id": "c2", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 80, "completion_tokens": 5, "total_tokens": 85}}


def chunk(delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None) -> bytes:
    body: dict[str, Any] = {"id": "s", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18",
                            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if delta is not None
                            else []}
    if usage is not None:
        body["usage"] = usage
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def streamed_tool_turn() -> list[bytes]:
    """Two tool calls whose ids and names come first and arguments in fragments,
    interleaved, as OpenAI sends them."""
    return [
        chunk({"role": "assistant", "content": None}),
        chunk({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                               "function": {"name": "add", "arguments": ""}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a": 2,'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                               "function": {"name": "add", "arguments": '{"a": 1'}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ' "b": 5}'}}]}),
        chunk({"tool_calls": [{"index": 1, "function": {"arguments": ', "b": 1}'}}]}),
        chunk({}, "tool_calls"),
        chunk(None, usage={"prompt_tokens": 50, "completion_tokens": 20, "total_tokens": 70}),
        b"data: [DONE]\n\n",
    ]


def streamed_final(text: str) -> list[bytes]:
    return [chunk({"role": "assistant", "content": ""}), *(chunk({"content": w}) for w in re.findall(r"\S+\s*", text)),
            chunk({}, "stop"), chunk(None, usage={"prompt_tokens": 80, "completion_tokens": 5, "total_tokens": 85}),
            b"data: [DONE]\n\n"]


class FakeOpenAI:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.requests.append(body)
                outer.auth.append(self.headers.get("Authorization"))
                first = not any(m.get("role") == "tool" for m in body["messages"])
                if body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    for part in streamed_tool_turn() if first else streamed_final("seven and two"):
                        self.wfile.write(part)
                        self.wfile.flush()
                    return
                data = json.dumps(tool_turn() if first else final_turn("seven and two")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def fake_openai() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.server.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


class Recorder:
    __name__ = "acme_recorder"

    def __init__(self) -> None:
        self.responses: list[Response] = []
        self.added: list[tuple[int, int]] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def add(a: int, b: int) -> int:
            """Add two integers."""
            self.added.append((a, b))
            return a + b

        register(add)

    @hookimpl
    def post_call(self, call: Call, response: Response) -> None:
        self.responses.append(response)


SPEC = """\
name: wire
model: openai/gpt-4o-mini
params: {tool_choice: auto, parallel_tool_calls: true}
tools: [{name: add}]
steps: [{name: s, prompt: add things}]
"""


async def test_openai_tool_calls_round_trip(make_host: Any, fake_openai: FakeOpenAI) -> None:
    recorder = Recorder()
    env = {"OPENAI_BASE_URL": fake_openai.url, "OPENAI_API_KEY": KEY}
    async with make_host(recorder, env=env) as host:
        result = await host.run(parse_agent(SPEC), workspace="acme")
    assert result.status == "ok", result.error_message
    assert result.output == "seven and two"
    assert sorted(recorder.added) == [(1, 1), (2, 5)]
    first, second = fake_openai.requests
    assert first["tools"][0]["function"]["name"] == "add"
    assert first["tool_choice"] == "auto" and first["parallel_tool_calls"] is True
    assistant, *tools = second["messages"][-3:]
    assert assistant["tool_calls"][0] == {"id": "call_a", "type": "function",
                                          "function": {"name": "add", "arguments": '{"a": 2, "b": 5}'}}
    assert tools == [{"role": "tool", "tool_call_id": "call_a", "content": "7"},
                     {"role": "tool", "tool_call_id": "call_b", "content": "2"}]
    assert fake_openai.auth == [f"Bearer {KEY}"] * 2


async def test_openai_streaming_assembles_text_and_tool_call_deltas(make_host: Any,
                                                                    fake_openai: FakeOpenAI) -> None:
    recorder = Recorder()
    deltas: list[StreamDelta] = []
    env = {"OPENAI_BASE_URL": fake_openai.url, "OPENAI_API_KEY": KEY}
    async with make_host(recorder, env=env) as host:
        result = await host.run(parse_agent(SPEC), workspace="acme", on_delta=deltas.append)
    assert result.output == "seven and two"
    assert all(r.get("stream") is True and r["stream_options"] == {"include_usage": True}
               for r in fake_openai.requests)
    assert sorted(recorder.added) == [(1, 1), (2, 5)]  # the fragments were assembled into whole arguments
    assert [d.text for d in deltas if d.text] == ["seven ", "and ", "two"]
    fragments = [d.arguments for d in deltas if d.index == 0]
    assert fragments == ["", '{"a": 2,', ' "b": 5}']
    tool_turn_seen, final_seen = recorder.responses
    assert [t.arguments for t in tool_turn_seen.tool_calls] == ['{"a": 2, "b": 5}', '{"a": 1, "b": 1}']
    assert tool_turn_seen.usage.input_tokens == 50 and final_seen.usage.total_tokens == 85
    assert final_seen.text == "seven and two" and final_seen.finish_reason == "stop"


async def test_host_stream_yields_deltas_and_the_whole_answer(make_host: Any, fake_openai: FakeOpenAI) -> None:
    env = {"OPENAI_BASE_URL": fake_openai.url, "OPENAI_API_KEY": KEY}
    messages = [{"role": "user", "content": "hi"}, {"role": "tool", "tool_call_id": "x", "content": "1"}]
    host = make_host(env=env)
    async with host, host.stream(model="openai/gpt-4o-mini", messages=messages, workspace="acme") as stream:
        texts = [d.text async for d in stream]
    assert texts == ["seven ", "and ", "two"]
    assert stream.response is not None and stream.response.usage.output_tokens == 5
