"""Rollback drill: the kill switch. ``synthhost flags set FLAG off --workspace '*'``
turns a plugin off in every workspace, over their own rows, in every running host
(they poll the flag epoch); rows queued before the switch are still written and
delivered; ``flags unset FLAG --workspace '*'`` gives each workspace its own row back."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import synthhost_cost
from synthhost import hookimpl
from synthhost.call import Call, Response
from synthhost.cli import cli
from synthhost.host import Host
from synthhost.outbox import RetryableSendError, queue_stats

pytestmark = pytest.mark.anyio

FLAG = "enable_ops_audit"


class Sender:
    """A receiver that can be down: what it accepted, by event id."""

    retry_delay_s = 0.02
    max_retry_delay_s = 0.05
    flush_interval_s = 0.0

    def __init__(self) -> None:
        self.up = threading.Event()
        self.accepted: list[str] = []

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        if not self.up.is_set():
            raise RetryableSendError("receiver down")
        self.accepted.extend(e["id"] for e in events)


class Audit:
    """A gated plugin: acts on each call (counted) and queues an event for its exporter."""

    __name__ = "ops_audit"

    def __init__(self) -> None:
        self.acted: list[str] = []
        self.sender = Sender()

    @hookimpl
    def register_flags(self, register: Any) -> None:
        register(FLAG, default=False, description="audit every call (test plugin)")

    @hookimpl
    def register_gate(self, register: Any) -> None:
        register(FLAG)

    @hookimpl
    def register_exporters(self, register: Any) -> None:
        register("ops_audit", lambda host: self.sender, event_types=["ops_audited"])

    @hookimpl
    def post_call(self, call: Call, response: Response) -> None:
        self.acted.append(call.workspace)
        call.emit("ops_audited")


def wait_for(predicate: Callable[[], bool], deadline_s: float = 20.0) -> bool:
    deadline = time.monotonic() + deadline_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def cost_rows(host: Host) -> int:
    with host.engine.connect() as conn:
        return int(conn.execute(sa.text("SELECT count(*) FROM model_cost_logs")).scalar_one())


async def test_kill_switch_stops_every_host_and_loses_nothing_queued(make_host: Callable[..., Host],
                                                                     db_url: str) -> None:
    env = {"SYNTHHOST_FLAG_REFRESH_S": "0.05"}
    audit_a, audit_b = Audit(), Audit()
    host_a = make_host(synthhost_cost, audit_a, env=env)
    host_b = make_host(synthhost_cost, audit_b, env=env)
    async with host_a, host_b:
        for ws in ("acme", "beta"):
            host_a.flags.set(FLAG, True, workspace=ws)
            host_a.flags.set("track_model_costs", True, workspace=ws)
        assert await anyio.to_thread.run_sync(lambda: host_b.flags.is_enabled("beta", FLAG) or wait_for(
            lambda: host_b.flags.is_enabled("beta", FLAG)))
        for i in range(3):
            await host_a.complete(model="echo/gpt-4o-mini", messages=f"before {i}", workspace="acme")
            await host_b.complete(model="echo/gpt-4o-mini", messages=f"before {i}", workspace="beta")
        assert audit_a.acted == ["acme"] * 3 and audit_b.acted == ["beta"] * 3
        # the receiver is down: six events wait in the outbox when the switch is thrown
        runner = CliRunner()
        cli_env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost"}
        out = runner.invoke(cli, ["flags", "set", "track_model_costs", "off", "--workspace", "*"], env=cli_env)
        assert out.exit_code == 0 and out.output == "track_model_costs = off (every workspace (forced))\n", out.output
        # The CLI does not load the test plugin, so its flag is switched through a host.
        host_a.flags.set(FLAG, False, force=True)
        for host in (host_a, host_b):
            assert await anyio.to_thread.run_sync(lambda h=host: wait_for(  # type: ignore[misc]
                lambda: not h.flags.is_enabled("acme", FLAG) and not h.flags.is_enabled("beta", "track_model_costs")))
        for i in range(3):
            await host_a.complete(model="echo/gpt-4o-mini", messages=f"after {i}", workspace="acme")
            await host_b.complete(model="echo/gpt-4o-mini", messages=f"after {i}", workspace="beta")
        assert audit_a.acted == ["acme"] * 3 and audit_b.acted == ["beta"] * 3  # nobody acted after
        await host_a.writer.flush()
        await host_b.writer.flush()
        assert cost_rows(host_a) == 6  # the rows queued before the switch, none after
        stats = queue_stats(host_a.engine, ["ops_audit"])["ops_audit"]
        assert stats["pending"] + stats["retrying"] + stats["in_flight"] == 6
        audit_a.sender.up.set()
        audit_b.sender.up.set()
        assert await anyio.to_thread.run_sync(lambda: wait_for(
            lambda: len(set(audit_a.sender.accepted) | set(audit_b.sender.accepted)) == 6))
        listed = runner.invoke(cli, ["flags", "list", "--workspace", "acme", "--json"], env=cli_env)
        assert {f["name"]: f["source"] for f in json.loads(listed.output)}["track_model_costs"] == "forced"
        lifted = runner.invoke(cli, ["flags", "unset", "track_model_costs", "--workspace", "*"], env=cli_env)
        assert lifted.exit_code == 0 and "removed" in lifted.output
        assert await anyio.to_thread.run_sync(lambda: wait_for(
            lambda: host_b.flags.is_enabled("beta", "track_model_costs")))  # beta's own row is back


def test_kill_switch_needs_a_flag_and_a_real_value(db_url: str) -> None:
    env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost"}
    bad = CliRunner().invoke(cli, ["flags", "set", "track_model_cost", "off", "--workspace", "*"], env=env)
    assert bad.exit_code == 2 and "did you mean 'track_model_costs'" in bad.output
    both = CliRunner().invoke(cli, ["flags", "set", "track_model_costs", "off", "--workspace", "*", "--global"],
                              env=env)
    assert both.exit_code == 2 and "choose one" in both.output
