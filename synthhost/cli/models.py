"""``synthhost models``: the model list, with each deployment's price and context window."""

from __future__ import annotations

import json
import os

import click

from synthhost.model_info import lookup
from synthhost.models import ModelList


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_command(as_json: bool) -> None:
    """List the deployments of the model list (SYNTHHOST_CONFIG or ./synthhost.yaml)."""
    models = ModelList.from_env(os.environ)
    rows = []
    for d in models.deployments.values():
        meta = lookup(d.price_as, d.upstream_model) if d.price_as else lookup(None, "\0unpriced")
        rows.append({**d.to_dict(), "key_set": bool(d.api_key_env and os.environ.get(d.api_key_env)),
                     **{k: v for k, v in meta.to_dict().items() if k != "provider_id"}})
    if as_json:
        click.echo(json.dumps({"source": models.source, "deployments": rows}, indent=2))
        return
    if not rows:
        click.echo("No model list (set SYNTHHOST_CONFIG or create ./synthhost.yaml); "
                   "provider/model names use the providers configured by environment.")
        return
    click.echo(f"{'deployment':<20} {'model':<28} {'provider':<10} {'aliases':<14} {'context':>9} "
               f"{'in $/Mtok':>10} {'out $/Mtok':>10}")
    for r in rows:
        ctx = f"{r['context_window']:,}" if r["context_window"] else "unknown"
        price_in = r["input_usd_per_mtok"] or "unknown"
        price_out = r["output_usd_per_mtok"] or "unknown"
        click.echo(f"{r['name']:<20} {r['model']:<28} {r['provider']:<10} {','.join(r['aliases']):<14} "
                   f"{ctx:>9} {price_in:>10} {price_out:>10}")
