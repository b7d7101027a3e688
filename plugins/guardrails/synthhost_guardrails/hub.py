"""Guardrails AI validators (``hub:<name>`` in a guard set), run through
``guardrails.Guard().use(validator).validate(text)``.

Optional: ``pip install 'synthhost-guardrails[guardrails-ai]'`` plus each validator's own
package (``guardrails-ai-regex-match`` for ``hub:regex_match``; Guardrails AI 0.11 ships
no validators). Nothing here is imported until a guard set names a ``hub:`` validator.

``hub:<name>`` means ``guardrails/<name>``; ``hub:<namespace>/<name>`` names another
namespace. The validator is looked up in Guardrails' registry, importing
``guardrails_ai.<name>`` first if it is not registered yet; ``args`` are its
constructor's keyword arguments (``hub:regex_match`` takes ``regex`` and ``match_type``).

Offline (integrations.md section 5): Guardrails sends usage metrics to a hosted endpoint
unless ``~/.guardrailsrc`` says ``enable_metrics=false``, and re-reads that file each
time a ``Guard`` is made. Here every Guard is configured with
``allow_metrics_collection=False`` and the process-wide setting is forced off before any
validator is built; Guardrails' own OpenTelemetry spans are disabled too (they would
carry the validated text into whatever tracer provider the application installed);
``LITELLM_LOCAL_MODEL_COST_MAP=True`` is set (unless already set) so LiteLLM, if
something imports it, does not fetch its price map. Only rule-based validators are
offline: ML ones (toxic-language, detect-pii) download models when they run.

A Guardrails failure reason can quote the text (SecretsPresent lists the secrets it
found), so only the failing validator's class name is recorded, never the reason.
"""

from __future__ import annotations

import importlib
import os
import re
import threading
from typing import Any

from synthhost_guardrails.validators import PASS, Result, Validator

INSTALL = "pip install 'synthhost-guardrails[guardrails-ai]'"
_NAME = re.compile(r"(?:[a-z0-9_-]+/)?[a-z0-9_-]+")
_build_lock = threading.Lock()


class HubError(Exception):
    """A ``hub:`` validator that cannot be used here (one line)."""


def load() -> Any:
    """Import Guardrails AI with its telemetry off, or say how to install it."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    try:
        import guardrails
        from guardrails.settings import settings
    except ImportError:
        raise HubError(f"needs Guardrails AI, which is not installed: {INSTALL}") from None
    _offline(settings)
    return guardrails


def _offline(settings: Any) -> None:
    settings.rc.enable_metrics = False
    settings.disable_tracing = True


def check_name(name: str) -> None:
    if not _NAME.fullmatch(name):
        raise HubError(f"invalid validator name {name!r} (expected hub:<name> or hub:<namespace>/<name>)")


def resolve(name: str) -> type:
    """The validator class registered as ``name`` (``regex_match`` or ``ns/name``)."""
    check_name(name)
    namespace, _, short = name.rpartition("/")
    short = short.replace("-", "_")
    key = f"{namespace or 'guardrails'}/{short}"
    from guardrails.validator_base import validators_registry

    if key not in validators_registry:
        module = f"guardrails_ai.{short}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise  # the validator's own import failed: that is not "not installed"
            package = "guardrails-ai-" + short.replace("_", "-")
            raise HubError(f"validator {key} is not installed: pip install {package}") from None
    cls = validators_registry.get(key)
    if cls is None:
        raise HubError(f"no Guardrails AI validator is registered as {key!r}")
    return cls


class HubValidator(Validator):
    """One Guardrails AI validator in its own ``Guard``. It runs with Guardrails' FIX
    action when the entry says ``fix`` (its ``fix_value`` becomes the text) and NOOP
    otherwise; this plugin then applies its own action, so a Guardrails failure denies
    with ``GUARDRAIL_VIOLATION`` like a built-in's. Calls run in a worker thread."""

    name = "hub"
    can_fix = True  # known only when it runs: an unfixable failure under fix denies

    def __init__(self, name: str, args: dict[str, Any], on_fail: str) -> None:
        check_name(name)
        guardrails = load()
        cls = resolve(name)
        self.hub_name = name
        self.fixes = on_fail == "fix"
        action = guardrails.OnFailAction.FIX if self.fixes else guardrails.OnFailAction.NOOP
        from guardrails.settings import settings

        with _build_lock:  # Guard() rewrites process-wide settings: one at a time
            try:
                guard = guardrails.Guard(history_max_length=1)
                guard.configure(allow_metrics_collection=False)
                _offline(settings)  # Guard() has just re-read ~/.guardrailsrc
                guard.use(cls(**args, on_fail=action))
            except Exception as exc:
                detail = " ".join(str(exc).split()) or type(exc).__name__
                raise HubError(f"bad args: {detail}"[:300]) from None
        self.guard = guard
        self._lock = threading.Lock()

    def validate(self, text: str, fix: bool = False) -> Result:
        with self._lock:
            outcome = self.guard.validate(text)
        failed = [s for s in (outcome.validation_summaries or []) if s.validator_status == "fail"]
        if not failed and outcome.validation_passed:
            return PASS
        kinds = tuple(dict.fromkeys(str(s.validator_name) for s in failed)) or (self.hub_name,)
        fixed = None
        if fix and self.fixes and outcome.validation_passed and isinstance(outcome.validated_output, str):
            fixed = outcome.validated_output
        return Result(False, kinds, max(len(failed), 1), fixed)
