"""Files a command writes at the end of a long run: checked before the run starts, so that a typo in
a folder name costs an error line at once instead of the whole run."""

from __future__ import annotations

import os
from pathlib import Path


def check_writable(path: Path, option: str) -> None:
    """ValueError unless a file can be written at `path`: its folder exists and is writable, and the
    path itself is not a folder."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: folder {folder} does not exist")
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable")
