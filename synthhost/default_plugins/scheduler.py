"""Declares the scheduler's flag. The scheduler itself is :mod:`synthhost.scheduler`
(``synthhost schedule run``); it is not part of the call chain, so there is no gate."""

from __future__ import annotations

from synthhost.hookspecs import hookimpl
from synthhost.registry import RegisterFlag

FLAG = "enable_cron_backoff"


@hookimpl
def register_flags(register: RegisterFlag) -> None:
    register(FLAG, default=False,
             description="Scheduled runs: delay a failing job exponentially and disable it after max failures")
