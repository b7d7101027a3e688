"""``synthhost costs report`` and ``synthhost costs price``: the report's groups add up
to its totals and to the rows; the price commands validate input and round-trip."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from click.testing import CliRunner

from synthhost import ProviderError, Recovery, hookimpl
from synthhost_cost import register_commands
from synthhost_cost.report import TOKEN_FIELDS, GroupBy, Totals, cost_report

pytestmark = pytest.mark.anyio


class FastRetry:
    __name__ = "fastretry"

    @hookimpl
    def register_gate(self, register: Any) -> None:
        register(None, order={"on_failure": 500})

    @hookimpl
    def on_failure(self, call: Any, error: BaseException, attempt: int) -> Recovery | None:
        if isinstance(error, ProviderError) and error.retryable and attempt < call.max_attempts:
            return Recovery("retry", reason="test")
        return None


async def _spend(kit: Any, host: Any) -> None:
    """A mixed day: models of three providers, two agents, two workspaces, a retried
    call, a call that failed for good, and an unpriced model."""
    kit.enable(host)
    cached = {"input_tokens": 11_000, "cache_read_tokens": 8000, "cache_write_tokens": 2000, "output_tokens": 500}
    calls: list[tuple[str, str, dict[str, int], str, str | None, dict[str, Any]]] = [
        ("openai", "gpt-4o", {"input_tokens": 1000, "output_tokens": 500}, "a", "writer", {}),
        ("openai", "gpt-4o", {"input_tokens": 3000, "output_tokens": 10}, "a", "reviewer", {}),
        ("openai", "o3", {"input_tokens": 2000, "output_tokens": 3000, "reasoning_tokens": 2500}, "a", None, {}),
        ("anthropic", "claude-sonnet-4-5", cached, "a", "writer", {}),
        ("google", "gemini-2.5-pro", {"input_tokens": 250_000, "output_tokens": 1000}, "b", "writer", {}),
        ("openai", "acme-private-7b", {"input_tokens": 1000, "output_tokens": 500}, "a", "writer", {}),
        (
            "openai",
            "gpt-4o-mini",
            {"input_tokens": 7, "output_tokens": 3},
            "a",
            "writer",
            {"echo_fail": ["rate_limit"]},
        ),
        ("openai", "gpt-4o-mini", {"input_tokens": 7, "output_tokens": 3}, "b", None, {"echo_fail": ["auth"]}),
    ]
    for provider, model, usage, ws, agent, extra in calls:
        with contextlib.suppress(ProviderError):
            await kit.call(host, provider, model, usage, workspace=ws, agent=agent, **extra)


def _check_adds_up(groups: list[Totals], totals: list[Totals], rows: list[dict[str, Any]]) -> None:
    [total] = totals  # one currency
    assert total.attempts == len(rows) == sum(g.attempts for g in groups)
    assert total.ok == sum(r["status"] == "ok" for r in rows) == sum(g.ok for g in groups)
    assert total.failed == sum(r["status"] == "failed" for r in rows) == sum(g.failed for g in groups)
    assert total.unpriced == sum(not r["priced"] for r in rows) == sum(g.unpriced for g in groups)
    for f in TOKEN_FIELDS:
        assert total.tokens[f] == sum(r[f] for r in rows) == sum(g.tokens[f] for g in groups), f
    row_cost = sum((r["total_cost"] for r in rows if r["total_cost"] is not None), Decimal(0))
    assert total.cost == row_cost == sum((g.cost for g in groups), Decimal(0))


@pytest.mark.parametrize("by", ["model", "agent", "day"])
async def test_report_groups_add_up_to_the_totals_and_the_rows(kit: Any, by: GroupBy) -> None:
    async with kit.host(FastRetry()) as host:
        await _spend(kit, host)
        rows = await kit.rows(host)
        report = cost_report(host.engine, by=by)
        only_b = cost_report(host.engine, workspace="b", by=by)
        future = cost_report(host.engine, since=datetime.now(UTC) + timedelta(hours=1), by=by)
        past = cost_report(host.engine, since=datetime.now(UTC) - timedelta(hours=1), by=by)
    assert len(rows) == 9  # 8 calls: one retried once (2 rows), one failed for good (1 row)
    _check_adds_up(report.groups, report.totals, rows)
    _check_adds_up(only_b.groups, only_b.totals, [r for r in rows if r["workspace_id"] == "b"])
    _check_adds_up(past.groups, past.totals, rows)
    assert future.groups == [] and future.totals == []
    if by == "model":
        keys = {g.key: g for g in report.groups}
        assert keys["openai/acme-private-7b"].unpriced == 1 and keys["openai/acme-private-7b"].cost == 0
        assert keys["openai/gpt-4o"].cost == Decimal("0.0075") + Decimal("0.0075") + Decimal("0.0001")
        assert keys["google/gemini-2.5-pro"].cost == Decimal("0.64")
        assert report.groups[0].key == "google/gemini-2.5-pro"  # biggest spend first
    if by == "agent":
        assert {g.key for g in report.groups} == {"writer", "reviewer", "-"}
    if by == "day":
        assert [g.key for g in report.groups] == [datetime.now(UTC).strftime("%Y-%m-%d")]


@pytest.fixture
def cli(db_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    from synthhost.cli import Group

    monkeypatch.setenv("DATABASE_URL", db_url)
    root = Group(name="synthhost")
    register_commands(cli=root)
    runner = CliRunner()
    yield lambda *args: runner.invoke(root, list(args))


async def test_report_command_prints_the_table_and_json(kit: Any, cli: Any) -> None:
    async with kit.host(FastRetry()) as host:
        await _spend(kit, host)
        await host.writer.flush()
        expected = cost_report(host.engine, by="model").to_dict()
    as_json = cli("costs", "report", "--by", "model", "--since", "1d", "--json")
    assert as_json.exit_code == 0, as_json.output
    got = json.loads(as_json.output)
    assert got["groups"] == expected["groups"] and got["totals"] == expected["totals"]
    table = cli("costs", "report", "--workspace", "a")
    assert table.exit_code == 0, table.output
    assert "openai/gpt-4o " in table.output and "google" not in table.output
    assert "cost is a lower bound" in table.output  # the unpriced model is flagged
    bad = cli("costs", "report", "--since", "last tuesday")
    assert bad.exit_code == 2 and "--since" in bad.output and len(bad.output.strip().splitlines()) == 1


async def test_price_commands_round_trip_and_reject_bad_values(cli: Any) -> None:
    ok = cli(
        "costs",
        "price",
        "set",
        "--workspace",
        "acme",
        "--provider",
        "OpenAI",
        "--model",
        "ft:gpt-4o:acme",
        "--input",
        "0.30",
        "--output",
        "1.2",
        "--cache-read",
        "0.15",
        "--note",
        "fine-tune",
    )
    assert ok.exit_code == 0, ok.output
    again = cli(
        "costs",
        "price",
        "set",
        "-w",
        "acme",
        "--provider",
        "openai",
        "--model",
        "ft:gpt-4o:acme",
        "--input",
        "0.25",
        "--output",
        "1.2",
    )  # same key: replaced, not duplicated
    assert again.exit_code == 0, again.output
    dated = cli(
        "costs",
        "price",
        "set",
        "--global",
        "--provider",
        "openai",
        "--model",
        "gpt-4o",
        "--input",
        "2",
        "--output",
        "8",
        "--valid-from",
        "2027-01-01",
    )
    assert dated.exit_code == 0, dated.output
    listed = json.loads(cli("costs", "price", "list", "--json").output)
    assert [(o["workspace"], o["model"], o["input_mtok"], o["valid_from"]) for o in listed] == [
        ("*", "gpt-4o", "2", "2027-01-01T00:00:00+00:00"),
        ("acme", "ft:gpt-4o:acme", "0.25", None),
    ]
    assert listed[1]["provider"] == "openai" and listed[1]["cache_read_mtok"] is None
    text = cli("costs", "price", "list", "--workspace", "acme")
    assert "ft:gpt-4o:acme" in text.output and "gpt-4o  in 2" in text.output  # global rows shown too
    show = cli("costs", "price", "show", "openai/ft:gpt-4o:acme", "-w", "acme")
    assert "from override" in show.output and "input 0.25" in show.output, show.output
    show_db = cli("costs", "price", "show", "openai/gpt-4o-mini-2024-07-18")
    assert "priced as openai/gpt-4o-mini from genai-prices" in show_db.output, show_db.output

    for args, needle in [
        (["--input", "-1", "--output", "1"], "--input"),
        (["--input", "one", "--output", "1"], "--input"),
        (["--input", "1", "--output", "1", "--currency", "usd$"], "--currency"),
        (["--input", "1", "--output", "1", "--valid-from", "soon"], "--valid-from"),
        (["--input", "1", "--output", "1.00000000001"], "10 decimal places"),
    ]:
        bad = cli("costs", "price", "set", "--global", "--provider", "openai", "--model", "m", *args)
        assert bad.exit_code == 2, (args, bad.output)
        assert needle in bad.output and len(bad.output.strip().splitlines()) == 1, bad.output

    assert cli("costs", "price", "rm", "--global", "--provider", "openai", "--model", "gpt-4o").exit_code == 0
    assert cli("costs", "price", "rm", str(listed[1]["id"])).exit_code == 0
    assert cli("costs", "price", "list").output.strip() == "no price overrides"
    missing = cli("costs", "price", "rm", "999")
    assert missing.exit_code == 2 and "no matching" in missing.output
    assert cli("costs", "price", "rm").exit_code == 2
