"""``Host.stream``: one model call whose answer reaches the caller as it is generated.

::

    async with host.stream(model="openai/gpt-4o-mini", messages="Hi") as stream:
        async for delta in stream:
            print(delta.text, end="", flush=True)
    print(stream.response.usage)

The call runs through the whole chain as ``Host.complete`` does: ``pre_call`` before the
first delta, ``post_call`` on the assembled answer (with its usage) after the last. A
``post_call`` denial therefore arrives after text was shown: the iteration then raises
it. Deltas are a preview; ``stream.response`` is the answer. A plugin active for the
workspace that must see the whole answer first (``holds_stream``: an output guardrail)
holds the stream: the provider is called without streaming, no delta comes, and
``stream.response`` is the checked answer. Once a delta has been delivered the call is
not retried (its text would repeat); leaving the iteration early cancels the call, which
is recorded ``cancelled`` with the text delivered (usage estimated).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import anyio

from synthhost.call import Response, StreamDelta

if TYPE_CHECKING:
    from anyio.abc import TaskGroup

    from synthhost.host import Host

__all__ = ["ResponseStream"]


class ResponseStream:
    def __init__(self, host: Host, kwargs: dict[str, Any]) -> None:
        self.host = host
        self.kwargs = kwargs
        self.response: Response | None = None
        self.error: Exception | None = None
        self._send, self._receive = anyio.create_memory_object_stream[StreamDelta](math.inf)
        self._group: TaskGroup | None = None

    async def __aenter__(self) -> ResponseStream:
        self._group = anyio.create_task_group()
        await self._group.__aenter__()
        self._group.start_soon(self._call)
        return self

    async def __aexit__(self, *exc: Any) -> bool | None:
        assert self._group is not None
        if exc[1] is not None and exc[1] is self.error:
            # The call's own error, raised by the iteration: its task has ended. Leave
            # the group cleanly so the caller gets the error itself, not a group of it.
            self._receive.close()
            await self._group.__aexit__(None, None, None)
            return False
        if exc[0] is not None or self.response is None:
            self._group.cancel_scope.cancel()  # the caller left early: stop the call
        self._receive.close()
        return await self._group.__aexit__(*exc)

    def _deliver(self, delta: StreamDelta) -> None:
        # Nobody reading any more: the call still finishes (its cost is real).
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            self._send.send_nowait(delta)

    async def _call(self) -> None:
        try:
            self.response = await self.host.complete(**self.kwargs, on_delta=self._deliver)
        except Exception as exc:  # raised to the caller from the iteration
            self.error = exc
        finally:
            self._send.close()

    def __aiter__(self) -> AsyncIterator[StreamDelta]:
        return self._deltas()

    async def _deltas(self) -> AsyncIterator[StreamDelta]:
        async for delta in self._receive:
            yield delta
        if self.error is not None:
            raise self.error
