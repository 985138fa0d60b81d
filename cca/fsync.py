"""Durable file names: after creating, linking or renaming a file, its directory must be
fsync'ed too, or a crash can lose the new name even though the data reached the disk."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
