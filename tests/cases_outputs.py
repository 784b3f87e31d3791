"""CLI error cases: output locations that hold the user's files, or cannot be written (see cli_cases.py).

Each ``setup`` writes the user's files; each ``check`` asserts they are all still there, byte for byte.
"""

import json
import os
import shutil
from pathlib import Path

from cli_cases import Case

USER_FILES = {"thesis.txt": b"chapter 1\n", "photos/cat.jpg": b"\xff\xd8\xff\xe0 a cat", "notes.md": b"# notes\n"}


def _user_files(directory: Path):
    def setup(tmp: Path) -> None:
        for name, data in USER_FILES.items():
            path = tmp / directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)

    def check(tmp: Path) -> None:
        for name, data in USER_FILES.items():
            assert (tmp / directory / name).read_bytes() == data, name

    return setup, check


def _both(*pairs):
    return (lambda tmp: [s(tmp) for s, _ in pairs]), (lambda tmp: [c(tmp) for _, c in pairs])


def _teacher_copy_with_notes():
    """A copy of the tiny teacher inside tmp (so the test may check it), plus the user's notes in it."""
    notes = _user_files(Path("teacher"))

    def setup(tmp: Path) -> None:
        shutil.copytree(os.environ["LINEARIZE_TEST_TEACHER"], tmp / "teacher")
        notes[0](tmp)

    def check(tmp: Path) -> None:
        notes[1](tmp)
        assert (tmp / "teacher" / "config.json").is_file() and (tmp / "teacher" / "model.safetensors").is_file()

    return setup, check


def _earlier_run(directory: Path, step: int = 2, steps: int = 8):
    """A run directory of an earlier run: marker, metrics and a recovery checkpoint at ``step``."""

    def setup(tmp: Path) -> None:
        run = tmp / directory
        ckpt = run / "recovery" / f"step-{step:06d}"
        ckpt.mkdir(parents=True)
        (ckpt / "state.pt").write_bytes(b"weights of the earlier run")
        (ckpt / "meta.json").write_text(json.dumps({"stage": "recovery", "step": step, "steps": steps,
                                                    "complete": False}))
        (run / "recovery" / "latest").write_text(ckpt.name + "\n")
        (run / "metrics.jsonl").write_text('{"stage": "recovery", "step": 1, "loss": 3.0}\n')
        (run / ".linearize-output.json").write_text(json.dumps(
            {"kind": "run", "files": ["metrics.jsonl", "loss.png", "transfer", "recovery"]}))

    def check(tmp: Path) -> None:
        assert (tmp / directory / "recovery" / f"step-{step:06d}" / "state.pt").read_bytes() == b"weights of the earlier run"
        assert (tmp / directory / "metrics.jsonl").read_text().startswith('{"stage": "recovery"')

    return setup, check


def _a_file(name: str):
    def setup(tmp: Path) -> None:
        (tmp / name).write_text("not a directory\n")

    return setup


def _live_lock(directory: Path):
    """Another run holds ``directory``: a lock whose pid is alive (this test process)."""

    def setup(tmp: Path) -> None:
        lock = tmp / directory.parent / f".{directory.name}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        lock.write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "2026-12-07 10:00:00",
                                    "command": "linearize teacher --out o"}))

    return setup


_mine = _user_files(Path("mine"))
_cwd = _user_files(Path("."))
_exp = _user_files(Path("exp/transfer"))
_run = _earlier_run(Path("o.train"))

OUTPUT_CASES: list[Case] = [
    Case("out-holds-user-files", "`--out` is a directory of the user's files",
         ("convert", "{teacher}", "--out", "{tmp}/mine"),
         "--out {tmp}/mine: the directory is not an earlier linearize output (notes.md, photos/, thesis.txt); "
         "choose another --out or pass --overwrite to replace it", *_mine),
    Case("out-is-cwd", "`--out .` (the current directory)", ("convert", "{teacher}", "--out", "."),
         "--out .: refusing to write there, it is the current directory", *_cwd),
    Case("out-contains-cwd", "`--out ..` even with --overwrite", ("convert", "{teacher}", "--out", "..", "--overwrite"),
         "--out ..: refusing to write there, it contains the current directory"),
    Case("out-is-teacher", "`--out` is the teacher's own directory, even with --overwrite",
         ("convert", "{tmp}/teacher", "--out", "{tmp}/teacher", "--overwrite"),
         "--out {tmp}/teacher: refusing to write there, it holds the teacher (teacher)", *_teacher_copy_with_notes()),
    Case("out-is-a-file", "`--out` names a file", ("convert", "{teacher}", "--out", "{tmp}/afile"),
         "Directory '{tmp}/afile' is a file", setup=_a_file("afile")),
    Case("out-unwritable", "`--out` cannot be created", ("convert", "{teacher}", "--out", "{tmp}/afile/o"),
         "--out {tmp}/afile/o: cannot create it, {tmp}/afile is a file", setup=_a_file("afile")),
    Case("out-not-writable", "`--out` where nothing can be written (`/proc`, as root too)",
         ("convert", "{teacher}", "--out", "/proc/linearize-out"), "--out /proc/linearize-out: cannot write to /proc ("),
    Case("run-dir-holds-user-files", "`--run-dir` is a directory of the user's (with a transfer/ folder)",
         ("{teacher}", "--out", "{tmp}/o", "--run-dir", "{tmp}/exp", "--tokens", "1024"),
         "--run-dir {tmp}/exp: the directory is not an earlier linearize output (transfer/)", *_exp),
    Case("run-dir-is-out", "`--run-dir` equal to `--out`",
         ("{teacher}", "--out", "{tmp}/o", "--run-dir", "{tmp}/o", "--tokens", "1024"),
         "--out and --run-dir are the same directory ({tmp}/o)"),
    Case("rerun-without-resume", "a rerun without `--resume` over an earlier run's checkpoints",
         ("{teacher}", "--out", "{tmp}/o", "--tokens", "1024"),
         "the run directory (--run-dir) {tmp}/o.train holds checkpoints of an earlier run (recovery at step 2/8); "
         "continue it with --resume, or start over with --overwrite", *_run),
    Case("out-locked", "a second run into an `--out` another live run is writing",
         ("{teacher}", "--out", "{tmp}/o", "--tokens", "1024"),
         "--out {tmp}/o is in use by another run (pid", setup=_live_lock(Path("o"))),
    Case("tokens-zero", "`--tokens 0`", ("{teacher}", "--tokens", "0"), "Invalid value for '--tokens': 0 is not in the range x>=1"),
    Case("tokens-negative", "`--tokens -5`", ("{teacher}", "--tokens", "-5"),
         "Invalid value for '--tokens': -5 is not in the range x>=1"),
    Case("tokens-below-one-step", "a budget smaller than one optimizer step", ("{teacher}", "--tokens", "100"),
         "--tokens 100 is less than one optimizer step of stage transfer (1 sequence x 256 tokens = 256 tokens)"),
    Case("eval-limit-negative", "`eval --limit -3`", ("eval", "{converted}", "--limit", "-3"),
         "Invalid value for '--limit': -3.0 is not in the range x>=0"),
    Case("mistyped-command", "a mistyped subcommand", ("recipe",), "no such command 'recipe'; did you mean 'recipes'?"),
    Case("eval-out-holds-user-files", "`eval --out` is a directory of the user's files",
         ("eval", "{converted}", "--out", "{tmp}/mine"),
         "--out {tmp}/mine: the directory is not an earlier linearize output", *_mine),
]
