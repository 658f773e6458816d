"""Files written under a temporary name beside their final one, flushed, then renamed into place.

A reader (or a run killed midway) never sees a half-written file under a final name. The
temporary file gets the permissions a normally created file would (``mkstemp`` makes it private).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import InputError

__all__ = ["fsync", "temporary_file"]


def fsync(path: str | os.PathLike, directory: bool = False) -> None:
    """Flush ``path`` (a file, or a folder's entries) to disk; a no-op where the OS does not allow it."""
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def make_folder(folder: Path, path: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"Cannot create the folder '{folder}' for '{path}' ({exc.strerror or exc}).") from exc


def temporary_file(path: str | os.PathLike) -> str:
    """An empty hidden file ``.<name>.XXXX.tmp`` beside ``path`` (its folder created), readable like any new file."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    make_folder(folder, path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise InputError(f"Cannot write into the folder '{folder}' ({exc.strerror or exc}); choose a folder you can write to.") from exc
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
    except OSError:
        pass
    return tmp


def _umask() -> int:
    """The process's umask, read without setting it (``os.umask`` would change it for every thread for a moment)."""
    try:
        with open("/proc/self/status") as fh:
            return next((int(line.split()[1], 8) for line in fh if line.startswith("Umask:")), 0o022)
    except (OSError, ValueError):
        return 0o022
