import sys

import pytest

# Hosts built in tests never scan entry points unless a test asks (llm's convention).
sys._called_from_test = True  # type: ignore[attr-defined]


pytest_plugins = ["pytester"]


@pytest.fixture
def anyio_backend() -> str:
    """This repository's async tests run on asyncio (the trio tests ask for trio)."""
    return "asyncio"
