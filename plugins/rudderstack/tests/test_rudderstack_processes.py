"""Two host processes share one PostgreSQL outbox: 10,000 events, none twice, none lost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import synthhost_rudderstack
from synthhost.outbox import queue_stats

EVENTS_PER_PROCESS = 5000
TOTAL = 2 * EVENTS_PER_PROCESS

CHILD = textwrap.dedent("""
    import json, sys, time
    import anyio
    import synthhost_rudderstack
    from synthhost import Host
    from synthhost.outbox import queue_stats
    from synthhost.settings import Settings

    env, count, total, tag = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]

    async def main():
        host = Host(Settings.from_env(env), plugins=[synthhost_rudderstack], load_entrypoints=False)
        async with host:
            for i in range(count):
                host.emit("bulk_event", workspace=f"w{i % 4}", n=i, process=tag)
                if i % 100 == 0:
                    await anyio.sleep(0)  # let the writer and the outbox breathe
            await host.writer.flush()
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:  # forward until the shared queue is empty
                s = queue_stats(host.engine, ["rudderstack"])["rudderstack"]
                if s["delivered"] >= total and s["pending"] + s["retrying"] + s["in_flight"] == 0:
                    break
                await anyio.sleep(0.1)
            mine = host._outbox.stats.get("rudderstack", {})
        print(json.dumps(mine))

    anyio.run(main)
""")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_processes_deliver_every_event_exactly_once(make_host, db_url, receiver, rudder_env, tmp_path: Path):
    env = {**os.environ, **rudder_env(), "DATABASE_URL": db_url, "SYNTHHOST_AUTO_MIGRATE": "0"}
    make_host(synthhost_rudderstack, env=env).migrate()  # once, before both start
    script = tmp_path / "forward.py"
    script.write_text(CHILD)
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), json.dumps(env), str(EVENTS_PER_PROCESS), str(TOTAL), tag],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for tag in ("a", "b")
    ]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        outputs.append(json.loads(out.strip().splitlines()[-1]))

    counts = receiver.message_ids()
    assert len(counts) == TOTAL  # none missing
    duplicates = {mid: n for mid, n in counts.items() if n > 1}
    assert duplicates == {}  # happy path: no event sent twice, concurrently or otherwise
    assert all(a.status == 200 for a in receiver.arrivals)
    # Both processes forwarded, and between them exactly the events that arrived.
    delivered = [o.get("delivered", 0) for o in outputs]
    assert all(n > 0 for n in delivered), delivered
    assert sum(delivered) == TOTAL
    assert sum(o.get("retried", 0) + o.get("errors", 0) for o in outputs) == 0
    # Both emitters' events were forwarded (workspace / process tags survive the trip).
    assert {m["properties"]["process"] for m in receiver.messages()} == {"a", "b"}
    host = make_host(synthhost_rudderstack, env=env)
    s = queue_stats(host.engine)["rudderstack"]
    assert (s["delivered"], s["pending"], s["retrying"], s["in_flight"], s["parked"]) == (TOTAL, 0, 0, 0, 0)
