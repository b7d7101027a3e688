"""``synthhost guardrails apply|show|rm|test``."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from synthhost.errors import UsageError
from synthhost_guardrails.engine import Outcome, check_input, check_output

if TYPE_CHECKING:
    from synthhost.host import Host

F = TypeVar("F", bound=Callable[..., Any])


def scope_options(fn: F) -> F:
    fn = click.option("--global", "global_", is_flag=True, help="Act on the global set (workspace '*').")(fn)
    fn = click.option(
        "--workspace",
        "-w",
        default=None,
        envvar="SYNTHHOST_WORKSPACE",
        help="The workspace to act on (default: $SYNTHHOST_WORKSPACE or 'default').",
    )(fn)
    return fn


@contextlib.contextmanager
def guardrails_host() -> Iterator[Host]:
    """A host with this plugin registered, so its table exists whatever the plugin
    allow-list says (and under tests)."""
    import synthhost_guardrails
    from synthhost.cli.context import cli_host

    # Entry points as a plain Host would load them (none under tests): this plugin is
    # registered explicitly, so its tables exist whatever the allow-list says.
    with cli_host(plugins=[synthhost_guardrails], load_entrypoints=None) as host:
        yield host


def _load(file: Path) -> Any:
    from synthhost_guardrails.guardset import GuardSetError, compile_spec, load_file

    try:
        spec = load_file(file)
        compile_spec(spec, "check")
    except GuardSetError as exc:
        message = str(exc)
        raise UsageError(message if message.startswith(str(file)) else f"{file}: {message}") from None
    return spec


@click.group()
def guardrails() -> None:
    """Guard sets: validators run on prompts and answers, per workspace."""


@guardrails.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@scope_options
@click.option("--actor", default=None, help="Who makes the change (default: $USER).")
def apply_command(file: Path, workspace: str | None, global_: bool, actor: str | None) -> None:
    """Validate FILE and store it as the workspace's guard set (a new version)."""
    from synthhost_guardrails import apply_guards
    from synthhost_guardrails.store import scope_name, target_workspace

    spec = _load(file)
    target_workspace(workspace, global_)  # refuse before touching the database
    with guardrails_host() as host:
        result = apply_guards(host, spec, workspace=workspace, global_=global_, actor=actor)
    where = scope_name(result.workspace).replace("the global scope", "global")
    if result.changed:
        click.echo(f"guard set v{result.version} applied ({where}): {result.summary}")
    else:
        click.echo(f"guard set v{result.version} unchanged ({where})")


@guardrails.command("rm")
@scope_options
@click.option("--actor", default=None, help="Who makes the change (default: $USER).")
def rm_command(workspace: str | None, global_: bool, actor: str | None) -> None:
    """Remove the guard set (a new, empty version): the scope falls back to the global
    set, then to the built-in default."""
    from synthhost_guardrails import remove_guards
    from synthhost_guardrails.store import scope_name

    with guardrails_host() as host:
        result = remove_guards(host, workspace=workspace, global_=global_, actor=actor)
    click.echo(f"guard set removed (v{result.version}); {scope_name(result.workspace)} now uses the fallback")


@guardrails.command("show")
@scope_options
@click.option("--version", "version", type=int, default=None, help="A past version.")
@click.option("--history", "show_history", is_flag=True, help="List every version instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(workspace: str | None, global_: bool, version: int | None, show_history: bool, as_json: bool) -> None:
    """Print the guard set a workspace runs: its own, else the global one, else the
    built-in default."""
    import yaml

    from synthhost_guardrails.guardset import DEFAULT_DOCUMENT
    from synthhost_guardrails.store import GLOBAL, get_version, history, scope_name, target_workspace

    target = target_workspace(workspace, global_)
    with guardrails_host() as host:
        if show_history:
            rows = history(host.engine, target)
            if as_json:
                click.echo(json.dumps([_header(r) for r in rows], indent=2))
            for r in [] if as_json else rows:
                at = r.created_at.isoformat(timespec="seconds")
                click.echo(f"v{r.version:<3} {at}  {r.created_by or '?':<12} {r.summary}")
            if not rows and not as_json:
                click.echo(f"no guard set versions in {scope_name(target)}")
            return
        if version is not None:
            row, source = get_version(host.engine, target, version), "own"
            if row is None:
                raise UsageError(f"no guard set version {version} in {scope_name(target)}")
        else:
            row, source = get_version(host.engine, target), "own"
            if (row is None or row.removed) and target != GLOBAL:
                row, source = get_version(host.engine, GLOBAL), "global"
            if row is not None and row.removed:
                row = None
    header: dict[str, Any] = {"source": "default"} if row is None else {**_header(row), "source": source}
    doc = DEFAULT_DOCUMENT if row is None else row.document
    if as_json:
        click.echo(json.dumps({**header, "document": doc}, indent=2))
        return
    if row is None:
        click.echo(f"# {scope_name(target)}: no guard set stored, the built-in default applies")
    else:
        label = "global" if row.workspace == GLOBAL else f"workspace {row.workspace}"
        note = " (inherited)" if source == "global" and target != GLOBAL else ""
        click.echo(f"# {label} v{row.version}{note}, {header['created_at']} by {row.created_by or '?'}")
        if doc is None:
            click.echo("# removed")
            return
    click.echo(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip())


def _header(row: Any) -> dict[str, Any]:
    return {
        "workspace": row.workspace,
        "version": row.version,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "removed": row.removed,
        "summary": row.summary,
    }


@guardrails.command("test")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--text", "text", required=True, help="The text to check ('-' reads standard input).")
@click.option(
    "--on",
    "side",
    type=click.Choice(["input", "output", "both"]),
    default="both",
    show_default=True,
    help="Check the text as a prompt (one user message), as an answer, or both.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def test_command(file: Path, text: str, side: str, as_json: bool) -> None:
    """Show what FILE's guard set would do with a text, without a call or a database.
    Prints each violation (validator, action, kinds found), the fixed text, and the
    decision: allow, or deny."""
    from synthhost_guardrails.guardset import compile_spec

    spec = _load(file)
    if text == "-":
        text = sys.stdin.read()
    pipeline = compile_spec(spec, str(file))
    results: dict[str, dict[str, Any]] = {}
    if side in ("input", "both"):
        outcome = check_input(pipeline, [{"role": "user", "content": text}])
        fixed = outcome.messages[0]["content"] if outcome.messages else text
        results["input"] = _report(outcome, fixed)
    if side in ("output", "both"):
        outcome = check_output(pipeline, text)
        results["output"] = _report(outcome, outcome.text if outcome.text is not None else text)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for where, r in results.items():
        click.echo(f"{where}: {r['decision']}" + (f" ({r['message']})" if r["message"] else ""))
        for v in r["violations"]:
            kinds = ", ".join(v["kinds"])
            click.echo(f"  {v['validator']} -> {v['on_fail']}: {v['count']} found" + (f" ({kinds})" if kinds else ""))
        if r["changed"]:
            click.echo(f"  text: {r['text']}")


def _report(outcome: Outcome, text: str) -> dict[str, Any]:
    return {
        "decision": "deny" if outcome.denied else "allow",
        "message": outcome.denied.describe() if outcome.denied else None,
        "violations": [v.to_dict() for v in outcome.violations],
        "changed": bool(outcome.messages or outcome.text is not None),
        "text": text,
    }
