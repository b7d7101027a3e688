"""``synthhost langfuse resend|status``: on-demand re-send, and what the queue holds."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from click.testing import CliRunner, Result

import synthhost_langfuse
from synthhost.agent import AgentSpec
from synthhost.cli import Group
from synthhost.host import Host
from synthhost_langfuse.cli import langfuse_group
from synthhost_langfuse.testing import LangfuseReceiver

root = Group("synthhost")
root.add_command(langfuse_group, "langfuse")
SPEC = AgentSpec(name="cli-agent", model="echo/gpt-4o-mini", steps=[{"name": "s", "prompt": "hi"}])


def invoke(db_url: str, env: dict[str, str], *args: str) -> Result:
    return CliRunner().invoke(root, ["langfuse", *args], env={"DATABASE_URL": db_url, **env})


async def record_runs(make_host: Callable[..., Host], env: dict[str, str], n: int, *, export: bool) -> list[str]:
    async with make_host(synthhost_langfuse, env=env) as host:
        if export:
            host.flags.set("enable_langfuse_export", True, workspace="w1")
        runs = [await host.run(SPEC, workspace="w1") for _ in range(n)]
        other = await host.run(SPEC, workspace="w2")
    return [r.trace_id for r in runs] + [other.trace_id]


@pytest.mark.anyio
async def test_langfuse_resend_since_and_workspace(db_url: str, make_host: Callable[..., Host],
                                                   receiver: LangfuseReceiver, langfuse_env: dict[str, str]) -> None:
    *w1, w2 = await record_runs(make_host, langfuse_env, 3, export=False)
    assert receiver.requests == []  # the flag was off: nothing went out

    result = invoke(db_url, langfuse_env, "resend", "--since", "1h", "--workspace", "w1")
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"3 of 3 traces accepted by {receiver.url}")
    assert receiver.trace_ids() == set(w1)

    result = invoke(db_url, langfuse_env, "resend", "--run", w2, "--json")
    assert json.loads(result.output)["accepted"] == 1 and w2 in receiver.trace_ids()


@pytest.mark.anyio
async def test_langfuse_resend_pending_marks_delivered(db_url: str, make_host: Callable[..., Host],
                                                       receiver: LangfuseReceiver, langfuse_env: dict[str, str],
                                                       dead_url: str) -> None:
    down = {**langfuse_env, "LANGFUSE_BASE_URL": dead_url, "SYNTHHOST_SHUTDOWN_TIMEOUT": "1"}
    *w1, _ = await record_runs(make_host, down, 2, export=True)

    status = json.loads(invoke(db_url, down, "status", "--json").output)
    assert status["configured"] and status["queue"]["delivered"] == 0
    # Pending, retrying, or still claimed by the sender the shutdown deadline cut short.
    assert status["queue"]["pending"] + status["queue"]["retrying"] + status["queue"]["in_flight"] == 2

    result = invoke(db_url, langfuse_env, "resend", "--pending-only", "--since", "1d")
    assert result.exit_code == 0, result.output
    assert receiver.trace_ids() == set(w1)

    status = json.loads(invoke(db_url, langfuse_env, "status", "--json").output)
    assert status["queue"]["delivered"] == 2
    assert status["queue"]["pending"] == status["queue"]["in_flight"] == 0
    again = invoke(db_url, langfuse_env, "resend", "--pending-only", "--json")
    assert json.loads(again.output)["selected"] == 0


def test_langfuse_resend_nothing_selected(db_url: str, dead_url: str, langfuse_env: dict[str, str]) -> None:
    result = invoke(db_url, {**langfuse_env, "LANGFUSE_BASE_URL": dead_url}, "resend")
    assert result.exit_code == 0 and result.output.startswith("0 of 0 traces accepted")


@pytest.mark.anyio
async def test_langfuse_resend_reports_failures(db_url: str, make_host: Callable[..., Host],
                                                langfuse_env: dict[str, str], dead_url: str) -> None:
    await record_runs(make_host, langfuse_env, 1, export=False)
    result = invoke(db_url, {**langfuse_env, "LANGFUSE_BASE_URL": dead_url}, "resend", "-w", "w1")
    assert result.exit_code == 1
    assert result.output.startswith("0 of 1 traces accepted") and "no response from Langfuse" in result.output


def test_langfuse_resend_without_keys_is_a_usage_error(db_url: str) -> None:
    result = invoke(db_url, {"LANGFUSE_PUBLIC_KEY": "", "LANGFUSE_SECRET_KEY": ""}, "resend")
    assert result.exit_code == 2
    assert "LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY not set" in result.output
    bad = invoke(db_url, {"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk"}, "resend", "--since", "soon")
    assert bad.exit_code == 2 and "--since 'soon'" in bad.output
    status = invoke(db_url, {"LANGFUSE_PUBLIC_KEY": "", "LANGFUSE_SECRET_KEY": ""}, "status")
    assert status.exit_code == 0 and "inert" in status.output
