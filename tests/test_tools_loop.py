"""The agent loop on the offline echo provider: tools from plugins and Python functions,
pre_tool/post_tool governance, tool spans, parallel calls, MAX_TURNS, structured output."""

from __future__ import annotations

import json
import textwrap
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest

from synthhost import hookimpl
from synthhost.agent import AgentSpec, load_agent, parse_agent
from synthhost.agent_loop import step_id
from synthhost.errors import Denied
from synthhost.storage.models import Span
from synthhost.tools import ToolCall, ToolResult

pytestmark = pytest.mark.anyio


def agent(script: list[list[dict[str, Any]]], tools: str = "[{name: add}, {name: shout}]", extra: str = "",
          params: dict[str, Any] | None = None) -> AgentSpec:
    all_params = {"echo_tool_calls": script, **(params or {})}
    extra = extra.replace("\n", "\n        ")  # keep the dedent's indentation
    return parse_agent(textwrap.dedent(f"""\
        name: toolbot
        model: echo/m
        params: {json.dumps(all_params)}
        tools: {tools}
        {extra}
        steps:
          - name: answer
            prompt: do the sums
        """))


class Toolkit:
    """A tiny tool pack: ``add`` (sync, runs in a worker thread) and ``shout`` (async)."""

    __name__ = "acme_toolkit"

    def __init__(self) -> None:
        self.threads: list[int] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        def add(a: int, b: int) -> int:
            """Add two integers."""
            self.threads.append(threading.get_ident())
            return a + b

        async def shout(text: str) -> str:
            """Upper-case a text."""
            return text.upper()

        register(add)
        register(shout, timeout_s=5)


def echo_requests(host: Any) -> list[Any]:
    return list(host.provider("echo").calls)


async def test_a_tool_agent_calls_tools_and_answers_with_their_results(make_host: Any) -> None:
    kit = Toolkit()
    spec = agent([[{"name": "add", "arguments": {"a": 2, "b": 3}}, {"name": "shout", "arguments": {"text": "hi"}}]])
    async with make_host(kit) as host:
        result = await host.run(spec, workspace="acme")
        assert result.status == "ok", result.error_message
        assert result.output == "echo: 5; HI"
        assert kit.threads and kit.threads[0] != threading.get_ident()  # sync tools leave the event loop
        first, second = echo_requests(host)
        assert [t["function"]["name"] for t in first.params["tools"]] == ["add", "shout"]
        assert first.params["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
        assert second.messages[-3]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}
        assert second.messages[-2:] == [{"role": "tool", "tool_call_id": "call_1_1", "content": "5"},
                                        {"role": "tool", "tool_call_id": "call_1_2", "content": "HI"}]
        rows = _spans(host, result.run_id)
    by_kind: dict[str, list[Any]] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)
    turns = sorted(by_kind["call"], key=lambda r: r.attributes["turn"])
    assert [t.id for t in turns] == [step_id(result.run_id, "answer", n) for n in (1, 2)]
    assert turns[0].attributes["params"]["tools"] == ["add", "shout"]  # names on spans, not whole schemas
    tools = sorted(by_kind["tool"], key=lambda r: r.name)
    assert [(t.name, t.status, t.parent_id) for t in tools] == [("add", "ok", turns[0].id),
                                                                ("shout", "ok", turns[0].id)]
    assert tools[0].attributes["input"] == {"a": 2, "b": 3} and tools[0].attributes["output"] == "5"
    assert tools[0].attributes["source"] == "plugin"


def _spans(host: Any, run_id: str) -> list[Any]:
    from sqlmodel import Session, select

    with Session(host.engine) as session:
        return list(session.exec(select(Span).where(Span.run_id == run_id)))


class Governor:
    """pre_tool blocks ``shout`` and rewrites ``add``'s arguments; post_tool redacts a
    secret from results, before the model reads them."""

    __name__ = "acme_governor"

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    @hookimpl
    def pre_tool(self, tool: ToolCall) -> None:
        self.seen.append((tool.name, tool.source, dict(tool.args)))
        if tool.name == "shout":
            raise Denied("POLICY_DENIED", "tool shout is not allowed here", rule="no-shouting")
        if tool.name == "add":
            tool.args["b"] = 100

    @hookimpl
    def post_tool(self, tool: ToolCall, result: ToolResult) -> None:
        result.content = result.content.replace("sk-live-SECRET", "[REDACTED]")


async def test_pre_tool_blocks_one_tool_and_rewrites_another_and_the_run_goes_on(make_host: Any) -> None:
    gov = Governor()
    spec = agent([[{"name": "add", "arguments": {"a": 1, "b": 2}}, {"name": "shout", "arguments": {"text": "x"}}]])
    async with make_host(Toolkit(), gov) as host:
        result = await host.run(spec, workspace="acme")
        assert result.status == "ok"
        assert result.output == "echo: 101; POLICY_DENIED: tool shout is not allowed here"
        assert ("add", "plugin", {"a": 1, "b": 2}) in gov.seen
        rows = {r.name: r for r in _spans(host, result.run_id) if r.kind == "tool"}
    assert rows["shout"].status == "error" and rows["shout"].error_code == "POLICY_DENIED"
    assert rows["shout"].attributes["denial"] == {"rule": "no-shouting"}
    assert rows["add"].attributes["input"] == {"a": 1, "b": 100}
    kinds = [(e.event_type, e.status) for e in result_events(host, result.run_id)]
    assert ("tool_failed", "error") in kinds and ("tool_called", "success") in kinds


def result_events(host: Any, run_id: str) -> list[Any]:
    from sqlmodel import Session, select

    from synthhost.storage.models import EventLog

    with Session(host.engine) as session:
        return list(session.exec(select(EventLog).where(EventLog.run_id == run_id)))


async def test_a_guardrail_redacts_a_secret_from_a_tool_result_before_the_next_turn(make_host: Any) -> None:
    class Leaky:
        __name__ = "acme_leaky"

        @hookimpl
        def register_tools(self, register: Any) -> None:
            def config() -> dict[str, str]:
                """Read the service configuration."""
                return {"token": "sk-live-SECRET", "region": "eu"}

            register(config)

    spec = agent([[{"name": "config", "arguments": {}}]], tools="[{name: config}]")
    async with make_host(Leaky(), Governor()) as host:
        result = await host.run(spec, workspace="acme")
        second = echo_requests(host)[1]
    assert second.messages[-1]["content"] == '{"token": "[REDACTED]", "region": "eu"}'
    assert "sk-live-SECRET" not in json.dumps(second.messages)
    assert "sk-live-SECRET" not in (result.output or "")


async def test_a_model_that_keeps_calling_tools_stops_at_max_turns(make_host: Any) -> None:
    call = [{"name": "add", "arguments": {"a": 1, "b": 1}}]
    spec = agent([call, call, call, call], extra="max_turns: 3")
    async with make_host(Toolkit()) as host:
        result = await host.run(spec, workspace="acme")
        assert len(echo_requests(host)) == 3
    assert result.status == "error" and result.error_code == "MAX_TURNS"
    assert "max_turns=3" in (result.error_message or "")


async def test_parallel_tool_calls_really_run_concurrently(make_host: Any) -> None:
    """Each tool waits for the other to have started: run one after the other, both
    would time out instead."""

    class Rendezvous:
        __name__ = "acme_rendezvous"

        @hookimpl
        def register_tools(self, register: Any) -> None:
            started = {"left": anyio.Event(), "right": anyio.Event()}

            def side(me: str, other: str) -> Any:
                async def meet() -> str:
                    started[me].set()
                    await started[other].wait()
                    return f"{me} met {other}"

                meet.__name__ = me
                meet.__doc__ = f"The {me} side."
                return meet

            register(side("left", "right"), timeout_s=2)
            register(side("right", "left"), timeout_s=2)

    spec = agent([[{"name": "left"}, {"name": "right"}]], tools="[{name: left}, {name: right}]")
    async with make_host(Rendezvous()) as host:
        result = await host.run(spec, workspace="acme")
    assert result.output == "echo: left met right; right met left"


async def test_tool_failures_become_results_the_model_reads(make_host: Any) -> None:
    class Broken:
        __name__ = "acme_broken"

        @hookimpl
        def register_tools(self, register: Any) -> None:
            def boom() -> str:
                """Always fails."""
                raise RuntimeError("disk on fire")

            async def nap() -> str:
                """Sleeps too long."""
                await anyio.sleep(10)
                return "late"

            register(boom)
            register(nap, timeout_s=0.05)

    spec = agent([[{"name": "add", "arguments": {"a": "x"}}, {"name": "boom"}, {"name": "nap"},
                   {"name": "nope"}, {"name": "add", "arguments": "{not json"}]],
                 tools="[{name: add}, {name: boom}, {name: nap}]")
    async with make_host(Toolkit(), Broken()) as host:
        result = await host.run(spec, workspace="acme")
        rows = sorted((r for r in _spans(host, result.run_id) if r.kind == "tool"), key=lambda r: r.id)
    assert result.status == "ok"
    assert sorted(r.error_code for r in rows) == ["TOOL_BAD_ARGUMENTS", "TOOL_BAD_ARGUMENTS", "TOOL_ERROR",
                                                  "TOOL_TIMEOUT", "UNKNOWN_TOOL"]
    output = result.output or ""
    assert "a: Input should be a valid integer" in output and "RuntimeError: disk on fire" in output
    assert "timed out after 0.05s" in output and "unknown tool 'nope' (available: add, boom, nap)" in output
    assert "arguments are not valid JSON" in output


async def test_pre_tool_may_answer_instead_of_the_tool(make_host: Any) -> None:
    class Cache:
        __name__ = "acme_cache"

        @hookimpl
        async def pre_tool(self, tool: ToolCall) -> ToolResult | None:
            return ToolResult("cached 42") if tool.name == "add" else None

    spec = agent([[{"name": "add", "arguments": {"a": 1, "b": 2}}]])
    kit = Toolkit()
    async with make_host(kit, Cache()) as host:
        result = await host.run(spec, workspace="acme")
    assert result.output == "echo: cached 42" and kit.threads == []


async def test_a_crashing_tool_hook_is_isolated(make_host: Any) -> None:
    class Crashy:
        __name__ = "acme_crashy"

        @hookimpl
        def post_tool(self, tool: ToolCall, result: ToolResult) -> None:
            raise ValueError("oops")

    spec = agent([[{"name": "add", "arguments": {"a": 1, "b": 2}}]])
    async with make_host(Toolkit(), Crashy()) as host:
        result = await host.run(spec, workspace="acme")
        assert host.stats["plugin_errors.acme_crashy"] == 1
    assert result.output == "echo: 3"


# -- python tools from the agent file ------------------------------------------------------


TOOLS_PY = '''
import threading

def word_count(text: str) -> int:
    """Count the words of a text."""
    return len(text.split())

from pydantic import BaseModel

class Verdict(BaseModel):
    label: str
    score: float
'''


def write_agent(tmp_path: Path, body: str) -> Path:
    (tmp_path / "acme_agent_tools.py").write_text(TOOLS_PY)
    path = tmp_path / "agent.yaml"
    path.write_text(textwrap.dedent(body))
    return path


async def test_a_python_tool_beside_the_agent_file(make_host: Any, tmp_path: Path) -> None:
    path = write_agent(tmp_path, """\
        name: counter
        model: echo/m
        params:
          echo_tool_calls: [[{name: word_count, arguments: {text: "one two three"}}]]
        tools:
          - python: acme_agent_tools:word_count
        steps:
          - name: count
            prompt: count
        """)
    spec = load_agent(path)
    async with make_host() as host:
        result = await host.run(spec, workspace="acme")
        rows = [r for r in _spans(host, result.run_id) if r.kind == "tool"]
    assert result.output == "echo: 3"
    assert rows[0].attributes["source"] == "python"


# -- structured output ---------------------------------------------------------------------


async def test_structured_output_is_retried_with_the_validation_error(make_host: Any) -> None:
    schema = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
    replies = ["not json", '{"lab": 1}', '{"label": "spam"}']
    spec = agent([], tools="[]", extra=f"output_schema: {json.dumps(schema)}", params={"echo_reply": replies})
    async with make_host() as host:
        result = await host.run(spec, workspace="acme")
        calls = echo_requests(host)
    assert result.status == "ok" and result.output == '{"label": "spam"}'
    assert calls[0].params["response_format"]["json_schema"]["schema"] == schema
    assert "not valid JSON" in calls[1].messages[-1]["content"]
    assert "'label' is a required property" in calls[2].messages[-1]["content"]


async def test_structured_output_gives_up_after_its_retries(make_host: Any) -> None:
    spec = agent([], tools="[]", extra='output_schema: {type: object}\noutput_retries: 1',
                 params={"echo_reply": "never json"})
    async with make_host() as host:
        result = await host.run(spec, workspace="acme")
        assert len(echo_requests(host)) == 2
    assert result.error_code == "OUTPUT_INVALID"


async def test_structured_output_from_a_pydantic_model(make_host: Any, tmp_path: Path) -> None:
    path = write_agent(tmp_path, """\
        name: judge
        model: echo/m
        params: {echo_reply: ['{"label": "ok"}', '{"label": "ok", "score": 0.9}']}
        steps:
          - name: verdict
            prompt: judge
            output_schema: acme_agent_tools:Verdict
        """)
    async with make_host() as host:
        result = await host.run(load_agent(path), workspace="acme")
        first = echo_requests(host)[0]
    assert result.output == '{"label": "ok", "score": 0.9}'
    assert first.params["response_format"]["json_schema"]["name"] == "Verdict"


async def test_the_last_step_streams_text_and_tool_call_deltas(make_host: Any) -> None:
    from synthhost.call import StreamDelta

    deltas: list[StreamDelta] = []
    spec = agent([[{"name": "add", "arguments": {"a": 2, "b": 3}}]])
    async with make_host(Toolkit()) as host:
        result = await host.run(spec, workspace="acme", on_delta=deltas.append)
    first_two = [d for d in deltas if d.index == 0]
    assert first_two[0].name == "add" and first_two[0].id == "call_1_1"
    assert "".join(d.arguments for d in first_two) == '{"a": 2, "b": 3}'
    assert "".join(d.text for d in deltas) == result.output == "echo: 5"


class Flaky:
    """A tool that fails until its third try, and a recovery plugin: retries a timeout,
    repairs bad arguments, answers instead of a tool that keeps crashing."""

    __name__ = "acme_flaky"

    def __init__(self) -> None:
        self.tries = 0
        self.asked: list[tuple[str, str | None, int]] = []

    @hookimpl
    def register_tools(self, register: Any) -> None:
        async def wobbly() -> str:
            """Fails twice, then works."""
            self.tries += 1
            if self.tries < 3:
                raise RuntimeError(f"try {self.tries}")
            return "steady"

        def crash() -> str:
            """Always fails."""
            raise RuntimeError("down")

        register(wobbly)
        register(crash)

    @hookimpl
    def on_tool_failure(self, tool: ToolCall, result: ToolResult, attempt: int) -> Any:
        from synthhost import Recovery

        self.asked.append((tool.name, result.error_code, attempt))
        if tool.name == "wobbly":
            return Recovery("retry", reason="transient")
        if tool.name == "add":  # repaired arguments
            return Recovery("reroute", changes={"args": {"a": 40, "b": 2}})
        return ToolResult("cached answer") if tool.name == "crash" else None


async def test_on_tool_failure_retries_repairs_and_answers(make_host: Any) -> None:
    flaky = Flaky()
    spec = agent([[{"name": "wobbly"}, {"name": "add", "arguments": {"a": "x"}}, {"name": "crash"}]],
                 tools="[{name: wobbly}, {name: add}, {name: crash}]")
    async with make_host(Toolkit(), flaky) as host:
        result = await host.run(spec, workspace="acme")
        rows = {r.name: r for r in _spans(host, result.run_id) if r.kind == "tool"}
    assert result.output == "echo: steady; 42; cached answer"
    assert ("wobbly", "TOOL_ERROR", 1) in flaky.asked and ("wobbly", "TOOL_ERROR", 2) in flaky.asked
    assert ("add", "TOOL_BAD_ARGUMENTS", 1) in flaky.asked
    assert rows["wobbly"].attributes["attempts"] == 3 and rows["crash"].attributes["repaired"] is True
    assert rows["add"].attributes["input"] == {"a": 40, "b": 2}


async def test_host_stream_raises_the_call_s_own_error_and_survives_an_early_break(make_host: Any) -> None:
    from synthhost.errors import ProviderError

    async with make_host() as host:
        with pytest.raises(ProviderError) as info:  # the error itself, not an exception group
            async with host.stream(model="echo/m", messages="x", params={"echo_fail": ["auth"]}) as failing:
                async for _ in failing:
                    pass
        assert info.value.code == "PROVIDER_AUTH"
        async with host.stream(model="echo/m", messages="one two three", workspace="acme") as stream:
            async for delta in stream:
                assert delta.text == "echo: "
                break  # leaving early stops reading; the call still ends cleanly
        again = await host.complete(model="echo/m", messages="still fine", workspace="acme")
    assert again.text == "echo: still fine"


async def test_a_provider_without_tool_calling_is_refused_for_a_step_with_tools(make_host: Any) -> None:
    spec = parse_agent(textwrap.dedent("""\
        name: claude-tools
        model: anthropic/claude-sonnet-4
        tools: [{name: add}]
        steps: [{name: s, prompt: hi}]
        """))
    async with make_host(Toolkit(), env={"ANTHROPIC_API_KEY": "sk-ant-test-0123456789"}) as host:
        result = await host.run(spec, workspace="acme")
    assert result.error_code == "INVALID_AGENT"
    assert result.error_message == "step 's': provider 'anthropic' cannot call tools (use an OpenAI-compatible " \
                                   "provider, or echo offline)"


async def test_step_level_tools_override_the_agent_s(make_host: Any) -> None:
    spec = parse_agent(textwrap.dedent("""\
        name: mixed
        model: echo/m
        params: {echo_tool_calls: [[{name: add, arguments: {a: 1, b: 1}}]]}
        tools: [{name: add}]
        steps:
          - {name: plain, prompt: first, tools: [], params: {echo_tool_calls: []}}
          - {name: acting, prompt: second}
          - {name: shouting, prompt: "{{ acting }}", tools: [{name: shout}],
             params: {echo_tool_calls: [[{name: shout, arguments: {text: done}}]]}}
        """))
    async with make_host(Toolkit()) as host:
        result = await host.run(spec, workspace="acme")
        offered = [[t["function"]["name"] for t in c.params.get("tools", [])] for c in host.provider("echo").calls]
    assert result.outputs == {"plain": "echo: first", "acting": "echo: 2", "shouting": "echo: DONE"}
    assert offered == [[], ["add"], ["add"], ["shout"], ["shout"]]
