"""Docs that cannot drift from the code."""

from __future__ import annotations

import inspect
from pathlib import Path

from synthhost import hookspecs
from synthhost.hookdocs import render

ROOT = Path(__file__).resolve().parent.parent


def test_hook_reference_is_generated_from_the_specs() -> None:
    assert (ROOT / "docs" / "hooks.md").read_text() == render(), (
        "docs/hooks.md is stale: run `uv run python -m synthhost.hookdocs > docs/hooks.md`"
    )


def test_every_hook_is_typed_and_documented() -> None:
    for name in hookspecs.spec_names():
        fn = getattr(hookspecs, name)
        doc = inspect.getdoc(fn) or ""
        assert ":param" in doc, f"{name}: document every argument"
        assert "Return value" in doc or "Return" in doc, f"{name}: document the return contract"
        sig = inspect.signature(fn)
        assert sig.return_annotation is not inspect.Signature.empty, name
        for param in sig.parameters.values():
            assert param.annotation is not inspect.Parameter.empty, f"{name}.{param.name}"


def test_every_hook_has_a_test() -> None:
    """datasette's guard: a hook nobody tests is a hook nobody knows works."""
    sources = "\n".join(p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
    sources += "\n".join(p.read_text() for p in (ROOT / "plugins").glob("*/tests/test_*.py"))
    missing = [name for name in hookspecs.spec_names() if f"def {name}(" not in sources]
    assert not missing, f"hooks without a test double implementing them: {missing}"
