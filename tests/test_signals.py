"""SIGTERM / Ctrl-C during a run: every completed call's rows are in the database, and
the step, call and run in flight are recorded ``cancelled`` (not ``ok``, not ``error``),
with the cancelled attempt's cost row."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

AGENT = """
name: slow
model: echo/gpt-4o-mini
params: {echo_latency_ms: 400}
steps:
""" + "".join(f"  - name: s{i}\n    prompt: step {i}\n" for i in range(8))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_during_a_run_keeps_completed_calls(tmp_path: Path, db_url: str, signum: int) -> None:
    agent = tmp_path / "slow.yaml"
    agent.write_text(AGENT)
    env = {**os.environ, "DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost", "SYNTHHOST_HOME": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "synthhost", "flags", "set", "track_model_costs", "on", "--workspace", "sig"],
                   env=env, check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(
        [sys.executable, "-m", "synthhost", "run", str(agent), "--workspace", "sig"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    engine = sa.create_engine(db_url)
    try:
        # Wait until two calls have finished and been committed, then interrupt.
        deadline = time.monotonic() + 60
        done = 0
        while done < 2:
            assert time.monotonic() < deadline, "calls never completed"
            time.sleep(0.05)
            try:
                with engine.connect() as conn:
                    done = conn.execute(sa.text(
                        "SELECT count(*) FROM spans WHERE kind = 'call' AND status = 'ok'")).scalar() or 0
            except sa.exc.OperationalError:
                continue  # tables not created yet
            except sa.exc.ProgrammingError:
                continue
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signum, err
        assert "Traceback" not in err
        with engine.connect() as conn:
            ok_calls = conn.execute(sa.text(
                "SELECT count(*) FROM spans WHERE kind = 'call' AND status = 'ok'")).scalar()
            run = conn.execute(sa.text("SELECT status, error_code FROM runs")).one()
            events = conn.execute(sa.text(
                "SELECT status FROM event_logs WHERE event_type = 'run_finished'")).scalars().all()
            steps = conn.execute(sa.text(
                "SELECT status, count(*) FROM spans WHERE kind = 'step' GROUP BY status")).all()
            calls = conn.execute(sa.text(
                "SELECT status, error_code FROM spans WHERE kind = 'call' AND status <> 'ok'")).all()
            costs = conn.execute(sa.text(
                "SELECT status, error_code, count(*) FROM model_cost_logs GROUP BY status, error_code")).all()
        assert ok_calls is not None and ok_calls >= 2
        assert ok_calls < 8, "the run was interrupted before the end"
        assert tuple(run) == ("cancelled", "CANCELLED")
        assert events == ["cancelled"]
        # The step in flight is cancelled, never "ok"; completed steps are ok.
        assert dict((status, n) for status, n in steps) == {"ok": ok_calls, "cancelled": 1}
        assert [tuple(c) for c in calls] == [("cancelled", "CANCELLED")]
        # One cost row per attempt: the completed ones, and the cancelled one as failed
        # (the provider had not answered).
        assert sorted(tuple(c) for c in costs) == sorted([("ok", None, ok_calls), ("failed", "CANCELLED", 1)])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        engine.dispose()
