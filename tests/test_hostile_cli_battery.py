"""Every CLI command (host and plugins), with a battery of malformed arguments: one-line
errors and exit 1 or 2, never a traceback, never an unhandled exception."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from synthhost.cli import cli

BAD_VALUES = ["", "9" * 400, "nan", "-inf", "a\nb\x00c", "x" * 10_000, "/nonexistent/dir/file.json", "/dev/full",
              "*", "-1"]
# Commands that run until stopped, or start servers: their argument checks are covered,
# but they are not started by the battery.
LONG_RUNNING = {("worker",), ("schedule", "run"), ("serve",)}


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        path = (*prefix, name)
        if isinstance(command, click.Group):
            yield from commands(command, path)
        else:
            yield path, command


ALL = list(commands(cli))


def cases() -> Iterator[Any]:
    for path, command in ALL:
        for param in command.params:
            if isinstance(param, click.Option) and (param.is_flag or param.name in ("help",)):
                continue
            for value in BAD_VALUES:
                case = f"{' '.join(path)}-{param.name}-{BAD_VALUES.index(value)}"
                yield pytest.param(path, param.name, value, id=case)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("battery")
    return {"DATABASE_URL": f"sqlite:///{home / 'battery.db'}", "SYNTHHOST_HOME": str(home),
            "SYNTHHOST_SPOOL_DIR": str(home / "spool"), "REDIS_URL": "", "RUDDERSTACK_WRITE_KEY": "",
            "LANGFUSE_PUBLIC_KEY": "", "LANGFUSE_SECRET_KEY": "", "STACKSTORM_API_URL": ""}


def args_for(path: tuple[str, ...], command: click.Command, target: str, value: str) -> list[str]:
    """The command with ``target`` set to ``value`` and every other required parameter
    given a plausible value."""
    args = list(path)
    for param in command.params:
        if isinstance(param, click.Argument):
            args.append(value if param.name == target else "x")
        elif isinstance(param, click.Option) and param.name == target:
            args += [param.opts[0], value]
        elif isinstance(param, click.Option) and param.required:
            args += [param.opts[0], "x"]
    if path in LONG_RUNNING and target != "until":
        args += ["--until", "0.2"]  # a valid value elsewhere must not start it for ever
    return args


def test_the_battery_covers_every_command() -> None:
    names = {" ".join(p) for p, _ in ALL}
    assert {"run", "flags set", "traces export", "queue drain", "worker", "models"} <= names
    assert len(ALL) >= 30  # host and plugin commands


@pytest.mark.parametrize(("path", "target", "value"), list(cases()))
def test_malformed_arguments_never_traceback(path: tuple[str, ...], target: str, value: str,
                                             env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.chdir(tmp_path)
    command = dict(ALL)[path]
    result = CliRunner().invoke(cli, args_for(path, command, target, value), catch_exceptions=True)
    if path in LONG_RUNNING and result.exit_code == 0:
        return
    error = result.exception
    assert error is None or isinstance(error, SystemExit), f"{type(error).__name__}: {error}"
    assert "Traceback" not in result.output
    assert result.exit_code in (0, 1, 2), result.output[-500:]
    if result.exit_code:
        errors = [line for line in result.output.splitlines() if line.startswith("Error")]
        assert len(errors) <= 1, result.output[-500:]


@pytest.mark.parametrize("url", ["mysql://u:hunter2secret@h/db", "not a url", "postgresql://[::1/x",
                                 "postgresql+psycopg://u:hunter2secret@h:port/x", "redis://127.0.0.1:6379/0"])
@pytest.mark.parametrize("command", [["flags", "list"], ["traces", "list"], ["db", "current"], ["queue", "stats"],
                                     ["run", "examples/hello.yaml"], ["health"]])
def test_a_bad_database_url_is_one_line_exit_2(url: str, command: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    result = CliRunner().invoke(cli, command, catch_exceptions=True)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "DATABASE_URL" in errors[0] and "hunter2secret" not in result.output


@pytest.mark.parametrize("args", [
    ["traces", "export", "abc", "-o", "x.json", "--save"],
    ["langfuse", "resend", "--run", "abc", "--since", "1h"],
    ["flags", "set", "enable_cron_backoff", "on", "--workspace", "acme", "--global"],
    ["schedule", "run", "examples", "--once", "--until", "5"],
])
def test_contradictory_options_are_refused(args: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    result = CliRunner().invoke(cli, args, catch_exceptions=True)
    assert result.exit_code == 2, result.output
    [error] = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert "--" in error
