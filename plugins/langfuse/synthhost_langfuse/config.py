"""Settings, read from the host's environment snapshot (``host.settings.env``), never
from ``os.environ`` directly: an embedded host may be given its own environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# The outbox exporter's name and the events it takes (here, not in the exporter module,
# so that registering them does not import the SDK).
EXPORTER_NAME = "langfuse"
EVENT_TYPES = ("run_finished",)

DEFAULT_BASE_URL = "https://cloud.langfuse.com"


@dataclass(frozen=True, slots=True)
class LangfuseConfig:
    public_key: str
    secret_key: str
    base_url: str
    timeout_s: float = 5.0
    compression: str = "gzip"
    environment: str | None = None
    release: str | None = None
    flush_at: int | None = None
    flush_interval_s: float | None = None
    # Caps on what leaves the process: one input/output/metadata field, and a trace.
    max_field_chars: int = 8000
    max_observations: int = 1000
    # Outbox tuning (the lane reads these off the exporter object).
    batch_size: int = 100
    concurrency: int = 1
    flush_interval_s_outbox: float = 1.0
    retry_delay_s: float = 1.0
    max_retry_delay_s: float = 60.0

    @property
    def endpoint(self) -> str:
        return f"{self.base_url}/api/public/otel/v1/traces"

    def __repr__(self) -> str:  # the secret key never reaches a log line
        return f"LangfuseConfig(public_key={self.public_key!r}, base_url={self.base_url!r})"


def _num(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        return default


def load_config(env: Mapping[str, str]) -> tuple[LangfuseConfig | None, str]:
    """``(config, "")`` or ``(None, why the plugin is inert)``.

    Base URL order matches the SDK's: ``LANGFUSE_BASE_URL`` wins over the deprecated
    ``LANGFUSE_HOST``, then Langfuse Cloud."""
    public_key = (env.get("LANGFUSE_PUBLIC_KEY") or "").strip()
    secret_key = (env.get("LANGFUSE_SECRET_KEY") or "").strip()
    missing = [n for n, v in (("LANGFUSE_PUBLIC_KEY", public_key), ("LANGFUSE_SECRET_KEY", secret_key)) if not v]
    if missing:
        return None, f"{' and '.join(missing)} not set"
    if (env.get("LANGFUSE_TRACING_ENABLED") or "true").strip().lower() == "false":
        return None, "LANGFUSE_TRACING_ENABLED=false"
    if (env.get("OTEL_SDK_DISABLED") or "").strip().lower() == "true":
        return None, "OTEL_SDK_DISABLED=true"
    base_url = (env.get("LANGFUSE_BASE_URL") or env.get("LANGFUSE_HOST") or DEFAULT_BASE_URL).strip()
    compression = (env.get("LANGFUSE_OTEL_COMPRESSION") or "gzip").strip().lower()
    flush_at = env.get("LANGFUSE_FLUSH_AT")
    flush_interval = env.get("LANGFUSE_FLUSH_INTERVAL")
    return (
        LangfuseConfig(
            public_key=public_key,
            secret_key=secret_key,
            base_url=base_url.rstrip("/"),
            timeout_s=max(0.1, _num(env, "LANGFUSE_TIMEOUT", 5.0)),
            compression="none" if compression == "none" else "gzip",
            environment=(env.get("LANGFUSE_TRACING_ENVIRONMENT") or None),
            release=(env.get("LANGFUSE_RELEASE") or None),
            flush_at=(int(_num(env, "LANGFUSE_FLUSH_AT", 0)) or None) if flush_at else None,
            flush_interval_s=_num(env, "LANGFUSE_FLUSH_INTERVAL", 5.0) if flush_interval else None,
            max_field_chars=int(_num(env, "SYNTHHOST_LANGFUSE_MAX_FIELD_CHARS", 8000)),
            max_observations=int(_num(env, "SYNTHHOST_LANGFUSE_MAX_OBSERVATIONS", 1000)),
            batch_size=max(1, int(_num(env, "SYNTHHOST_LANGFUSE_BATCH_SIZE", 100))),
            concurrency=max(1, int(_num(env, "SYNTHHOST_LANGFUSE_CONCURRENCY", 1))),
            flush_interval_s_outbox=max(0.0, _num(env, "SYNTHHOST_LANGFUSE_FLUSH_INTERVAL_S", 1.0)),
            retry_delay_s=_num(env, "SYNTHHOST_LANGFUSE_RETRY_DELAY_S", 1.0),
            max_retry_delay_s=_num(env, "SYNTHHOST_LANGFUSE_MAX_RETRY_DELAY_S", 60.0),
        ),
        "",
    )
