"""``synthhost serve`` as a process: ``synthhost keys`` on the command line, and SIGTERM
while a request is in flight (the request completes, its rows are written, exit 0)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import sqlalchemy as sa
from click.testing import CliRunner

from synthhost.cli import cli


def _env(db_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost",
            "SYNTHHOST_HOME": str(tmp_path / "home")}


def test_keys_create_list_revoke(db_url: str, tmp_path: Path) -> None:
    env = _env(db_url, tmp_path)
    runner = CliRunner()
    made = runner.invoke(cli, ["keys", "create", "--workspace", "acme", "--role", "admin", "--name", "ci",
                               "--json"], env=env)
    assert made.exit_code == 0, made.output
    created = json.loads(made.output)
    assert created["key"].startswith("sk-sh-") and created["role"] == "admin" and created["workspace"] == "acme"
    plain = runner.invoke(cli, ["keys", "create", "-w", "other"], env=env)
    assert plain.exit_code == 0 and plain.stdout.strip().startswith("sk-sh-")
    listed = runner.invoke(cli, ["keys", "list", "--workspace", "acme", "--json"], env=env)
    rows = json.loads(listed.output)
    assert [r["id"] for r in rows] == [created["id"]]
    assert created["key"] not in listed.output and rows[0]["prefix"] == created["key"][:12]
    text = runner.invoke(cli, ["keys", "list"], env=env).output
    assert created["id"] in text and "other" in text and "sk-sh-" in text
    # Revoking in another workspace's name does nothing.
    wrong = runner.invoke(cli, ["keys", "revoke", created["id"], "--workspace", "other"], env=env)
    assert wrong.exit_code == 2 and "no such live key in workspace other" in wrong.output
    assert runner.invoke(cli, ["keys", "revoke", created["id"]], env=env).exit_code == 0
    assert json.loads(runner.invoke(cli, ["keys", "list", "-w", "acme", "--json"], env=env).output) == []
    revoked = json.loads(runner.invoke(cli, ["keys", "list", "-w", "acme", "--all", "--json"], env=env).output)
    assert revoked[0]["revoked_at"] is not None
    assert runner.invoke(cli, ["keys", "create", "-w", "*"], env=env).exit_code == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_finishes_the_request_in_flight_and_flushes(db_url: str, tmp_path: Path) -> None:
    env = _env(db_url, tmp_path)
    subprocess.run([sys.executable, "-m", "synthhost", "flags", "set", "track_model_costs", "on", "-w", "sig"],
                   env=env, check=True, capture_output=True, timeout=120)
    key = subprocess.run([sys.executable, "-m", "synthhost", "keys", "create", "-w", "sig"], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthhost", "serve", "--port", str(port), "--no-access-log"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "serve never answered /healthz"
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        answers: list[Any] = []

        def slow_call() -> None:
            with openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0) as sdk:
                try:
                    answers.append(sdk.chat.completions.create(
                        model="echo/gpt-4o-mini", messages=[{"role": "user", "content": "in flight"}],
                        extra_body={"echo_latency_ms": 2500}))
                except Exception as exc:
                    answers.append(exc)

        caller = threading.Thread(target=slow_call)
        caller.start()
        time.sleep(0.8)  # let the request reach the provider's simulated latency
        proc.send_signal(signal.SIGTERM)
        caller.join(60)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert len(answers) == 1 and not isinstance(answers[0], Exception), answers
        assert answers[0].choices[0].message.content == "echo: in flight"
        engine = sa.create_engine(db_url)
        with engine.connect() as conn:
            runs = conn.execute(sa.text("SELECT workspace_id, status FROM runs")).all()
            finished = conn.execute(sa.text(
                "SELECT count(*) FROM event_logs WHERE event_type = 'run_finished' AND workspace_id = 'sig'")).scalar()
            costs = conn.execute(sa.text("SELECT workspace_id, status FROM model_cost_logs")).all()
        engine.dispose()
        assert [tuple(r) for r in runs] == [("sig", "ok")]
        assert finished == 1
        assert [tuple(c) for c in costs] == [("sig", "ok")]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_metrics_sum_over_workers(db_url: str, tmp_path: Path) -> None:
    env = {**_env(db_url, tmp_path), "SYNTHHOST_LOAD_PLUGINS": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    key = subprocess.run([sys.executable, "-m", "synthhost", "keys", "create", "-w", "multi"], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.strip()
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "synthhost", "serve", "--port", str(port), "--workers", "2",
                             "--no-access-log"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "serve never answered /healthz"
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        body = {"model": "echo/m", "messages": [{"role": "user", "content": "x"}]}
        for _ in range(12):  # a new connection each: the kernel spreads them over the workers
            r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"}, json=body)
            assert r.status_code == 200
        # Whichever worker answers the scrape reports every worker's calls.
        for _ in range(4):
            text = httpx.get(url + "/metrics").text
            line = next(x for x in text.splitlines() if x.startswith("synthhost_calls_total{"))
            assert float(line.rsplit(" ", 1)[1]) == 12.0, line
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
