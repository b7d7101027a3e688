"""synthhost plugin: exact per-call cost tracking from the genai-prices database.

Flag ``track_model_costs`` (default off). Every provider attempt of a gated workspace
writes one ``model_cost_logs`` row priced with exact decimals; see
:mod:`synthhost_cost.plugin` for the row, span and event contract and
:mod:`synthhost_cost.pricing` for how prices are resolved.
"""

from synthhost_cost.plugin import (
    on_failure,
    post_call,
    register_commands,
    register_flags,
    register_gate,
    register_migrations,
    register_retention,
    remove_price,
    set_price,
    shutdown,
    startup,
    state_for,
)

__all__ = [
    "on_failure",
    "post_call",
    "register_commands",
    "register_flags",
    "register_gate",
    "register_migrations",
    "register_retention",
    "remove_price",
    "set_price",
    "shutdown",
    "startup",
    "state_for",
]
