"""``synthhost routing show|set|apply``: a workspace's routing configuration."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from synthhost.errors import UsageError
from synthhost_routing.catalog import GLOBAL

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost_routing.config import Routing

F = TypeVar("F", bound=Callable[..., Any])

# Keys whose value is a mapping keyed by a name that may itself contain dots (gpt-4.1).
_NAMED = ("plans", "fallbacks", "models")
# Paths (or named-map prefixes) holding lists: "a,b" on the command line is split.
_LISTS = ("region.compliance", "region.allowed", "fallback_providers", "plans.", "fallbacks.")


def _split(path: str) -> list[str]:
    from synthhost_routing.config import ModelDoc, RegionDoc

    top, sep, rest = path.partition(".")
    if not sep:
        return [top]
    if top == "region":
        if rest not in RegionDoc.model_fields:
            raise UsageError(f"{path}: unknown field (region has: {', '.join(RegionDoc.model_fields)})")
        return [top, rest]
    if top == "models":
        name, dot, field = rest.rpartition(".")
        if dot and field in ModelDoc.model_fields:
            return [top, name, field]
        return [top, rest]
    if top in _NAMED:
        return [top, rest]
    raise UsageError(f"{path}: {top!r} has no sub-keys")


def parse_value(path: str, text: str) -> Any:
    """YAML for the value (``32000``, ``true``, ``[GDPR]``, ``null``); a comma list for a
    list field (``region.compliance=GDPR,HIPAA``)."""
    import yaml

    from synthhost.limits import safe_load

    try:
        value = safe_load(text) if text.strip() else None
    except yaml.YAMLError:
        raise UsageError(f"{path}: not a valid value: {text!r}") from None
    if isinstance(value, str) and (path in _LISTS or path.startswith(tuple(p for p in _LISTS if p.endswith(".")))):
        value = [v.strip() for v in value.split(",") if v.strip()]
    return value


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    keys = _split(path)
    node = document
    for key in keys[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = node[key] = {}
        node = child
    node[keys[-1]] = value


def unset_path(document: dict[str, Any], path: str) -> None:
    keys = _split(path)
    node: Any = document
    parents: list[tuple[dict[str, Any], str]] = []
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            return
        parents.append((node, key))
        node = node[key]
    if isinstance(node, dict):
        node.pop(keys[-1], None)
    for parent, key in reversed(parents):  # drop emptied sections
        if parent[key] == {}:
            del parent[key]


def describe(cfg: Routing) -> dict[str, Any]:
    """The effective configuration, as shown by ``routing show``."""
    return {
        "source": cfg.source,
        "plan": cfg.plan,
        "allowed_models": list(cfg.allowed_order) if cfg.allowed is not None else "all",
        "on_disallowed": cfg.on_disallowed,
        "max_prompt_chars": cfg.max_chars,
        "max_prompt_tokens": cfg.max_tokens,
        "warn_ratio": cfg.warn_ratio,
        "output_reserve_tokens": cfg.output_reserve,
        "context_fit": cfg.context_fit,
        "known_models": len(cfg.models),
        "region": {
            "data_residency": cfg.residency,
            "compliance": list(cfg.compliance),
            "preferred": cfg.preferred_region,
            "default": cfg.default_region,
            "allowed": sorted(cfg.allowed_regions) if cfg.allowed_regions is not None else None,
        },
        "fallbacks": {k: list(v) for k, v in cfg.fallbacks.items()},
        "fallback_providers": list(cfg.fallback_providers),
        "reroute": cfg.reroute,
        "reroute_after": cfg.reroute_after,
        "region_failover": cfg.region_failover,
        "gateway_pin_provider": cfg.gateway_pin,
        **({"error": cfg.error} if cfg.error else {}),
    }


@contextlib.contextmanager
def routing_host() -> Iterator[Host]:
    """A migrated host from the environment with this plugin registered (its table exists
    whatever the plugin allow-list says), no background threads."""
    import synthhost_routing
    from synthhost.cli.context import cli_host

    # Entry points as a plain Host would load them (none under tests): this plugin is
    # registered explicitly, so its tables exist whatever the allow-list says.
    with cli_host(plugins=[synthhost_routing], load_entrypoints=None) as host:
        yield host


def scope_options(fn: F) -> F:
    fn = click.option("--global", "global_", is_flag=True, help="The global configuration (under every workspace's).")(
        fn
    )
    fn = click.option(
        "--workspace",
        "-w",
        default=None,
        envvar="SYNTHHOST_WORKSPACE",
        help="The workspace (default: $SYNTHHOST_WORKSPACE or 'default').",
    )(fn)
    return fn


def _scope_name(target: str) -> str:
    return "global" if target == GLOBAL else f"workspace {target}"


@click.group()
def routing() -> None:
    """Routing: prompt limits, plan tiers, context fit, regions, fallbacks, per workspace."""


@routing.command("show")
@scope_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def show_command(workspace: str | None, global_: bool, as_json: bool) -> None:
    """The stored document and the effective configuration calls are routed with."""
    import yaml

    from synthhost_routing import _target, store
    from synthhost_routing.config import effective

    target = _target(workspace, global_)
    with routing_host() as host:
        rows = store.load_all(host.engine)
    own = rows.get(target)
    base = rows.get(GLOBAL)
    if target == GLOBAL:
        cfg = effective(own.document if own else None, None)
    else:
        cfg = effective(base.document if base else None, own.document if own else None)
    if as_json:
        out = {
            "scope": "global" if target == GLOBAL else target,
            "stored": own.document if own else None,
            "version": own.version if own else None,
            "updated_at": own.updated_at.isoformat() if own else None,
            "updated_by": own.updated_by if own else None,
            "effective": describe(cfg),
        }
        click.echo(json.dumps(out, indent=2))
        return
    if own is None:
        click.echo(f"# {_scope_name(target)}: nothing stored")
    else:
        click.echo(
            f"# {_scope_name(target)}: v{own.version}, {own.updated_at.isoformat(timespec='seconds')} "
            f"by {own.updated_by or '?'}"
        )
        if own.document:
            click.echo(yaml.safe_dump(own.document, sort_keys=False, allow_unicode=True).rstrip())
    click.echo(f"# effective (defaults <- global <- workspace; from {cfg.source}):")
    click.echo(yaml.safe_dump(describe(cfg), sort_keys=False, allow_unicode=True).rstrip())


@routing.command("set")
@click.argument("assignments", nargs=-1)
@scope_options
@click.option("--unset", "unset", multiple=True, help="Remove KEY from the stored document (repeatable).")
@click.option("--actor", default=None, help="Who makes the change (default: $USER).")
def set_command(
    assignments: tuple[str, ...], workspace: str | None, global_: bool, unset: tuple[str, ...], actor: str | None
) -> None:
    """Set KEY=VALUE pairs (plan=team, region.data_residency=EU, region.compliance=GDPR,
    max_prompt_tokens=32000, fallbacks.gpt-4o=gpt-4o-mini,anthropic/claude-3-5-haiku-latest)."""
    from synthhost_routing import _target, update_config

    if not assignments and not unset:
        raise UsageError("nothing to set: give KEY=VALUE pairs or --unset KEY")
    changes: dict[str, Any] = {}
    for item in assignments:
        path, sep, text = item.partition("=")
        if not sep or not path:
            raise UsageError(f"{item!r}: expected KEY=VALUE")
        changes[path] = parse_value(path, text)
    target = _target(workspace, global_)
    with routing_host() as host:
        version = update_config(host, changes, unset=unset, workspace=workspace, global_=global_, actor=actor)
    click.echo(f"routing config of {_scope_name(target)}: v{version}")


@routing.command("apply")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@scope_options
@click.option("--actor", default=None, help="Who makes the change (default: $USER).")
def apply_command(file: Path, workspace: str | None, global_: bool, actor: str | None) -> None:
    """Replace the workspace's configuration with FILE (YAML; may name its workspace)."""
    import yaml

    from synthhost.limits import read_text_file, safe_load
    from synthhost_routing import _target, set_config

    try:
        document = safe_load(read_text_file(file, what="routing config"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise UsageError(f"{file}{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise UsageError(f"{file}: expected a mapping of routing settings")
    declared = document.get("workspace")
    if declared is not None and global_:
        raise UsageError(f"{file}: names workspace {declared!r} but --global was given")
    if declared is not None and workspace is not None and declared != workspace:
        raise UsageError(f"{file}: names workspace {declared!r} but --workspace is {workspace!r}")
    target = _target(workspace or declared, global_)
    with routing_host() as host:
        try:
            version = set_config(host, document, workspace=None if global_ else target, global_=global_, actor=actor)
        except UsageError as exc:
            raise UsageError(exc.message.replace("routing config", f"{file}: routing config", 1)) from None
    click.echo(f"routing config of {_scope_name(target)}: v{version} ({file})")
