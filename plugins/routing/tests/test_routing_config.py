"""Routing configuration storage (SQLite and PostgreSQL) and ``synthhost routing
show|set|apply``: validated writes, versions, global + workspace merging, one-line errors
that exit 2, the Alembic branch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

import synthhost_routing
from synthhost.cli import Group
from synthhost.errors import UsageError
from synthhost.storage import db
from synthhost_routing import routing_for, set_config, update_config
from synthhost_routing.cli import routing
from synthhost_routing.store import get

pytestmark = pytest.mark.anyio

root = Group("synthhost")
root.add_command(routing)


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(root, ["routing", *[str(a) for a in args]], catch_exceptions=False)


def one_line_error(result: Result) -> str:
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("Error: ") : -1]


async def test_store_versions_merge_and_validation(make_host: Any) -> None:
    async with make_host(synthhost_routing) as host:
        assert set_config(host, {"plan": "team"}, workspace="w1", actor="ann") == 1
        assert set_config(host, {"plan": "team"}, workspace="w1") == 1  # identical: no new version
        assert (
            update_config(
                host, {"region.compliance": ["GDPR"], "fallbacks.gpt-4.1": ["gpt-4o"]}, workspace="w1", actor="bob"
            )
            == 2
        )
        stored = get(host.engine, "w1")
        assert stored is not None and stored.updated_by == "bob"
        assert stored.document == {
            "plan": "team",
            "region": {"compliance": ["GDPR"]},
            "fallbacks": {"gpt-4.1": ["gpt-4o"]},
        }
        update_config(host, {"models.gpt-4.1.context_window": 900_000}, unset=["fallbacks.gpt-4.1"], workspace="w1")
        stored = get(host.engine, "w1")
        assert stored is not None and stored.document == {
            "plan": "team",
            "region": {"compliance": ["GDPR"]},
            "models": {"gpt-4.1": {"context_window": 900_000}},
        }
        # the global configuration sits under every workspace's
        set_config(host, {"max_prompt_tokens": 5000, "plan": "free"}, global_=True)
        w1, w2 = routing_for(host, "w1"), routing_for(host, "w2")
        assert (w1.plan, w1.max_tokens, w1.source, w1.window("gpt-4.1")) == ("team", 5000, "workspace", 900_000)
        assert (w2.plan, w2.max_tokens, w2.source) == ("free", 5000, "global")
        # refused writes name the field, and store nothing
        with pytest.raises(UsageError, match=r"workspace 'w1': plan: unknown plan 'gold'"):
            set_config(host, {"plan": "gold"}, workspace="w1")
        set_config(host, {"plans": {"gold": ["gpt-4.1"]}}, global_=True)
        set_config(host, {"plan": "gold"}, workspace="w3")
        # a global change that would break a workspace's configuration is refused
        with pytest.raises(UsageError, match=r"workspace 'w3' \(merged with this global config\): plan: unknown plan"):
            set_config(host, {}, global_=True)
        assert routing_for(host, "w3").plan == "gold"
        with pytest.raises(UsageError, match="use --global"):
            set_config(host, {}, workspace="*")


async def test_a_stored_document_that_no_longer_compiles_denies_calls(make_host: Any) -> None:
    from synthhost import Denied
    from synthhost_routing.models import CONFIGS

    async with make_host(synthhost_routing) as host:
        host.flags.set(synthhost_routing.FLAG, True, workspace="w1")
        with host.engine.begin() as conn:  # as if a plugin upgrade dropped a field
            conn.execute(
                CONFIGS.insert().values(workspace_id="w1", document={"retired": 1}, version=1, updated_at=sa.func.now())
            )
        synthhost_routing.runtime(host).reload()
        with pytest.raises(Denied) as info:
            await host.complete(model="echo/gpt-4o", messages="hi", workspace="w1")
        assert info.value.code == "ROUTING_CONFIG_INVALID"
        await host.complete(model="echo/gpt-4o", messages="hi", workspace="w2")  # others unaffected


async def test_migration_branch_up_and_down(make_host: Any) -> None:
    async with make_host(synthhost_routing) as host:
        assert sa.inspect(host.engine).has_table("routing_configs")
        db.downgrade(host.engine, host.registry.migrations, "routing@base")
        assert not sa.inspect(host.engine).has_table("routing_configs")
        host.migrate()
        assert sa.inspect(host.engine).has_table("routing_configs")


# -- the command line -------------------------------------------------------------------------------


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str) -> Path:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("SYNTHHOST_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("USER", "tester")
    monkeypatch.delenv("SYNTHHOST_WORKSPACE", raising=False)
    return tmp_path


def test_cli_set_show(env: Path) -> None:
    result = invoke("set", "plan=team", "region.compliance=GDPR,HIPAA", "max_prompt_tokens=32000", "-w", "w1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "routing config of workspace w1: v1\n"
    result = invoke(
        "set",
        "fallbacks.gpt-4o=gpt-4o-mini,anthropic/claude-3-5-haiku-latest",
        "--unset",
        "max_prompt_tokens",
        "-w",
        "w1",
    )
    assert result.stdout == "routing config of workspace w1: v2\n"
    shown = json.loads(invoke("show", "-w", "w1", "--json").stdout)
    assert shown["version"] == 2 and shown["updated_by"] == "tester"
    assert shown["stored"] == {
        "plan": "team",
        "region": {"compliance": ["GDPR", "HIPAA"]},
        "fallbacks": {"gpt-4o": ["gpt-4o-mini", "anthropic/claude-3-5-haiku-latest"]},
    }
    effective = shown["effective"]
    assert effective["plan"] == "team" and "gpt-4o-mini" in effective["allowed_models"]
    assert effective["max_prompt_tokens"] == 128_000
    assert effective["region"]["compliance"] == ["GDPR", "HIPAA"]
    text = invoke("show", "-w", "w1").stdout
    assert text.startswith("# workspace w1: v2, ")
    assert "plan: team" in text and "# effective (defaults <- global <- workspace; from workspace):" in text
    assert invoke("show", "-w", "nobody").stdout.startswith("# workspace nobody: nothing stored\n")


def test_cli_apply(env: Path) -> None:
    path = env / "eu.yaml"
    path.write_text("workspace: acme\nplan: team\nregion:\n  data_residency: EU\n")
    result = invoke("apply", path)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"routing config of workspace acme: v1 ({path})\n"
    shown = json.loads(invoke("show", "-w", "acme", "--json").stdout)
    assert shown["stored"] == {"plan": "team", "region": {"data_residency": "EU"}}  # 'workspace' is not stored
    assert "--workspace is 'other'" in one_line_error(invoke("apply", path, "-w", "other"))
    assert "--global was given" in one_line_error(invoke("apply", path, "--global"))
    # the shipped example is valid
    example = Path(__file__).resolve().parents[1] / "examples" / "eu-team.yaml"
    assert invoke("apply", example, "-w", "acme").exit_code == 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("set", "plan=gold", "-w", "w1"), "routing config of workspace 'w1': plan: unknown plan 'gold'"),
        (("set", "region.preferd=eu-west-1"), "region.preferd: unknown field (region has:"),
        (
            ("set", "region.preferred=eu-wset-1"),
            "region.preferred: unknown region 'eu-wset-1' (did you mean 'eu-west-1'?)",
        ),
        (("set", "plan"), "'plan': expected KEY=VALUE"),
        (("set",), "nothing to set"),
        (("set", "plan=team", "-w", "w1", "--global"), "--global and --workspace are exclusive"),
    ],
)
def test_cli_errors_are_one_line_exit_2(env: Path, args: tuple[str, ...], message: str) -> None:
    assert message in one_line_error(invoke(*args))


def test_cli_apply_errors(env: Path) -> None:
    bad = env / "bad.yaml"
    bad.write_text("plan: team\nregion:\n  data_residency: [EU\n")
    assert one_line_error(invoke("apply", bad)).startswith(f"{bad}:4:1: invalid YAML")
    bad.write_text("plan: team\nmax_prompt_token: 5\n")
    assert one_line_error(invoke("apply", bad)) == (
        f"{bad}: routing config of workspace 'default': max_prompt_token: unknown field"
    )
    assert "no such file" in one_line_error(invoke("apply", env / "missing.yaml"))
