"""Datasets over a manifest CSV, and the collate function that pads them.

Manifest columns used: ``id``, ``wav_path``, optional ``start``/``end`` (seconds of the file;
empty = whole file), ``duration`` (seconds, written by the stage-0 screening), and the label
column when an encoder is given.

A file that became unreadable after stage 0 (damaged, truncated, deleted) never stops a run:
the dataset warns once per file and returns a :class:`Skipped` marker in the item's place,
the collate functions leave markers out and list them in the batch's ``skipped`` entry, and
:class:`SkippedItems` gathers those lists where the batches arrive (the main process, also
when DataLoader workers did the reading) and writes them as a CSV.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from framework.audio.cache import WaveformCache
from framework.audio.io import read_audio
from framework.errors import AudioError
from framework.files import atomic_path

log = logging.getLogger(__name__)


def read_manifest(csv_path) -> pd.DataFrame:
    """Load a manifest with string ids/labels (never parse "no" or "01" as other types)."""
    return pd.read_csv(csv_path, dtype={"id": str, "label": str, "speaker": str, "spk": str,
                                        "id1": str, "id2": str, "utterance": str},
                       keep_default_na=False,
                       na_values={"start": [""], "end": [""], "duration": [""]})


class Skipped(NamedTuple):
    """What a dataset returns for an item whose audio cannot be read: which, and why."""

    id: str
    wav_path: str
    reason: str


class AudioDataset(Dataset):
    """One item per manifest row: ``{"id": str, "wav": FloatTensor (T,), "label": int}``, or
    a :class:`Skipped` marker when the row's audio can no longer be read (logged once per
    file and process).

    ``max_secs`` crops longer items: a random window in ``crop="random"`` mode (seeded by
    ``seed``, the epoch set with :meth:`set_epoch` and the index, so a resumed run crops the
    same), the centre window in ``crop="center"`` mode. Only the window is read from disk.
    ``label`` is present when ``label_to_id`` is given. With ``cache_dir`` the waveforms are
    decoded once into a shared :class:`~framework.audio.cache.WaveformCache` and read from it.
    """

    def __init__(self, manifest: pd.DataFrame, label_to_id: dict[str, int] | None = None,
                 sample_rate: int = 16000, max_secs: float | None = None,
                 crop: str = "center", seed: int = 0, label_column: str = "label",
                 cache_dir=None):
        self.rows = manifest.reset_index(drop=True)
        self.ids = self.rows["id"].tolist()
        self.paths = self.rows["wav_path"].tolist()
        self.starts = _optional_column(self.rows, "start")
        self.ends = _optional_column(self.rows, "end")
        self.durations = _optional_column(self.rows, "duration")
        self.labels = None
        if label_to_id is not None:
            self.labels = [label_to_id[x] for x in self.rows[label_column]]
        self.sample_rate, self.crop, self.seed, self.epoch = sample_rate, crop, seed, 0
        self.max_frames = int(max_secs * sample_rate) if max_secs else None
        self.cache = None
        self.warned: set[str] = set()  # files this process has warned about
        if cache_dir is not None:
            rows = zip(self.paths, self.starts, self.ends)
            self.cache = WaveformCache.open_or_build(rows, sample_rate, cache_dir)
            for index, reason in self.cache.skipped.items():  # the warning comes now
                self.skip(index, reason)

    def __len__(self) -> int:
        return len(self.ids)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict | Skipped:
        try:
            wav = self.window(index, self.crop_offset(index), self.max_frames)
        except AudioError as err:
            return self.skip(index, err.reason)
        item = {"id": self.ids[index], "wav": wav}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    def window(self, index: int, offset: int | None, frames: int | None) -> torch.Tensor:
        """Samples ``[offset, offset + frames)`` of item ``index`` (None: from the start /
        to the end) as a float tensor (T,); only that window is read. Raises AudioError when
        the audio cannot be read (see :meth:`skip`)."""
        if self.cache is not None:
            if index in self.cache.skipped:
                raise AudioError(self.paths[index], self.cache.skipped[index])
            return self.cache.get(index, offset, frames)
        return read_audio(self.paths[index], self.starts[index], self.ends[index],
                          self.sample_rate, frames, offset)

    def skip(self, index: int, reason: str) -> Skipped:
        """The marker for item ``index``, whose audio cannot be read; the first time a file
        fails in this process, a warning names it and the reason."""
        path = self.paths[index]
        if path not in self.warned:
            self.warned.add(path)
            log.warning("skipping %s (%s): %s; the file changed after the stage-0 check "
                        "(rerun stage 0 to screen the corpus again); %d file(s) skipped so far",
                        self.ids[index], path, reason.rstrip("."), len(self.warned))
        return Skipped(self.ids[index], path, reason)

    def num_frames(self, index: int) -> int | None:
        """Length of item ``index`` in samples, when known without reading it."""
        if self.cache is not None:
            return int(self.cache.index[index][1])
        if self.durations[index] is not None:
            return int(self.durations[index] * self.sample_rate)
        return None

    def item_durations(self) -> list[float]:
        """Seconds of audio each item yields (after cropping to ``max_secs``)."""
        frames = [self.num_frames(i) for i in range(len(self))]
        if None in frames:
            raise ValueError("item lengths are unknown: the manifest needs the duration "
                             "column written at stage 0")
        limit = self.max_frames or max(frames, default=0)
        return [min(f, limit) / self.sample_rate for f in frames]

    def crop_offset(self, index: int) -> int | None:
        """First frame of the window to read (None: from the start)."""
        frames = self.num_frames(index)
        if self.max_frames is None or frames is None:
            return None
        spare = frames - self.max_frames
        if spare <= 0:
            return None
        if self.crop == "center":
            return spare // 2
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return int(rng.integers(0, spare + 1))


def _optional_column(rows: pd.DataFrame, name: str) -> list:
    if name not in rows:
        return [None] * len(rows)
    return [None if pd.isna(v) else float(v) for v in rows[name]]


def collate_padded(items: list) -> dict:
    """Pad waveforms to the longest: ``wav`` (B, T) float, ``wav_len`` (B,) long, ``id`` list,
    ``label`` (B,) long when items carry labels, and ``skipped``: the :class:`Skipped`
    markers among ``items``, which are left out (B counts the others; it may be 0)."""
    skipped = [x for x in items if isinstance(x, Skipped)]
    items = [x for x in items if not isinstance(x, Skipped)]
    lens = torch.tensor([len(x["wav"]) for x in items], dtype=torch.long)
    wavs = torch.zeros(len(items), int(lens.max()) if len(items) else 0)
    for row, item in enumerate(items):
        wavs[row, : len(item["wav"])] = item["wav"]
    batch = {"id": [x["id"] for x in items], "wav": wavs, "wav_len": lens, "skipped": skipped}
    if items and "label" in items[0]:
        batch["label"] = torch.tensor([x["label"] for x in items], dtype=torch.long)
    return batch


class SkippedItems:
    """The items batches left out (their ``skipped`` lists), once each: collect them where
    the batches arrive, so items read by DataLoader workers are counted too.

    >>> found = SkippedItems()
    >>> found.note({"skipped": [Skipped("yes/a", "/c/yes/a.wav", "file not found")] * 2})
    >>> len(found), found.items[0].reason
    (1, 'file not found')
    """

    COLUMNS = ("id", "wav_path", "reason")

    def __init__(self, items=()):
        self.found: dict[tuple[str, str], Skipped] = {}
        self.add(items)

    def add(self, items) -> None:
        for item in items:
            self.found.setdefault((item.id, item.wav_path), Skipped(*item))

    def note(self, batch: dict) -> None:
        """Record the batch's ``skipped`` list (absent for other collate functions)."""
        self.add(batch.get("skipped", ()))

    @property
    def items(self) -> list[Skipped]:
        return list(self.found.values())

    def __len__(self) -> int:
        return len(self.found)

    def as_records(self) -> list[dict]:
        """``[{"id", "wav_path", "reason"}, ...]`` (for a metrics JSON)."""
        return [item._asdict() for item in self.found.values()]

    def write_csv(self, path) -> Path | None:
        """Merge these items into the CSV ``path`` (``id, wav_path, reason``; rows already
        there, from an earlier part of a resumed run, are kept). Nothing is written when
        there is nothing to list. Returns the path written, else None."""
        path = Path(path)
        merged = SkippedItems(read_skipped_csv(path)) if path.is_file() else SkippedItems()
        merged.add(self.items)
        if not merged:
            return None
        with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(self.COLUMNS)
            writer.writerows(merged.items)
        return path


def read_skipped_csv(path) -> list[Skipped]:
    """The rows of a CSV written by :meth:`SkippedItems.write_csv`."""
    with open(path, newline="") as fh:
        return [Skipped(row["id"], row["wav_path"], row["reason"]) for row in csv.DictReader(fh)]
