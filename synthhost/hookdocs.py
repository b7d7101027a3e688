"""Render docs/hooks.md from synthhost/hookspecs.py, so the reference cannot drift.

    uv run python -m synthhost.hookdocs > docs/hooks.md

``tests/test_docs.py`` fails when the file differs from what this prints.
"""

from __future__ import annotations

import inspect

from synthhost import hookspecs


def render() -> str:
    out = [
        "# Hook reference",
        "",
        "Generated from `synthhost/hookspecs.py` by `python -m synthhost.hookdocs`; do not edit.",
        "",
        inspect.cleandoc(hookspecs.__doc__ or ""),
        "",
    ]
    for name in hookspecs.spec_names():
        fn = getattr(hookspecs, name)
        opts = getattr(fn, "synthhost_spec", {})
        sig = inspect.signature(fn)
        params = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
        out.append(f"## `{name}({params})`")
        out.append("")
        if opts.get("firstresult"):
            out.append("*First result wins.*")
            out.append("")
        out.append(inspect.cleandoc(fn.__doc__ or ""))
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
