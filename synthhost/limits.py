"""Bounds on user input: YAML that cannot alias-bomb or nest without end, and reading a
user's file: a regular file (not a device, pipe or directory), at most a
bounded size, UTF-8. ``/dev/zero`` or ``/dev/full`` as a policy file is refused at once
instead of being read until memory runs out."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from synthhost.errors import UsageError

MAX_FILE_BYTES = 1 << 20
MAX_YAML_ALIASES = 100  # anchors may be reused, but not into an alias bomb
MAX_YAML_DEPTH = 64  # nested collections


def read_text_file(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES, what: str = "file") -> str:
    """The text of ``path``; a :class:`UsageError` naming the file otherwise."""
    source = str(path)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{source}: is a directory, not a {what}")
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{source}: not a regular file (a device or pipe cannot be a {what})")
        with open(path, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except FileNotFoundError:
        raise UsageError(f"{source}: no such file") from None
    except OSError as exc:
        raise UsageError(f"{source}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise UsageError(f"{source}: larger than {max_bytes // 1024} KiB (a {what}'s limit)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


class LimitedLoader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs and absurd nesting before building anything."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_YAML_ALIASES:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"more than {MAX_YAML_ALIASES} aliases (*ref): refused",
                                           problem_mark=mark)
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.MarkedYAMLError(problem=f"nested deeper than {MAX_YAML_DEPTH} levels: refused",
                                           problem_mark=mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the alias and depth limits."""
    loader = LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
