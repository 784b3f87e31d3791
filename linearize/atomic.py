"""Write an output directory atomically: into a temporary sibling, then rename into place.

A failure at any point leaves the destination exactly as it was (absent, or the previous output).
An existing destination is replaced only when it is an earlier output of the same kind (see
:mod:`linearize.outputs`) or ``overwrite`` is set; the new directory carries the marker that
makes it recognisable next time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError
from .outputs import MARKER, foreign_entries, write_marker


@contextlib.contextmanager
def atomic_directory(destination: str | Path, kind: str = "model", overwrite: bool = False):
    """Yield a temporary directory; on success it replaces ``destination`` (see module docstring)."""
    destination = Path(destination).expanduser().resolve()
    _check_replaceable(destination, kind, overwrite)
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{destination.name}.tmp-", dir=destination.parent))
    try:
        yield tmp
        write_marker(tmp, kind, [p.name for p in tmp.iterdir() if p.name != MARKER])
        apply_umask_permissions(tmp)
        _check_replaceable(destination, kind, overwrite)  # again: the user may have added files meanwhile
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


def _check_replaceable(destination: Path, kind: str, overwrite: bool) -> None:
    if not destination.exists() or overwrite:
        return
    if not destination.is_dir():
        raise OutputError(f"{destination}: a file of that name exists")
    foreign = foreign_entries(destination, kind)
    if foreign is None or foreign:
        raise OutputError(
            f"{destination}: refusing to replace a directory that holds files linearize did not write; "
            "pass --overwrite to replace it"
        )


def apply_umask_permissions(directory: Path) -> None:
    """Ordinary permissions (as the umask allows) instead of the temporary directory's private 0700."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(directory, 0o777 & ~umask)
    for path in directory.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
