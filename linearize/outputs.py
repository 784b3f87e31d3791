"""Where a command may write, and one run at a time per directory.

A user's files are never deleted or overwritten by a command that did not create them. Every
directory the toolkit writes (a saved model, a run directory of checkpoints, an evaluation
directory) carries a hidden marker, ``.linearize-output.json``, naming its kind and the files it
wrote. A command may write into a directory that

* does not exist, or is empty, or
* carries the marker of the same kind and holds nothing the marker does not list,

and refuses anything else with an :class:`~linearize.errors.OutputError` naming the directory,
what is in it and ``--overwrite``. ``--overwrite`` allows replacing a directory of the user's,
but never one that holds the teacher or contains the current directory. All of this is checked,
with writability, before a model is loaded.

A run holds a lock for each directory it writes (``.NAME.lock`` beside it: pid, host, start
time, command). A second run is refused naming the first; a lock left by a process that no
longer exists on this host is stale and taken over.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import OutputError, RunLockedError

MARKER = ".linearize-output.json"
KINDS = ("model", "run", "eval")
# Files an earlier linearize model output may hold without a marker (older versions wrote none).
MODEL_FILES = {
    "config.json", "generation_config.json", "model.safetensors", "model.safetensors.index.json", "README.md",
    "linearize_report.json", "metrics.jsonl", "loss.png", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt", "tokenizer.model",
    "added_tokens.json",
}
# What a run directory and an evaluation directory hold (their markers list exactly these).
RUN_FILES = ("metrics.jsonl", "loss.png", "transfer", "recovery", "softmax_layers.json")
EVAL_FILES = ("tasks", "results", "samples", "report.md", "summary.json")


@dataclass(frozen=True)
class OutputDir:
    """A directory a command will write, and the flag that chose it (for messages)."""

    path: Path
    kind: str
    flag: str


def describe_entries(entries: list[Path], limit: int = 4) -> str:
    """'a.txt, photos/ and 3 more': directory entries for a message (directories end in /)."""
    names = [p.name + ("/" if p.is_dir() else "") for p in sorted(entries)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_marker(directory: Path) -> dict | None:
    try:
        data = json.loads((Path(directory) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_marker(directory: Path, kind: str, files: list[str] | None = None) -> None:
    """Mark ``directory`` as a ``kind`` output of linearize that holds ``files`` (default: what is there)."""
    from . import __version__

    directory = Path(directory)
    if files is None:
        files = sorted(p.name for p in directory.iterdir() if p.name != MARKER)
    data = {"kind": kind, "linearize": __version__, "files": sorted(set(files))}
    tmp = directory / f"{MARKER}.tmp"
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, directory / MARKER)


def foreign_entries(directory: Path, kind: str) -> list[Path] | None:
    """What in ``directory`` is not a ``kind`` output of linearize (None: no marker, not recognisable)."""
    entries = [p for p in directory.iterdir() if p.name != MARKER and not _is_our_lock(p)]
    marker = read_marker(directory)
    if marker is not None:
        if marker.get("kind") != kind:
            return entries or None
        listed = set(marker.get("files") or [])
        return [p for p in entries if p.name not in listed]
    if not entries:
        return []
    if kind == "model" and _legacy_model_output(directory):
        return [p for p in entries if p.name not in MODEL_FILES and not (p.suffix == ".py" and p.is_file())]
    if kind == "run" and _legacy_output(directory, entries, RUN_FILES, ("transfer/checkpoint/meta.json",
                                                                      "recovery/checkpoint/meta.json")):
        return []
    if kind == "eval" and _legacy_output(directory, entries, EVAL_FILES, ("summary.json",)):
        return []
    return None


def _legacy_output(directory: Path, entries: list[Path], names: tuple[str, ...], evidence: tuple[str, ...]) -> bool:
    """Written by a linearize version without markers: only our names, and a file only we write."""
    return all(p.name in names for p in entries) and any((directory / e).is_file() for e in evidence)


def _legacy_model_output(directory: Path) -> bool:
    """A model directory written by a linearize version without markers: a converted config and a report."""
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and "linearization" in config and (directory / "linearize_report.json").is_file()


def _is_our_lock(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".lock")


def _contains(outer: Path, inner: Path) -> bool:
    return inner == outer or outer in inner.parents


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output(
    path: str | Path,
    kind: str,
    flag: str,
    *,
    overwrite: bool = False,
    protected: dict[str, Path] | None = None,
) -> OutputDir:
    """Check that a ``kind`` output may be written at ``path`` (see module docstring); raise OutputError if not.

    ``protected`` maps a description ("the teacher") to a path the output must never contain.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    shown = str(path)
    target = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if _contains(target, cwd):
        where = "is" if target == cwd else "contains"
        raise OutputError(f"{flag} {shown}: refusing to write there, it {where} the current directory; choose a new directory")
    for what, location in (protected or {}).items():
        location = Path(location).expanduser().resolve()
        if _contains(target, location):
            raise OutputError(f"{flag} {shown}: refusing to write there, it holds {what} ({location.name})")
    if target.exists() and not target.is_dir():
        raise OutputError(f"{flag} {shown}: a file of that name exists; choose a directory path")
    if target.is_dir():
        foreign = foreign_entries(target, kind)
        if foreign is None or foreign:
            if not overwrite:
                what = "is not an earlier linearize output" if foreign is None else "holds files linearize did not write"
                listed = describe_entries(foreign if foreign else list(target.iterdir()))
                raise OutputError(
                    f"{flag} {shown}: the directory {what} ({listed}); choose another {flag} or pass --overwrite to replace it"
                )
    existing = _nearest_existing(target)
    if not existing.is_dir():
        raise OutputError(f"{flag} {shown}: cannot create it, {existing} is a file")
    try:  # the real test of writability (permissions, read-only file systems, root or not)
        Path(tempfile.mkdtemp(prefix=".linearize-probe-", dir=existing)).rmdir()
    except OSError as err:
        raise OutputError(f"{flag} {shown}: cannot write to {existing} ({err.strerror or err})") from None
    return OutputDir(target, kind, flag)


def check_distinct(*outputs: OutputDir) -> None:
    """No output directory may be, or contain, another one of the same command."""
    for i, a in enumerate(outputs):
        for b in outputs[i + 1 :]:
            if _contains(a.path, b.path) or _contains(b.path, a.path):
                same = "are the same directory" if a.path == b.path else "are nested"
                raise OutputError(f"{a.flag} and {b.flag} {same} ({b.path}); give them separate directories")


# ----- locks ----------------------------------------------------------------------------------------
def lock_path(directory: Path) -> Path:
    directory = Path(directory)
    return directory.with_name(f".{directory.name}.lock")


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), to tell a live process from a reused pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _missing_parents(path: Path) -> list[Path]:
    """The ancestors of ``path`` that do not exist yet, deepest first."""
    missing = []
    for parent in path.parents:
        if parent.exists():
            break
        missing.append(parent)
    return missing


def _alive(info: dict) -> bool:
    try:
        pid = int(info.get("pid", 0))
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    started = info.get("proc_start")
    return started is None or _process_start(pid) in (None, started)


def _lock_info() -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "proc_start": _process_start(os.getpid()),
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "",
    }


class DirectoryLock:
    """Exclusive use of a directory by this process, as a lock file beside it."""

    def __init__(self, directory: str | Path, flag: str = "the directory"):
        self.directory = Path(directory).expanduser().resolve()
        self.flag = flag
        self.path = lock_path(self.directory)
        self.held = False
        self._created: list[Path] = []

    def acquire(self) -> DirectoryLock:
        self._created = _missing_parents(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read()
                if info is not None and (info.get("fresh") or info.get("host") != socket.gethostname() or _alive(info)):
                    self._remove_created()
                    raise RunLockedError(
                        f"{self.flag} {self.directory} is in use by another run (pid {info.get('pid')} on "
                        f"{info.get('host')}, started {info.get('started')}: {info.get('command')}); wait for it, or "
                        f"remove {self.path} if that run is gone"
                    ) from None
                self._remove_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(_lock_info(), f)
            self.held = True
            return self
        self._remove_created()
        raise RunLockedError(f"{self.flag} {self.directory}: could not take the lock {self.path}")

    def _read(self) -> dict | None:
        """The lock's owner; None for a lock file that is neither readable nor fresh (stale)."""
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            try:
                age = time.time() - self.path.stat().st_mtime
            except OSError:
                return None
            # An empty file a few seconds old is a run that is writing its lock right now.
            return {"pid": "?", "host": socket.gethostname(), "started": "just now", "command": "?", "fresh": True} \
                if age < 5 else None

    def _remove_created(self) -> None:
        """Remove the parent directories this lock created, if they are still empty."""
        for directory in self._created:
            with contextlib.suppress(OSError):
                directory.rmdir()

    def _remove_stale(self) -> None:
        stale = self.path.with_name(f"{self.path.name}.stale-{os.getpid()}")
        with contextlib.suppress(OSError):
            os.replace(self.path, stale)
            stale.unlink()

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                if (self._read() or {}).get("pid") == os.getpid():
                    self.path.unlink()
            self.held = False
            self._remove_created()

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


@contextlib.contextmanager
def locked(*outputs: OutputDir):
    """Hold the locks of ``outputs`` (in a fixed order) for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for out in sorted(outputs, key=lambda o: str(o.path)):
            stack.enter_context(DirectoryLock(out.path, out.flag))
        yield
