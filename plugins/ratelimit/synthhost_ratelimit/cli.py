"""``synthhost ratelimit set|unset|list|status``."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import click

from synthhost.cli.context import cli_host
from synthhost.cli.types import WORKSPACE, scope_of
from synthhost.errors import UsageError
from synthhost_ratelimit.limits import DEFAULT_LIMITS, GLOBAL_WORKSPACE, SCOPES, Limit, ScopeCheck, scope_key

if TYPE_CHECKING:
    from synthhost_ratelimit.store import Row

_NONE_WORDS = ("none", "unlimited", "off", "-")


def _count(option: str, value: str | None) -> Any:
    """An option value: a non-negative int, or none/unlimited."""
    if value is None:
        return _UNSET
    if value.strip().lower() in _NONE_WORDS:
        return None
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"{option} {value!r}: expected a whole number or 'none'") from None
    if n < 0:
        raise UsageError(f"{option} {value!r}: must be 0 or more (or 'none' for unlimited)")
    return n


_UNSET: Any = object()


def _source(rows: tuple[Row, ...] | list[Row], workspace: str, scope: str) -> str:
    if any(r.workspace == workspace and r.scope == scope for r in rows):
        return "workspace" if workspace != GLOBAL_WORKSPACE else "global"
    if any(r.workspace == GLOBAL_WORKSPACE and r.scope == scope for r in rows):
        return "global"
    return "default" if scope in DEFAULT_LIMITS else "-"


def _limit_dict(limit: Limit) -> dict[str, Any]:
    return {"requests": limit.requests, "tokens": limit.tokens, "window_s": limit.window_s}


@click.group()
def ratelimit() -> None:
    """Rate limits per scope: workspace row → global ('*') row → built-in default."""


@ratelimit.command("set")
@click.option("--workspace", "-w", type=WORKSPACE, default=None, help="Workspace the limit applies to.")
@click.option("--global", "is_global", is_flag=True, help="Every workspace without its own row.")
@click.option("--scope", "-s", required=True, type=click.Choice(SCOPES), help="Which counter.")
@click.option("--requests", "requests", help="Calls per window (a number, or 'none').")
@click.option("--tokens", "tokens", help="Tokens per window (a number, or 'none').")
@click.option("--window", "window", type=float, help="Window length in seconds.")
def set_command(workspace: str | None, is_global: bool, scope: str, requests: str | None, tokens: str | None,
                window: float | None) -> None:
    """Set a scope's limits (--workspace W or --global); options left out keep their value."""
    workspace = scope_of(workspace, is_global) or GLOBAL_WORKSPACE
    req, tok = _count("--requests", requests), _count("--tokens", tokens)
    if window is not None and not window > 0:
        raise UsageError(f"--window {window:g}: must be more than 0 seconds")
    if req is _UNSET and tok is _UNSET and window is None:
        raise UsageError("ratelimit set: give at least one of --requests, --tokens, --window")
    kwargs: dict[str, Any] = {}
    if req is not _UNSET:
        kwargs["requests"] = req
    if tok is not _UNSET:
        kwargs["tokens"] = tok
    if window is not None:
        kwargs["window_s"] = window
    from synthhost_ratelimit.store import set_limit

    with cli_host() as host:
        row = set_limit(host.engine, workspace, scope, updated_by=os.environ.get("USER"), **kwargs)
    where = "every workspace" if workspace == GLOBAL_WORKSPACE else f"workspace {workspace}"
    click.echo(f"{scope} limit for {where}: {row.limit.describe()}")


@ratelimit.command("unset")
@click.option("--workspace", "-w", type=WORKSPACE, default=None)
@click.option("--global", "is_global", is_flag=True, help="The global row.")
@click.option("--scope", "-s", required=True, type=click.Choice(SCOPES))
def unset_command(workspace: str | None, is_global: bool, scope: str) -> None:
    """Remove a row, so the next level (global, then default) applies."""
    workspace = scope_of(workspace, is_global) or GLOBAL_WORKSPACE
    from synthhost_ratelimit.store import unset_limit

    with cli_host() as host:
        removed = unset_limit(host.engine, workspace, scope)
    click.echo(f"{scope} ({workspace}): {'removed' if removed else 'was not set'}")


@ratelimit.command("list")
@click.option("--workspace", "-w", type=WORKSPACE, help="Show the limits in force for this workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_command(workspace: str | None, as_json: bool) -> None:
    """List configured rows, or the effective limits of one workspace."""
    from synthhost_ratelimit.store import load_rows, resolve

    with cli_host() as host:
        rows = load_rows(host.engine)
    if workspace is None:
        data = [{"workspace": r.workspace, "scope": r.scope, **_limit_dict(r.limit),
                 "updated_by": r.updated_by,
                 "updated_at": r.updated_at.isoformat() if r.updated_at else None}
                for r in sorted(rows, key=lambda r: (r.workspace, SCOPES.index(r.scope)))]
        if as_json:
            click.echo(json.dumps(data, indent=2))
            return
        if not data:
            click.echo("no limits configured: built-in defaults apply "
                       + ", ".join(f"{s} {lim.describe()}" for s, lim in DEFAULT_LIMITS.items()))
            return
        for r in sorted(rows, key=lambda r: (r.workspace, SCOPES.index(r.scope))):
            click.echo(f"{r.workspace:<20} {r.scope:<10} {r.limit.describe()}")
        return
    effective = resolve(rows, workspace)
    out = []
    for scope in SCOPES:
        limit = effective.get(scope, Limit())
        out.append({"scope": scope, **_limit_dict(limit), "source": _source(rows, workspace, scope),
                    "unlimited": limit.unlimited})
    if as_json:
        click.echo(json.dumps({"workspace": workspace, "limits": out}, indent=2))
        return
    for item in out:
        limit = effective.get(item["scope"], Limit())
        text = "unlimited" if limit.unlimited else limit.describe()
        click.echo(f"{item['scope']:<10} {text:<40} ({item['source']})")


@ratelimit.command("status")
@click.option("--workspace", "-w", type=WORKSPACE, required=True, help="Workspace to show.")
@click.option("--org", help="Also show this organisation's counter.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status_command(workspace: str, org: str | None, as_json: bool) -> None:
    """Requests and tokens in use now (the buckets' fill, rounded up), read from Redis."""
    import anyio

    from synthhost_ratelimit.store import load_rows, resolve

    with cli_host() as host:
        rows = load_rows(host.engine)
        url = host.settings.redis_url
        env = host.settings.env
    if not url:
        raise UsageError("ratelimit status: no REDIS_URL; without Redis every process counts "
                         "on its own and there is no shared usage to show")
    prefix = env.get("SYNTHHOST_RATELIMIT_PREFIX") or "synthhost:rl"
    limits = resolve(rows, workspace)
    report = anyio.run(_status, url, prefix, workspace, org, limits)
    if as_json:
        click.echo(json.dumps({"workspace": workspace, "prefix": prefix, "counters": report}, indent=2))
        return
    click.echo(f"workspace {workspace} (Redis, prefix {prefix})")
    if not report:
        click.echo("no counters in the window")
    for item in report:
        req = f"{item['requests']}/{'∞' if item['max_requests'] is None else item['max_requests']}"
        tok = f"{item['tokens']}/{'∞' if item['max_tokens'] is None else item['max_tokens']}"
        click.echo(f"{item['scope']:<10} {item['id']:<30} requests {req:<12} tokens {tok:<16} "
                   f"window {item['window_s']:g}s")


async def _status(url: str, prefix: str, workspace: str, org: str | None,
                  limits: dict[str, Limit]) -> list[dict[str, Any]]:
    from synthhost_ratelimit.redis_backend import connect

    limiter = connect(url, timeout_s=2.0, prefix=prefix)
    try:
        found: list[tuple[str, str, str]] = []  # scope, id, key
        for scope in ("workspace", "global"):
            found.append((scope, workspace if scope == "workspace" else "*", scope_key(scope, workspace)))
        if org:
            found.append(("org", org, scope_key("org", workspace, org)))
        base = scope_key("workspace", workspace)
        for key in await limiter.scan_keys(f"{_glob_escape(base)}:*"):
            rest = key[len(base) + 1:]
            scope, _, ident = rest.partition(":")
            if scope in SCOPES:
                found.append((scope, unquote(ident), key))
        checks = []
        for scope, _, key in found:
            limit = limits.get(scope) or Limit()
            checks.append(ScopeCheck.of(scope, key, limit))
        usage = await limiter.usage(checks)
        out = []
        for (scope, ident, _), check, (count, tokens) in zip(found, checks, usage, strict=True):
            if count == 0 and scope not in ("workspace", "global", "org"):
                continue
            limit = limits.get(scope) or Limit()
            out.append({"scope": scope, "id": ident, "requests": count, "tokens": tokens,
                        "max_requests": limit.requests, "max_tokens": limit.tokens,
                        "window_s": check.window_us / 1_000_000})
        return out
    finally:
        await limiter.aclose()


def _glob_escape(text: str) -> str:
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)
