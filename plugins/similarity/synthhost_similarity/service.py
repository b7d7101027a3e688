"""The similarity check itself: embed, search the workspace's library, decide, record.

Which text is checked: the **last user message** of the request (its text parts when
the content is a list), or the whole prompt when there is no user message. In a chat,
earlier turns were checked when they were sent, and comparing whole conversations
would mostly measure their shared system prompt.

Two modes, by flag (the plugin is active when either is on):

- ``enable_prompt_similarity_check`` (act): ``pre_call`` checks the prompt on the call
  path, once per call (not per retry). A score >= the workspace threshold takes the
  workspace action: ``blocked`` denies the call with ``SIMILARITY_BLOCKED`` before the
  provider; ``flagged``/``warned`` are recorded on the span (``similarity.*``
  attributes) and as a ``prompt_similarity_flagged`` event; below it, ``allowed``.
- ``enable_similarity_logging`` alone (log): ``post_call`` writes the prompt to the
  ``similarity_queue`` table (through the batched writer: the call never waits), and
  the delivering process (this one by default, a ``synthhost worker`` with
  ``SYNTHHOST_DELIVERY=worker``) does the same embedding and search off the call path
  and records action ``allowed`` (nothing is acted on; the score and threshold are
  there). Nothing is dropped when it falls behind: the backlog waits in the table and
  its depth is in ``synthhost health`` (see :mod:`synthhost_similarity.logger`).

Every checked prompt writes one ``prompt_similarity_logs`` row (whichever flag asked for
it: a decision without its row could not be audited), emits ``prompt_similarity_logged``
with the same fields, and then joins the workspace's library as a ``prompt`` reference
(unless that exact text is already in it: the earliest copy stays the reference).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Final

import anyio
import numpy as np

from synthhost.call import Call, StashKey, new_id
from synthhost.errors import Denied, ErrorCode, UsageError
from synthhost.gil import pause
from synthhost.storage.models import utcnow
from synthhost_similarity.embedders import Embedder, Vector, make_embedder
from synthhost_similarity.flags import FLAG_CHECK as FLAG_CHECK
from synthhost_similarity.flags import FLAG_LOG as FLAG_LOG
from synthhost_similarity.index import EXACT_LIMIT
from synthhost_similarity.logger import QUEUE, LogConsumer, Origin
from synthhost_similarity.models import (
    ACTIONS,
    LOG_REFERENCE_TEXT_CAP,
    PROMPT_CAP,
    REFERENCE_TEXT_CAP,
    PromptReference,
    PromptSimilarityLog,
    vector_to_bytes,
)
from synthhost_similarity.store import Ref, ReferenceStore, WorkspaceLibrary, text_hash

if TYPE_CHECKING:
    from synthhost.host import Host

LOGS = PromptSimilarityLog.__table__
REFS = PromptReference.__table__

log = logging.getLogger("synthhost.similarity")

DEFAULT_THRESHOLD: Final = Decimal("0.85")
DEFAULT_ACTION: Final = "blocked"
DEFAULT_MAX_REFERENCES: Final = 100_000
EVENT_LOGGED: Final = "prompt_similarity_logged"
EVENT_FLAGGED: Final = "prompt_similarity_flagged"

CHECKED = StashKey["Outcome"]()  # set once a call's prompt was checked (or queued)


def checked_text(call: Call) -> str:
    """The text a call is checked on (see the module docstring)."""
    for message in reversed(call.request.messages):
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return "\n".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("text"))
    return call.request.prompt


def storable(text: str) -> str:
    """``text`` without lone surrogates (JSON payloads can carry them; neither
    PostgreSQL text nor jsonb accepts them)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def parse_threshold(value: str | float | Decimal, source: str) -> Decimal:
    try:
        threshold = Decimal(str(value))
    except InvalidOperation:
        raise UsageError(f"{source}: threshold {value!r} is not a number") from None
    if not (Decimal(0) < threshold <= Decimal(1)):
        raise UsageError(f"{source}: threshold {value} must be in (0, 1]")
    return threshold.quantize(Decimal("0.00001"))


def parse_action(value: str, source: str) -> str:
    action = value.strip().lower()
    if action not in ACTIONS or action == "allowed":
        raise UsageError(f"{source}: action {value!r} must be one of blocked, flagged, warned")
    return action


def parse_max_references(value: str | None) -> int:
    """``SYNTHHOST_SIMILARITY_MAX_REFERENCES``: logged prompts kept per workspace
    (default 100,000; ``0``: no bound)."""
    if value is None or not value.strip():
        return DEFAULT_MAX_REFERENCES
    try:
        bound = int(value.replace("_", "").replace(",", ""))
    except ValueError:
        bound = -1
    if bound < 0:
        raise UsageError(f"SYNTHHOST_SIMILARITY_MAX_REFERENCES: {value!r} must be a whole number >= 0")
    return bound


@dataclass(frozen=True, slots=True)
class Outcome:
    log_id: str
    score: float | None
    threshold: Decimal
    action: str
    method: str
    reference: Ref | None
    prompt_hash: str
    latency_ms: float
    mode: str

    def fields(self, prompt: str) -> dict[str, Any]:
        """The event's context: the log row's fields, JSON-friendly, prompt capped."""
        ref = self.reference
        return {
            "log_id": self.log_id,
            "prompt": prompt[:PROMPT_CAP],
            "prompt_hash": self.prompt_hash,
            "score": None if self.score is None else round(self.score, 5),
            "threshold": float(self.threshold),
            "method": self.method,
            "reference_id": ref.id if ref else None,
            "reference_kind": ref.kind if ref else None,
            "reference_text": ref.preview[:LOG_REFERENCE_TEXT_CAP] if ref else None,
            "action": self.action,
            "mode": self.mode,
            "latency_ms": round(self.latency_ms, 3),
        }


@dataclass(frozen=True, slots=True)
class GrowJob:
    library: WorkspaceLibrary


_STOP: Final = object()


class SimilarityService:
    """Per-host state: the embedder, the reference store and the background logger."""

    def __init__(self, host: Host, embedder: Embedder | None = None) -> None:
        env: Mapping[str, str] = host.settings.env
        self.host = host
        self.embedder = embedder or make_embedder(env)
        self.method = f"cosine:{self.embedder.name}"
        self.default_threshold = parse_threshold(
            env.get("SYNTHHOST_SIMILARITY_THRESHOLD") or DEFAULT_THRESHOLD,
            "SYNTHHOST_SIMILARITY_THRESHOLD",
        )
        self.default_action = parse_action(
            env.get("SYNTHHOST_SIMILARITY_ACTION") or DEFAULT_ACTION, "SYNTHHOST_SIMILARITY_ACTION"
        )
        self.store = ReferenceStore(
            host.engine,
            self.embedder.name,
            refresh_s=float(env.get("SYNTHHOST_SIMILARITY_REFRESH_S") or 1.0),
            overlap_s=float(env.get("SYNTHHOST_SIMILARITY_REFRESH_OVERLAP_S") or 15.0),
            exact_limit=int(env.get("SYNTHHOST_SIMILARITY_EXACT_LIMIT") or EXACT_LIMIT),
            max_references=parse_max_references(env.get("SYNTHHOST_SIMILARITY_MAX_REFERENCES")),
            stats=host.stats,
        )
        # Index growth (copying a large matrix) runs on a thread of its own.
        self._queue: queue.Queue[GrowJob | object] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = False
        # Logging is worked off where delivery happens (see synthhost_similarity.logger).
        self.consumer = LogConsumer(self) if host.delivery == "inline" else None
        self._refresh_stop = threading.Event()
        self._refresher: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._stopped = False
        if self.consumer is not None:
            self.consumer.start()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="synthhost-similarity", daemon=True)
            self._thread.start()
        if self._refresher is None:
            self._refresh_stop.clear()
            self._refresher = threading.Thread(target=self._refresh_loop, name="synthhost-similarity-refresh",
                                               daemon=True)
            self._refresher.start()

    def stop(self, timeout: float) -> bool:
        """Log the queued prompts (bounded by ``timeout``; the rest stay queued in the
        table) and stop the threads."""
        ok = self.consumer.stop(timeout) if self.consumer is not None else True
        self._stopped = True
        self._refresh_stop.set()
        refresher, self._refresher = self._refresher, None
        if refresher is not None:
            refresher.join(timeout)
        thread, self._thread = self._thread, None
        if thread is None:
            return ok
        self._queue.put(_STOP)
        thread.join(timeout)
        return ok and not thread.is_alive()

    # -- the check (call path) ------------------------------------------------------------

    async def check(self, call: Call) -> None:
        if CHECKED in call.stash:
            return  # a retry or reroute of a call already checked
        prompt = storable(checked_text(call))
        if not prompt.strip():
            return
        started = time.perf_counter()
        workspace = call.workspace
        library = self.store.library(workspace)
        if not library.loaded:
            # First use loads the library; after that the refresher thread keeps it in
            # step with the table, never the call path.
            await anyio.to_thread.run_sync(self.store.refresh, workspace)
        vector = (await self.embedder.aembed([prompt]))[0]
        outcome = self.evaluate(library, vector, text_hash(prompt), acting=True, started=started)
        call.stash[CHECKED] = outcome
        self.record(call, prompt, vector, library, outcome)
        call.attributes.update(
            {
                "similarity.score": None if outcome.score is None else round(outcome.score, 5),
                "similarity.threshold": float(outcome.threshold),
                "similarity.action": outcome.action,
                "similarity.reference_id": outcome.reference.id if outcome.reference else None,
                "similarity.method": outcome.method,
            }
        )
        if outcome.action in ("flagged", "warned"):
            call.emit(EVENT_FLAGGED, status="warning", **outcome.fields(prompt))
        elif outcome.action == "blocked":
            ref = outcome.reference
            assert ref is not None and outcome.score is not None
            raise Denied(
                ErrorCode.SIMILARITY_BLOCKED,
                f"prompt is {outcome.score:.3f} similar to {ref.kind} reference {ref.id} "
                f"(threshold {outcome.threshold})",
                score=round(outcome.score, 5),
                threshold=float(outcome.threshold),
                reference_id=ref.id,
                reference_kind=ref.kind,
                log_id=outcome.log_id,
            )

    def _refresh_loop(self) -> None:
        """Keep every loaded workspace's library in step with the table (other
        processes' prompts, known-prompt removals, settings), every refresh interval."""
        while not self._refresh_stop.wait(self.store.refresh_s):
            for workspace in self.store.workspaces():
                if self.store.library(workspace).loaded and self.store.needs_refresh(workspace):
                    try:
                        self.store.refresh(workspace)
                    except Exception as exc:  # a loaded library keeps serving
                        log.warning("similarity refresh of %s failed: %s", workspace, exc)

    # -- logging only (off the call path) -------------------------------------------------

    def enqueue(self, call: Call) -> None:
        if CHECKED in call.stash:
            return
        prompt = storable(checked_text(call))
        if not prompt.strip():
            return
        self.host.writer.submit_values(QUEUE, {
            "id": new_id(), "workspace_id": call.workspace, "user_id": call.user, "org_id": call.org,
            "run_id": call.run_id, "span_id": call.span_id, "trace_id": call.trace_id,
            "prompt": prompt[:REFERENCE_TEXT_CAP], "created_at": utcnow(),
        })
        if self.consumer is not None:
            self.consumer.wake()

    def _submit(self, job: GrowJob) -> bool:
        """Hand an index growth to the background thread; False when it cannot take it."""
        if self._stopped:
            return False
        if self._thread is None:  # start-up was skipped (a host used without ``async with``)
            self.start()
        self._queue.put_nowait(job)
        return True

    def _work(self) -> None:
        while True:
            pause()  # one prompt per GIL hold: calls waiting on a socket get back in
            job = self._queue.get()
            try:
                if job is _STOP:
                    return
                if isinstance(job, GrowJob):
                    index = job.library.index
                    if index is not None:
                        index.grow_ahead()
                    job.library.growing = False
            except Exception as exc:  # one bad prompt must not stop the logger
                self.host.stats["similarity.errors"] += 1
                log.warning("similarity logging failed: %s: %s", type(exc).__name__, exc)
            finally:
                self._queue.task_done()

    def log_prompt(self, origin: Origin, prompt: str) -> None:
        """Log one queued prompt (the consumer's thread)."""
        started = time.perf_counter()
        library = self.store.refresh(origin.workspace)  # no-op unless due
        vector = self.embedder.embed([prompt])[0]
        digest = text_hash(prompt)
        pause()
        outcome = self.evaluate(library, vector, digest, acting=False, started=started)
        pause()
        self.record(origin, prompt, vector, library, outcome)

    # -- shared -------------------------------------------------------------------------

    def evaluate(
        self,
        library: WorkspaceLibrary,
        vector: Vector,
        prompt_hash: str,
        *,
        acting: bool,
        started: float,
    ) -> Outcome:
        threshold = library.threshold if library.threshold is not None else self.default_threshold
        match = library.search(vector, float(threshold))
        score = match.score if match is not None else None
        action = "allowed"
        if acting and score is not None and score >= float(threshold):
            action = library.action or self.default_action
        return Outcome(
            log_id=new_id(),
            score=score,
            threshold=threshold,
            action=action,
            method=self.method,
            reference=match.item if match is not None else None,
            prompt_hash=prompt_hash,
            latency_ms=(time.perf_counter() - started) * 1000.0,
            mode="check" if acting else "log",
        )

    def record(self, call: Call | Origin, prompt: str, vector: Vector, library: WorkspaceLibrary,
               outcome: Outcome) -> None:
        """Queue the log row and the event, then add the prompt to the library."""
        digest = outcome.prompt_hash
        ref = outcome.reference
        # Plain values, not model instances: building two SQLModel rows per call would
        # cost more than the embedding.
        self.host.writer.submit_values(
            LOGS,
            {
                "id": outcome.log_id,
                "workspace_id": call.workspace,
                "user_id": call.user,
                "org_id": call.org,
                "run_id": call.run_id,
                "span_id": call.span_id,
                "trace_id": call.trace_id,
                "prompt": prompt[:PROMPT_CAP],
                "prompt_hash": digest,
                "score": None if outcome.score is None else Decimal(f"{outcome.score:.5f}"),
                "threshold": outcome.threshold,
                "method": outcome.method,
                "reference_id": ref.id if ref else None,
                "reference_kind": ref.kind if ref else None,
                "reference_text": ref.preview[:LOG_REFERENCE_TEXT_CAP] if ref else None,
                "action": outcome.action,
                "mode": outcome.mode,
                "latency_ms": round(outcome.latency_ms, 3),
                "created_at": utcnow(),
            },
        )
        status = {"blocked": "error", "flagged": "warning", "warned": "warning"}.get(outcome.action, "success")
        self.host.emit(EVENT_LOGGED, workspace=call.workspace, user=call.user, org=call.org, run_id=call.run_id,
                       trace_id=call.trace_id, span_id=call.span_id, status=status, **outcome.fields(prompt))
        self.add_reference(library, prompt, vector, "prompt", digest)

    def add_reference(
        self,
        library: WorkspaceLibrary,
        text: str,
        vector: Vector,
        kind: str,
        digest: str | None = None,
    ) -> str | None:
        """Queue a reference row and index it here at once. ``None`` when the exact text
        is already a reference of the workspace, or has no features to compare."""
        digest = digest or text_hash(text)
        if digest in library.hashes or not np.any(vector):
            return None
        ref_id = new_id()
        self.host.writer.submit_values(
            REFS,
            {
                "id": ref_id,
                "workspace_id": library.workspace,
                "kind": kind,
                "text": text[:REFERENCE_TEXT_CAP],
                "text_hash": digest,
                "embedder": self.embedder.name,
                "dim": int(vector.shape[-1]),
                "vector": vector_to_bytes(vector),
                "created_at": utcnow(),
            },
        )
        library.add(Ref(ref_id, kind, text[:LOG_REFERENCE_TEXT_CAP], digest), digest, vector)
        index = library.index
        if index is not None and index.needs_room() and not library.growing:
            # Copying a large matrix is for the worker thread, not the event loop.
            library.growing = self._submit(GrowJob(library))  # else: grown under the lock
        return ref_id
