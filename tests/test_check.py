"""``synthhost check``: the host's own items, each passing and failing, on SQLite and
PostgreSQL; exit codes, --phase, --json; a crashing check is one failed line."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import anyio
import pytest
from click.testing import CliRunner, Result

from synthhost import hookimpl
from synthhost.checks import CheckResult, failed, passed, run_checks
from synthhost.cli import cli
from synthhost.outbox import OUTBOX
from synthhost.registry import RegistrationError
from synthhost.storage import spool
from synthhost.storage.models import EventLog, utcnow


@pytest.fixture
def invoke(db_url: str, tmp_path: Path) -> Any:
    def run(*args: str, **env: str) -> Result:
        full = {"DATABASE_URL": db_url, "SYNTHHOST_LOAD_PLUGINS": "cost", "SYNTHHOST_HOME": str(tmp_path / "home"),
                "SYNTHHOST_SPOOL_DIR": str(tmp_path / "spool"), **env}
        return CliRunner().invoke(cli, list(args), env=full)

    return run


def items(result: Result) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in json.loads(result.output)["checks"]}


def dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def test_unmigrated_database_fails_then_passes_after_upgrade(invoke: Any) -> None:
    before = invoke("check", "--json")
    assert before.exit_code == 1, before.output
    checks = items(before)
    assert checks["migrations"]["status"] == "fail" and checks["migrations"]["fix"] == "synthhost db upgrade"
    assert checks["tables"]["status"] == "fail" and "event_logs" in checks["tables"]["detail"]
    assert checks["outbox"]["status"] == "fail" and "schema not migrated" in checks["outbox"]["detail"]
    assert checks["cron_backoff"]["status"] == "fail" and checks["cron_backoff"]["fix"] == "synthhost db upgrade"
    assert invoke("db", "upgrade").exit_code == 0
    after = invoke("check", "--json")
    assert after.exit_code == 0, after.output
    checks = items(after)
    assert json.loads(after.output)["ok"] is True
    assert checks["migrations"]["status"] == "pass"
    assert checks["cron_backoff"]["detail"] == "cron_jobs readable: 0 jobs, 0 with failures"
    assert checks["tables"]["status"] == "pass" and "prompt_similarity_logs (similarity plugin)" in \
        checks["tables"]["detail"]
    assert checks["database"]["status"] in ("pass", "warn")  # SQLite is a warning, never a failure
    assert {c["status"] for c in checks.values()} <= {"pass", "warn", "skip"}
    text = invoke("check")
    assert text.exit_code == 0
    assert "PASS  migrations: every branch at head" in text.output and text.output.rstrip().endswith("ok")


def test_tables_of_plugins_imported_but_not_loaded_are_not_expected(invoke: Any) -> None:
    import synthhost_guardrails.models  # noqa: F401
    import synthhost_similarity.models  # noqa: F401  # their tables join SQLModel's metadata

    assert invoke("db", "upgrade").exit_code == 0  # cost only
    tables = items(invoke("check", "--json"))["tables"]
    assert tables["status"] == "pass", tables


def test_a_dropped_checklist_table_fails(invoke: Any, db_url: str) -> None:
    import sqlalchemy as sa

    assert invoke("db", "upgrade").exit_code == 0
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE model_cost_logs")
    engine.dispose()
    checks = items(invoke("check", "--json"))
    assert checks["tables"]["status"] == "fail" and checks["tables"]["detail"] == "missing: model_cost_logs"


def test_unreachable_database_is_one_line_per_item_not_a_traceback(invoke: Any) -> None:
    url = f"postgresql+psycopg://postgres@127.0.0.1:{dead_port()}/test"
    result = invoke("check", DATABASE_URL=url)
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert "FAIL  database: database unreachable" in result.output
    assert "FAIL  outbox: database unreachable" in result.output


def test_environment_names_variables_and_never_prints_values(invoke: Any) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    secret = "sk-lf-very-secret-value-1234"
    result = invoke("check", "--json", LANGFUSE_SECRET_KEY=secret, RUDDERSTACK_BATCH_SIZE="many",
                    ENABLE_STACKSTORM="perhaps")
    assert result.exit_code == 1
    env = items(result)["environment"]
    assert env["status"] == "fail"
    assert "LANGFUSE_SECRET_KEY set without LANGFUSE_PUBLIC_KEY" in env["detail"]
    assert "RUDDERSTACK_BATCH_SIZE is not a positive integer" in env["detail"]
    assert "ENABLE_STACKSTORM is not true or false" in env["detail"]
    assert secret not in result.output
    ok = items(invoke("check", "--json", LANGFUSE_SECRET_KEY=secret, LANGFUSE_PUBLIC_KEY="pk-lf-1"))
    assert ok["environment"]["status"] == "pass" and secret not in json.dumps(ok)
    assert "LANGFUSE_SECRET_KEY" in ok["environment"]["detail"]


def test_retention_warns_while_tables_are_kept_forever(invoke: Any) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    before = items(invoke("check", "--json"))["retention"]
    assert before["status"] == "warn" and "event_logs" in before["detail"] and "retention set" in before["fix"]
    assert invoke("retention", "set", "30", "--global").exit_code == 0
    assert invoke("retention", "set", "forever", "--workspace", "acme").exit_code == 0
    after = items(invoke("check", "--json"))["retention"]
    assert after["status"] == "pass" and after["detail"].endswith("pruned after 30 days")
    env_only = items(invoke("check", "--json", SYNTHHOST_RETENTION_DAYS="7"))["retention"]
    assert env_only["status"] == "pass"  # the rows win: still 30


def test_redis_skipped_passing_and_failing(invoke: Any, redis_url: str) -> None:
    assert invoke("db", "upgrade").exit_code == 0
    assert items(invoke("check", "--json"))["redis"]["status"] == "skip"
    assert items(invoke("check", "--json", REDIS_URL=redis_url))["redis"]["status"] == "pass"
    down = invoke("check", "--json", REDIS_URL=f"redis://127.0.0.1:{dead_port()}/0")
    assert down.exit_code == 1 and items(down)["redis"]["status"] == "fail"


def test_flags_out_of_phase_order_warn_and_phase_filters(invoke: Any) -> None:
    env = {"SYNTHHOST_LOAD_PLUGINS": "cost,policy"}
    assert invoke("db", "upgrade", **env).exit_code == 0
    assert invoke("flags", "set", "enable_policy_engine", "on", "--workspace", "acme", **env).exit_code == 0
    result = invoke("check", "--json", **env)
    assert result.exit_code == 0, result.output  # a warning is not a failure
    flags = items(result)["flags_phase_order"]
    assert flags["status"] == "warn" and flags["detail"] == "acme: phase 3 on, phase 1 off"
    assert invoke("flags", "set", "track_model_costs", "on", "--workspace", "acme", **env).exit_code == 0
    assert items(invoke("check", "--json", **env))["flags_phase_order"]["status"] == "pass"
    phase0 = items(invoke("check", "--json", "--phase", "0", **env))
    assert "flags_phase_order" not in phase0 and "database" in phase0
    assert invoke("check", "--phase", "7").exit_code == 2


def test_parked_outbox_and_full_spool_fail(invoke: Any, db_url: str, tmp_path: Path) -> None:
    import sqlalchemy as sa

    env = {"SYNTHHOST_LOAD_PLUGINS": "langfuse"}
    assert invoke("db", "upgrade").exit_code == 0
    assert items(invoke("check", "--json", **env))["outbox"]["status"] == "pass"
    engine = sa.create_engine(db_url)
    events = EventLog.__table__  # type: ignore[attr-defined]
    with engine.begin() as conn:
        conn.execute(events.insert().values(id="ev1", workspace_id="w", event_type="x", status="success",
                                            context={}, created_at=utcnow()))
        conn.execute(OUTBOX.insert().values(event_id="ev1", exporter="langfuse", state="parked",
                                                   attempts=3, created_at=utcnow(), next_attempt_at=utcnow(),
                                            last_error="HTTP 400"))
    engine.dispose()
    stuck = items(invoke("check", "--json", SYNTHHOST_CHECK_OUTBOX_STUCK_S="0.001", **env))["outbox"]
    assert stuck["status"] == "fail" and stuck["detail"].startswith("parked: langfuse 1")
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(OUTBOX.update().values(state="pending"))
    engine.dispose()
    stuck = items(invoke("check", "--json", SYNTHHOST_CHECK_OUTBOX_STUCK_S="0.001", **env))["outbox"]
    assert stuck["status"] == "fail" and stuck["detail"].startswith("stuck: langfuse oldest")
    assert items(invoke("check", "--json", **env))["outbox"]["status"] == "pass"  # young enough
    bad = items(invoke("check", "--json", SYNTHHOST_CHECK_OUTBOX_STUCK_S="soon", **env))["outbox"]
    assert bad["status"] == "fail" and "SYNTHHOST_CHECK_OUTBOX_STUCK_S" in bad["detail"]
    engine = sa.create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(OUTBOX.update().values(state="parked"))
    engine.dispose()
    parked = items(invoke("check", "--json", **env))["outbox"]
    assert parked["status"] == "fail" and parked["detail"] == "parked: langfuse 1"
    assert "synthhost queue retry-parked" in parked["fix"]
    spool.write(tmp_path / "spool", [(events, {"id": "ev2", "workspace_id": "w", "event_type": "x",
                                               "status": "success", "context": {}, "created_at": utcnow()}, None)])
    spooled = items(invoke("check", "--json", **env))["spool"]
    assert spooled["status"] == "fail" and spooled["detail"].startswith("1 rows in ")


class Checks:
    __name__ = "ops_checks"

    @hookimpl
    def register_checks(self, register: Any) -> None:
        register("always_fine", lambda host: passed("fine"), phase=2)
        register("explodes", self.explodes, phase=3)
        register("wrong_type", lambda host: (True, "a health-check answer"))

    async def explodes(self, host: Any) -> CheckResult:
        await anyio.sleep(0)
        raise RuntimeError("boom\nsecond line")


def test_plugin_checks_run_in_phase_order_and_crashes_are_failures(make_host: Any) -> None:
    host = make_host(Checks())
    assert host.registry.checks["explodes"].plugin == "ops_checks"
    outcomes = anyio.run(run_checks, host, None)
    names = [o.name for o in outcomes]
    assert names.index("always_fine") > names.index("database")
    assert names.index("explodes") > names.index("always_fine")
    by_name = {o.name: o for o in outcomes}
    assert by_name["always_fine"].status == "pass" and by_name["always_fine"].phase == 2
    assert by_name["explodes"].status == "fail"
    assert by_name["explodes"].detail == "the check raised RuntimeError: boom"
    assert by_name["wrong_type"].status == "fail" and "not a CheckResult" in by_name["wrong_type"].detail
    assert "explodes" not in {o.name for o in anyio.run(run_checks, host, 2)}


class Clash:
    __name__ = "clash"

    @hookimpl
    def register_checks(self, register: Any) -> None:
        register("database", lambda host: failed("x", "y"))


class BadPhase:
    __name__ = "bad_phase"

    @hookimpl
    def register_checks(self, register: Any) -> None:
        register("later", lambda host: passed("x"), phase=5)


def test_check_registration_errors(make_host: Any) -> None:
    with pytest.raises(RegistrationError, match="check 'database' registered by 'checks' and 'clash'"):
        make_host(Clash())
    with pytest.raises(RegistrationError, match="phase 5 is not 0-4"):
        make_host(BadPhase())
