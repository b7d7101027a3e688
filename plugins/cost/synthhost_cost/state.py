"""The cost plugin's per-host state and hot path: the price book, the override refresh
thread, and pricing one attempt into a row, span attributes and an event.

Kept apart from :mod:`synthhost_cost.plugin` (the hooks) because it imports
genai-prices and SQLAlchemy: the plugin module must stay cheap to import, since the CLI
imports every plugin to list their commands. This module loads at a host's start-up.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Final

from synthhost import StashKey
from synthhost.call import ID_SCOPE, new_id
from synthhost_cost.models import COST_LOGS
from synthhost_cost.plugin import DEFAULT_REFRESH_S, NO_USAGE, UNPRICED_MEMORY
from synthhost_cost.pricing import ZERO_COST, Cost, PriceBook, PricingError, Quote
from synthhost_cost.store import load_overrides, overrides_marker

if TYPE_CHECKING:
    from synthhost.call import Call
    from synthhost.host import Host

log = logging.getLogger("synthhost.cost")

_SPENT = StashKey[Decimal]()  # the call's USD cost so far
_UNPRICED = StashKey[bool]()  # an attempt of the call had no known price

ZERO_STR: Final = "0.0000000000"


class CostState:
    """What the plugin keeps per host: the price book, the unpriced-event dedupe, and
    the override refresh thread."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.book = PriceBook()
        self.unpriced_seen: set[tuple[str, str, str]] = set()
        self.refresh_s = float(host.settings.env.get("SYNTHHOST_COST_PRICE_REFRESH_S", DEFAULT_REFRESH_S))
        self._marker: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        # Row ids: 32 hex like the host's, a random per-host prefix plus a counter
        # (uuid4 costs several µs on the hot path; this costs a fraction of one).
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    # -- overrides ----------------------------------------------------------------------

    def reload(self) -> None:
        with self._lock:
            marker = overrides_marker(self.host.engine)
            self.book.set_overrides(load_overrides(self.host.engine))
            self._marker = marker

    def poll_once(self) -> bool:
        if overrides_marker(self.host.engine) != self._marker:
            self.reload()
            return True
        return False

    def start(self) -> None:
        if self._thread is None and self.refresh_s > 0:
            self._thread = threading.Thread(target=self._poll, name="synthhost-cost-prices", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                self.poll_once()
            except Exception as exc:  # the DB may be briefly away: keep the last prices
                log.warning("price override refresh failed: %s", exc)

    # -- the hot path -------------------------------------------------------------------

    def record(
        self,
        call: Call,
        provider: str,
        model: str,
        usage: tuple[int, int, int, int, int],
        *,
        failed: bool,
        error_code: str | None = None,
        note: str | None = None,
    ) -> None:
        """Price one attempt, queue its row, update the span, emit the event."""
        quote: Quote | None = None
        cost: Cost | None
        source: str | None
        if usage == NO_USAGE and (failed or note is not None):
            cost, source, version = ZERO_COST, "no-usage", None
            if note is None:
                note = "attempt failed without reported usage: zero cost"
            currency = "USD"
        else:
            quote = self.book.quote(call.workspace, provider, model, call.started_at)
            currency, source, version = quote.currency, quote.source, quote.version
            cost = None
            if quote.priced:
                try:
                    cost = quote.cost(usage, call.started_at)
                except PricingError as exc:
                    note = f"usage cannot be priced: {exc}"[:300]
        priced = cost is not None
        stash = call.stash
        if not priced:
            stash[_UNPRICED] = True
            self._unpriced(call, provider, model, quote, note)
        status = "failed" if failed else "ok"
        # Inside a durable step: the step's deterministic id (written once however often
        # the step runs, see synthhost.steps).
        row_id = new_id() if ID_SCOPE.get() is not None else f"{self._id_prefix}{next(self._ids):016x}"
        price_model = quote.model_id if quote is not None else None
        # submit_values, not submit(ModelCostLog(...)): the same queue and insert, without
        # building an SQLModel instance (~60 µs, three times this whole hook).
        self.host.writer.submit_values(
            COST_LOGS,
            {
                "id": row_id,
                "workspace_id": call.workspace,
                "user_id": call.user,
                "org_id": call.org,
                "run_id": call.run_id,
                "trace_id": call.trace_id,
                "span_id": call.span_id,
                "agent": call.agent,
                "step": call.step,
                "attempt": call.attempt,
                "status": status,
                "error_code": error_code,
                "provider": provider,
                "model_requested": call.requested_model,
                "model_billed": model,
                "price_provider": quote.provider_id if quote is not None else None,
                "price_model": price_model,
                "input_tokens": usage[0],
                "cache_read_tokens": usage[1],
                "cache_write_tokens": usage[2],
                "output_tokens": usage[3],
                "reasoning_tokens": usage[4],
                "input_cost": cost.input if cost else None,
                "cache_read_cost": cost.cache_read if cost else None,
                "cache_write_cost": cost.cache_write if cost else None,
                "output_cost": cost.output if cost else None,
                "total_cost": cost.total if cost else None,
                "currency": currency,
                "priced": priced,
                "price_source": source,
                "price_version": version,
                "note": note,
                "created_at": datetime.now(UTC),
            },
        )

        if cost is not None:
            c_in, c_out, c_tot, c_cr, c_cw = cost
            costs: tuple[str | None, ...] = (
                f"{c_in:f}" if c_in else ZERO_STR,
                f"{c_out:f}" if c_out else ZERO_STR,
                f"{c_tot:f}" if c_tot else ZERO_STR,
                f"{c_cr:f}" if c_cr else ZERO_STR,
                f"{c_cw:f}" if c_cw else ZERO_STR,
            )
        else:
            costs = (None, None, None, None, None)
        # The span: the call's cost over its attempts, in USD, or nothing if unknown.
        attributes = call.attributes
        if _UNPRICED in stash:
            attributes.pop("cost_usd", None)
        elif cost is not None and currency == "USD":
            if _SPENT in stash:  # an earlier attempt of this call cost something too
                spent = stash[_SPENT] + cost.total
                stash[_SPENT] = spent
                attributes["cost_usd"] = f"{spent:f}" if spent else ZERO_STR
            else:
                stash[_SPENT] = cost.total
                attributes["cost_usd"] = costs[2]
        figures: dict[str, Any] = {
            "provider": provider,
            "model": model,
            "model_requested": call.requested_model,
            "attempt": call.attempt,
            "attempt_status": status,
            "input_tokens": usage[0],
            "cache_read_tokens": usage[1],
            "cache_write_tokens": usage[2],
            "output_tokens": usage[3],
            "reasoning_tokens": usage[4],
            "input_cost": costs[0],
            "cache_read_cost": costs[3],
            "cache_write_cost": costs[4],
            "output_cost": costs[1],
            "total_cost": costs[2],
            "currency": currency,
            "priced": priced,
            "price_source": source,
            "price_version": version,
            "price_model": price_model,
            "cost_log_id": row_id,
        }
        attributes["cost"] = figures
        self.host.emit("llm_cost_logged", call=call, status="error" if failed else "success", **figures)

    def _unpriced(self, call: Call, provider: str, model: str, quote: Quote | None, note: str | None) -> None:
        key = (provider, model, call.workspace)
        if key in self.unpriced_seen:
            return
        if len(self.unpriced_seen) >= UNPRICED_MEMORY:
            self.unpriced_seen.clear()
        self.unpriced_seen.add(key)
        reason = note or (quote.reason if quote is not None else None) or "no known price"
        call.emit("llm_cost_unpriced", status="warning", provider=provider, model=model, reason=reason)
        log.warning("no price for %s/%s (workspace %s): %s", provider, model, call.workspace, reason)
