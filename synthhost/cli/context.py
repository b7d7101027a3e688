"""How commands get a host, and how async commands run with clean signal handling."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from synthhost.host import Host

T = TypeVar("T")


class Interrupted(Exception):
    """SIGINT/SIGTERM arrived; the work was cancelled and its rows flushed."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.asynccontextmanager
async def open_host(**kwargs: Any) -> AsyncIterator[Host]:
    """A started host from the environment; stopped (and flushed) on exit."""
    from synthhost.host import Host

    kwargs.setdefault("load_entrypoints", True)  # the CLI always honours the allow-list
    async with Host.from_env(**kwargs) as host:
        yield host


@contextlib.contextmanager
def cli_host(migrate: bool = True, **kwargs: Any) -> Iterator[Host]:
    """A host for synchronous database commands (flags, reports): migrated, flags
    loaded, no background threads. ``kwargs`` go to :class:`Host` (``plugins=...``)."""
    from synthhost.host import Host

    kwargs.setdefault("load_entrypoints", True)
    host = Host.from_env(**kwargs)
    try:
        if migrate:
            if host.settings.auto_migrate:
                host.migrate()
            host.flags.reload()
        yield host
    finally:
        if (durable := sys.modules.get("synthhost.durable")) is not None:
            durable.close_clients()
        host.engine.dispose()


def run_async(fn: Callable[[], Awaitable[T]]) -> T:
    """Run ``fn`` under anyio; SIGINT/SIGTERM cancel it (so runs record what they did
    and the host flushes), then :class:`Interrupted` is raised."""
    import anyio

    received: list[int] = []
    result: list[T] = []
    failure: list[BaseException] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                    async for signum in signals:
                        received.append(signum)
                        tg.cancel_scope.cancel()
                        return

            async def body() -> None:
                try:
                    result.append(await fn())
                except Exception as exc:  # re-raised below, outside the task group's ExceptionGroup
                    failure.append(exc)
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            tg.start_soon(body)

    anyio.run(main)
    if failure:
        raise failure[0]
    if received:
        raise Interrupted(received[0])
    return result[0]
