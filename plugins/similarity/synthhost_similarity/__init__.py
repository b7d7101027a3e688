"""synthhost plugin: per-workspace prompt similarity logging and blocking.

Flags ``enable_similarity_logging`` (log, off the call path) and
``enable_prompt_similarity_check`` (act on the call path), both default off. Each
checked prompt is embedded (default: the built-in offline ``hashed-ngram-v1``
embedder), compared by cosine with the workspace's reference library (its earlier
prompts plus curated known prompts) and logged to ``prompt_similarity_logs``. See
:mod:`synthhost_similarity.service` for the behaviour and
:mod:`synthhost_similarity.embedders` / :mod:`synthhost_similarity.index` for the
embedding and search.
"""

from synthhost_similarity.plugin import (
    post_call,
    pre_call,
    register_commands,
    register_flags,
    register_gate,
    register_health_checks,
    register_migrations,
    register_retention,
    service_for,
    shutdown,
    startup,
)

__all__ = [
    "post_call",
    "pre_call",
    "register_commands",
    "register_flags",
    "register_gate",
    "register_health_checks",
    "register_migrations",
    "register_retention",
    "service_for",
    "shutdown",
    "startup",
]
