"""``synthhost stackstorm ...``: where the pack is, and whether it is sound."""

from __future__ import annotations

import json
from pathlib import Path

import click

from synthhost.errors import UsageError


@click.group()
def stackstorm() -> None:
    """StackStorm self-healing: the synthralos pack."""


@stackstorm.command("pack-path")
def pack_path() -> None:
    """Print the directory of the synthralos pack shipped with the plugin."""
    from synthhost_stackstorm.pack import pack_dir

    click.echo(str(pack_dir()))


@stackstorm.command("validate-pack")
@click.argument("path", required=False, type=click.Path(file_okay=False, path_type=Path))
def validate(path: Path | None) -> None:
    """Check a pack (default: the shipped one) the way st2 would; exit 1 on problems."""
    from synthhost_stackstorm.pack import pack_dir, validate_pack

    root = path or pack_dir()
    if not (root / "pack.yaml").is_file():
        raise UsageError(f"{root}: no pack.yaml (not a StackStorm pack directory)")
    problems = validate_pack(root)
    for problem in problems:
        click.echo(f"{root}: {problem}")
    if problems:
        raise SystemExit(1)
    click.echo(f"{root}: ok")


@stackstorm.command("dry-run")
@click.argument("action")
@click.option("--params", "params_json", default="{}", help="The action's parameters, as a JSON object.")
def dry_run(action: str, params_json: str) -> None:
    """Run a pack action here (python actions called, workflows interpreted) and print
    its status and result: what StackStorm would answer the host."""
    from synthhost_stackstorm.pack import PackRunner, ParameterError

    try:
        params = json.loads(params_json)
    except ValueError as exc:
        raise UsageError(f"--params: not JSON: {exc}") from None
    if not isinstance(params, dict):
        raise UsageError("--params: must be a JSON object")
    runner = PackRunner()
    ref = action if "." in action else f"{runner.pack.name}.{action}"
    if ref not in runner.pack.actions:
        raise UsageError(f"{ref}: no such action in {runner.pack.root} ({', '.join(sorted(runner.pack.actions))})")
    try:
        status, result = runner.run(ref, params)
    except ParameterError as exc:
        raise UsageError(str(exc)) from None
    click.echo(json.dumps({"status": status, "result": result}, indent=2, default=str))
    if status != "succeeded":
        raise SystemExit(1)
