"""Registration and lifecycle hooks, with tiny real plugins."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from synthhost import Response, Usage, hookimpl
from synthhost.registry import RegistrationError
from synthhost.storage import db

pytestmark = pytest.mark.anyio

DEMO_MIGRATIONS = Path(__file__).parent / "data" / "demo_migrations"


class Upper:
    """A provider that shouts."""

    def __init__(self) -> None:
        self.closed = False

    async def complete(self, request, *, call):
        return Response(request.last_user_prompt.upper(), request.model, "upper", Usage(1, 1))

    async def aclose(self) -> None:
        self.closed = True


class Demo:
    __name__ = "demo"

    def __init__(self) -> None:
        self.events: list[str] = []
        self.provider = Upper()

    @hookimpl
    def register_providers(self, register):
        register("upper", lambda host: self.provider)

    @hookimpl
    def register_migrations(self, register):
        register(DEMO_MIGRATIONS)

    @hookimpl
    def register_commands(self, cli):
        @cli.command("demo-hello")
        def hello() -> None:
            click.echo("hello from demo")

    @hookimpl
    def register_health_checks(self, register):
        register("demo", lambda host: (True, "fine"))

    @hookimpl
    async def startup(self, host):
        self.events.append("startup")

    @hookimpl
    def shutdown(self, host):
        self.events.append("shutdown")


async def test_providers_migrations_lifecycle(make_host):
    demo = Demo()
    async with make_host(demo) as host:
        assert demo.events == ["startup"]
        assert "demo_notes" in sa.inspect(host.engine).get_table_names()
        response = await host.complete(model="upper/any", messages="quiet")
        assert response.text == "QUIET"
        assert host.registry.providers["upper"].plugin == "demo"
        assert host.registry.health_checks["demo"][0] == "demo"
    assert demo.events == ["startup", "shutdown"]
    assert demo.provider.closed
    # The plugin's branch goes down on its own.
    db.downgrade(host.engine, host.registry.migrations, "demo@base")
    assert "demo_notes" not in sa.inspect(host.engine).get_table_names()
    assert "runs" in sa.inspect(host.engine).get_table_names()


def test_commands_are_added_to_the_cli() -> None:
    group = click.Group()
    Demo().register_commands(group)
    result = CliRunner().invoke(group, ["demo-hello"])
    assert result.output == "hello from demo\n"


def test_duplicate_provider_is_refused(make_host):
    def plugin(name):
        class Other:
            __name__ = name

            @hookimpl
            def register_providers(self, register):
                register("mine", lambda host: None)

        return Other()

    with pytest.raises(RegistrationError, match="provider 'mine' registered by 'a' and 'b'"):
        make_host(plugin("a"), plugin("b"))


def test_a_plugin_may_replace_a_built_in_provider(make_host):
    class Mine:
        __name__ = "mine"

        @hookimpl
        def register_providers(self, register):
            register("anthropic", lambda host: "my anthropic")

    host = make_host(Mine())
    assert host.registry.providers["anthropic"].plugin == "mine"
    assert host.provider("anthropic") == "my anthropic"


def test_conflicting_flag_defaults_are_refused(make_host):
    class A:
        __name__ = "a"

        @hookimpl
        def register_flags(self, register):
            register("shared_flag", default=True)

    class B:
        __name__ = "b"

        @hookimpl
        def register_flags(self, register):
            register("shared_flag", default=False)

    with pytest.raises(RegistrationError, match="shared_flag"):
        make_host(A(), B())


def test_gate_on_undeclared_flag_is_refused(make_host):
    class Gated:
        __name__ = "gated"

        @hookimpl
        def register_gate(self, register):
            register("never_declared")

    with pytest.raises(RegistrationError, match="never_declared"):
        make_host(Gated())
