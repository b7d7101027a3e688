"""The scheduler: due ticks, catch-up, overlap, backoff, disable/enable, claims across
schedulers, restarts, and ``synthhost schedule``. Time is an injected clock."""

from __future__ import annotations

import itertools
import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from synthhost.agent import parse_agent
from synthhost.cli.schedule import schedule_command
from synthhost.errors import UsageError
from synthhost.scheduler import (
    JOBS,
    BackoffPolicy,
    CronStore,
    Job,
    Scheduler,
    after_failure,
    load_jobs,
    next_tick,
    tick_at_or_after,
)
from synthhost.storage import db

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
T0 = datetime(2030, 1, 7, 12, 0, tzinfo=UTC)  # a Monday, on a minute boundary
FLAG = "enable_cron_backoff"
DEFAULT_DELAYS = [60, 120, 240, 480, 960, 1920, 3840, 7680, 15360]  # failures 1..9; the 10th disables


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def agent_yaml(name: str = "job", schedule: str = "* * * * *", *, fail: bool = False, latency_ms: int = 0,
               workspace: str = "w1") -> str:
    params: dict[str, Any] = {}
    if fail:
        params["echo_fail"] = ["server_error"]
    if latency_ms:
        params["echo_latency_ms"] = latency_ms
    return (f"name: {name}\nworkspace: {workspace}\nmodel: echo/gpt-4o-mini\nparams: {json.dumps(params)}\n"
            f"steps:\n  - name: go\n    prompt: hello\nretry: {{max_attempts: 1}}\nschedule: \"{schedule}\"\n")


def make_job(**kw: Any) -> Job:
    spec = parse_agent(agent_yaml(**kw))
    return Job(spec, spec.workspace)


async def events(host: Any, event_type: str) -> list[dict[str, Any]]:
    await host.writer.flush()
    with host.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT context, run_id, status FROM event_logs WHERE event_type = :t "
                                    "ORDER BY created_at"), {"t": event_type}).all()
    return [{**(json.loads(r[0]) if isinstance(r[0], str) else r[0]), "_run_id": r[1], "_status": r[2]} for r in rows]


# -- pure: due computation and the backoff formula -------------------------------------------


def test_next_tick_is_strictly_after_and_tick_at_or_after_is_inclusive() -> None:
    assert next_tick("* * * * *", T0) == T0 + timedelta(minutes=1)
    assert next_tick("* * * * *", T0 + timedelta(seconds=59)) == T0 + timedelta(minutes=1)
    assert tick_at_or_after("* * * * *", T0) == T0
    assert tick_at_or_after("* * * * *", T0 + timedelta(microseconds=1)) == T0 + timedelta(minutes=1)
    assert next_tick("*/15 9-17 * * mon-fri", T0) == T0 + timedelta(minutes=15)
    friday_evening = datetime(2030, 1, 11, 17, 50, tzinfo=UTC)
    assert next_tick("*/15 9-17 * * mon-fri", friday_evening) == datetime(2030, 1, 14, 9, 0, tzinfo=UTC)
    assert next_tick("* * * * * *", T0) == T0 + timedelta(seconds=1)  # croniter's seconds field
    assert next_tick("0 * * * *", T0).tzinfo is not None


def test_backoff_delays_are_exact() -> None:
    policy = BackoffPolicy()
    assert [policy.delay(n) for n in range(1, 15)] == [*DEFAULT_DELAYS, 30720, 61440, 86400, 86400, 86400]
    assert next(n for n in range(1, 20) if policy.disables(n)) == 10
    assert not BackoffPolicy(max_failures=0).disables(10**6)
    assert BackoffPolicy(max_failures=0).delay(10**6) == 86400  # no overflow


def test_backoff_settings_from_env() -> None:
    policy = BackoffPolicy.from_env({
        "SYNTHHOST_CRON_BACKOFF_INITIAL_S": "5", "SYNTHHOST_CRON_BACKOFF_MULTIPLIER": "3",
        "SYNTHHOST_CRON_BACKOFF_MAX_S": "100", "SYNTHHOST_CRON_BACKOFF_MAX_FAILURES": "0"})
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [5, 15, 45, 100]
    assert BackoffPolicy.from_env({}) == BackoffPolicy()
    for name, value in [("MULTIPLIER", "0.5"), ("MAX_FAILURES", "2.5"), ("INITIAL_S", "soon"), ("MAX_S", "-1")]:
        with pytest.raises(UsageError, match=f"SYNTHHOST_CRON_BACKOFF_{name}"):
            BackoffPolicy.from_env({f"SYNTHHOST_CRON_BACKOFF_{name}": value})


def test_after_failure() -> None:
    policy, nxt = BackoffPolicy(), T0 + timedelta(minutes=1)
    assert after_failure("* * * * *", 3, T0, nxt, policy, backoff=False).next_run_at == nxt
    on = after_failure("* * * * *", 3, T0, nxt, policy, backoff=True)
    assert (on.delay_s, on.next_run_at, on.disable) == (240, T0 + timedelta(minutes=4), False)
    # Delay ends between ticks: the first tick after it.
    hourly = after_failure("0 * * * *", 1, T0 + timedelta(seconds=30), T0 + timedelta(hours=1), policy, True)
    assert hourly.next_run_at == T0 + timedelta(hours=1)
    assert after_failure("* * * * *", 10, T0, nxt, policy, backoff=True).disable


def test_load_jobs(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(agent_yaml("a"))
    (tmp_path / "b.yml").write_text(agent_yaml("b", workspace="w2"))
    (tmp_path / "plain.yaml").write_text((EXAMPLES / "hello.yaml").read_text())  # no schedule: ignored
    assert sorted(j.label for j in load_jobs([tmp_path])) == ["w1/a", "w2/b"]
    assert {j.workspace for j in load_jobs([tmp_path], workspace="ops")} == {"ops"}
    with pytest.raises(UsageError, match="has no schedule"):
        load_jobs([tmp_path / "plain.yaml"])
    with pytest.raises(UsageError, match="also defined in"):
        load_jobs([tmp_path, tmp_path / "a.yaml"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UsageError, match="no agent with a schedule"):
        load_jobs([empty])
    needs_input = agent_yaml("n").replace("params:", "inputs: {topic: {}}\nparams:")
    (tmp_path / "n.yaml").write_text(needs_input)
    with pytest.raises(UsageError, match="scheduled run has no inputs"):
        load_jobs([tmp_path / "n.yaml"])


# -- against the database (SQLite and PostgreSQL) -------------------------------------------

@pytest.mark.anyio
async def test_first_run_is_the_next_tick_and_nothing_runs_early(make_host: Any) -> None:
    clock = Clock(T0 + timedelta(seconds=30))
    async with make_host() as host:
        sched = Scheduler(host, [make_job()], clock=clock)
        await sched.prepare()
        state = sched.states[("w1", "job")]
        assert state.next_run_at == T0 + timedelta(minutes=1) and state.failures == 0
        clock.now = T0 + timedelta(seconds=59)
        assert (await sched.run_pending()).runs == 0
        clock.now = T0 + timedelta(minutes=1)
        summary = await sched.run_pending()
        assert (summary.runs, summary.ok) == (1, 1)
        assert (await sched.run_pending()).runs == 1  # the same tick is not run again
        row = CronStore(host.engine).get("w1", "job")
        assert row is not None
        assert row.next_run_at == T0 + timedelta(minutes=2)
        assert row.last_status == "ok" and row.last_run_id == summary.outcomes[0].run_id
        assert row.running_until is None
        assert host.count("runs", agent="job", status="ok") == 1


@pytest.mark.anyio
async def test_missed_ticks_give_one_catch_up_run(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as host:
        sched = Scheduler(host, [make_job()], clock=clock)
        await sched.prepare()
        clock.now = T0 + timedelta(hours=3, seconds=10)  # 180 ticks missed
        assert (await sched.run_pending()).runs == 1
        assert (await sched.run_pending()).runs == 1
        row = CronStore(host.engine).get("w1", "job")
        assert row is not None and row.next_run_at == T0 + timedelta(hours=3, minutes=1)


async def fail_until_disabled(host: Any, sched: Scheduler, clock: Clock, limit: int = 30) -> list[datetime]:
    """Run the failing job at each of its next_run_at until it is disabled; the times."""
    times = []
    for _ in range(limit):
        state = CronStore(host.engine).get("w1", "job")
        assert state is not None and state.next_run_at is not None
        if state.disabled:
            break
        clock.now = state.next_run_at
        times.append(clock.now)
        summary = await sched.run_pending()
        assert summary.outcomes[-1].kind == "error"
    return times


@pytest.mark.anyio
async def test_backoff_sequence_disable_and_explicit_enable(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as host:
        host.flags.set(FLAG, True, workspace="w1")
        sched = Scheduler(host, [make_job(fail=True)], clock=clock)
        await sched.prepare()
        times = await fail_until_disabled(host, sched, clock)
        assert len(times) == 10
        gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
        assert gaps == DEFAULT_DELAYS  # every-minute schedule: the next run is exactly failure + delay
        backoffs = await events(host, "cron_backoff")
        assert [e["delay_s"] for e in backoffs] == DEFAULT_DELAYS
        assert [e["failures"] for e in backoffs] == list(range(1, 10))
        failed = await events(host, "cron_run_failed")
        assert len(failed) == 10 and failed[0]["error_code"] == "PROVIDER_ERROR" and failed[0]["_run_id"]
        disabled = await events(host, "cron_job_disabled")
        assert [(e["reason"], e["failures"]) for e in disabled] == [("max_failures", 10)]
        store = CronStore(host.engine)
        row = store.get("w1", "job")
        assert row is not None and row.disabled and row.failures == 10
        assert row.last_error is not None and row.last_error.startswith("PROVIDER_ERROR:")

        clock.now += timedelta(days=3)  # stays disabled, whatever the time
        assert (await sched.run_pending()).runs == 10
        enabled = store.set_enabled(row, True, clock.now)
        assert (enabled.disabled, enabled.failures) == (False, 0)
        assert enabled.next_run_at == next_tick("* * * * *", clock.now)
        clock.now = enabled.next_run_at
        summary = await sched.run_pending()
        assert summary.runs == 11 and summary.outcomes[-1].failures == 1


@pytest.mark.anyio
async def test_cap_applies_when_max_failures_is_raised(make_host: Any) -> None:
    clock = Clock()
    env = {"SYNTHHOST_CRON_BACKOFF_MAX_FAILURES": "14"}
    async with make_host(env=env) as host:
        host.flags.set(FLAG, True)  # the global row
        sched = Scheduler(host, [make_job(fail=True)], clock=clock)
        await sched.prepare()
        times = await fail_until_disabled(host, sched, clock)
        assert len(times) == 14
        delays = [e["delay_s"] for e in await events(host, "cron_backoff")]
        assert delays == [*DEFAULT_DELAYS, 30720, 61440, 86400, 86400]


@pytest.mark.anyio
async def test_flag_off_failures_count_but_do_not_delay_or_disable(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as host:
        sched = Scheduler(host, [make_job(fail=True)], clock=clock)
        await sched.prepare()
        for i in range(1, 13):
            clock.now = T0 + timedelta(minutes=i)
            summary = await sched.run_pending()
            assert summary.runs == i and summary.outcomes[-1].kind == "error"
        row = CronStore(host.engine).get("w1", "job")
        assert row is not None
        assert (row.failures, row.disabled, row.next_run_at) == (12, False, T0 + timedelta(minutes=13))
        assert await events(host, "cron_backoff") == [] and await events(host, "cron_job_disabled") == []
        assert len(await events(host, "cron_run_failed")) == 12

        # A job disabled by hand stays disabled with the flag off.
        CronStore(host.engine).set_enabled(row, False, clock.now)
        clock.now = T0 + timedelta(hours=1)
        assert (await sched.run_pending()).runs == 12


@pytest.mark.anyio
async def test_success_clears_the_state_and_state_survives_a_restart(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as first:
        first.flags.set(FLAG, True, workspace="w1")
        sched = Scheduler(first, [make_job(fail=True)], clock=clock)
        await sched.prepare()
        for _ in range(3):
            state = CronStore(first.engine).get("w1", "job")
            assert state is not None and state.next_run_at is not None
            clock.now = state.next_run_at
            await sched.run_pending()
    before = CronStore(first.engine).get("w1", "job")
    assert before is not None and before.failures == 3
    assert before.next_run_at == clock.now + timedelta(seconds=240)

    # A new process, the same agent now healthy: failures and the backoff are still there.
    async with make_host() as second:
        sched = Scheduler(second, [make_job()], clock=clock)
        await sched.prepare()
        kept = sched.states[("w1", "job")]
        assert (kept.failures, kept.next_run_at) == (3, before.next_run_at)
        clock.now = before.next_run_at - timedelta(seconds=1)
        assert (await sched.run_pending()).runs == 0  # still backing off
        clock.now = before.next_run_at
        assert (await sched.run_pending()).ok == 1
        after = CronStore(second.engine).get("w1", "job")
        assert after is not None
        assert (after.failures, after.last_status, after.last_error) == (0, "ok", None)


@pytest.mark.anyio
async def test_a_changed_schedule_reschedules(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as host:
        await Scheduler(host, [make_job()], clock=clock).prepare()
        clock.now = T0 + timedelta(seconds=10)
        sched = Scheduler(host, [make_job(schedule="0 * * * *")], clock=clock)
        await sched.prepare()
        state = sched.states[("w1", "job")]
        assert (state.schedule, state.next_run_at) == ("0 * * * *", T0 + timedelta(hours=1))


@pytest.mark.anyio
async def test_two_schedulers_never_run_the_same_tick_twice(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as one, make_host() as two:
        jobs = [make_job(name=f"job{i}") for i in range(3)]
        first, second = Scheduler(one, jobs, clock=clock), Scheduler(two, jobs, clock=clock)
        await first.prepare()
        await second.prepare()
        ticks = 8
        for i in range(1, ticks + 1):
            clock.now = T0 + timedelta(minutes=i)
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run_pending)
                tg.start_soon(second.run_pending)
        assert first.summary.runs + second.summary.runs == ticks * len(jobs)
        for job in jobs:
            assert one.count("runs", agent=job.agent) == ticks
        scheduled = [(o.job.agent, o.scheduled_for) for s in (first, second) for o in s.summary.outcomes]
        assert len(scheduled) == len(set(scheduled))


def test_claim_is_atomic_across_threads(make_host: Any) -> None:
    host = make_host()
    host.migrate()
    store = CronStore(host.engine)
    state = store.ensure("w1", "job", "* * * * *", T0)
    now = state.next_run_at
    assert now is not None
    wins: list[bool] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        wins.append(store.claim(state, now + timedelta(minutes=1), now, now + timedelta(minutes=10), f"p{n}"))

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [False] * 7 + [True]


@pytest.mark.anyio
async def test_a_tick_during_a_running_run_is_skipped_and_counted(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as host:
        job = make_job(latency_ms=600)
        first, second = Scheduler(host, [job], clock=clock), Scheduler(host, [job], clock=clock)
        await first.prepare()
        store = CronStore(host.engine)
        clock.now = T0 + timedelta(minutes=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(first.run_pending)
            for _ in range(300):
                state = store.get("w1", "job")
                if state is not None and state.running_until is not None:
                    break
                await anyio.sleep(0.01)
            clock.now = T0 + timedelta(minutes=2)
            skipped = await second.run_pending()
        assert (skipped.runs, skipped.skipped) == (0, 1)
        assert (first.summary.runs, first.summary.ok) == (1, 1)
        row = store.get("w1", "job")
        assert row is not None
        assert (row.skipped, row.next_run_at, row.running_until) == (1, T0 + timedelta(minutes=3), None)
        assert len(await events(host, "cron_run_skipped")) == 1


@pytest.mark.anyio
async def test_a_cancelled_run_frees_the_job(make_host: Any) -> None:
    clock = Clock()
    async with make_host() as host:
        sched = Scheduler(host, [make_job(latency_ms=30_000)], clock=clock)
        await sched.prepare()
        clock.now = T0 + timedelta(minutes=1)
        store = CronStore(host.engine)
        with anyio.move_on_after(0.5):
            await sched.run_pending()
        row = store.get("w1", "job")
        assert row is not None
        assert (row.last_status, row.running_until, row.failures) == ("cancelled", None, 0)
        assert host.count("runs", agent="job", error_code="CANCELLED") == 1


# -- the command line --------------------------------------------------------------------------


@pytest.fixture
def invoke(db_url: str, tmp_path: Path) -> Any:
    def run(*args: str | Path) -> Result:
        env = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "", "SYNTHHOST_HOME": str(tmp_path / "home")}
        return CliRunner().invoke(schedule_command, [str(a) for a in args], env=env)

    return run


def set_due(db_url: str, agent: str, when: datetime) -> None:
    engine = db.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(JOBS.update().where(JOBS.c.agent == agent).values(next_run_at=when))
    engine.dispose()


def status_rows(invoke: Any) -> dict[str, dict[str, Any]]:
    result = invoke("status", "--json")
    assert result.exit_code == 0, result.output
    return {f"{r['workspace']}/{r['agent']}": r for r in json.loads(result.output)}


def test_cli_once_on_the_example_agent(invoke: Any, db_url: str) -> None:
    example = EXAMPLES / "support-triage.yaml"
    first = invoke("run", example, "--once")
    assert first.exit_code == 0, first.output
    assert "0 runs" in first.output  # registered; its first tick is in the future
    set_due(db_url, "support-triage", datetime.now(UTC) - timedelta(minutes=5))
    second = invoke("run", example, "--once")
    assert second.exit_code == 0, second.output
    assert "support/support-triage ok run" in second.output and "1 run: 1 ok" in second.output
    row = status_rows(invoke)["support/support-triage"]
    assert row["last_status"] == "ok" and row["failures"] == 0 and not row["disabled"]
    assert row["next_run_at"] > datetime.now(UTC).isoformat()[:10]


def test_cli_failure_status_disable_enable(invoke: Any, db_url: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(agent_yaml("bad", fail=True))
    assert invoke("run", path, "--once").exit_code == 0
    set_due(db_url, "bad", datetime.now(UTC) - timedelta(minutes=1))
    failed = invoke("run", path, "--once")
    assert failed.exit_code == 1, failed.output
    assert "w1/bad error PROVIDER_ERROR" in failed.output
    row = status_rows(invoke)["w1/bad"]
    assert row["failures"] == 1 and row["last_error"].startswith("PROVIDER_ERROR") and row["backoff"] is False
    table = invoke("status")
    assert table.exit_code == 0 and "w1/bad" in table.output and "PROVIDER_ERROR" in table.output

    assert invoke("disable", "bad").exit_code == 0
    assert status_rows(invoke)["w1/bad"]["disabled"] is True
    set_due(db_url, "bad", datetime.now(UTC) - timedelta(minutes=1))
    skipped = invoke("run", path, "--once")
    assert skipped.exit_code == 0 and "0 runs" in skipped.output and "disabled" in skipped.output

    enabled = invoke("enable", "bad", "--workspace", "w1")
    assert enabled.exit_code == 0, enabled.output
    row = status_rows(invoke)["w1/bad"]
    assert (row["disabled"], row["failures"]) == (False, 0)
    engine = db.create_engine(db_url)
    with engine.connect() as conn:
        types = [r[0] for r in conn.execute(sa.text("SELECT event_type FROM event_logs WHERE event_type LIKE 'cron%'"))]
    engine.dispose()
    assert sorted(types) == ["cron_job_disabled", "cron_job_enabled", "cron_run_failed"]

    unknown = invoke("enable", "nope")
    assert unknown.exit_code == 2 and "no scheduled agent 'nope'" in unknown.output


def test_cli_bounded_loop(invoke: Any, tmp_path: Path) -> None:
    path = tmp_path / "ticker.yaml"
    path.write_text(agent_yaml("ticker", schedule="* * * * * *"))  # every second
    result = invoke("run", path, "--max-runs", "2", "--until", "20")
    assert result.exit_code == 0, result.output
    assert result.output.count("w1/ticker ok run") == 2 and "2 runs: 2 ok" in result.output
    idle = invoke("run", EXAMPLES / "support-triage.yaml", "--until", "0.3")
    assert idle.exit_code == 0 and "0 runs" in idle.output


def test_cli_bad_input(invoke: Any, tmp_path: Path) -> None:
    no_schedule = invoke("run", EXAMPLES / "hello.yaml", "--once")
    assert no_schedule.exit_code == 2 and "has no schedule" in no_schedule.output
    empty = tmp_path / "empty"
    empty.mkdir()
    assert invoke("run", empty).exit_code == 2
    assert invoke("run", EXAMPLES / "support-triage.yaml", "--once", "--until", "3").exit_code == 2
    assert invoke("status").output.startswith("no scheduled agents")
