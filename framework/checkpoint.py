"""Checkpoint files: written atomically, listed in a verified index, loaded weights-only.

A training folder's ``checkpoints/`` holds ``step-00001000.pt`` files (full training state),
``valid_best.pt`` (model state of the best validation score) and ``index.json``, which lists
each finished file with its size. A file is only ever visible under its final name once
complete (temp file + fsync + rename), and it is only used if the index lists it with the
same size, so a run killed mid-write never picks up half a checkpoint.
"""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import torch

from framework.errors import CheckpointError
from framework.faults import kill_point
from framework.files import atomic_path, atomic_write_text, read_json

FORMAT = 1


def save_atomic(state: dict, path: str | Path) -> None:
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
        kill_point("checkpoint", path.name)


def load_checkpoint(path: str | Path, problem: str | None = None) -> dict:
    """Load with ``weights_only=True``; check it was written by ``problem``."""
    path = Path(path)
    if path.is_dir():
        path = path / "valid_best.pt"
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's text suggests weights_only=False: never
        raise CheckpointError(f"{path} holds Python objects beyond tensors and plain values, "
                              "so it was not written by this framework; it is refused "
                              "unread (loading it would run code from the file)") from err
    except Exception as err:  # torch raises several types for damaged or foreign files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path} is not a readable checkpoint ({first}); it may be "
                              "damaged: choose another checkpoint") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} was not written by this framework (format "
                              f"{state.get('format') if isinstance(state, dict) else '?'})")
    if problem is not None and state.get("problem") != problem:
        raise CheckpointError(f"{path} belongs to problem '{state.get('problem')}', not "
                              f"'{problem}'; point test_ckpt_dir/resume_ckpt_dir at a "
                              f"checkpoint of this problem")
    return state


class CheckpointDir:
    """The checkpoints of one training run."""

    def __init__(self, folder: str | Path, keep: int | None = None):
        self.folder = Path(folder)
        self.keep = keep
        self.index_path = self.folder / "index.json"

    def step_path(self, step: int) -> Path:
        return self.folder / f"step-{step:08d}.pt"

    @property
    def best_path(self) -> Path:
        return self.folder / "valid_best.pt"

    def index(self) -> dict:
        if not self.index_path.is_file():
            return {"steps": {}, "valid_best": None}
        return read_json(self.index_path, "the list of finished checkpoints")

    def save_step(self, step: int, state: dict) -> Path:
        path = self.step_path(step)
        self._save(path, state, lambda index: index["steps"].__setitem__(str(step), None))
        self._prune()
        return path

    def save_best(self, state: dict) -> Path:
        self._save(self.best_path, state, lambda index: index.__setitem__("valid_best", None))
        return self.best_path

    def _save(self, path: Path, state: dict, enter) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        save_atomic(state, path)
        index = self.index()
        enter(index)
        index.setdefault("sizes", {})[path.name] = path.stat().st_size
        atomic_write_text(self.index_path, json.dumps(index, indent=1))

    def _prune(self) -> None:
        if not self.keep:
            return
        index = self.index()
        steps = sorted(int(s) for s in index["steps"])
        for step in steps[: -self.keep]:
            del index["steps"][str(step)]
            index["sizes"].pop(self.step_path(step).name, None)
            atomic_write_text(self.index_path, json.dumps(index, indent=1))
            self.step_path(step).unlink(missing_ok=True)

    def verified(self, path: Path) -> bool:
        size = self.index().get("sizes", {}).get(path.name)
        return size is not None and path.is_file() and path.stat().st_size == size

    def latest(self) -> Path | None:
        """The newest complete step checkpoint, or None."""
        steps = sorted((int(s) for s in self.index()["steps"]), reverse=True)
        for step in steps:
            if self.verified(self.step_path(step)):
                return self.step_path(step)
        return None

    def steps(self) -> list[int]:
        return sorted(int(s) for s in self.index()["steps"] if self.verified(self.step_path(int(s))))
