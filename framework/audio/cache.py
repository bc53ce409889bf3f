"""Waveform cache: a manifest's audio decoded once into one memory-mapped array.

Opening and decoding a small wav costs a few hundred microseconds, as much as a training step
of a light model spends per utterance; on a 2-core machine the loader and the model then fight
for the CPU. The cache stores every row's waveform (at the dataset's sample rate, mono) back to
back in ``<cache_dir>/waveforms/<key>/data.bin``, with ``index.npy`` (int64 offset and length
per row). An item is then a slice of a memory map: no decoding, no memory held per item.

The key hashes the sample rate and, per row, the path, segment and the file's inode, size and
mtime, so a cache is shared by every run over the same files and never serves
changed audio (nor another file reached by the same path, e.g. through a re-pointed symlink).
Samples are int16 when every source is mono 16-bit PCM at the target rate (lossless), else
float32.
A row whose audio cannot be read (a file damaged or deleted after stage 0) is stored with no
samples and its reason in ``meta.json`` (``skipped``: {row: reason}); the build goes on, and
:attr:`WaveformCache.skipped` tells the dataset which items to skip.
Caches are built in a temporary folder and renamed into place (never seen half-written).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from framework.audio.io import audio_format, read_audio
from framework.errors import AudioError
from framework.files import require_free_space
from framework.progress import progress

INT16_SUBTYPES = {"PCM_16"}


def cache_key(rows, sample_rate: int) -> str:
    digest = hashlib.sha256(str(sample_rate).encode())
    for path, start, end in rows:
        try:
            stat = os.stat(path)  # inode: the same path may reach another file
            state = f"{stat.st_ino}|{stat.st_size}|{stat.st_mtime_ns}"
        except OSError:  # gone since stage 0: the build will skip it
            state = "missing"
        digest.update(f"{path}|{start}|{end}|{state}\n".encode())
    return digest.hexdigest()[:20]


class WaveformCache:
    """Read-only view of a built cache; opens its memory map lazily in each process."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        meta = json.loads((self.folder / "meta.json").read_text())
        self.dtype = np.dtype(meta["dtype"])
        self.index = np.load(self.folder / "index.npy", allow_pickle=False)
        #: row → why its audio could not be read when the cache was built
        self.skipped = {int(row): reason for row, reason in meta.get("skipped", {}).items()}
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
    check_free_space(rows, folder, np.dtype(dtype).itemsize)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    index = np.zeros((len(rows), 2), dtype=np.int64)
    skipped = {}
    with open(tmp / "data.bin", "wb") as out:
        for i, (path, start, end) in enumerate(progress(rows, desc="cache waveforms",
                                                         unit="file")):
            try:
                wav = read_audio(path, start, end, sample_rate).numpy()
            except AudioError as err:  # damaged after stage 0: the dataset skips the item
                skipped[i], wav = err.reason, np.zeros(0, np.float32)
            if lossless:
                wav = np.round(wav * 32768.0).clip(-32768, 32767)
            index[i] = (index[i - 1].sum() if i else 0, len(wav))
            out.write(wav.astype(dtype).tobytes())
    np.save(tmp / "index.npy", index, allow_pickle=False)
    (tmp / "meta.json").write_text(json.dumps({"dtype": np.dtype(dtype).name,
                                               "sample_rate": sample_rate, "rows": len(rows),
                                               "skipped": skipped}))
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished the same cache first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)


def check_free_space(rows, folder: Path, itemsize: int) -> None:
    """Refuse to start a cache the disk cannot hold. Estimate: the audio files' sizes (about
    2 bytes a sample for PCM16 WAV), doubled for a float32 cache."""
    need = sum(os.path.getsize(p) for p in {path for path, _, _ in rows}
               if os.path.isfile(p)) * itemsize // 2
    require_free_space(folder.parent, need, "waveform cache",
                       "or set build_dataset.cache_waveforms=false")


def _is_int16_at(path: str, sample_rate: int) -> bool:
    """Whether ``path`` is mono 16-bit PCM at ``sample_rate``; an unreadable file (skipped
    by the build) does not decide."""
    try:
        header = audio_format(path)
    except AudioError:
        return True
    return (header.subtype in INT16_SUBTYPES and header.sample_rate == sample_rate
            and header.channels == 1)
