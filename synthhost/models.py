"""The model list: named provider deployments that agents, routing and the gateway
can address by model name or alias.

Read from ``SYNTHHOST_CONFIG`` or, when unset, ``synthhost.yaml`` in the working
directory (or ``SYNTHHOST_AGENTS_DIR``) when it exists. Without a file the host works as
before: ``provider/model`` strings address the providers configured by environment
(``OPENAI_*``, ``ANTHROPIC_*``, ``GEMINI_*``), and a bare name goes to ``echo``.

.. code-block:: yaml

    deployments:
      - name: openai-main            # unique; also usable as a provider: "openai-main/gpt-4o"
        provider: openai             # openai | anthropic | gemini | echo
        model: gpt-4o-mini           # the name agents and clients ask for
        upstream_model: gpt-4o-mini  # what is sent to the endpoint (default: model)
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY  # the *name* of a variable; never the key itself
        timeout_s: 60
        headers: {OpenAI-Organization: org-1}
        aliases: [fast]
        weight: 1                    # share of this deployment among those of one model
        price_as: openai             # genai-prices provider id (default by kind; none: unpriced)

A bare model name (``gpt-4o-mini``) or alias (``fast``) that the list knows resolves
to one of its deployments, load-balanced by weight (smooth weighted round-robin, per
process); when a deployment fails with a retryable error, the default recovery moves
the call to the next untried deployment of the same model at once, before any
backoff.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synthhost.errors import UsageError

KINDS = ("openai", "anthropic", "gemini", "echo")
DEFAULT_PRICE_AS = {"openai": "openai", "anthropic": "anthropic", "gemini": "google", "echo": None}
DEFAULT_BASE_URLS = {
    "openai": "https://api.openai.com/v1",
    "anthropic": "https://api.anthropic.com",
    "gemini": "https://generativelanguage.googleapis.com",
}
_FIELDS = {"name", "provider", "model", "upstream_model", "base_url", "api_key_env", "timeout_s", "headers",
           "aliases", "weight", "price_as", "max_tokens"}
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class Deployment:
    name: str
    provider: str
    model: str
    upstream_model: str
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_s: float = 60.0
    headers: Mapping[str, str] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    weight: int = 1
    price_as: str | None = None
    max_tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "provider": self.provider, "model": self.model,
            "upstream_model": self.upstream_model, "base_url": self.base_url,
            "api_key_env": self.api_key_env, "timeout_s": self.timeout_s,
            "headers": sorted(self.headers), "aliases": list(self.aliases), "weight": self.weight,
            "price_as": self.price_as,
        }


class _Balancer:
    """Smooth weighted round-robin (nginx's): deterministic, spreads each weight evenly."""

    def __init__(self, deployments: Sequence[Deployment]) -> None:
        self.deployments = tuple(deployments)
        self._current = [0] * len(self.deployments)
        self._total = sum(d.weight for d in self.deployments)
        self._lock = threading.Lock()

    def pick(self) -> Deployment:
        if len(self.deployments) == 1:
            return self.deployments[0]
        with self._lock:
            best = 0
            for i, d in enumerate(self.deployments):
                self._current[i] += d.weight
                if self._current[i] > self._current[best]:
                    best = i
            self._current[best] -= self._total
            return self.deployments[best]


class ModelList:
    """Deployments by name, model groups by model name and alias."""

    def __init__(self, deployments: Sequence[Deployment] = (), source: str | None = None) -> None:
        self.source = source
        self.deployments: dict[str, Deployment] = {d.name: d for d in deployments}
        groups: dict[str, list[Deployment]] = {}
        for d in deployments:
            groups.setdefault(d.model, []).append(d)
        self.groups: dict[str, tuple[Deployment, ...]] = {k: tuple(v) for k, v in groups.items()}
        self.aliases: dict[str, str] = {}
        for d in deployments:
            for alias in d.aliases:
                self.aliases[alias] = d.model
        self._balancers = {name: _Balancer(group) for name, group in self.groups.items()}

    def __bool__(self) -> bool:
        return bool(self.deployments)

    def group_name(self, name: str) -> str | None:
        """The model-group name ``name`` means (itself or an alias's target), or None."""
        if name in self.groups:
            return name
        return self.aliases.get(name)

    def pick(self, name: str) -> Deployment | None:
        group = self.group_name(name)
        return self._balancers[group].pick() if group else None

    def next_untried(self, group: str, tried: Sequence[tuple[str, str]]) -> Deployment | None:
        """A deployment of ``group`` whose ``(name, upstream_model)`` is not in ``tried``."""
        done = set(tried)
        for d in self.groups.get(group, ()):
            if (d.name, d.upstream_model) not in done:
                return d
        return None

    # -- loading -------------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ModelList:
        explicit = env.get("SYNTHHOST_CONFIG")
        if explicit:
            path = Path(explicit)
            if not path.is_file():
                raise UsageError(f"SYNTHHOST_CONFIG: {explicit}: no such file")
            return cls.load(path)
        for folder in (Path.cwd(), Path(env["SYNTHHOST_AGENTS_DIR"]) if env.get("SYNTHHOST_AGENTS_DIR") else None):
            if folder is not None and (folder / "synthhost.yaml").is_file():
                return cls.load(folder / "synthhost.yaml")
        return cls()

    @classmethod
    def load(cls, path: Path) -> ModelList:
        import yaml

        from synthhost.limits import safe_load

        try:
            with open(path, "rb") as fh:
                raw = fh.read(MAX_CONFIG_BYTES + 1)
        except OSError as exc:
            raise UsageError(f"{path}: cannot read: {exc.strerror or exc}") from None
        if len(raw) > MAX_CONFIG_BYTES:
            raise UsageError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        try:
            data = safe_load(raw.decode("utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f":{mark.line + 1}" if mark is not None else ""
            raise UsageError(f"{path}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Any, source: str = "synthhost.yaml") -> ModelList:
        if not isinstance(data, Mapping):
            raise UsageError(f"{source}: expected a mapping with 'deployments'")
        unknown = set(data) - {"deployments"}
        if unknown:
            raise UsageError(f"{source}: unknown key {sorted(unknown)[0]!r} (expected 'deployments')")
        items = data.get("deployments") or []
        if not isinstance(items, list):
            raise UsageError(f"{source}: deployments: expected a list")
        deployments: list[Deployment] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            d = _deployment(item, f"{source}: deployments[{i}]")
            if d.name in seen:
                raise UsageError(f"{source}: deployments[{i}].name: duplicate deployment {d.name!r}")
            seen.add(d.name)
            deployments.append(d)
        models = {d.model for d in deployments}
        for d in deployments:
            for alias in d.aliases:
                if alias in models:
                    raise UsageError(f"{source}: deployment {d.name!r}: alias {alias!r} is also a model name")
        return cls(deployments, source)


def _deployment(item: Any, where: str) -> Deployment:
    if not isinstance(item, Mapping):
        raise UsageError(f"{where}: expected a mapping")
    unknown = set(item) - _FIELDS
    if unknown:
        raise UsageError(f"{where}: unknown field {sorted(map(str, unknown))[0]!r}")

    def text(key: str, required: bool = False) -> str | None:
        value = item.get(key)
        if value is None:
            if required:
                raise UsageError(f"{where}.{key}: required")
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > 256 or not value.isprintable():
            raise UsageError(f"{where}.{key}: expected a non-empty single-line string")
        return value

    name = text("name", True)
    provider = text("provider", True)
    model = text("model", True)
    assert name and provider and model
    if "/" in name:
        raise UsageError(f"{where}.name: {name!r} must not contain '/'")
    if provider not in KINDS:
        raise UsageError(f"{where}.provider: {provider!r} is not one of {', '.join(KINDS)}")
    base_url = text("base_url")
    if base_url is not None and not base_url.startswith(("http://", "https://")):
        raise UsageError(f"{where}.base_url: expected an http:// or https:// URL")
    api_key_env = text("api_key_env")
    if api_key_env is not None and not api_key_env.replace("_", "").isalnum():
        raise UsageError(f"{where}.api_key_env: expected the NAME of an environment variable, not a value")
    timeout = item.get("timeout_s", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
            or not 0 < timeout <= 3600:
        raise UsageError(f"{where}.timeout_s: expected seconds in (0, 3600]")
    weight = item.get("weight", 1)
    if isinstance(weight, bool) or not isinstance(weight, int) or not 1 <= weight <= 1000:
        raise UsageError(f"{where}.weight: expected an integer in [1, 1000]")
    max_tokens = item.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or not 1 <= max_tokens <= 10_000_000):
        raise UsageError(f"{where}.max_tokens: expected a positive integer")
    headers = item.get("headers") or {}
    if not isinstance(headers, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) and k.isprintable() and v.isprintable()
            for k, v in headers.items()):
        raise UsageError(f"{where}.headers: expected a mapping of header names to strings")
    aliases = item.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a and "/" not in a for a in aliases):
        raise UsageError(f"{where}.aliases: expected a list of names without '/'")
    price_as = item.get("price_as", DEFAULT_PRICE_AS[provider])
    if price_as in ("none", "", False):
        price_as = None
    if price_as is not None and not isinstance(price_as, str):
        raise UsageError(f"{where}.price_as: expected a genai-prices provider id or 'none'")
    return Deployment(
        name=name, provider=provider, model=model, upstream_model=text("upstream_model") or model,
        base_url=base_url, api_key_env=api_key_env, timeout_s=float(timeout), headers=dict(headers),
        aliases=tuple(aliases), weight=weight, price_as=price_as, max_tokens=max_tokens,
    )


def build_provider(deployment: Deployment, env: Mapping[str, str]) -> Any:
    """The provider instance serving ``deployment`` (its own client, URL and key)."""
    if deployment.provider == "echo":
        from synthhost.providers import echo

        return echo.from_env(env)
    key = env.get(deployment.api_key_env) if deployment.api_key_env else None
    common: dict[str, Any] = {
        "api_key": key, "timeout": deployment.timeout_s, "headers": deployment.headers, "name": deployment.name,
    }
    base = deployment.base_url or DEFAULT_BASE_URLS[deployment.provider]
    if deployment.provider == "openai":
        from synthhost.providers.openai import OpenAIProvider

        return OpenAIProvider(base, price_provider=deployment.price_as, **common)
    if deployment.provider == "anthropic":
        from synthhost.providers.anthropic import DEFAULT_MAX_TOKENS, AnthropicProvider

        provider: Any = AnthropicProvider(base, max_tokens=deployment.max_tokens or DEFAULT_MAX_TOKENS, **common)
    else:
        from synthhost.providers.gemini import GeminiProvider

        provider = GeminiProvider(base, **common)
    provider.price_provider = deployment.price_as
    return provider


def env_api_key_names(model_list: ModelList) -> list[str]:
    return sorted({d.api_key_env for d in model_list.deployments.values() if d.api_key_env})


__all__ = ["Deployment", "ModelList", "build_provider", "env_api_key_names"]
