"""The trace store: runs → steps → calls, read by `synthhost traces`, scoped to one
workspace, with no secrets in what is stored or exported."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from synthhost.agent import parse_agent
from synthhost.cli import cli

pytestmark = pytest.mark.anyio

AGENT = """
name: two-steps
model: echo/gpt-4o-mini
inputs:
  topic: {default: cats}
steps:
  - name: draft
    prompt: "Write about {{ topic }}"
  - name: polish
    prompt: "Polish: {{ draft }}"
    params: {echo_fail: ["timeout"]}
retry: {max_attempts: 2, initial_delay_s: 0.01, max_delay_s: 0.01}
"""


async def test_run_is_recorded_and_readable_only_in_its_workspace(make_host, db_url, tmp_path, monkeypatch):
    secret = "sk-test-SECRETSECRET1234"
    async with make_host(env={"OPENAI_API_KEY": secret}) as host:
        spec = parse_agent(AGENT)
        result = await host.run(spec, workspace="acme", inputs={"topic": f"my key is {secret}"})
        assert result.ok, result
        other = await host.run(spec, workspace="other")
        assert other.ok

    env = {"DATABASE_URL": db_url, "OPENAI_API_KEY": secret, "SYNTHHOST_LOAD_PLUGINS": ""}
    runner = CliRunner()
    listed = runner.invoke(cli, ["traces", "list", "--workspace", "acme", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    runs = json.loads(listed.output)
    assert [r["run_id"] for r in runs] == [result.run_id]

    exported = runner.invoke(cli, ["traces", "export", result.run_id, "--workspace", "acme"], env=env)
    assert exported.exit_code == 0, exported.output
    data = json.loads(exported.output)
    kinds = [s["kind"] for s in data["spans"]]
    assert sorted(kinds) == ["call", "call", "run", "step", "step"]
    by_id = {s["span_id"]: s for s in data["spans"]}
    for span in data["spans"]:
        if span["kind"] == "call":
            assert by_id[span["parent_id"]]["kind"] == "step"
        if span["kind"] == "step":
            assert by_id[span["parent_id"]]["kind"] == "run"
    polish = next(s for s in data["spans"] if s["kind"] == "call" and s["attributes"]["attempts"] == 2)
    assert polish["attributes"]["usage"]["input_tokens"] > 0
    assert [e["event_type"] for e in data["events"]].count("recovery") == 1
    assert data["run"]["workspace"] == "acme"
    assert secret not in exported.output
    # And not in the database either.
    with host.engine.connect() as conn:
        import sqlalchemy as sa

        for table in ("spans", "runs", "event_logs"):
            for row in conn.execute(sa.text(f"SELECT * FROM {table}")):
                assert secret not in str(row), table

    # Another workspace cannot read it: not found, exit 2, one line.
    denied = runner.invoke(cli, ["traces", "show", result.run_id, "--workspace", "other"], env=env)
    assert denied.exit_code == 2
    assert denied.output.strip().count("\n") == 0 and "no run" in denied.output

    monkeypatch.chdir(tmp_path)
    saved = runner.invoke(cli, ["traces", "export", result.run_id, "-w", "acme", "--save"], env=env)
    assert saved.exit_code == 0, saved.output
    (path,) = tmp_path.glob(f"trace-{result.run_id}-*.json")
    assert json.loads(path.read_text())["run"]["run_id"] == result.run_id

    shown = runner.invoke(cli, ["traces", "show", result.run_id, "--workspace", "acme"], env=env)
    assert shown.exit_code == 0 and "call echo/gpt-4o-mini" in shown.output


def test_trio_backend_runs_the_host(make_host):
    import trio

    host = make_host()

    async def main() -> str:
        async with host:
            response = await host.complete(model="echo/m", messages="from trio")
            return response.text

    assert trio.run(main) == "echo: from trio"


def test_sync_wrappers_for_apps_without_an_event_loop(make_host):
    from synthhost.agent import parse_agent

    host = make_host()
    response = host.complete_sync(model="echo/gpt-4o-mini", messages="no loop here", workspace="sync")
    assert response.text == "echo: no loop here"
    again = make_host()
    result = again.run_sync(parse_agent(AGENT), workspace="sync", inputs={"topic": "dogs"})
    assert result.ok and result.outputs["draft"] == "echo: Write about dogs"
    assert again.count("runs", workspace_id="sync") == 2  # the stand-alone call and the run


async def test_on_step_reports_each_step_as_it_ends(make_host):
    from synthhost.agent import parse_agent

    seen: list[tuple[int, int, str, str]] = []
    async with make_host() as host:
        result = await host.run(parse_agent(AGENT), workspace="p",
                                on_step=lambda i, n, step: seen.append((i, n, step.name, step.status)))
    assert result.ok
    assert seen == [(1, 2, "draft", "ok"), (2, 2, "polish", "ok")]


async def test_load_traces_reads_many_runs_as_load_trace_reads_each(make_host):
    """The exporters' bulk read (three queries for a batch) returns, per id asked for,
    exactly what the one-run read returns; unknown ids are absent."""
    from synthhost.traces import load_trace, load_traces

    async with make_host() as host:
        spec = parse_agent(AGENT)
        results = [await host.run(spec, workspace=f"w{i % 2}", inputs={"topic": f"t{i}"}) for i in range(5)]
        await host.complete(model="echo/gpt-4o-mini", messages="hi", workspace="w0")  # a run not asked for
        await host.writer.flush()
        run_ids = [r.run_id for r in results]
        asked = [*run_ids, results[0].trace_id, run_ids[1], "0" * 32]
        many = load_traces(host.engine, asked)
        assert set(many) == {*run_ids, results[0].trace_id}
        for key in (*run_ids, results[0].trace_id):
            one = load_trace(host.engine, key)
            assert one is not None and many[key] == one
        assert [s.kind for s in many[run_ids[0]].spans].count("call") == 2
        assert many[run_ids[0]].events and all(e.event_type for e in many[run_ids[0]].events)
        assert len({t.run_id for t in many.values()}) == 5  # only what was asked for
        assert load_traces(host.engine, []) == {}
