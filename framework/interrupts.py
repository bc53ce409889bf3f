"""Ctrl-C and SIGTERM: stop with one line and a resumable target_dir.

Within :func:`handling`, SIGINT raises ``KeyboardInterrupt`` as usual and SIGTERM raises
:class:`Interrupted` at once, except while the training loop has :func:`deferred` it: then the
signal is only noted, and the trainer writes a checkpoint at the next step boundary before
stopping (SLURM sends SIGTERM some time before a preemption kill, so a requeued job loses
nothing). The CLI prints an :class:`Interrupted`'s message and exits with 128 + the signal
number (130 for SIGINT, 143 for SIGTERM).
"""
from __future__ import annotations

import contextlib
import signal
import threading

from framework.errors import UserError

_pending: list[int] = []   # signals noted while deferred
_deferring = [False]


class Interrupted(UserError):
    """The run was stopped by a signal; the message says where and how to resume."""

    def __init__(self, signum: int, message: str = ""):
        super().__init__(message or f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _on_sigterm(signum, frame) -> None:
    if _deferring[0]:
        _pending.append(signum)
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def handling():
    """Install the SIGTERM handler for the block (main thread only; a no-op elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    _pending.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def deferred():
    """Within the block a SIGTERM is only noted (see :func:`requested`)."""
    _deferring[0] = True
    try:
        yield
    finally:
        _deferring[0] = False


def requested() -> int | None:
    """The signal noted while deferred, if any."""
    return _pending[0] if _pending else None
