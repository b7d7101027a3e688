"""Per tool call overhead of the host: ``call_tool`` (pre_tool hooks, argument
validation, the tool under its timeout, post_tool hooks, the tool span and its event)
for a no-op async Python tool, minus the tool itself, with the production plugin set
and with the bare host as the floor, interleaved round by round. Next to it: one MCP
tool call over stdio (the official SDK's client and server), through ``call_tool``.

Production here is ``benchmarks/overhead.py``'s set (cost, policy with its 20 rules,
the Redis rate limiter, the default guard set, routing, similarity logging, Langfuse and
RudderStack), delivery off (rows queued, nobody delivers), plus one policy tool rule
(evaluated on every call, never matching); the guard set masks secrets in every result.
``production+tool-limit`` also sets a ``tool`` rate-limit scope: one Redis script per
tool call, so Redis PING is printed beside it as that configuration's floor. Needs Redis
(``REDIS_URL``, default the local one). Prints figures; asserts nothing.

    uv run python benchmarks/tools.py [--calls 2000] [--rounds 3] [--mcp-calls 300] [--json]

Target (issue 10): p50 <= 60 µs per tool call with the production plugin set.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from overhead import LoopbackReceiver, ping_samples, prepare, profile_env  # the production set

from synthhost import Host
from synthhost.agent_loop import LoopScope, call_tool
from synthhost.call import ToolCallRequest, new_id
from synthhost.runner import RunState
from synthhost.settings import Settings
from synthhost.tools import Tool
from synthhost.tools.python import python_tool

TARGET_P50_US = 60.0
CONFIGS = ("bare", "production", "production-delivering", "production+tool-limit")
PROFILES = {"bare": "bare", "production-delivering": "production-inline"}  # others: delivery off
"""``production-delivering``: the same set with Langfuse and RudderStack delivering to the
loopback receiver from threads of the measured process (``overhead.py``'s
``production-inline``), the issue's "every plugin on" configuration."""
ROOT = Path(__file__).resolve().parents[1]
MCP_SERVER = ROOT / "tests" / "data" / "mcp_echo_server.py"
TOOL_POLICY = """\
name: tools
rules:
  - name: no-shell
    when: 'tool.name == "shell"'
    actions: [{type: block}]
"""


async def noop(text: str) -> str:
    """Return the text."""
    return text


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(host: Host, tool: Tool, calls: int, warmup: int = 200) -> list[float]:
    """Per call: time in call_tool minus time in the tool's own invoke (µs)."""
    inside: list[float] = [0.0]
    inner = tool.invoke

    async def timed(args: dict[str, Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return await inner(args)
        finally:
            inside[0] = time.perf_counter() - t0

    timed_tool = Tool(tool.name, tool.description, tool.parameters, timed, tool.timeout_s, tool.source, tool.validate)
    tools = {tool.name: timed_tool}
    run = RunState(host, new_id(), new_id(), "bench", "bench-tools", "bench", "user-1", "org-1", {})
    scope = LoopScope("bench", "user-1", "org-1", "bench", "act", new_id())
    args = json.dumps({"text": "hello"}) if tool.name == "noop" else json.dumps({"a": 1, "b": 2})
    out: list[float] = []
    for i in range(warmup + calls):
        request = ToolCallRequest(f"call_{i}", tool.name, args)
        t0 = time.perf_counter()
        result = await call_tool(host, run, scope, tools, request, turn=i + 1)
        total = time.perf_counter() - t0
        if result.is_error:
            raise SystemExit(f"the benchmark tool failed: {result.content}")
        if i >= warmup:
            out.append((total - inside[0]) * 1e6)
        if i % 500 == 0:
            await host.writer.flush()
            run.spans.clear()  # the benchmark's run never ends: keep its memory flat
            run.events.clear()
    return out


async def host_round(config: str, env: dict[str, str], calls: int) -> list[float]:
    host = Host(Settings.from_env(env), load_entrypoints=True)
    async with host:
        if config != "bare":
            for name in host.registry.flags:
                on = not name.startswith("disable_") and name not in {"enable_prompt_similarity_check",
                                                                      "enable_stackstorm"}
                host.flags.set(name, on, workspace="bench")
        return await measure(host, python_tool(noop), calls)


async def mcp_round(env: dict[str, str], calls: int) -> tuple[list[float], list[float]]:
    """(round trip µs of call_tool with the MCP tool, host overhead µs) per call."""
    import contextlib

    from synthhost.tools.mcp import open_mcp_tools
    from synthhost.tools.spec import McpSpec

    host = Host(Settings.from_env(env), load_entrypoints=True)
    async with host, contextlib.AsyncExitStack() as stack:
        tools = await open_mcp_tools(McpSpec(command=[sys.executable, str(MCP_SERVER)]), stack)
        add = next(t for t in tools if t.name == "add")
        run = RunState(host, new_id(), new_id(), "bench", "bench-mcp", "bench", None, None, {})
        scope = LoopScope("bench", None, None, "bench", "act", new_id())
        overhead = await measure(host, add, calls, warmup=30)
        trips = []
        for i in range(calls):
            t0 = time.perf_counter()
            await call_tool(host, run, scope, {"add": add}, ToolCallRequest(f"m{i}", "add", '{"a": 1, "b": 2}'), i)
            trips.append((time.perf_counter() - t0) * 1e6)
        return trips, overhead


def _tool_config(env: dict[str, str], limit: bool) -> None:
    from click.testing import CliRunner

    from synthhost.cli import cli

    runner = CliRunner()
    if limit:
        result = runner.invoke(cli, ["ratelimit", "set", "--workspace", "bench", "--scope", "tool",
                                     "--requests", "100000000", "--tokens", "none"], env=env)
        if result.exit_code != 0:
            raise SystemExit(f"could not set the tool limit: {result.output}")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(TOOL_POLICY)
    result = runner.invoke(cli, ["policy", "apply", f.name, "--workspace", "bench"], env=env)
    if result.exit_code != 0:
        raise SystemExit(f"could not apply the tool policy: {result.output}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mcp-calls", type=int, default=300)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
    tmp = tempfile.mkdtemp(prefix="synthhost-bench-tools-")
    receiver = LoopbackReceiver(0.0)
    envs: dict[str, dict[str, str]] = {}
    try:
        for config in CONFIGS:
            profile = PROFILES.get(config, "production-nodelivery")
            env = profile_env(profile, f"sqlite:///{tmp}/{config}.db", redis_url, receiver)
            env["SYNTHHOST_HOME"] = f"{tmp}/home-{config}"
            prepare(profile, env)
            if config != "bare":
                _tool_config(env, limit=config == "production+tool-limit")
            envs[config] = env
        samples: dict[str, list[float]] = {c: [] for c in envs}
        for _ in range(args.rounds):  # interleaved: drift hits both alike
            for config, env in envs.items():
                samples[config] += anyio.run(host_round, config, env, args.calls)
        trips, mcp_overhead = anyio.run(mcp_round, envs["bare"], args.mcp_calls)
        pings = [v * 1e6 for v in ping_samples(redis_url, 2000)]
        delivered = receiver.counts()  # what production-delivering's exporters sent
    finally:
        receiver.close()
    report: dict[str, Any] = {}
    for config, values in samples.items():
        report[config] = {"p50_us": statistics.median(values), "p95_us": pct(values, 0.95),
                          "p99_us": pct(values, 0.99), "calls": len(values)}
    report["receiver"] = delivered
    report["redis_ping"] = {"p50_us": statistics.median(pings), "p95_us": pct(pings, 0.95)}
    report["mcp_stdio"] = {"round_trip_p50_us": statistics.median(trips), "round_trip_p95_us": pct(trips, 0.95),
                           "host_overhead_p50_us": statistics.median(mcp_overhead), "calls": len(trips)}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"per tool call host overhead (no-op async Python tool), {args.rounds} rounds x {args.calls:,} calls")
    for config in envs:
        r = report[config]
        print(f"  {config:24} p50 {r['p50_us']:7.1f} µs  p95 {r['p95_us']:7.1f} µs  p99 {r['p99_us']:7.1f} µs")
    print(f"  {'redis PING':24} p50 {report['redis_ping']['p50_us']:7.1f} µs  "
          f"p95 {report['redis_ping']['p95_us']:7.1f} µs")
    prod = report["production"]["p50_us"]
    for config in ("production", "production-delivering"):
        p50 = report[config]["p50_us"]
        print(f"  {config} p50 {p50:.1f} µs {'meets' if p50 <= TARGET_P50_US else 'misses'} the target "
              f"of {TARGET_P50_US:g} µs")
    print(f"  production p50 {prod:.1f} µs "
          f"(floor, bare host: {report['bare']['p50_us']:.1f} µs); a tool rate limit adds "
          f"{report['production+tool-limit']['p50_us'] - prod:.0f} µs (the limiter's Redis script)")
    print(f"  the loopback receiver got {delivered} (requests by path, production-delivering)")
    m = report["mcp_stdio"]
    print(f"MCP over stdio (bare host, {m['calls']} calls): round trip p50 {m['round_trip_p50_us']:.0f} µs, "
          f"p95 {m['round_trip_p95_us']:.0f} µs; host overhead p50 {m['host_overhead_p50_us']:.1f} µs")


if __name__ == "__main__":
    main()
