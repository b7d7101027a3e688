"""Dependency hygiene: core dependencies are what core imports; drivers are extras; the
optional Guardrails AI extra is resolved apart from the default environment; integrations
that reach into other libraries' internals fail loudly on an incompatible release."""

from __future__ import annotations

import importlib.metadata as md
import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _closure(dist: str) -> set[str]:
    """Every distribution a plain ``pip install <dist>`` pulls in (no extras)."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        seen.add(key)
        for raw in md.requires(name) or []:
            req = Requirement(raw)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            todo.append(req.name)
    return seen


def test_a_sqlite_only_install_has_no_postgresql_or_redis_packages() -> None:
    closure = _closure("synthhost")
    assert not {"psycopg", "psycopg-binary", "psycopg2", "redis", "hiredis"} & closure, sorted(closure)
    extra = [Requirement(r) for r in md.requires("synthhost") or []]
    postgres = [r.name for r in extra if r.marker is not None and r.marker.evaluate({"extra": "postgres"})
                and not r.marker.evaluate({"extra": ""})]
    assert postgres == ["psycopg"]
    # The rate limiter brings its own Redis client.
    assert "redis" in _closure("synthhost-ratelimit")


def test_a_postgresql_url_without_the_driver_is_a_one_line_error(monkeypatch: object) -> None:
    import sys

    import pytest

    from synthhost.errors import UsageError
    from synthhost.storage import db

    mp = pytest.MonkeyPatch()
    try:
        for name in [m for m in sys.modules if m == "psycopg" or m.startswith("psycopg.")]:
            mp.delitem(sys.modules, name)
        mp.setitem(sys.modules, "psycopg", None)  # "not installed"
        with pytest.raises(UsageError) as info:
            db.create_engine("postgresql+psycopg://u@127.0.0.1:1/x")
    finally:
        mp.undo()
    assert "synthhost[postgres]" in str(info.value) and "\n" not in str(info.value)


def test_the_guardrails_extra_does_not_hold_back_the_default_environment() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    conflicts = project["tool"]["uv"]["conflicts"]
    assert [{"package": "synthhost-guardrails", "extra": "guardrails-ai"}, {"group": "dev"}] in conflicts
    # No warnings filter papers over an old typer any more.
    assert project["tool"]["pytest"]["ini_options"]["filterwarnings"] == ["error"]
    lock = (ROOT / "uv.lock").read_text()
    typers = re.findall(r'\[\[package\]\]\nname = "typer"\nversion = "([^"]+)"', lock)
    assert len(typers) == 2, typers  # one for the extra's fork, a current one for everyone else
    assert md.version("typer") == max(typers, key=lambda v: tuple(int(x) for x in v.split(".")))


def test_private_internals_we_rely_on_are_bounded_and_present() -> None:
    """Each integration that uses a library's non-public API pins an upper bound, and the
    attributes it uses exist in the installed release (so an upgrade fails here, loudly)."""
    bounded = {
        "plugins/cost/pyproject.toml": "genai-prices",
        "plugins/langfuse/pyproject.toml": "langfuse",
        "plugins/policy/pyproject.toml": "common-expression-language",
        "plugins/ratelimit/pyproject.toml": "redis",  # the limiter drives redis-py connections itself
    }
    for path, dist in bounded.items():
        deps = tomllib.loads((ROOT / path).read_text())["project"]["dependencies"]
        spec = next(Requirement(d) for d in deps if Requirement(d).name == dist)
        assert any(s.operator == "<" for s in spec.specifier), f"{path}: {dist} needs an upper bound"
        assert md.version(dist) in spec.specifier
    from genai_prices import data_snapshot

    assert callable(data_snapshot.get_snapshot)
    assert hasattr(data_snapshot.get_snapshot(), "find_provider_model")


def test_langfuse_and_otel_internals_exist() -> None:
    """The Langfuse plugin isolates its client (SDK resource manager table) and its OTLP
    headers (the exporter's HTTP client headers); both are private: check they exist."""
    from langfuse._client.resource_manager import LangfuseResourceManager
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    assert isinstance(LangfuseResourceManager._instances, dict)
    assert LangfuseResourceManager._lock is not None
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    try:
        assert isinstance(exporter._client._headers, dict)
    finally:
        exporter.shutdown()


def test_the_cel_extension_is_where_the_policy_plugin_loads_it() -> None:
    from synthhost_policy._cel import cel

    assert cel.__name__ == "cel.cel" and callable(cel.compile) and hasattr(cel, "Context")


def test_the_pytest_plugin_leaves_a_users_anyio_backend_alone(pytester: object) -> None:
    """``synthhost.testing`` is loaded into every test session of a user who installs
    synthhost (``pytest11``). It must not replace anyio's module-scoped ``anyio_backend``
    with a function-scoped one: a user's module-scoped async fixture would then fail with
    ScopeMismatch."""
    import pytest

    import synthhost.testing

    assert not hasattr(synthhost.testing, "anyio_backend")
    tester = pytester
    assert isinstance(tester, pytest.Pytester)
    tester.makepyfile(test_user="""
import pytest
import sniffio

@pytest.fixture(scope="module")
async def shared():
    return sniffio.current_async_library()

@pytest.mark.anyio
async def test_module_scoped_async_fixture(shared):
    assert shared == "asyncio"
""")
    result = tester.runpytest_subprocess()  # entry points load synthhost.testing and anyio
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 1 and not outcomes.get("failed") and not outcomes.get("errors"), outcomes


def test_mypy_checks_the_tests_too() -> None:
    """mypy's file list covers the host, the plugins and every test directory (named by
    path, since each has its own conftest.py)."""
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert {"tests", "plugins/*/tests", "conftest.py"} <= set(mypy["files"])
    assert mypy["explicit_package_bases"] is True
