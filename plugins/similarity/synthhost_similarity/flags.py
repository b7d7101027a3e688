"""The plugin's flag names, in a module of their own so that loading the plugin (every
CLI start does) does not import numpy and SQLAlchemy with the service."""

from __future__ import annotations

from typing import Final

FLAG_LOG: Final = "enable_similarity_logging"
FLAG_CHECK: Final = "enable_prompt_similarity_check"
