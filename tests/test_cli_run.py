"""``synthhost run``: output, exit codes, errors; first on a fake host, then end to end."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from synthhost.agent import AgentSpec
from synthhost.cli import run as run_module
from synthhost.cli.run import format_step_lines, parse_inputs, run_command
from synthhost.errors import ErrorCode, UsageError
from synthhost.trace import RunResult, StepResult

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
BAD = Path(__file__).parent / "data" / "bad_agents"


def ok_result(spec: AgentSpec, workspace: str) -> RunResult:
    steps = [StepResult(s.name, "ok", output=f"out-{s.name}", model=spec.model_for(s)) for s in spec.steps]
    return RunResult(
        run_id="r" * 32,
        trace_id="t" * 32,
        workspace=workspace,
        agent=spec.name,
        status="ok",
        output=steps[-1].output,
        outputs={s.output_name: f"out-{s.name}" for s in spec.steps},
        steps=steps,
        cost_usd="0.000123",
        duration_ms=12.5,
    )


def failed_result(spec: AgentSpec, workspace: str) -> RunResult:
    return RunResult(
        run_id="f" * 32,
        trace_id="t" * 32,
        workspace=workspace,
        agent=spec.name,
        status="error",
        steps=[
            StepResult(
                spec.steps[0].name,
                "error",
                model=spec.model,
                error_code=ErrorCode.PROVIDER_AUTH,
                error_message="bad key",
            )
        ],
        error_code=ErrorCode.PROVIDER_AUTH,
        error_message="HTTP 401:\nbad key",
        duration_ms=3.0,
    )


class FakeHost:
    def __init__(self, outcome: str = "ok") -> None:
        self.registry = SimpleNamespace(providers={"echo": object(), "openai": object()})
        self.outcome = outcome
        self.runs: list[tuple[AgentSpec, dict[str, Any], str | None]] = []
        self.opened = 0

    async def run(
        self, spec: AgentSpec, *, inputs: dict[str, Any], workspace: str | None, on_step: Any = None,
        on_delta: Any = None,
    ) -> RunResult:
        self.runs.append((spec, inputs, workspace))
        if self.outcome == "usage":
            raise UsageError("the host refused it")
        ws = workspace or spec.workspace
        result = ok_result(spec, ws) if self.outcome == "ok" else failed_result(spec, ws)
        for index, step in enumerate(result.steps, 1):
            if on_step is not None:
                on_step(index, len(spec.steps), step)
        return result


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeHost:
    host = FakeHost()

    @contextlib.asynccontextmanager
    async def open_host() -> AsyncIterator[FakeHost]:
        host.opened += 1
        yield host

    monkeypatch.setattr(run_module, "_open_host", open_host)
    return host


def invoke(*args: str | Path, command: click.Command = run_command) -> Result:
    return CliRunner().invoke(command, [str(a) for a in args], catch_exceptions=False)


# -- with a fake host -----------------------------------------------------------------------


def test_success_prints_the_output(fake: FakeHost) -> None:
    result = invoke(EXAMPLES / "hello.yaml")
    assert result.exit_code == 0
    assert result.stdout == "out-greet\n"
    assert result.stderr == ""  # not a terminal: no progress lines
    [(spec, inputs, workspace)] = fake.runs
    assert spec.name == "hello"
    assert inputs == {"name": "world"}  # defaults resolved before the host is opened
    assert workspace is None  # the agent's own workspace


def test_inputs_and_workspace_are_passed(fake: FakeHost) -> None:
    result = invoke(
        EXAMPLES / "summarize.yaml",
        "--input",
        "text=a=b c",
        "-i",
        "style=haiku",
        "--workspace",
        "team-a",
    )
    assert result.exit_code == 0, result.stderr
    [(_, inputs, workspace)] = fake.runs
    assert inputs["text"] == "a=b c"  # only the first '=' splits
    assert inputs["style"] == "haiku"
    assert workspace == "team-a"


def test_progress_lines(fake: FakeHost) -> None:
    result = invoke(EXAMPLES / "summarize.yaml", "--progress")
    assert result.exit_code == 0
    assert result.stderr.splitlines() == [
        "step 1/2 summary  ok     echo/gpt-4o-mini",
        "step 2/2 title    ok     echo/gpt-4o",
        "run rrrrrrrrrrrr ok in 12.5 ms, $0.000123",
    ]
    assert result.stdout == "out-title\n"


def test_json_output(fake: FakeHost) -> None:
    result = invoke(EXAMPLES / "support-triage.yaml", "--json")
    assert result.exit_code == 0
    record = json.loads(result.stdout)
    assert record["status"] == "ok"
    assert record["workspace"] == "support"
    assert [s["name"] for s in record["steps"]] == ["classify", "draft", "review"]
    assert record["outputs"]["category"] == "out-classify"


def test_failed_run_exits_1(fake: FakeHost) -> None:
    fake.outcome = "error"
    result = invoke(EXAMPLES / "hello.yaml", "--progress")
    assert result.exit_code == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == "step 1/1 greet  error  echo/gpt-4o-mini  PROVIDER_AUTH"
    assert lines[-1] == "Error: PROVIDER_AUTH: HTTP 401: bad key"  # one line


def test_failed_run_json_exits_1(fake: FakeHost) -> None:
    fake.outcome = "error"
    result = invoke(EXAMPLES / "hello.yaml", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["error_code"] == "PROVIDER_AUTH"
    assert result.stderr == "Error: PROVIDER_AUTH: HTTP 401: bad key\n"


def test_usage_error_from_the_host_exits_2(fake: FakeHost) -> None:
    fake.outcome = "usage"
    result = invoke(EXAMPLES / "hello.yaml")
    assert result.exit_code == 2
    assert result.stderr == "Error: the host refused it\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--input", "novalue"], "Error: --input: expected KEY=VALUE, got 'novalue'"),
        (["--input", "=x"], "Error: --input: expected KEY=VALUE, got '=x'"),
        (
            ["--input", "nmae=Ada"],
            "unknown input 'nmae' for agent 'hello', did you mean 'name'? (known: name)",
        ),
        (["--workspace", " "], "Error: --workspace: invalid workspace name ' '"),
    ],
)
def test_bad_input_exits_2(fake: FakeHost, args: list[str], expected: str) -> None:
    result = invoke(EXAMPLES / "hello.yaml", *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert fake.opened == 0  # refused before any host work


def test_missing_required_input_exits_2(fake: FakeHost, tmp_path: Path) -> None:
    agent = tmp_path / "needs.yaml"
    agent.write_text(
        "name: needs\nmodel: echo/m\ninputs:\n  topic: {description: a topic}\n"
        "steps: [{name: s, prompt: '{{ topic }}'}]\n"
    )
    result = invoke(agent)
    assert result.exit_code == 2
    assert result.stderr == (
        f"Error: {agent}:4: inputs.topic: missing required input 'topic' (a topic); pass --input topic=VALUE\n"
    )
    assert invoke(agent, "--input", "topic=cats").exit_code == 0


BAD_FILES = sorted(p.name for p in BAD.glob("*.yaml"))


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_agent_files_exit_2(fake: FakeHost, name: str) -> None:
    path = BAD / name
    result = invoke(path)
    assert result.exit_code == 2, result.stdout
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: {path}:")
    assert "Traceback" not in result.stderr
    assert fake.runs == []


def test_missing_file_exits_2(fake: FakeHost, tmp_path: Path) -> None:
    result = invoke(tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path / 'nope.yaml'}: no such file\n"


def test_parse_inputs() -> None:
    assert parse_inputs(["a=1", "b=x=y", "a=2", " c =", "d= spaced "]) == {
        "a": "2",
        "b": "x=y",
        "c": "",
        "d": " spaced ",
    }


def test_format_step_lines_without_cost() -> None:
    result = RunResult("abc", "t", "w", "a", "ok", steps=[StepResult("s", "ok", model="echo/m")])
    assert format_step_lines(result) == ["step 1/1 s  ok     echo/m", "run abc ok in 0.0 ms"]


# -- end to end, on the real host --------------------------------------------------------


@pytest.fixture
def host_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> str:
    """A fresh database and only the built-in plugins (echo, openai, recovery)."""
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SYNTHHOST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SYNTHHOST_LOAD_PLUGINS", "")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    return db_url


EXAMPLE_FILES = sorted(p.name for p in EXAMPLES.glob("*.yaml"))


@pytest.mark.parametrize("name", EXAMPLE_FILES)
def test_examples_run_end_to_end(host_env: str, name: str) -> None:
    result = invoke(EXAMPLES / name, "--json")
    assert result.exit_code == 0, result.stderr
    record = json.loads(result.stdout)
    assert record["status"] == "ok"
    assert record["output"]
    assert all(step["status"] == "ok" for step in record["steps"])

    plain = invoke(EXAMPLES / name)
    assert plain.exit_code == 0, plain.stderr
    assert plain.stdout.strip()


def test_end_to_end_outputs(host_env: str) -> None:
    hello = invoke(EXAMPLES / "hello.yaml", "--input", "name=Ada")
    assert hello.stdout == "echo: Say hello to Ada in one short, cheerful sentence.\n"

    flaky = json.loads(invoke(EXAMPLES / "flaky.yaml", "--json").stdout)
    assert flaky["output"] == "42"  # after a 429 and a 500, retried by the recovery plugin

    triage = json.loads(invoke(EXAMPLES / "support-triage.yaml", "--json", "-w", "ops").stdout)
    assert triage["workspace"] == "ops"
    assert triage["outputs"]["category"] == "billing"
    assert "Apologise for the duplicate charge" in triage["outputs"]["draft"]
    assert set(triage["outputs"]) == {"category", "draft", "final_reply"}
    assert triage["output"] == triage["outputs"]["final_reply"]


def test_end_to_end_failure_and_unknown_provider(host_env: str, tmp_path: Path) -> None:
    failing = tmp_path / "failing.yaml"
    failing.write_text(
        "name: failing\nmodel: echo/gpt-4o-mini\nsteps:\n  - name: s\n    prompt: hi\n    params: {echo_fail: [auth]}\n"
    )
    result = invoke(failing)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: PROVIDER_AUTH: ")
    assert len(result.stderr.splitlines()) == 1

    path = BAD / "unknown_provider.yaml"
    result = invoke(path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"Error: {path}:7: unknown provider 'antrhopic' in steps[1]")


def test_attached_to_the_root_cli(host_env: str) -> None:
    from synthhost.cli import cli

    assert isinstance(cli, click.Group)
    assert cli.commands.get("run") is run_command
    result = CliRunner().invoke(cli, ["run", str(BAD / "undefined_variable.yaml")])
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ")
    assert "undefined template variable 'topic'" in result.stderr


def test_end_to_end_builtin_variables(host_env: str, tmp_path: Path) -> None:
    agent = tmp_path / "builtins.yaml"
    agent.write_text(
        "name: builtins\nmodel: echo/m\ninputs: {x: {default: vx}}\nsteps:\n"
        "  - name: a\n    prompt: first\n"
        "  - name: b\n"
        "    prompt: \"{{ step }}|{{ agent }}|{{ workspace }}|{{ inputs['x'] }}|"
        "{{ outputs['a'] }}|{{ run_id|length }}\"\n"
    )
    result = invoke(agent, "--workspace", "wb")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "echo: b|builtins|wb|vx|echo: first|32\n"
