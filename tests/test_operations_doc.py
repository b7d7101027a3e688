"""docs/operations.md cannot drift: every ``synthhost`` command in it exists and its
arguments parse, every ``synthhost check`` item it names is registered (host and
plugins), and every script and test it points to exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from synthhost.cli import cli
from synthhost.host import Host

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "operations.md").read_text()
BLOCKS = re.findall(r"```sh\n(.*?)```", DOC, flags=re.S)
LINES = [line for block in BLOCKS for line in block.strip().splitlines()]
COMMANDS = [line for line in LINES if line.startswith("synthhost ")]


def resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    command: click.Command = cli
    args = list(argv)
    while isinstance(command, click.Group) and args and args[0] in command.commands:
        command = command.commands[args.pop(0)]
    return command, args


def test_the_runbook_has_commands_for_every_section() -> None:
    assert len(COMMANDS) >= 40
    for heading in ("## 1. Deploy", "## 2. Enable the phases", "## 3. What to watch", "## 5. Rollback",
                    "### Cost logs not appearing", "### RudderStack events not sending", "### StackStorm not working",
                    "### High overhead"):
        assert heading in DOC, heading


@pytest.mark.parametrize("line", COMMANDS)
def test_every_command_exists_and_parses(line: str) -> None:
    argv = shlex.split(line)[1:]
    command, args = resolve(argv)
    assert not isinstance(command, click.Group), f"{line}: {command.name} needs a subcommand"
    # Parses arguments and options and converts their values; never runs the command.
    command.make_context(" ".join(["synthhost", *argv[: len(argv) - len(args)]]), args)


def test_every_check_item_named_exists(tmp_path: Path) -> None:
    named = set(re.findall(r"item\s+`([a-z_]+)`", DOC, flags=re.I))
    assert {"database", "migrations", "tables", "environment", "redis", "langfuse", "rudderstack",
            "stackstorm", "ratelimit_scripts", "outbox", "spool", "flags_phase_order"} <= named
    host = Host.from_env({"DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}, load_entrypoints=True)
    assert named <= set(host.registry.checks), named - set(host.registry.checks)
    host.engine.dispose()


def test_every_file_named_exists() -> None:
    files = set(re.findall(r"`((?:benchmarks|tests|deploy|examples)/[\w/.-]+\.(?:py|yml|yaml))`", DOC))
    files |= {word for line in LINES for word in line.split() if word.startswith(("benchmarks/", "examples/"))}
    assert files and all((ROOT / f).is_file() for f in files), [f for f in files if not (ROOT / f).is_file()]
