"""The objects a model call is made of: request, usage, response, the call context that
every call hook receives, and the recovery answer of ``on_failure``.

Token conventions (OpenAI's, and what genai-prices expects): ``input_tokens`` counts the
whole prompt *including* cache reads and cache writes; ``output_tokens`` counts the whole
completion *including* reasoning tokens.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from os import urandom
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast

if TYPE_CHECKING:
    from synthhost.host import Host

T = TypeVar("T")


class _RandomHex(threading.local):
    """Per-thread buffer of random hex: one ``os.urandom`` call per 256 ids. A syscall
    per id cost ~10 µs on the call path here (it releases the GIL, and with writer and
    exporter threads running, getting it back waits)."""

    text = ""
    pos = 0


_random_hex = _RandomHex()


def _forget_after_fork() -> None:  # a child must never hand out its parent's ids
    _random_hex.text, _random_hex.pos = "", 0


os.register_at_fork(after_in_child=_forget_after_fork)


class IdScope:
    """Deterministic ids for what one durable step writes (``synthhost.steps``): the
    n-th id of the step is a hash of the run's secret salt, the step and n, so a step
    executed again after a crash names its spans, events and cost rows exactly as the
    first time, and the writer's insert-or-ignore keeps one of each. The salt travels
    with the durable run only, so ids stay unguessable from one another."""

    __slots__ = ("n", "seed")

    # Set by a worker abandoning the durable runs it holds at shutdown: whatever their
    # interrupted steps would still write is dropped (the runs resume on another worker,
    # exactly as after a crash; see synthhost.durable.Worker.stop).
    abandoned = False

    def __init__(self, salt: str, step: str) -> None:
        self.seed = f"{salt}:{step}:"
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return hashlib.sha256(f"{self.seed}{self.n}".encode()).hexdigest()[:32]


ID_SCOPE: ContextVar[IdScope | None] = ContextVar("synthhost_id_scope", default=None)


def new_id() -> str:
    """A 32-hex id of 128 random bits (usable as an OpenTelemetry trace id); inside a
    durable step (:data:`ID_SCOPE` set), the step's next deterministic id instead.

    Unguessable: ids reach HTTP APIs and exports, so none may be derived from another
    (the former per-process prefix + counter made a trace id "the run id plus one").
    Drawn from ``os.urandom`` in 4 KiB blocks, per thread, reset after fork
    (``benchmarks/ids.py``)."""
    scope = ID_SCOPE.get()
    if scope is not None:
        return scope.next()
    buf = _random_hex
    pos = buf.pos
    if pos >= len(buf.text):
        buf.text, pos = urandom(4096).hex(), 0
    buf.pos = pos + 32
    return buf.text[pos:pos + 32]


def content_text(content: Any) -> str:
    """A message's ``content`` as text: a string as is, content parts' ``text`` joined by
    newlines (images and other parts have none)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


@dataclass(slots=True)
class Request:
    """What will be sent to the provider. ``pre_call`` plugins may change any field;
    the provider receives the request as it stands after the last ``pre_call``."""

    model: str
    provider: str = "echo"
    messages: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)
    region: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # synthhost.tokens memoises its estimate here: (key, tokens).
    token_memo: tuple[Any, int] | None = field(default=None, repr=False, compare=False)

    @property
    def prompt(self) -> str:
        """The user-visible prompt: the text of every message, joined by newlines."""
        parts: list[str] = []
        for message in self.messages:
            content = message.get("content")
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return "\n".join(parts)

    @property
    def last_user_prompt(self) -> str:
        """The last user message's text (text parts joined for list-form content)."""
        for message in reversed(self.messages):
            if message.get("role") != "user":
                continue
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        return self.prompt

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "provider": self.provider,
            "messages": self.messages,
            "params": self.params,
            "region": self.region,
            "metadata": self.metadata,
        }


@dataclass(slots=True, frozen=True)
class Usage:
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_dict(self) -> dict[str, int]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
        }


@dataclass(slots=True, frozen=True)
class ToolCallRequest:
    """A tool call the model asked for: its id (the provider's ``tool_call_id``), the
    tool's name and the arguments as the model wrote them (JSON text, maybe invalid)."""

    id: str
    name: str
    arguments: str = "{}"

    def to_message(self) -> dict[str, Any]:
        """The OpenAI wire form, as it goes back in the assistant message."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(slots=True, frozen=True)
class StreamDelta:
    """A piece of a streamed answer: ``text``, or a fragment of tool call ``index``
    (its ``id`` and ``name`` come with its first fragment, ``arguments`` in pieces).
    The provider still returns the assembled :class:`Response`; deltas are a preview
    that ``post_call`` hooks have not seen yet."""

    text: str = ""
    index: int | None = None
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass(slots=True)
class Response:
    text: str
    model: str
    provider: str
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    latency_s: float = 0.0
    raw: dict[str, Any] | None = None
    # Tool calls the model asked for (empty: a final answer).
    tool_calls: list[ToolCallRequest] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "text": self.text,
            "model": self.model,
            "provider": self.provider,
            "usage": self.usage.to_dict(),
            "finish_reason": self.finish_reason,
            "latency_s": self.latency_s,
        }
        if self.tool_calls:
            out["tool_calls"] = [t.to_message() for t in self.tool_calls]
        return out


class StashKey(Generic[T]):
    """A typed key for :class:`Stash` (pytest's ``StashKey``). Create one per module:
    ``ESTIMATE = StashKey[Decimal]()``."""

    __slots__ = ()


class Stash:
    """Typed per-call scratch space: how ``pre_call`` passes data to ``post_call`` of the
    same plugin without module globals."""

    __slots__ = ("_data",)

    def __init__(self) -> None:
        self._data: dict[StashKey[Any], Any] = {}

    def __setitem__(self, key: StashKey[T], value: T) -> None:
        self._data[key] = value

    def __getitem__(self, key: StashKey[T]) -> T:
        return cast(T, self._data[key])

    def get(self, key: StashKey[T], default: T | None = None) -> T | None:
        return cast("T | None", self._data.get(key, default))

    def __contains__(self, key: object) -> bool:
        return key in self._data


@dataclass(slots=True)
class Call:
    """The context of one model call, passed to ``pre_call``, ``post_call`` and
    ``on_failure``. One ``Call`` spans every attempt of the call; ``attempt`` counts
    from 1.

    ``attributes`` are recorded on the call's span (``cost_usd``, ``policy.warnings``...);
    plugins add to it, never remove what another plugin wrote.
    """

    host: Host
    request: Request
    workspace: str = "default"
    user: str | None = None
    org: str | None = None
    agent: str | None = None
    step: str | None = None
    run_id: str | None = None
    trace_id: str = field(default_factory=new_id)
    span_id: str = field(default_factory=new_id)
    parent_span_id: str | None = None
    attempt: int = 1
    max_attempts: int = 3
    retry_initial_delay_s: float = 1.0
    retry_max_delay_s: float = 30.0
    tried_routes: list[tuple[str, str]] = field(default_factory=list)
    attributes: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    stash: Stash = field(default_factory=Stash)
    started_at: float = field(default_factory=time.time)
    requested_model: str = ""
    requested_provider: str = ""
    # Set when the caller streams: a provider that can stream passes deltas here as they
    # arrive (and still returns the assembled response); one that cannot ignores it.
    on_delta: Callable[[StreamDelta], None] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.requested_model = self.requested_model or self.request.model
        self.requested_provider = self.requested_provider or self.request.provider

    def emit(self, event_type: str, *, status: str = "success", **context: Any) -> None:
        """Record an event for this call (tenant, run, trace and span ids filled in).
        Queued, never blocks."""
        self.host.emit(event_type, call=self, status=status, **context)

    def tenant(self) -> Mapping[str, str | None]:
        return {"workspace": self.workspace, "user": self.user, "org": self.org}


RecoveryAction = Literal["retry", "reroute", "give_up"]


@dataclass(slots=True, frozen=True)
class Recovery:
    """What ``on_failure`` answers. ``retry`` tries the same request again after
    ``delay`` seconds; ``reroute`` applies ``changes`` (request fields such as ``model``,
    ``provider``, ``region``) and tries again; ``give_up`` stops with the error.
    ``response``, when given with ``retry``/``reroute`` omitted, replaces the failed call
    with a repaired result (it is recorded as a repair, and post_call still runs)."""

    action: RecoveryAction
    delay: float = 0.0
    changes: Mapping[str, Any] = field(default_factory=dict)
    reason: str = ""
    response: Response | None = None
