"""``synthhost policy apply|list|show|rm|history|test``."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from synthhost.call import Request
from synthhost.errors import UsageError
from synthhost_policy.document import GLOBAL, PolicyFileError, load_policy_file
from synthhost_policy.engine import Decision, Plan, compile_set, evaluate

if TYPE_CHECKING:
    from synthhost.host import Host

F = TypeVar("F", bound=Callable[..., Any])


def scope_options(fn: F) -> F:
    fn = click.option("--global", "global_", is_flag=True, help="Act on the global sets (workspace '*').")(fn)
    fn = click.option(
        "--workspace",
        "-w",
        default=None,
        envvar="SYNTHHOST_WORKSPACE",
        help="The workspace to act on (default: $SYNTHHOST_WORKSPACE or 'default').",
    )(fn)
    return fn


@contextlib.contextmanager
def policy_host() -> Iterator[Host]:
    """Like ``synthhost.cli.context.cli_host`` but with this plugin registered, so its
    tables exist whatever the plugin allow-list says (and under tests)."""
    import synthhost_policy
    from synthhost.cli.context import cli_host

    # Entry points as a plain Host would load them (none under tests): this plugin is
    # registered explicitly, so its tables exist whatever the allow-list says.
    with cli_host(plugins=[synthhost_policy], load_entrypoints=None) as host:
        yield host


def _scope(workspace: str | None, global_: bool) -> str:
    from synthhost_policy.store import target_workspace

    return target_workspace(None, workspace, global_)


def _file_error(exc: PolicyFileError) -> UsageError:
    return UsageError("\n".join(exc.lines))


@click.group()
def policy() -> None:
    """Policy sets: CEL rules that block, route, modify, warn or log, per workspace."""


@policy.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@scope_options
@click.option("--actor", default=None, help="Who makes the change (default: $USER).")
def apply_command(file: Path, workspace: str | None, global_: bool, actor: str | None) -> None:
    """Validate FILE and store it as the next version of its set."""
    from synthhost_policy import apply_policy
    from synthhost_policy.store import target_workspace

    try:
        parsed, _ = load_policy_file(file)
    except PolicyFileError as exc:
        raise _file_error(exc) from None
    target_workspace(parsed.workspace, workspace, global_)  # refuse before touching the DB
    with policy_host() as host:
        result = apply_policy(host, parsed, workspace=workspace, global_=global_, actor=actor)
    where = "global" if result.workspace == GLOBAL else f"workspace {result.workspace}"
    if result.changed:
        click.echo(f"{result.name} v{result.version} applied ({where}): {result.summary}")
    else:
        click.echo(f"{result.name} v{result.version} unchanged ({where})")


@policy.command("rm")
@click.argument("name")
@scope_options
@click.option("--actor", default=None, help="Who makes the change (default: $USER).")
def rm_command(name: str, workspace: str | None, global_: bool, actor: str | None) -> None:
    """Remove set NAME (recorded as a new, empty version)."""
    from synthhost_policy import remove_policy

    with policy_host() as host:
        result = remove_policy(host, name, workspace=workspace, global_=global_, actor=actor)
    click.echo(f"{result.name} removed (v{result.version})")


@policy.command("list")
@scope_options
@click.option("--all", "show_removed", is_flag=True, help="Include removed sets.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(workspace: str | None, global_: bool, show_removed: bool, as_json: bool) -> None:
    """Sets in scope: the workspace's own and the global ones (only global with --global)."""
    from synthhost_policy.store import current_sets

    target = _scope(workspace, global_)
    scopes = [GLOBAL] if target == GLOBAL else [target, GLOBAL]
    with policy_host() as host:
        rows = [r for r in current_sets(host.engine, scopes) if show_removed or not r.removed]
    rows.sort(key=lambda r: (-r.priority, r.workspace == GLOBAL, r.name))
    items = [
        {
            "name": r.name,
            "scope": r.scope,
            "version": r.version,
            "priority": r.priority,
            "enabled": r.enabled,
            "removed": r.removed,
            "rules": len((r.document or {}).get("rules", [])),
            "updated_at": r.created_at.isoformat(),
            "updated_by": r.created_by,
        }
        for r in rows
    ]
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    if not items:
        click.echo("no policy sets")
        return
    width = max(len(str(i["name"])) for i in items)
    for i in items:
        state = "removed" if i["removed"] else ("on" if i["enabled"] else "disabled")
        click.echo(
            f"{i['name']:<{width}}  v{i['version']:<3} prio {i['priority']:<4} "
            f"{i['rules']:>2} rules  {state:<8} {i['scope']}"
        )


def _pick(host: Any, name: str, workspace: str | None, global_: bool, version: int | None) -> Any:
    from synthhost_policy.store import get_version

    target = _scope(workspace, global_)
    row = get_version(host.engine, target, name, version)
    if row is None:
        which = f" version {version}" if version is not None else ""
        where = "the global scope" if target == GLOBAL else f"workspace {target!r}"
        hint = ""
        if target != GLOBAL and get_version(host.engine, GLOBAL, name) is not None:
            hint = " (a global set has that name: use --global)"
        raise UsageError(f"no policy set {name!r}{which} in {where}{hint}")
    return row


@policy.command("show")
@click.argument("name")
@scope_options
@click.option("--version", "version", type=int, default=None, help="A past version.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(name: str, workspace: str | None, global_: bool, version: int | None, as_json: bool) -> None:
    """Print a set's document (latest version unless --version)."""

    with policy_host() as host:
        row = _pick(host, name, workspace, global_, version)
    header = {
        "name": row.name,
        "scope": row.scope,
        "version": row.version,
        "created_at": row.created_at.isoformat(),
        "created_by": row.created_by,
        "removed": row.removed,
    }
    if as_json:
        click.echo(json.dumps({**header, "document": row.document}, indent=2))
        return
    click.echo(f"# {row.name} v{row.version} ({row.scope}), {header['created_at']} by {row.created_by or '?'}")
    if row.removed:
        click.echo("# removed")
        return
    doc = dict(row.document)
    if row.workspace != GLOBAL:
        doc = {"name": doc.pop("name"), "workspace": row.workspace, **doc}
    click.echo(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True).rstrip())


@policy.command("history")
@click.argument("name")
@scope_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def history_command(name: str, workspace: str | None, global_: bool, as_json: bool) -> None:
    """Every version of a set: who, when, what changed."""
    from synthhost_policy.store import history

    target = _scope(workspace, global_)
    with policy_host() as host:
        entries = history(host.engine, target, name)
    if not entries:
        where = "the global scope" if target == GLOBAL else f"workspace {target!r}"
        raise UsageError(f"no policy set {name!r} in {where}")
    if as_json:
        click.echo(
            json.dumps(
                [
                    {
                        "version": e.version,
                        "action": e.action,
                        "actor": e.actor,
                        "at": e.at.isoformat(),
                        "summary": e.summary,
                    }
                    for e in entries
                ],
                indent=2,
            )
        )
        return
    for e in entries:
        at = e.at.isoformat(timespec="seconds")
        click.echo(f"v{e.version:<3} {e.action:<5} {at}  {e.actor or '?':<12} {e.summary}")


# -- test: what would a set decide? ---------------------------------------------------------------


class _RequestContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = "echo-1"
    provider: str = "echo"
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    region: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    prompt_tokens: int | None = None
    estimated_cost: float | None = None
    cost_known: bool | None = None


class _Id(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None


class _Agent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = None


class _ToolContext(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    source: str = "plugin"
    args: dict[str, Any] = Field(default_factory=dict)


class ContextInput(BaseModel):
    """What ``--context`` may hold (every part optional)."""

    model_config = ConfigDict(extra="forbid")

    request: _RequestContext = Field(default_factory=_RequestContext)
    tool: _ToolContext | None = None  # a tool call: the set's tool rules decide
    workspace: _Id = Field(default_factory=lambda: _Id(id="default"))
    agent: _Agent = Field(default_factory=_Agent)
    user: _Id = Field(default_factory=_Id)
    org: _Id = Field(default_factory=_Id)
    metadata: dict[str, Any] = Field(default_factory=dict)


class ContextSubject:
    def __init__(self, ctx: ContextInput) -> None:
        r = ctx.request
        messages = (
            r.messages
            if r.messages is not None
            else ([{"role": "user", "content": r.prompt}] if r.prompt is not None else [])
        )
        self.request = Request(r.model, r.provider, messages, dict(r.params), r.region, dict(r.metadata))
        self.workspace = ctx.workspace.id or "default"
        self.user = ctx.user.id
        self.org = ctx.org.id
        self.agent = ctx.agent.name
        self.metadata = dict(ctx.metadata)
        # A tool call's fields (tool rules read them; modify writes args).
        self.name = ctx.tool.name if ctx.tool else None
        self.source = ctx.tool.source if ctx.tool else None
        self.args = dict(ctx.tool.args) if ctx.tool else {}


def _load_context(value: str) -> ContextInput:
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value[1:] if value.startswith("@") else value)
        from synthhost.limits import read_text_file

        try:
            text = read_text_file(path, what="context file")
        except UsageError as exc:
            raise UsageError(f"--context: not JSON and not a readable file: {exc.message}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--context: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    try:
        return ContextInput.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        message = "unknown field" if err["type"] == "extra_forbidden" else err["msg"]
        raise UsageError(f"--context: {field}: {message}") from None


def _describe(d: Decision) -> str:
    if d.action in ("route", "modify") and d.changes:
        changes = ", ".join(f"{k}={json.dumps(v)}" for k, v in d.changes.items() if not k.startswith("from_"))
        return f"{d.action} {changes}"
    if d.action == "error":
        return f"error: {d.error}"
    return f"{d.action}" + (f": {d.message}" if d.message else "")


@policy.command("test")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--context",
    "context",
    required=True,
    help="The call context as JSON, or a path to a JSON file (@file also works).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def test_command(file: Path, context: str, as_json: bool) -> None:
    """Show what FILE's set would decide for a call, without a call or a database.

    The context mirrors the CEL variables: {"request": {"model", "provider", "prompt" or
    "messages", "params", "region", "metadata", "prompt_tokens"?, "estimated_cost"?},
    "workspace": {"id"}, "agent": {"name"}, "user": {"id"}, "org": {"id"}, "metadata"}.
    prompt_tokens and estimated_cost, when given, replace the estimates. With
    "tool": {"name", "source", "args"} the context is a tool call: the tool rules decide.
    """
    try:
        parsed, _ = load_policy_file(file)
    except PolicyFileError as exc:
        raise _file_error(exc) from None
    ctx = _load_context(context)
    subject = ContextSubject(ctx)
    before = subject.request.to_dict()
    compiled = compile_set(parsed, parsed.workspace or subject.workspace, 0)
    overrides = {
        k: v
        for k, v in (
            ("request.prompt_tokens", ctx.request.prompt_tokens),
            ("request.estimated_cost", ctx.request.estimated_cost),
            ("request.cost_known", ctx.request.cost_known),
        )
        if v is not None
    }
    plan = Plan.build(compiled.workspace, [compiled], overrides=overrides)
    args_before = dict(subject.args)
    if ctx.tool is not None:  # a tool call: only the tool rules apply
        assert plan.tools is not None
        plan = plan.tools
    outcome = evaluate(plan, subject)
    after = subject.request.to_dict()
    changed = {k: {"from": before[k], "to": after[k]} for k in after if before[k] != after[k]}
    if subject.args != args_before:
        changed["args"] = {"from": args_before, "to": subject.args}
    if as_json:
        click.echo(
            json.dumps(
                {
                    "set": parsed.name,
                    "decision": "block" if outcome.blocked else "allow",
                    "message": outcome.blocked.message if outcome.blocked else None,
                    "decisions": [d.to_dict() for d in outcome.decisions],
                    "warnings": outcome.warnings,
                    "request_changes": changed,
                },
                indent=2,
                default=str,
            )
        )
        return
    click.echo(f"policy set {parsed.name}: {sum(len(c.rules) for c in plan.sets)} active rules"
               + (f" for tool {ctx.tool.name!r}" if ctx.tool else ""))
    for d in outcome.decisions:
        click.echo(f"  {d.rule}: {_describe(d)}")
    if outcome.blocked:
        click.echo(f"decision: block ({outcome.blocked.rule}): {outcome.blocked.message}")
        return
    click.echo("decision: allow" + ("" if outcome.decisions else " (no rule matched)"))
    for key, change in changed.items():
        where = "tool" if key == "args" else "request"
        click.echo(f"  {where}.{key}: {json.dumps(change['from'])} -> {json.dumps(change['to'])}")
