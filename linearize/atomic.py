"""Write an output directory atomically: into a temporary sibling, then rename into place.

A failure at any point leaves the destination exactly as it was (absent, or the previous run).
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_directory(destination: str | Path, overwrite: bool = True):
    """Yield a temporary directory; on success it replaces ``destination``."""
    destination = Path(destination).expanduser().resolve()
    if destination.exists() and not overwrite:
        raise FileExistsError(f"output directory exists: {destination}")
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    backup = None
    if destination.exists():
        backup = destination.with_name(f".{destination.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        destination.rename(backup)
    tmp.rename(destination)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)
