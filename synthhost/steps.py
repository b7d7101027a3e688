"""Step boundaries: the points where a run can be checkpointed.

A run hands each unit of work (a plain agent step's model call; each model turn and
each tool call of a looped step, through :func:`synthhost.runner.checkpointed`) to a
:class:`StepBoundary` as ``await boundary(run, name, body)``. In process, the boundary just awaits ``body``.
In a durable run (``synthhost.durable``) it is a DBOS step: the first time, ``body``
runs with deterministic ids (:func:`scoped`) and its JSON-able result is checkpointed;
after a crash, a completed step returns its checkpoint and ``body`` does not run.

``body`` must therefore return everything the run needs from it (output, spans), not
only leave it on the run, and must be safe to execute again when it did not complete:
its rows carry deterministic ids and the writer keeps the first of each.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from synthhost.call import ID_SCOPE, IdScope

if TYPE_CHECKING:
    from synthhost.runner import RunState

T = TypeVar("T")


class StepBoundary(Protocol):
    async def __call__(self, run: RunState, name: str, body: Callable[[], Awaitable[Any]]) -> Any: ...


async def inline_boundary(run: RunState, name: str, body: Callable[[], Awaitable[T]]) -> T:
    """In process: nothing to checkpoint, nothing to replay."""
    return await body()


async def scoped(salt: str, key: str, body: Callable[[], Awaitable[T]]) -> T:
    """Await ``body`` with the ids it draws (``new_id``) derived from ``salt`` and
    ``key`` (run and step), and its rows written insert-or-ignore."""
    token = ID_SCOPE.set(IdScope(salt, key))
    try:
        return await body()
    finally:
        ID_SCOPE.reset(token)
