"""Fault injection for the resume tests: die by SIGKILL at a named point of a run.

``SPEECH_RECIPES_KILL_AT=<point>@<tag>`` makes the process kill itself, as abruptly as a
power cut, when it reaches ``point`` with ``tag``. Points: ``step@N`` (training step N, after
its backward pass, before the update), ``validation@N`` (validation at step N, metrics computed,
nothing recorded), ``checkpoint@NAME`` (checkpoint file NAME written to its temporary file,
not yet renamed). Unset, it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

ENV = "SPEECH_RECIPES_KILL_AT"


def kill_point(point: str, tag) -> None:
    if os.environ.get(ENV) == f"{point}@{tag}":
        os.kill(os.getpid(), signal.SIGKILL)
