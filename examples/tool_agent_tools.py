"""Python tools for examples/tool-agent.yaml: typed functions, their argument schema
derived from the type hints."""

from __future__ import annotations

from typing import Literal


def ticket_priority(subject: str, customer_tier: Literal["free", "pro", "enterprise"] = "free") -> str:
    """Suggest a ticket priority from its subject and the customer's tier."""
    urgent = any(word in subject.lower() for word in ("down", "outage", "cannot log in", "breach"))
    if urgent:
        return "P1" if customer_tier == "enterprise" else "P2"
    return "P3" if customer_tier == "free" else "P2"
