"""Durable runs on DBOS: real ``synthhost worker`` processes on a shared database,
killed with SIGKILL, stopped with SIGTERM; the echo provider's call log shows which
steps ran where."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa

import synthhost_cost
from synthhost import durable
from synthhost.agent import parse_agent
from synthhost.host import Host
from synthhost_cost.models import COST_LOGS

MODELS = """deployments:
  - name: gpt
    provider: echo
    model: gpt-4o-mini
    price_as: openai
"""


def agent(steps: int = 4, *, name: str = "four", workspace: str = "acme", latency_ms: int = 0) -> Any:
    params = f"params: {{echo_latency_ms: {latency_ms}}}\n" if latency_ms else ""
    lines = "".join(f"  - name: s{i}\n    prompt: \"step {i} of {{{{ topic }}}}\"\n" for i in range(1, steps + 1))
    return parse_agent(f"name: {name}\nworkspace: {workspace}\nmodel: gpt-4o-mini\n{params}"
                       f"inputs:\n  topic: {{default: cats}}\nsteps:\n{lines}retry: {{max_attempts: 1}}\n", name)


# Fleet behaviour (several workers or schedulers sharing one queue) is PostgreSQL's: DBOS on
# SQLite is for one machine. The crash, drain, cancel and surface tests run on both.
FLEET = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


class Workers:
    """``synthhost worker`` subprocesses on the test's database."""

    def __init__(self, env: dict[str, str], tmp: Path) -> None:
        self.env = env
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, ready: bool = True) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"worker{len(self.procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "synthhost", "worker", *args], env=self.env,
                                stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs.append(proc)
        if ready:
            self.wait_ready(len(self.procs) - 1)
        return proc

    def output(self, index: int) -> str:
        return (self.tmp / f"worker{index}.log").read_text(errors="replace")

    def wait_ready(self, index: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while "durable runs from" not in self.output(index):
            assert self.procs[index].poll() is None, self.output(index)
            assert time.monotonic() < deadline, self.output(index)
            time.sleep(0.05)

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)


@pytest.fixture
def env(db_url: str, tmp_path: Path) -> dict[str, str]:
    (tmp_path / "synthhost.yaml").write_text(MODELS)
    return {
        **os.environ, "DATABASE_URL": db_url, "SYNTHHOST_HOME": str(tmp_path / "home"),
        "SYNTHHOST_CONFIG": str(tmp_path / "synthhost.yaml"), "SYNTHHOST_LOAD_PLUGINS": "cost",
        "SYNTHHOST_ECHO_CALL_LOG": str(tmp_path / "calls.jsonl"), "SYNTHHOST_FLAG_REFRESH_S": "0.2",
        "SYNTHHOST_WORKER_HEARTBEAT_S": "0.2", "SYNTHHOST_WORKER_TTL_S": "1.5", "SYNTHHOST_QUEUE_POLL_S": "0.05",
        "SYNTHHOST_COST_PRICE_REFRESH_S": "0",
    }


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Workers]:
    pool = Workers(env, tmp_path)
    yield pool
    pool.stop_all()


@pytest.fixture
def host(env: dict[str, str], make_host: Callable[..., Host]) -> Iterator[Host]:
    """A started host (cost plugin on for ``acme``) that enqueues and reads results."""
    h = make_host(synthhost_cost, env={k: v for k, v in env.items() if k != "SYNTHHOST_ECHO_CALL_LOG"})
    anyio.run(h.start)
    h.flags.set("track_model_costs", True, workspace="acme")
    yield h
    anyio.run(h.stop)


def calls(env: dict[str, str]) -> list[dict[str, Any]]:
    path = Path(env["SYNTHHOST_ECHO_CALL_LOG"])
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for(predicate: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def finished(host: Host, run_id: str) -> dict[str, Any] | None:
    row = durable.run_status(host, run_id)
    return row if row is not None and row["status"] in durable.FINISHED else None


def test_killed_worker_run_resumes_on_another_without_repeating_steps(host, workers, env):
    """kill -9 a worker during step 3 of a 4-step run: another worker takes the run over
    after the TTL and executes steps 3 and 4 only; the run's cost is its four steps' sum."""
    first = workers.start("--concurrency", "1")
    run_id = durable.enqueue(host, agent(latency_ms=400), inputs={})
    wait_for(lambda: any(c["step"] == "s3" for c in calls(env)), what="step 3 to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    workers.start("--concurrency", "1")
    row = wait_for(lambda: finished(host, run_id), what="the run to finish")
    assert row["status"] == "ok", row
    log = calls(env)
    per_step = Counter(c["step"] for c in log)
    assert per_step["s1"] == per_step["s2"] == 1, log  # completed steps are not executed again
    assert per_step["s4"] == 1
    assert {c["pid"] for c in log if c["step"] in ("s1", "s2")} == {first.pid}
    assert {c["pid"] for c in log if c["step"] == "s4"} == {workers.procs[1].pid}
    assert log[-2]["step"] == "s3" and log[-2]["pid"] == workers.procs[1].pid
    anyio.run(host.writer.flush)
    with host.engine.connect() as conn:
        costs = conn.execute(sa.select(COST_LOGS.c.step, COST_LOGS.c.total_cost)
                             .where(COST_LOGS.c.run_id == run_id)).all()
    assert sorted(step for step, _ in costs) == ["s1", "s2", "s3", "s4"]  # one row per step, none twice
    total = sum((Decimal(str(c)) for _, c in costs), Decimal(0))
    assert total > 0
    assert Decimal(row["attributes"]["cost_usd"]) == total
    assert row["output"].startswith("echo: step 4 of cats")


LOOP_TOOLS = """import json, os
from pathlib import Path

import anyio

HERE = Path(__file__).parent


async def work(n: int) -> str:
    \"\"\"Record this execution; the second call waits for the test's marker.\"\"\"
    with open(HERE / "tool_log.jsonl", "a") as log:
        log.write(json.dumps({"n": n, "pid": os.getpid()}) + "\\n")
    if n == 2:
        while not (HERE / "go").exists():
            await anyio.sleep(0.05)
    return f"done {n}"
"""

LOOP_AGENT = """name: looper
workspace: acme
model: gpt-4o-mini
params:
  echo_tool_calls: [[{name: work, arguments: {n: 1}}, {name: work, arguments: {n: 3}}],
                   [{name: work, arguments: {n: 2}}]]
tools:
  - {python: 'durable_loop_tools:work', timeout_s: 300}
steps:
  - name: s1
    prompt: go
retry: {max_attempts: 1}
"""


def test_killed_worker_resumes_a_tool_loop_at_its_first_unfinished_turn_or_tool_call(host, workers, env, tmp_path):
    """Each model turn and each tool call of a looped step is its own step: kill -9 the
    worker while turn 2's tool call runs (turn 1, its two concurrent tool calls and turn
    2 are done); another worker executes only that tool call again and turn 3. One cost
    row per model turn."""
    (tmp_path / "durable_loop_tools.py").write_text(LOOP_TOOLS)
    (tmp_path / "looper.yaml").write_text(LOOP_AGENT)
    tool_log = tmp_path / "tool_log.jsonl"

    def tools_ran() -> list[dict[str, Any]]:
        return [json.loads(line) for line in tool_log.read_text().splitlines()] if tool_log.exists() else []

    first = workers.start("--concurrency", "1")
    spec = parse_agent(LOOP_AGENT, str(tmp_path / "looper.yaml"))
    run_id = durable.enqueue(host, spec, inputs={})
    wait_for(lambda: any(t["n"] == 2 for t in tools_ran()), what="tool call 2 to start")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    (tmp_path / "go").write_text("")
    second = workers.start("--concurrency", "1")
    row = wait_for(lambda: finished(host, run_id), what="the run to finish")
    assert row["status"] == "ok", row
    assert row["output"] == "echo: done 2"
    turns = [c["pid"] for c in calls(env) if c["run"] == run_id]
    assert turns == [first.pid, first.pid, second.pid]  # turns 1 and 2 are not called again
    ran = [(t["n"], t["pid"]) for t in tools_ran()]
    assert sorted(ran[:2]) == [(1, first.pid), (3, first.pid)]  # turn 1's two tool calls, once each
    assert ran[2:] == [(2, first.pid), (2, second.pid)]  # the interrupted one, again
    anyio.run(host.writer.flush)
    with host.engine.connect() as conn:
        costs = conn.execute(sa.select(COST_LOGS.c.total_cost).where(COST_LOGS.c.run_id == run_id)).scalars().all()
        kinds = Counter(conn.execute(sa.text("SELECT kind FROM spans WHERE run_id = :r"), {"r": run_id}).scalars())
    assert len(costs) == 3  # exactly one per model turn
    assert Decimal(row["attributes"]["cost_usd"]) == sum((Decimal(str(c)) for c in costs), Decimal(0))
    assert row["attributes"]["calls"] == 3 and row["attributes"]["tool_calls"] == 3
    assert kinds == {"run": 1, "step": 1, "call": 3, "tool": 3}


def rows_of(host: Host, run_id: str) -> dict[str, int]:
    anyio.run(host.writer.flush)
    with host.engine.connect() as conn:
        counts = {t: conn.execute(sa.text(f"SELECT count(*) FROM {t} WHERE run_id = :r"), {"r": run_id}).scalar_one()
                  for t in ("spans", "event_logs", "model_cost_logs")}
        counts["outbox"] = conn.execute(sa.text(
            "SELECT count(*) FROM outbox WHERE event_id IN (SELECT id FROM event_logs WHERE run_id = :r)"),
            {"r": run_id}).scalar_one()
    return counts


@pytest.mark.parametrize("crash_at", ["2:s2", "s1:turn2"])
def test_a_step_re_executed_after_a_crash_writes_no_row_twice(host, workers, env, tmp_path, crash_at):
    """The worker dies inside a step after the step's rows are committed, before its
    checkpoint (the crash drill): another worker executes the step again, and every
    table holds exactly what a run without a crash writes. Events go to an exporter
    (RudderStack at an unreachable address), so the outbox is counted too."""
    exporting = {**env, "SYNTHHOST_LOAD_PLUGINS": "cost,rudderstack", "RUDDERSTACK_WRITE_KEY": "k",
                 "RUDDERSTACK_DATA_PLANE_URL": "http://127.0.0.1:9", "RUDDERSTACK_RETRY_DELAY": "60000"}
    if crash_at == "2:s2":
        spec, step = agent(3, name="three"), "s2"
    else:
        (tmp_path / "durable_loop_tools.py").write_text(LOOP_TOOLS)
        (tmp_path / "go").write_text("")
        (tmp_path / "looper.yaml").write_text(LOOP_AGENT)
        spec, step = parse_agent(LOOP_AGENT, str(tmp_path / "looper.yaml")), "s1"
    workers.env = {**exporting, "SYNTHHOST_DRILL_CRASH_BEFORE_CHECKPOINT": crash_at}
    first = workers.start("--concurrency", "1")
    crashed = durable.enqueue(host, spec, inputs={})
    assert first.wait(60) == 137  # the drill
    workers.env = exporting
    second = workers.start("--concurrency", "1")
    assert wait_for(lambda: finished(host, crashed), what="the crashed run to finish")["status"] == "ok"
    clean = durable.enqueue(host, spec, inputs={})
    assert wait_for(lambda: finished(host, clean), what="the clean run to finish")["status"] == "ok"
    pids = [c["pid"] for c in calls(env) if c["run"] == crashed and c["step"] == step]
    if crash_at == "2:s2":
        assert pids == [first.pid, second.pid]  # step 2 executed twice
        expected = {"spans": 1 + 3 + 3, "model_cost_logs": 3}
    else:
        assert pids == [first.pid, first.pid, second.pid, second.pid]  # turn 2 executed twice, then turn 3
        expected = {"spans": 1 + 1 + 3 + 3, "model_cost_logs": 3}
    once = rows_of(host, clean)
    assert rows_of(host, crashed) == once
    assert {k: once[k] for k in expected} == expected
    assert once["outbox"] == once["event_logs"] > 0  # one delivery per event to the one exporter


def test_a_run_past_its_max_recovery_attempts_is_recorded_failed(host, workers, env):
    """Two workers in a row die inside step 1 (the crash drill); with
    SYNTHHOST_MAX_RECOVERY_ATTEMPTS=1, DBOS does not start the run a third time, and the
    worker that would have recorded it as ``error`` (RUN_FAILED) with the reason, not
    left ``running`` for ever."""
    limited = {**env, "SYNTHHOST_MAX_RECOVERY_ATTEMPTS": "1"}
    workers.env = {**limited, "SYNTHHOST_DRILL_CRASH_BEFORE_CHECKPOINT": "1:s1"}
    dying = [workers.start("--concurrency", "1")]
    run_id = durable.enqueue(host, agent(2, name="doomed"), inputs={})
    assert dying[0].wait(60) == 137
    dying.append(workers.start("--concurrency", "1"))
    assert dying[1].wait(60) == 137  # took the run over after the TTL, died the same way
    workers.env = limited
    workers.start("--concurrency", "1")
    row = wait_for(lambda: finished(host, run_id), what="the run to be recorded")
    assert row["status"] == "error", row
    assert row["error_code"] == "RUN_FAILED"
    assert "SYNTHHOST_MAX_RECOVERY_ATTEMPTS=1" in row["error_message"]
    assert [c["pid"] for c in calls(env) if c["run"] == run_id] == [p.pid for p in dying]  # never a third time
    wf = durable.client_for(host).retrieve_workflow(run_id).get_status()
    assert wf.status == "MAX_RECOVERY_ATTEMPTS_EXCEEDED"


def test_cancelled_run_stops_at_the_next_step_boundary(host, workers, env):
    workers.start()
    run_id = durable.enqueue(host, agent(latency_ms=300), inputs={})
    wait_for(lambda: any(c["step"] == "s2" for c in calls(env)), what="step 2 to start")
    assert durable.cancel(host, run_id) in ("running", "cancelled")
    row = wait_for(lambda: finished(host, run_id), what="the run to stop")
    assert row["status"] == "cancelled"
    time.sleep(0.5)
    assert {c["step"] for c in calls(env)} == {"s1", "s2"}  # step 3 never started


def test_cancelled_queued_run_never_starts(host, env):
    run_id = durable.enqueue(host, agent(), inputs={})  # no worker: it waits on the queue
    assert durable.run_status(host, run_id)["status"] == "queued"  # type: ignore[index]
    assert durable.cancel(host, run_id) == "cancelled"
    assert durable.cancel(host, run_id) == "cancelled"  # idempotent


def test_a_step_executed_twice_writes_its_rows_once(host):
    """What makes a re-executed step harmless: inside a step scope its spans, events and
    cost rows get the same ids the second time, and the writer keeps the first."""
    from synthhost.runner import RunState, make_call, traced_call
    from synthhost.steps import scoped

    run = RunState(host, "r" * 32, "t" * 32, "acme", "n", "four", None, None, {})

    async def body() -> str:
        call = make_call(host, model="gpt-4o-mini", messages="hi", workspace="acme", params={}, user=None,
                         org=None, agent="four", metadata=None, max_attempts=1, run=run, step="s1")
        host.emit("step_note", call=call)
        return (await traced_call(host, call, run)).text

    def counts() -> dict[str, int]:
        anyio.run(host.writer.flush)
        with host.engine.connect() as conn:
            return {t: conn.execute(sa.text(f"SELECT count(*) FROM {t} WHERE run_id = :r"), {"r": run.run_id}).scalar()
                    for t in ("spans", "event_logs", "model_cost_logs")}

    anyio.run(lambda: scoped("salt", f"{run.run_id}:1:s1", body))
    once = counts()
    assert once["spans"] == once["model_cost_logs"] == 1 and once["event_logs"] >= 1
    anyio.run(lambda: scoped("salt", f"{run.run_id}:1:s1", body))
    assert counts() == once  # executed again: nothing more
    a, b = run.spans
    assert a.span_id == b.span_id  # the same id both times
    other = RunState(host, "o" * 32, "t" * 32, "acme", "n", "four", None, None, {})
    run = other
    anyio.run(lambda: scoped("another salt", f"{other.run_id}:1:s1", body))
    assert other.spans[0].span_id != a.span_id  # another run's salt: other ids


@FLEET
def test_three_workers_run_300_runs_exactly_once(host, workers, env):
    for _ in range(3):
        workers.start("--concurrency", "8", ready=False)
    for i in range(3):
        workers.wait_ready(i)
    spec = agent(1, name="one")
    ids = [durable.enqueue(host, spec, inputs={"topic": str(n)}) for n in range(300)]
    wait_for(lambda: all(finished(host, r) for r in ids[-20:]), timeout=120, what="the last runs")
    wait_for(lambda: all(finished(host, r) for r in ids), timeout=60, what="every run")
    with host.engine.connect() as conn:
        statuses = Counter(conn.execute(sa.select(durable.RUNS.c.status).where(durable.RUNS.c.id.in_(ids))).scalars())
    assert statuses == {"ok": 300}
    log = calls(env)
    assert Counter(c["run"] for c in log) == dict.fromkeys(ids, 1)  # none lost, none executed twice
    assert len({c["pid"] for c in log}) == 3  # spread over the three workers


@FLEET
def test_per_workspace_limit_holds_while_other_workspaces_proceed(host, workers, env):
    workers.env = {**env, "SYNTHHOST_WORKSPACE_CONCURRENCY": "2"}
    workers.start("--concurrency", "10")
    acme = [durable.enqueue(host, agent(1, name="a", workspace="acme", latency_ms=300), inputs={}) for _ in range(6)]
    other = [durable.enqueue(host, agent(1, name="b", workspace="other", latency_ms=300), inputs={})
             for _ in range(4)]
    wait_for(lambda: all(finished(host, r) for r in acme + other), what="every run")
    log = calls(env)

    def most_at_once(runs: list[str]) -> int:
        starts = sorted(c["t"] for c in log if c["run"] in runs)
        return max(sum(1 for s in starts if t <= s < t + 0.3) for t in starts)

    assert most_at_once(acme) == 2
    assert most_at_once(other) == 2  # the limit is each workspace's
    assert most_at_once(acme + other) == 4  # other proceeds while acme is at its limit


@FLEET
def test_global_limit_holds_over_every_worker_and_workspace(host, workers, env):
    workers.env = {**env, "SYNTHHOST_QUEUE_CONCURRENCY": "3"}
    workers.start("--concurrency", "10", ready=False)
    workers.start("--concurrency", "10", ready=False)
    workers.wait_ready(0)
    workers.wait_ready(1)
    ids = [durable.enqueue(host, agent(1, name="g", workspace=f"w{n}", latency_ms=300), inputs={}) for n in range(8)]
    wait_for(lambda: all(finished(host, r) for r in ids), what="every run")
    starts = sorted(c["t"] for c in calls(env))
    assert max(sum(1 for s in starts if t <= s < t + 0.25) for t in starts) == 3


@FLEET
def test_three_schedulers_enqueue_one_run_per_tick(host, workers, env, tmp_path):
    from datetime import UTC, datetime, timedelta

    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "tick.yaml").write_text("name: tick\nworkspace: acme\nmodel: gpt-4o-mini\n"
                                    "schedule: \"* * * * * */2\"\nsteps:\n  - name: go\n    prompt: hello\n")
    for _ in range(3):
        workers.start("--schedule", str(jobs), ready=False)
    for i in range(3):
        workers.wait_ready(i)
    now = datetime.now(UTC).replace(microsecond=0)
    start = now + timedelta(seconds=4 + now.second % 2)  # an even second, after every scheduler's first pass
    ticks = [start + timedelta(seconds=2 * n) for n in range(5)]
    ids = {durable.run_id_for(f"cron:acme/tick:{t.isoformat()}"): t for t in ticks}
    wait_for(lambda: all(finished(host, r) for r in ids), what="five ticks' runs")
    with host.engine.connect() as conn:
        runs = conn.execute(sa.select(durable.RUNS.c.id).where(durable.RUNS.c.agent == "tick")).scalars().all()
    later = {durable.run_id_for(f"cron:acme/tick:{(start + timedelta(seconds=2 * n)).isoformat()}")
             for n in range(-30, 60)}
    assert set(runs) <= later  # every run is one tick's (a run under any other id would be a duplicate)
    log = [c for c in calls(env) if c["run"] in ids]
    assert Counter(c["run"] for c in log) == dict.fromkeys(ids, 1)  # 5 ticks: exactly 5 runs, each once


def cli(env: dict[str, str], *args: str) -> Any:
    from click.testing import CliRunner

    from synthhost.cli import cli as root

    return CliRunner().invoke(root, list(args), env=env)


def test_cli_run_durable_wait_queue_stats_and_cancel(host, workers, env, tmp_path):
    path = tmp_path / "four.yaml"
    path.write_text("name: four\nworkspace: acme\nmodel: gpt-4o-mini\nsteps:\n  - name: a\n    prompt: hi\n"
                    "  - name: b\n    prompt: \"{{ a }} again\"\n")
    queued = cli(env, "run", "--durable", str(path))  # no worker yet: it waits on the queue
    assert queued.exit_code == 0, queued.output
    run_id = queued.stdout.strip()
    assert len(run_id) == 32
    stats = cli(env, "queue", "stats", "--durable", "--json")
    assert stats.exit_code == 0, stats.output
    assert json.loads(stats.stdout)["queues"]["synthhost-runs"]["queued"] == 1
    cancelled = cli(env, "queue", "cancel", run_id)
    assert cancelled.exit_code == 0 and cancelled.stdout.strip() == f"run {run_id}: cancelled"

    workers.start()
    done = cli(env, "run", "--durable", "--wait", "--json", str(path))
    assert done.exit_code == 0, done.output
    record = json.loads(done.stdout)
    assert record["status"] == "ok" and record["output"] == "echo: echo: hi again"
    assert [s["name"] for s in record["steps"]] == ["a", "b"]
    assert durable.run_status(host, run_id)["status"] == "cancelled"  # type: ignore[index]
    after = json.loads(cli(env, "queue", "stats", "--durable", "--json").stdout)
    queue = after["queues"]["synthhost-runs"]
    assert queue["queued"] == queue["running"] == 0
    assert queue["started_5m"] == 1 and 0 <= queue["wait_p50_s"] <= queue["wait_p95_s"]
    assert [w["concurrency"] for w in after["workers"]] == [4]
    text = cli(env, "queue", "stats", "--durable").stdout
    assert "synthhost-runs" in text and "1 live worker(s)" in text


def test_cli_durable_bad_input_is_one_line_exit_2(env, tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text("name: a\nmodel: echo/x\nsteps:\n  - name: a\n    prompt: hi\n")
    for args, needle in [(("run", "--wait", str(path)), "--wait"), (("queue", "cancel", "f" * 32), "no run"),
                         (("worker", "--queues", ","), "--queues")]:
        result = cli(env, *args)
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.output
    for name in ("SYNTHHOST_WORKER_TTL_S", "SYNTHHOST_WORKSPACE_CONCURRENCY", "SYNTHHOST_MAX_RECOVERY_ATTEMPTS"):
        result = cli({**env, name: "soon"}, "worker", "--until", "1")
        assert result.exit_code == 2, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and name in lines[0], result.output


def test_runs_api_enqueues_waits_for_and_cancels_durable_runs(env, workers, make_host):
    import httpx

    from synthhost.gateway.keys import create_key
    from tests.gateway_server import serving

    server_host = make_host(synthhost_cost, env={**env, "SYNTHHOST_DURABLE_WAIT_S": "2"})
    spec = {"name": "api", "model": "gpt-4o-mini", "steps": [{"name": "s", "prompt": "hi {{ who }}"}],
            "inputs": {"who": {"default": "x"}}}
    with serving(server_host) as url:
        key, _ = create_key(server_host.engine, "acme")
        auth = {"Authorization": f"Bearer {key}"}
        queued = httpx.post(url + "/v1/runs", headers=auth, json={"spec": spec, "durable": True}, timeout=30)
        assert queued.status_code == 202, queued.text
        run_id = queued.json()["id"]
        assert httpx.get(url + f"/v1/runs/{run_id}", headers=auth).json()["status"] == "queued"
        cancelled = httpx.post(url + f"/v1/runs/{run_id}/cancel", headers=auth, timeout=30)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        again = httpx.post(url + f"/v1/runs/{run_id}/cancel", headers=auth, timeout=30)
        assert again.status_code == 409
        assert httpx.post(url + "/v1/runs", headers=auth, json={"spec": spec, "durable": "yes"}).status_code == 400
        no_worker = httpx.post(url + "/v1/runs", headers=auth, json={"spec": spec, "durable": True, "wait": True})
        assert no_worker.status_code == 202 and no_worker.json()["status"] == "queued"  # bounded wait

        workers.start()
        done = httpx.post(url + "/v1/runs", headers=auth, timeout=60,
                          json={"spec": spec, "durable": True, "wait": True, "inputs": {"who": "Ada"}})
        assert done.status_code == 200, done.text
        record = done.json()
        assert record["status"] == "ok" and record["output"] == "echo: hi Ada" and record["workspace"] == "acme"
        assert [c["pid"] for c in calls(env) if c["run"] == record["id"]] == [workers.procs[0].pid]

        slow = {**spec, "params": {"echo_latency_ms": 300},
                "steps": [{"name": "a", "prompt": "one"}, {"name": "b", "prompt": "two"}]}
        followed = httpx.post(url + "/v1/runs", headers=auth, json={"spec": slow, "durable": True}).json()["id"]
        events = []
        with httpx.stream("GET", url + f"/v1/runs/{followed}/events", headers=auth, timeout=30) as stream:
            events = [line.removeprefix("event: ") for line in stream.iter_lines() if line.startswith("event: ")]
        assert events == ["step", "step", "done"]  # followed live while the worker ran it


def test_sigterm_drains_the_run_in_flight(host, workers, env):
    workers.env = {**env, "SYNTHHOST_SHUTDOWN_TIMEOUT": "20"}
    worker = workers.start()
    run_id = durable.enqueue(host, agent(latency_ms=300), inputs={})
    wait_for(lambda: any(c["step"] == "s2" for c in calls(env)), what="step 2 to start")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(30) == 0, workers.output(0)
    row = finished(host, run_id)
    assert row is not None and row["status"] == "ok"  # finished before the worker exited
    assert [c["step"] for c in calls(env)] == ["s1", "s2", "s3", "s4"]


def test_sigterm_past_the_timeout_hands_the_run_to_another_worker_at_once(host, workers, env):
    """The stopping worker writes nothing more for the run it abandons and marks itself
    silent: another worker resumes the run at its next heartbeat (the TTL is 60 s here)."""
    workers.env = {**env, "SYNTHHOST_SHUTDOWN_TIMEOUT": "0.2", "SYNTHHOST_WORKER_TTL_S": "60"}
    first = workers.start()
    run_id = durable.enqueue(host, agent(latency_ms=600), inputs={})
    wait_for(lambda: any(c["step"] == "s2" for c in calls(env)), what="step 2 to start")
    first.send_signal(signal.SIGTERM)
    assert first.wait(30) == 0, workers.output(0)
    assert durable.run_status(host, run_id)["status"] == "running"  # type: ignore[index]  # not "cancelled"
    workers.start()
    row = wait_for(lambda: finished(host, run_id), timeout=30, what="the run to finish")
    assert row["status"] == "ok"
    assert [(c["step"], c["pid"] == first.pid) for c in calls(env)] == [
        ("s1", True), ("s2", True), ("s2", False), ("s3", False), ("s4", False)]
    with host.engine.connect() as conn:
        spans = Counter(conn.execute(sa.text("SELECT status FROM spans WHERE run_id = :r"), {"r": run_id}).scalars())
        costs = conn.execute(sa.select(COST_LOGS.c.step).where(COST_LOGS.c.run_id == run_id)).scalars().all()
    assert spans == {"ok": 9}  # run, 4 steps, 4 calls: no trace of the abandoned attempt
    assert sorted(costs) == ["s1", "s2", "s3", "s4"]


@FLEET
def test_workers_execute_only_runs_of_their_version(env, workers, make_host):
    """A rolling upgrade: runs carry the version that enqueued them; the old version's
    worker drains the old runs, the new one takes only new runs."""
    hosts = {v: make_host(synthhost_cost, env={**env, "SYNTHHOST_APP_VERSION": v}) for v in ("1.0", "2.0")}
    for h in hosts.values():
        anyio.run(h.start)
    try:
        old = durable.enqueue(hosts["1.0"], agent(1, name="old"), inputs={})
        new = durable.enqueue(hosts["2.0"], agent(1, name="new"), inputs={})
        workers.env = {**env, "SYNTHHOST_APP_VERSION": "2.0"}
        upgraded = workers.start()
        wait_for(lambda: finished(hosts["2.0"], new), what="the new version's run")
        time.sleep(0.5)
        assert durable.run_status(hosts["1.0"], old)["status"] == "queued"  # type: ignore[index]
        workers.env = {**env, "SYNTHHOST_APP_VERSION": "1.0"}
        draining = workers.start()
        wait_for(lambda: finished(hosts["1.0"], old), what="the old version's run")
        draining.send_signal(signal.SIGTERM)
        assert draining.wait(30) == 0
        pids = {c["run"]: c["pid"] for c in calls(env)}
        assert pids == {new: upgraded.pid, old: draining.pid}
    finally:
        for h in hosts.values():
            anyio.run(h.stop)


def test_metrics_show_queue_depth_wait_and_workers(env, make_host):
    import httpx

    from tests.gateway_server import serving

    server_host = make_host(synthhost_cost, env=env)
    with serving(server_host) as url:
        durable.enqueue(server_host, agent(1), inputs={})
        durable.enqueue(server_host, agent(1), inputs={})
        text = httpx.get(url + "/metrics").text
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
             if line.startswith("synthhost_durable")}
    assert lines['synthhost_durable_runs{queue="synthhost-runs",state="queued"}'] == 2
    assert lines['synthhost_durable_runs{queue="synthhost-runs",state="running"}'] == 0
    assert lines['synthhost_durable_oldest_queued_age_seconds{queue="synthhost-runs"}'] >= 0
    assert lines["synthhost_durable_workers"] == 0


def test_schedule_run_once_durable_queues_the_tick_for_a_worker(host, workers, env, tmp_path):
    path = tmp_path / "nightly.yaml"
    path.write_text("name: nightly\nworkspace: acme\nmodel: gpt-4o-mini\nschedule: \"* * * * * *\"\n"
                    "steps:\n  - name: go\n    prompt: hello\n")
    worker = workers.start()
    first = cli(env, "schedule", "run", str(path), "--until", "1.5", "--durable")
    assert first.exit_code == 0, first.output
    with host.engine.connect() as conn:
        runs = conn.execute(sa.select(durable.RUNS.c.id, durable.RUNS.c.status)
                            .where(durable.RUNS.c.agent == "nightly")).all()
    assert runs and all(status == "ok" for _, status in runs)
    assert {c["pid"] for c in calls(env)} == {worker.pid}  # executed by the worker, not the scheduler


def test_the_embedded_default_runs_in_process_without_dbos(tmp_path):
    db = tmp_path / "embedded.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}", "SYNTHHOST_HOME": str(tmp_path / "home"),
           "SYNTHHOST_LOAD_PLUGINS": ""}
    result = cli(env, "run", str(Path(__file__).resolve().parent.parent / "examples" / "hello.yaml"))
    assert result.exit_code == 0, result.output
    assert db.exists() and not Path(f"{db}.dbos").exists()  # no DBOS state, no worker needed
