"""synthhost plugin: StackStorm self-healing.

Flags (default off): ``enable_stackstorm`` (gate: failure webhooks), and the workflows
``enable_stackstorm_retry``, ``enable_stackstorm_reroute``,
``enable_stackstorm_repair_execution``. The ``synthralos`` pack's workflows *decide*
(retry after N s, an untried route, a repaired request); the host then re-executes the
real request. See :mod:`synthhost_stackstorm.plugin` for the contract,
:mod:`synthhost_stackstorm.config` for the environment, and
:mod:`synthhost_stackstorm.testing` for the loopback st2api fake.
"""

from synthhost_stackstorm.plugin import (
    health,
    on_failure,
    on_tool_failure,
    post_call,
    register_checks,
    register_commands,
    register_flags,
    register_gate,
    register_health_checks,
    shutdown,
    startup,
    state_for,
)

__all__ = [
    "health",
    "on_failure",
    "on_tool_failure",
    "post_call",
    "register_checks",
    "register_commands",
    "register_flags",
    "register_gate",
    "register_health_checks",
    "shutdown",
    "startup",
    "state_for",
]
