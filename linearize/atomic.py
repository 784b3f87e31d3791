"""Write an output directory atomically: into a temporary sibling, then rename into place.

A failure at any point leaves the destination exactly as it was (absent, or the previous run).
"""

from __future__ import annotations

import contextlib
import os
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
    apply_umask_permissions(tmp)
    backup = None
    if destination.exists():
        backup = destination.with_name(f".{destination.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        destination.rename(backup)
    tmp.rename(destination)
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


def apply_umask_permissions(directory: Path) -> None:
    """Ordinary permissions (as the umask allows) instead of the temporary directory's private 0700."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
