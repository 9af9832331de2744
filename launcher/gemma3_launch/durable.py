"""Durable writes, shared by the launcher and the runtime (torch-free, stdlib only).

A rename makes a write visible atomically, but only an fsync makes it survive a crash of the node: the data of a
temporary file or directory is fsynced before it is renamed into place, and the directory holding the new name
after. (A killed process loses nothing the kernel already has; a lost node loses what was not fsynced.)
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | Path) -> None:
    """Make a rename or a new entry in directory `path` durable (a crash of the node could otherwise undo it)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | Path) -> None:
    """fsync every file and directory under `root` (before `root` is renamed into place)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dirpath)
