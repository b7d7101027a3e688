"""``synthhost serve``: the host as an HTTP service (OpenAI-compatible gateway, health,
metrics). See :func:`synthhost.gateway.app.create_app`."""

from synthhost.gateway.app import app_from_env, create_app

__all__ = ["app_from_env", "create_app"]
