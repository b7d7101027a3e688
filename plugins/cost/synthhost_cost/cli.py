"""``synthhost costs``: the spend report and price overrides.

A price set here is saved at once; a running host applies it within
``SYNTHHOST_COST_PRICE_REFRESH_S`` seconds (default 5).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import click

from synthhost.cli.types import WORKSPACE, scope_of
from synthhost.errors import UsageError

if TYPE_CHECKING:
    from synthhost.host import Host
    from synthhost_cost.pricing import Override


@contextlib.contextmanager
def _host() -> Iterator[Host]:
    """A host from the environment with this plugin registered (so its migrations run
    even when entry points are not scanned), migrated, no background threads."""
    import synthhost_cost
    from synthhost.cli.context import cli_host

    # Entry points as a plain Host would load them (none under tests): this plugin is
    # registered explicitly, so its tables exist whatever the allow-list says.
    with cli_host(plugins=[synthhost_cost], load_entrypoints=None) as host:
        yield host


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


@click.group("costs")
def costs() -> None:
    """Model call costs: spend report and price overrides."""


@costs.command("report")
@click.option("--workspace", "-w", type=WORKSPACE, default=None, help="Only this workspace (default: all).")
@click.option("--since", default=None, help="7d, 24h, 30m, or an ISO date/time (UTC).")
@click.option("--by", "by", type=click.Choice(["model", "agent", "day"]), default="model", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def report_command(workspace: str | None, since: str | None, by: str, as_json: bool) -> None:
    """Calls, tokens and cost per model, agent or day. Unpriced attempts are counted
    apart; their cost is unknown, not zero."""
    from synthhost_cost.report import cost_report, parse_since, render_table

    since_at = parse_since(since)
    with _host() as host:
        report = cost_report(host.engine, workspace=workspace, since=since_at, by=by)
    if as_json:
        _echo_json(report.to_dict())
    else:
        click.echo(render_table(report))


@costs.group("price")
def price() -> None:
    """Per-workspace (or global, '*') price overrides, per million tokens."""


def _plain(amount: Decimal) -> str:
    """``2.5000000000`` → ``2.5`` (never exponent notation)."""
    return f"{amount.normalize():f}"


def _override_dict(o: Override) -> dict[str, Any]:
    return {
        "id": o.id,
        "workspace": o.workspace,
        "provider": o.provider,
        "model": o.model,
        "input_mtok": _plain(o.input_mtok),
        "output_mtok": _plain(o.output_mtok),
        "cache_read_mtok": None if o.cache_read_mtok is None else _plain(o.cache_read_mtok),
        "cache_write_mtok": None if o.cache_write_mtok is None else _plain(o.cache_write_mtok),
        "currency": o.currency,
        "valid_from": o.valid_from.isoformat() if o.valid_from else None,
        "note": o.note,
    }


@price.command("set")
@click.option("--workspace", "-w", type=WORKSPACE, default=None, help="The workspace the price is for.")
@click.option("--global", "is_global", is_flag=True, help="The price for every workspace without its own.")
@click.option("--provider", required=True, help="Provider name as calls use it (openai).")
@click.option("--model", required=True, help="Model name (exact; a dated name is its own model).")
@click.option("--input", "input_", required=True, help="Input price per million tokens.")
@click.option("--output", "output", required=True, help="Output price per million tokens.")
@click.option("--cache-read", default=None, help="Cached-input read price (default: the input price).")
@click.option("--cache-write", default=None, help="Cache write price (default: the input price).")
@click.option("--currency", default="USD", show_default=True)
@click.option("--valid-from", default=None, help="ISO date/time (UTC) the price starts (default: always).")
@click.option("--note", default=None, help="Why (contract, fine-tune...).")
def price_set(
    workspace: str | None,
    is_global: bool,
    provider: str,
    model: str,
    input_: str,
    output: str,
    cache_read: str | None,
    cache_write: str | None,
    currency: str,
    valid_from: str | None,
    note: str | None,
) -> None:
    """Add or replace a price override (same workspace, provider, model and start)."""
    from synthhost_cost.store import make_override, save_override

    override = make_override(
        workspace=scope_of(workspace, is_global) or "*",
        provider=provider,
        model=model,
        input_mtok=input_,
        output_mtok=output,
        cache_read_mtok=cache_read,
        cache_write_mtok=cache_write,
        currency=currency,
        valid_from=valid_from,
        note=note,
    )
    with _host() as host:
        row_id = save_override(host.engine, override)
    click.echo(
        f"price override {row_id} saved: {override.workspace} {override.provider}/{override.model} "
        f"in {_plain(override.input_mtok)} out {_plain(override.output_mtok)} {override.currency}/MTok"
    )


@price.command("list")
@click.option("--workspace", "-w", type=WORKSPACE, default=None, help="This workspace's and the global overrides.")
@click.option("--json", "as_json", is_flag=True)
def price_list(workspace: str | None, as_json: bool) -> None:
    """List price overrides."""
    from synthhost_cost.store import load_overrides

    with _host() as host:
        overrides = load_overrides(host.engine, workspace)
    if as_json:
        _echo_json([_override_dict(o) for o in overrides])
        return
    if not overrides:
        click.echo("no price overrides")
        return
    for o in overrides:
        d = _override_dict(o)
        extra = "".join(
            f" {k.removesuffix('_mtok').replace('_', '-')} {d[k]}"
            for k in ("cache_read_mtok", "cache_write_mtok")
            if d[k] is not None
        )
        start = f" from {d['valid_from']}" if d["valid_from"] else ""
        note = f"  # {o.note}" if o.note else ""
        click.echo(
            f"{o.id:>4}  {o.workspace}  {o.provider}/{o.model}  in {d['input_mtok']} "
            f"out {d['output_mtok']}{extra} {o.currency}/MTok{start}{note}"
        )


@price.command("rm")
@click.argument("override_id", required=False, type=int)
@click.option("--workspace", "-w", type=WORKSPACE, default=None)
@click.option("--global", "is_global", is_flag=True, help="The global overrides.")
@click.option("--provider", default=None)
@click.option("--model", default=None)
@click.option("--valid-from", default=None, help="Only the override starting then.")
def price_rm(
    override_id: int | None,
    workspace: str | None,
    is_global: bool,
    provider: str | None,
    model: str | None,
    valid_from: str | None,
) -> None:
    """Remove an override by id, or a workspace's overrides of one model."""
    from synthhost_cost.store import delete_overrides, parse_when

    if override_id is None and not (provider and model):
        raise UsageError("price rm: give an override id, or --provider and --model")
    if override_id is not None and not 1 <= override_id < 2**63:
        raise UsageError(f"price rm: no override has id {override_id}")
    if override_id is None:
        workspace = scope_of(workspace, is_global) or "*"
    elif workspace is None:
        workspace = "*"
    with _host() as host:
        removed = delete_overrides(
            host.engine,
            id=override_id,
            workspace=workspace,
            provider=provider,
            model=model,
            valid_from=parse_when(valid_from),
        )
    if not removed:
        raise UsageError("price rm: no matching price override")
    click.echo(f"removed {removed} price override{'s' if removed != 1 else ''}")


@price.command("show")
@click.argument("model_ref")
@click.option("--workspace", "-w", type=WORKSPACE, default="default", show_default=True)
def price_show(model_ref: str, workspace: str) -> None:
    """Which price a call to PROVIDER/MODEL gets now (override or genai-prices)."""
    from synthhost_cost.pricing import PriceBook
    from synthhost_cost.store import load_overrides

    provider, sep, model = model_ref.partition("/")
    if not sep or not provider or not model:
        raise UsageError(f"price show: {model_ref!r} is not PROVIDER/MODEL (openai/gpt-4o-mini)")
    with _host() as host:
        book = PriceBook(load_overrides(host.engine, workspace))
    quote = book.quote(workspace, provider, model, time.time())
    if not quote.priced:
        click.echo(f"{provider}/{model}: no known price ({quote.reason})")
        return
    now = time.time()  # price 1k tokens (below any long-context tier), scaled to a million
    one = quote.cost((1_000, 0, 0, 0, 0), now).total * 1000
    out = quote.cost((0, 0, 0, 1_000, 0), now).total * 1000
    click.echo(
        f"{provider}/{model}: priced as {quote.provider_id}/{quote.model_id} from {quote.source} "
        f"({quote.version}): input {_plain(one)}, output {_plain(out)} {quote.currency} per million tokens"
    )
