"""MCP tool sources through the official SDK: a real server subprocess over stdio and
over streamable HTTP, its tools listed and called in the agent loop, one session per
run closed at its end."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from synthhost import hookimpl
from synthhost.agent import load_agent

pytestmark = pytest.mark.anyio
SERVER = Path(__file__).parent / "data" / "mcp_echo_server.py"


def write(tmp_path: Path, mcp: dict[str, Any], script: list[list[dict[str, Any]]]) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(json.dumps({
        "name": "mcp-agent", "model": "echo/m", "params": {"echo_tool_calls": script},
        "tools": [{"mcp": mcp}], "steps": [{"name": "s", "prompt": "go"}],
    }))
    return path


def tool_spans(host: Any, run_id: str) -> list[Any]:
    from sqlmodel import Session, select

    from synthhost.storage.models import Span

    with Session(host.engine) as session:
        return sorted(session.exec(select(Span).where(Span.run_id == run_id, Span.kind == "tool")),
                      key=lambda s: s.name)


async def test_an_mcp_server_over_stdio(make_host: Any, tmp_path: Path) -> None:
    script: list[list[dict[str, Any]]] = [[{"name": "add", "arguments": {"a": 2, "b": 40}}, {"name": "pid"},
               {"name": "fail", "arguments": {"reason": "no quota"}}]]
    path = write(tmp_path, {"command": ["python", str(SERVER)]}, script)
    async with make_host() as host:
        result = await host.run(load_agent(path), workspace="acme")
        first = host.provider("echo").calls[0]
        spans = tool_spans(host, result.run_id)
    assert result.status == "ok", result.error_message
    assert sorted(t["function"]["name"] for t in first.params["tools"]) == ["add", "fail", "pid"]
    add_schema = next(t for t in first.params["tools"] if t["function"]["name"] == "add")["function"]["parameters"]
    assert add_schema["required"] == ["a", "b"]
    added, pid_text, failed = (result.output or "").removeprefix("echo: ").split("; ", 2)
    assert added == "42" and "no quota" in failed
    assert [(s.name, s.status, s.attributes["source"]) for s in spans] == [
        ("add", "ok", "mcp"), ("fail", "error", "mcp"), ("pid", "ok", "mcp")]
    _wait_gone(int(pid_text))  # the session (and its process) ended with the run


def _wait_gone(pid: int) -> None:
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"MCP server process {pid} still running after the run")


async def test_an_mcp_tools_filter_and_a_missing_tool(make_host: Any, tmp_path: Path) -> None:
    path = write(tmp_path, {"command": ["python", str(SERVER)], "tools": ["add"]},
                 [[{"name": "add", "arguments": {"a": 1, "b": 1}}]])
    bad = tmp_path / "bad"
    bad.mkdir()
    missing = write(bad, {"command": ["python", str(SERVER)], "tools": ["nope"]}, [])
    async with make_host() as host:
        result = await host.run(load_agent(path), workspace="acme")
        assert [t["function"]["name"] for t in host.provider("echo").calls[0].params["tools"]] == ["add"]
        failed = await host.run(load_agent(missing), workspace="acme")
    assert result.output == "echo: 2"
    assert failed.error_code == "INVALID_AGENT"
    assert "the MCP server has no tool 'nope' (it has: add, fail, pid)" in (failed.error_message or "")


async def test_an_mcp_server_that_does_not_start_fails_the_step_clearly(make_host: Any, tmp_path: Path) -> None:
    path = write(tmp_path, {"command": ["python", "-c", "import sys; sys.exit(3)"]}, [])
    async with make_host() as host:
        result = await host.run(load_agent(path), workspace="acme")
    assert result.error_code == "TOOL_ERROR"
    assert (result.error_message or "").startswith("MCP server 'python -c import sys; sys.exit(3)' is unavailable")


@pytest.fixture(scope="module")
def http_server() -> Iterator[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(SERVER), "--http", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        proc.wait(10)


async def test_an_mcp_server_over_streamable_http(make_host: Any, tmp_path: Path, http_server: str) -> None:
    path = write(tmp_path, {"url": http_server}, [[{"name": "add", "arguments": {"a": 20, "b": 22}}],
                                                   [{"name": "add", "arguments": {"a": "x"}}]])
    async with make_host() as host:
        result = await host.run(load_agent(path), workspace="acme")
        spans = tool_spans(host, result.run_id)
    assert result.status == "ok"
    assert result.output is not None and result.output.startswith("echo: invalid arguments: a:")
    assert [(s.status, s.error_code) for s in spans] == [("ok", None), ("error", "TOOL_BAD_ARGUMENTS")]
    assert spans[0].attributes["output"] == "42"


async def test_a_run_cancelled_mid_loop_closes_its_mcp_session(make_host: Any, tmp_path: Path) -> None:
    import anyio

    class SlowSecondTurn:
        """The second model turn waits 30 s: the run is cancelled then, its session open."""

        __name__ = "acme_slow_second_turn"

        def __init__(self) -> None:
            self.latencies = iter([0, 30_000])

        @hookimpl
        def pre_call(self, call: Any) -> None:
            call.request.params["echo_latency_ms"] = next(self.latencies, 0)

    path = write(tmp_path, {"command": ["python", str(SERVER)]}, [[{"name": "pid"}]])
    async with make_host(SlowSecondTurn()) as host:
        with anyio.move_on_after(3):
            await host.run(load_agent(path), workspace="acme")
        await host.writer.flush()
        spans = tool_spans(host, _last_run(host))
    assert host.count("runs", status="cancelled") == 1
    _wait_gone(int(spans[0].attributes["output"]))  # the session ended with the cancelled run


def _last_run(host: Any) -> str:
    import sqlalchemy as sa

    with host.engine.connect() as conn:
        return str(conn.execute(sa.text("SELECT id FROM runs ORDER BY started_at DESC LIMIT 1")).scalar())
