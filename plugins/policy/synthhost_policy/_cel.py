"""The Rust CEL extension of ``common-expression-language``, without its package.

``import cel`` runs the package's ``__init__``, which eagerly imports its interactive
REPL (typer, prompt_toolkit, rich): 0.5-1.5 s added to every ``synthhost`` command and
host start, since plugins are imported to collect their commands. The extension module
(``cel.cel``: ``compile``, ``Context``, ``Program``) is all we use, so it is loaded on
its own and registered as ``cel.cel``; a later ``import cel`` elsewhere reuses it.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING


def _load() -> ModuleType:
    loaded = sys.modules.get("cel.cel")
    if loaded is not None:
        return loaded
    spec = importlib.util.find_spec("cel")  # locating a package does not run it
    for location in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = Path(location) / f"cel{suffix}"
            if not path.is_file():
                continue
            loader = importlib.machinery.ExtensionFileLoader("cel.cel", str(path))
            ext_spec = importlib.util.spec_from_file_location("cel.cel", path, loader=loader)
            if ext_spec is None:
                break
            module = importlib.util.module_from_spec(ext_spec)
            sys.modules["cel.cel"] = module
            try:
                loader.exec_module(module)
            except BaseException:
                del sys.modules["cel.cel"]
                raise
            return module
    import cel as package  # another layout: pay for the full import

    return package


if TYPE_CHECKING:
    from cel import cel
else:
    cel = _load()

__all__ = ["cel"]
