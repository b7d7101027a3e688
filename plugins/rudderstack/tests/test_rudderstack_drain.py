"""`synthhost queue drain` and `synthhost worker` deliver the outbox (real processes, the
real RudderStack SDK, a loopback /v1/batch receiver)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import synthhost_rudderstack

pytestmark = pytest.mark.anyio


async def queued_event_ids(make_host: Any, receiver: Any, env: dict[str, str], n: int) -> set[str]:
    """Calls made while the receiver is down: their events wait in the outbox."""
    receiver.stop()
    host = make_host(synthhost_rudderstack, env={**env, "SYNTHHOST_SHUTDOWN_TIMEOUT": "0.5"})
    async with host:
        for i in range(n):
            await host.complete(workspace="w", model="echo/m", messages=f"hello {i}")
        await host.writer.flush()
    with host.engine.connect() as conn:
        ids = {r[0] for r in conn.execute(sa.text(
            "SELECT event_id FROM outbox WHERE exporter = 'rudderstack' AND state <> 'delivered'"))}
    assert ids, "nothing was queued"
    return ids


def cli_env(db_url: str, tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    return {**os.environ, **env, "DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "rudderstack",
            "SYNTHHOST_HOME": str(tmp_path / "cli-home")}


def drain(env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "synthhost", "queue", "drain", "--timeout", str(timeout), "--json"],
                          env=env, capture_output=True, text=True, timeout=180)


async def test_drain_exits_1_with_counts_while_the_receiver_is_down_then_0(
        make_host: Any, receiver: Any, rudder_env: Any, db_url: str, tmp_path: Path) -> None:
    ids = await queued_event_ids(make_host, receiver, rudder_env(), 4)
    env = cli_env(db_url, tmp_path, rudder_env())

    down = drain(env, 1.0)
    assert down.returncode == 1, down.stderr
    report = json.loads(down.stdout)
    assert report["waiting"] == len(ids) and "Traceback" not in down.stderr

    receiver.start()  # same port, back up
    up = drain(env, 60.0)
    assert up.returncode == 0, up.stderr
    assert json.loads(up.stdout)["waiting"] == 0
    assert set(receiver.message_ids()) == ids  # every queued event, its id as the message id


async def test_worker_delivers_and_stops_cleanly_on_sigterm(
        make_host: Any, receiver: Any, rudder_env: Any, db_url: str, tmp_path: Path) -> None:
    ids = await queued_event_ids(make_host, receiver, rudder_env(), 3)
    receiver.start()
    worker = subprocess.Popen([sys.executable, "-m", "synthhost", "worker"],
                              env=cli_env(db_url, tmp_path, rudder_env()),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while set(receiver.message_ids()) != ids:
            assert worker.poll() is None, worker.communicate()[1]
            assert time.monotonic() < deadline, "the worker did not deliver the outbox"
            time.sleep(0.1)
        worker.send_signal(signal.SIGTERM)
        _out, err = worker.communicate(timeout=60)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.communicate()
    assert worker.returncode == 0, err
    assert "Traceback" not in err and "stopped by SIGTERM" in err
    assert receiver.message_ids() == {i: 1 for i in ids}
