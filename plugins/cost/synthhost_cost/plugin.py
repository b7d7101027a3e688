"""The cost plugin's hooks: price every provider attempt and queue its row.

Rows: one ``model_cost_logs`` row per provider *attempt* (``attempt`` column). A call
retried twice that then succeeds writes two ``failed`` rows and one ``ok`` row; a call
denied before the provider (policy, rate limit, input guardrails) made no attempt and
writes no row: the denial is on the call's span and in the events. ``post_call``
writes the row of the attempt that answered; ``on_failure`` the row of an attempt that
did not (unless ``post_call`` already wrote that attempt's row, e.g. when a later
``post_call`` plugin rejected the output).

The call's span gets ``cost_usd`` (the sum over its attempts, a fixed-point decimal
string: the host adds these up into the run's total) and a ``cost`` dict; the same
figures go out as an ``llm_cost_logged`` event. A model with no known price gets no
``cost_usd`` at all (never ``"0"``), a ``priced=false`` row with NULL costs, and one
``llm_cost_unpriced`` event per (provider, model, workspace) per host process (the
dedupe is in memory: a restart, or another process, may say it once more).

Price overrides are read at start-up. A change made through this process
(:func:`set_price`, :func:`remove_price`) applies to its very next call; other
processes (the CLI, other hosts) notice within ``SYNTHHOST_COST_PRICE_REFRESH_S``
seconds (default 5; a background thread polls a row count and the latest update time).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from synthhost import Denied, Stage, StashKey, hookimpl
from synthhost.call import Response, Usage

if TYPE_CHECKING:
    import click

    from synthhost.call import Call
    from synthhost.host import Host
    from synthhost.registry import RegisterFlag, RegisterGate, RegisterMigrations, RegisterRetention
    from synthhost_cost.pricing import Override
    from synthhost_cost.state import CostState

FLAG: Final = "track_model_costs"
MIGRATIONS: Final = Path(__file__).resolve().parent / "migrations"
DEFAULT_REFRESH_S: Final = 5.0
UNPRICED_MEMORY: Final = 100_000  # dedupe keys kept before forgetting (then may re-emit)

_LOGGED_ATTEMPT = StashKey[int]()  # the attempt post_call wrote a row for
NO_USAGE: Final = (0, 0, 0, 0, 0)


_STATES: weakref.WeakKeyDictionary[Host, CostState] = weakref.WeakKeyDictionary()


def state_for(host: Host) -> CostState:
    """This plugin's state for ``host`` (created on first use if start-up was skipped)."""
    state = _STATES.get(host)
    if state is None:
        # genai-prices and SQLAlchemy load here (start-up), not at plugin import.
        from synthhost_cost.state import CostState

        state = _STATES[host] = CostState(host)
    return state


def _usage(usage: Usage) -> tuple[int, int, int, int, int]:
    return (
        usage.input_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.output_tokens,
        usage.reasoning_tokens,
    )


# -- in-process price management (the CLI uses the same store functions) ----------------


def set_price(host: Host, override: Override) -> int:
    """Save an override and apply it to this host's next call. Sync (database I/O)."""
    from synthhost_cost.store import save_override

    row_id = save_override(host.engine, override)
    state_for(host).reload()
    return row_id


def remove_price(host: Host, **where: Any) -> int:
    from synthhost_cost.store import delete_overrides

    removed = delete_overrides(host.engine, **where)
    state_for(host).reload()
    return removed


# -- hooks ------------------------------------------------------------------------------


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, default=False, description="Log each model call's exact cost (model_cost_logs).")


@hookimpl
def register_gate(register: RegisterGate) -> None:
    register(FLAG, order={"post_call": Stage.COST, "on_failure": Stage.COST})


@hookimpl
def register_retention(register: RegisterRetention) -> None:
    register("model_cost_logs", "created_at")


@hookimpl
def register_migrations(register: RegisterMigrations) -> None:
    register(MIGRATIONS)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from synthhost_cost.cli import costs

    cli.add_command(costs)


@hookimpl
async def startup(host: Host) -> None:
    import anyio

    state = state_for(host)
    await anyio.to_thread.run_sync(state.reload)
    state.start()


@hookimpl
def shutdown(host: Host) -> None:
    state = _STATES.pop(host, None)
    if state is not None:
        state.stop()


@hookimpl
def post_call(call: Call, response: Response) -> None:
    state = _STATES.get(call.host) or state_for(call.host)
    provider = response.provider or call.request.provider
    model = response.model or call.request.model
    by = call.attributes.get("short_circuit_by")
    if by is not None:  # a pre_call plugin answered: the provider was not called
        state.record(
            call,
            provider,
            model,
            NO_USAGE,
            failed=False,
            note=f"answered by plugin {by}; provider not called: zero cost",
        )
    else:
        state.record(call, provider, model, _usage(response.usage), failed=False)
    call.stash[_LOGGED_ATTEMPT] = call.attempt


@hookimpl
def on_failure(call: Call, error: BaseException, attempt: int) -> None:
    """Observe only: always ``None``, so recovery plugins decide.

    The error may carry what the attempt was billed for: ``error.usage`` (a
    :class:`~synthhost.Usage`) or ``error.response`` (a partial or rejected
    :class:`~synthhost.Response`). A :class:`~synthhost.Denied` carrying a response is
    an answer a plugin rejected: the row says ``ok`` (the provider answered and
    billed) with the denial's ``error_code``.
    """
    if call.stash.get(_LOGGED_ATTEMPT) == attempt:
        return None  # post_call already wrote this attempt's row
    state = _STATES.get(call.host) or state_for(call.host)
    usage = getattr(error, "usage", None)
    response = getattr(error, "response", None)
    if not isinstance(response, Response):
        response = None
    if not isinstance(usage, Usage) and response is not None:
        usage = response.usage
    tokens = _usage(usage) if isinstance(usage, Usage) else NO_USAGE
    provider = (response.provider if response else None) or call.request.provider
    model = (response.model if response else None) or call.request.model
    if isinstance(error, Denied) and response is None and usage is None:
        return None  # denied before the provider: no attempt was made, nothing billed
    code = getattr(error, "code", None) or type(error).__name__
    answered = response is not None and isinstance(error, Denied)
    state.record(call, provider, model, tokens, failed=not answered, error_code=str(code)[:64])
    return None
