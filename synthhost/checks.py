"""``synthhost check``: the deployment checklist as code.

Every item is a check declared through ``register_checks``: the host's own (database,
migrations, tables, environment, Redis, flags' phase order, outbox and spool) in
:mod:`synthhost.default_plugins.checks`, and each plugin's (Langfuse, RudderStack,
StackStorm, rate limits). A check answers one :class:`CheckResult`:

- ``pass``: the item holds;
- ``fail``: it does not (a reason and a fix); ``synthhost check`` exits 1;
- ``warn``: worth a look, not a failure (a later rollout phase on before an earlier one);
- ``skip``: optional and not configured here (the reason says what would enable it).

Each check belongs to a rollout phase (``0``: the deployment itself, then the
checklist's phases 1-4); ``--phase N`` runs the checks of phases ``0..N``. Details and
fixes name variables, never print their values: secrets stay out of the output.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

if TYPE_CHECKING:
    from synthhost.host import Host

Status = Literal["pass", "fail", "warn", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "warn", "skip")
PHASES = range(0, 5)
# A check that does not answer within this is a failure (a service that hangs is down).
TIMEOUT_S = 20.0

# The checklist's rollout phases and the flags each turns on. Sub-flags that only choose
# a mode (enable_async_trace_export, on by default) do not count as "on".
PHASE_FLAGS: dict[int, tuple[str, ...]] = {
    1: ("track_model_costs", "enable_similarity_logging"),
    2: ("enable_langfuse_export",),
    3: ("enable_archgw_routing", "enable_policy_engine", "enable_rate_limiting", "enable_guardrails_ai"),
    4: ("enable_stackstorm", "enable_stackstorm_retry", "enable_stackstorm_reroute",
        "enable_stackstorm_repair_execution", "enable_cron_backoff"),
}


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    detail: str
    fix: str = ""


def passed(detail: str) -> CheckResult:
    return CheckResult("pass", detail)


def failed(detail: str, fix: str) -> CheckResult:
    return CheckResult("fail", detail, fix)


def warned(detail: str, fix: str = "") -> CheckResult:
    return CheckResult("warn", detail, fix)


def skipped(detail: str, fix: str = "") -> CheckResult:
    return CheckResult("skip", detail, fix)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One printed line: the check, who declared it, its phase and its result."""

    name: str
    plugin: str
    phase: int
    status: Status
    detail: str
    fix: str
    seconds: float

    def line(self) -> str:
        text = f"{self.status.upper():<4}  {self.name}: {self.detail}"
        return f"{text} (fix: {self.fix})" if self.fix and self.status != "pass" else text


async def _run_one(host: Host, name: str, plugin: str, phase: int, check: Any) -> Outcome:
    started = time.monotonic()
    try:
        with anyio.fail_after(TIMEOUT_S):
            result = check(host)
            if inspect.isawaitable(result):
                result = await result
        if not isinstance(result, CheckResult):
            raise TypeError(f"returned {type(result).__name__}, not a CheckResult")
    except TimeoutError:
        result = failed(f"no answer within {TIMEOUT_S:g} s", "see the service's own logs")
    except Exception as exc:  # a check that crashes has failed; say how, in one line
        text = (str(exc).strip().splitlines() or [""])[0][:200]
        result = failed(f"the check raised {type(exc).__name__}: {text}", f"report a bug in plugin {plugin!r}")
    return Outcome(name, plugin, phase, result.status, result.detail, result.fix,
                   round(time.monotonic() - started, 3))


async def run_checks(host: Host, phase: int | None = None) -> list[Outcome]:
    """Every declared check of phases ``0..phase`` (all when ``None``), one at a time in
    phase then declaration order: the output reads like the checklist."""
    specs = sorted(host.registry.checks.values(), key=lambda s: s.phase)
    out = []
    for spec in specs:
        if phase is None or spec.phase <= phase:
            out.append(await _run_one(host, spec.name, spec.plugin, spec.phase, spec.check))
    return out
