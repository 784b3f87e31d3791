"""SIGINT and SIGTERM as requests to stop cleanly.

``linearize`` runs under :func:`handle_signals`. Outside training a signal stops the command at
once by raising :class:`Interrupted` (every output is written atomically, so nothing is left
half-written). Inside a training stage (:func:`deferred`) the signal is only recorded: the stage
finishes its current optimizer step, writes a checkpoint and then raises :class:`Interrupted`
carrying where that checkpoint is, so ``--resume`` continues from exactly that step. A second
signal while the step finishes stops at once (the previous checkpoint stays valid).

Exit statuses follow the shell's convention: 128 + the signal number (130 for SIGINT, 143 for
SIGTERM, what SLURM and Kubernetes send before preemption).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal (a KeyboardInterrupt, so code that handles Ctrl-C handles it)."""

    def __init__(self, signum: int, stage: str | None = None, step: int | None = None, steps: int | None = None,
                 checkpoint: Path | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.stage, self.step, self.steps, self.checkpoint = signum, stage, step, steps, checkpoint

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name


class _State:
    requested: int | None = None
    deferring: int = 0
    installed: bool = False


_state = _State()


def _handler(signum, frame) -> None:
    if _state.deferring and _state.requested is None:
        _state.requested = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handle_signals():
    """Turn SIGINT/SIGTERM into :class:`Interrupted` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread() or _state.installed:
        yield
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _state.installed, _state.requested = True, None
    for s in SIGNALS:
        signal.signal(s, _handler)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _state.installed, _state.requested = False, None


@contextlib.contextmanager
def deferred():
    """Inside: a signal is recorded (see :func:`requested`) instead of raised, so a step can finish."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
        if not _state.deferring and _state.requested is not None and _state.installed:
            signum, _state.requested = _state.requested, None
            raise Interrupted(signum)


def requested() -> int | None:
    """The signal received while deferring (None: none)."""
    return _state.requested


def consume() -> int | None:
    """The signal received while deferring, now handled by the caller."""
    signum, _state.requested = _state.requested, None
    return signum
