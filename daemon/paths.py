"""Saying which part of a path is in the way: a folder that cannot be made because a file
sits where one of its parents should be (the state directory, a socket's folder)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def not_a_directory(path: Path) -> Path | None:
    """The first of ``path`` and its parents that exists and is not a directory."""
    for existing in (path, *path.parents):
        try:
            mode = os.stat(existing).st_mode
        except OSError:  # not there (or below a file): look further up
            continue
        return None if stat.S_ISDIR(mode) else existing
    return None
