"""Whole utterances as bounded-length windows: embedding extraction in flat memory.

An utterance of ``n`` samples is one window when ``n <= chunk``, else ``ceil(n / chunk)``
windows of exactly ``chunk`` samples, evenly spaced from its start to its end (they overlap a
little, never leave a gap). A model embeds each window; an utterance's embedding is the
length-weighted mean of its windows' (:func:`pool_windows`). Memory then depends on batch size
and ``chunk``, never on the longest utterance.

An utterance whose file became unreadable after stage 0 yields :class:`Skipped` markers
instead of windows (the dataset warns once per file); :func:`collate_windows` leaves them out
and lists them in ``skipped``, and :func:`pool_windows` gives that utterance a row of NaN, so
callers can tell "not embedded" from an embedding and count it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from framework.audio.dataset import AudioDataset, Skipped, collate_padded
from framework.errors import AudioError


def window_starts(frames: int, chunk: int) -> list[int]:
    """First sample of each window of an ``frames``-long utterance.

    >>> window_starts(100, 40), window_starts(30, 40), window_starts(80, 40)
    ([0, 30, 60], [0], [0, 40])
    """
    if frames <= chunk:
        return [0]
    count = math.ceil(frames / chunk)
    return np.linspace(0, frames - chunk, count).round().astype(int).tolist()


class WindowDataset(Dataset):
    """Items ``{"id", "utt" (index into utterances), "wav" (T,)}``, one per window, longest
    first so batches pad little. Every utterance's length must be known (stage 0 records it)."""

    def __init__(self, utterances: AudioDataset, chunk_secs: float):
        self.utterances = utterances
        chunk = int(chunk_secs * utterances.sample_rate)
        windows = []
        for index in range(len(utterances)):
            frames = utterances.num_frames(index)
            if frames is None:
                raise ValueError(f"{utterances.ids[index]}: unknown length; the manifest "
                                 "needs the duration column written at stage 0")
            windows += [(index, start, min(chunk, frames))
                        for start in window_starts(frames, chunk)]
        self.windows = sorted(windows, key=lambda w: (-w[2], w[0], w[1]))

    def __len__(self) -> int:
        return len(self.windows)

    def item_durations(self) -> list[float]:
        """Seconds of each window."""
        return [frames / self.utterances.sample_rate for _, _, frames in self.windows]

    def __getitem__(self, item: int) -> dict | Skipped:
        index, start, frames = self.windows[item]
        try:
            wav = self.utterances.window(index, start, frames)
        except AudioError as err:
            return self.utterances.skip(index, err.reason)
        return {"id": self.utterances.ids[index], "utt": index, "wav": wav}


def collate_windows(items: list) -> dict:
    """:func:`collate_padded` plus ``utt`` (B,) long: which utterance each window is from."""
    batch = collate_padded(items)
    batch["utt"] = torch.tensor([item["utt"] for item in items if not isinstance(item, Skipped)],
                                dtype=torch.long)
    return batch


def pool_windows(utt: np.ndarray, frames: np.ndarray, embeddings: np.ndarray,
                 count: int) -> np.ndarray:
    """Per-utterance embeddings (count, E): the mean of each utterance's window embeddings
    (W, E), weighted by their lengths in samples (W,). An utterance with no window (its
    audio was unreadable, see the module's docstring) gets a row of NaN.

    >>> pool_windows(np.array([0, 0, 2]), np.array([1, 3, 2]),
    ...              np.array([[4.0], [8.0], [1.0]]), count=3).ravel().tolist()
    [7.0, nan, 1.0]
    """
    weights = frames.astype(np.float64)
    total = np.zeros((count, embeddings.shape[1]))
    np.add.at(total, utt, embeddings * weights[:, None])
    norm = np.bincount(utt, weights=weights, minlength=count)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = total / norm[:, None]
    pooled[norm == 0] = np.nan
    return pooled.astype(np.float32)
