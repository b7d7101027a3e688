"""Reading a user's file: a regular file (not a device, pipe or directory), at most a
bounded size, UTF-8. ``/dev/zero`` or ``/dev/full`` as a policy file is refused at once
instead of being read until memory runs out."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from synthhost.errors import UsageError

MAX_FILE_BYTES = 1 << 20


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
