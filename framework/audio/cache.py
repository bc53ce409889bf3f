"""Waveform cache: a manifest's audio decoded once into one memory-mapped array.

Opening and decoding a small wav costs a few hundred microseconds, as much as a training step
of a light model spends per utterance; on a 2-core machine the loader and the model then fight
for the CPU. The cache stores every row's waveform (at the dataset's sample rate, mono) back to
back in ``<cache_dir>/waveforms/<key>/data.bin``, with ``index.npy`` (int64 offset and length
per row). An item is then a slice of a memory map: no decoding, no memory held per item.

The key hashes the sample rate and, per row, the path, segment and the file's size and mtime,
so a cache is shared by every run over the same files and never serves changed audio.
Samples are int16 when every source is mono 16-bit PCM at the target rate (lossless), else
float32.
Caches are built in a temporary folder and renamed into place (never seen half-written).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from framework.audio.io import read_audio
from framework.progress import progress

INT16_SUBTYPES = {"PCM_16"}


def cache_key(rows, sample_rate: int) -> str:
    digest = hashlib.sha256(str(sample_rate).encode())
    for path, start, end in rows:
        stat = os.stat(path)
        digest.update(f"{path}|{start}|{end}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


class WaveformCache:
    """Read-only view of a built cache; opens its memory map lazily in each process."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.dtype = np.dtype(meta["dtype"])
        self.index = np.load(self.folder / "index.npy", allow_pickle=False)
        self._data = None

    @classmethod
    def open_or_build(cls, rows, sample_rate: int, cache_dir: Path) -> "WaveformCache":
        """``rows``: (wav_path, start, end) per item, seconds or None."""
        rows = list(rows)
        folder = Path(cache_dir) / "waveforms" / cache_key(rows, sample_rate)
        if not (folder / "meta.json").is_file():
            build(rows, sample_rate, folder)
        return cls(folder)

    def __getstate__(self):
        # DataLoader workers get the path, not a copy of the mapped data.
        return {**self.__dict__, "_data": None}

    @property
    def data(self) -> np.ndarray:
        if self._data is None:
            self._data = np.memmap(self.folder / "data.bin", dtype=self.dtype, mode="r")
        return self._data

    def get(self, index: int, offset: int | None = None,
            max_frames: int | None = None) -> torch.Tensor:
        """Float32 waveform of row ``index``, optionally the window [offset, offset+max)."""
        start, length = self.index[index]
        first = start + (offset or 0)
        last = start + length if max_frames is None else min(start + length, first + max_frames)
        if self.dtype == np.int16:  # the conversion makes a fresh, writable array
            samples = self.data[first:last].astype(np.float32)
            samples /= 32768.0
            return torch.from_numpy(samples)
        return torch.from_numpy(np.array(self.data[first:last]))  # a copy: the map is read-only


def build(rows, sample_rate: int, folder: Path) -> None:
    lossless = all(_is_int16_at(path, sample_rate) for path, _, _ in rows)
    dtype = np.int16 if lossless else np.float32
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    index = np.zeros((len(rows), 2), dtype=np.int64)
    with open(tmp / "data.bin", "wb") as out:
        for i, (path, start, end) in enumerate(progress(rows, desc="cache waveforms",
                                                         unit="file")):
            wav = read_audio(path, start, end, sample_rate).numpy()
            if lossless:
                wav = np.round(wav * 32768.0).clip(-32768, 32767)
            index[i] = (index[i - 1].sum() if i else 0, len(wav))
            out.write(wav.astype(dtype).tobytes())
    np.save(tmp / "index.npy", index, allow_pickle=False)
    (tmp / "meta.json").write_text(json.dumps({"dtype": np.dtype(dtype).name,
                                               "sample_rate": sample_rate, "rows": len(rows)}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same cache first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def _is_int16_at(path: str, sample_rate: int) -> bool:
    info = sf.info(path)
    return (info.subtype in INT16_SUBTYPES and info.samplerate == sample_rate
            and info.channels == 1)
