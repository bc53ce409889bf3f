"""Progress bars that never fight the log.

One switch for every loop: ``SPEECH_RECIPES_PROGRESS`` = ``bar`` (a live tqdm bar, the default
when stderr is a terminal), ``plain`` (the default otherwise: a full line now and then, no
``\\r`` or escape codes, so SLURM logs and ``> file`` stay readable) or ``off``. tqdm's own
``TQDM_DISABLE=1`` also turns them off. Log lines go through :class:`BarSafeHandler`, which
clears live bars before writing and redraws them after, so the two never share a line.
"""
from __future__ import annotations

import logging
import os
import sys

from tqdm import tqdm

ENV = "SPEECH_RECIPES_PROGRESS"
MODES = ("bar", "plain", "off")
PLAIN_INTERVAL = 30.0  # seconds between two plain progress lines


def mode() -> str:
    """The progress mode for this process (see the module docstring)."""
    if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"):
        return "off"
    chosen = os.environ.get(ENV, "").strip().lower()
    if chosen in MODES:
        return chosen
    return "bar" if sys.stderr.isatty() else "plain"


class PlainProgress(tqdm):
    """A tqdm whose every refresh is one whole line (``train: 120/300 [00:04<00:06, ...]``)."""

    def __init__(self, *args, **kwargs):
        kwargs.update(mininterval=PLAIN_INTERVAL, ascii=True, dynamic_ncols=False, ncols=100,
                      position=None)
        super().__init__(*args, **kwargs)
        # not a live bar: log lines need not clear and redraw it (that would write "\r")
        self._instances.discard(self)

    def display(self, msg=None, pos=None):
        if self.disable or not self.n:  # nothing done yet: no "0/300" line
            return True
        self.fp.write((msg or self.__str__()).strip() + "\n")
        self.fp.flush()
        return True

    def close(self):
        if not self.disable and self.leave and self.n != self.last_print_n:
            self.display()
        self.disable = True


def progress(iterable=None, *, total=None, desc: str = "", unit: str = "it", initial: int = 0,
             leave: bool = True, disable: bool = False):
    """A progress bar over ``iterable`` (or a manual one, with ``total``), in today's mode."""
    chosen = "off" if disable else mode()
    kwargs = dict(total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                  file=sys.stderr)
    if chosen == "plain":
        return PlainProgress(iterable, **kwargs)
    return tqdm(iterable, mininterval=1.0, dynamic_ncols=True, disable=chosen == "off",
                **kwargs)


class BarSafeHandler(logging.StreamHandler):
    """A console handler that writes around live progress bars (``tqdm.write``)."""

    def emit(self, record):
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never raise into the caller
            self.handleError(record)
