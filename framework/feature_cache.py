"""The frozen-feature cache: a frozen upstream runs once per utterance, not at every step.

With a frozen, learned upstream (``build_upstream.cache_features``), the hidden states of the
featurizer's selected layers are computed once per utterance and stored under
``<cache_dir>/features/<upstream key>/``, where the upstream key digests the upstream's
identity (name, weights digest, config) and the selected layers. Each utterance is one file,
``<entry key>.npy``, float16 (layers, frames, size), memory-mapped when read; the entry key
digests the audio's identity (path, size, mtime, segment start/end, sample rate). So every
target_dir over the same upstream and audio shares the entries (a sweep over downstream
settings never recomputes them), a changed file or checkpoint invalidates only its own
entries, and a half-written entry (a killed extraction) is never read: entries are written
to a temporary name and renamed.

Training crops (``max_secs``) are taken in frame space of the whole-utterance features; a
recipe that needs waveform crops (augmentation on the wave, say) turns the cache off.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from framework.audio.dataset import AudioDataset, Skipped
from framework.errors import AudioError
from framework.files import atomic_path, require_free_space
from framework.progress import progress
from framework.stages import digest

log = logging.getLogger(__name__)

BATCH_SECS = 160.0   # seconds of padded audio per extraction batch (memory stays bounded)
BATCH_ITEMS = 32


class FeatureStore:
    """The cached hidden states of one upstream (and layer selection)."""

    def __init__(self, cache_dir: Path, identity: dict, layers: list[int]):
        self.identity = {"upstream": identity, "layers": list(layers)}
        self.folder = Path(cache_dir) / "features" / digest(self.identity)
        self.layers = list(layers)

    def entry(self, path: str, start, end, sample_rate: int) -> Path:
        """Where the features of this audio (file state included) are stored."""
        try:
            stat = os.stat(path)
            state = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            state = ("missing",)
        key = hashlib.sha256(json.dumps([os.path.abspath(path), *state, start, end,
                                         sample_rate], default=str).encode()).hexdigest()[:24]
        return self.folder / key[:2] / f"{key}.npy"

    def write(self, entry: Path, hidden: np.ndarray) -> None:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(entry) as tmp, open(tmp, "wb") as out:
            np.save(out, hidden.astype(np.float16), allow_pickle=False)

    @staticmethod
    def read(entry: Path) -> np.ndarray:
        """(layers, frames, size) float16, memory-mapped."""
        return np.load(entry, mmap_mode="r", allow_pickle=False)

    def describe(self) -> None:
        """Write ``upstream.json`` (what the folder holds) and log the disk it uses."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "upstream.json").write_text(json.dumps(self.identity, indent=1,
                                                              default=str))
        files = list(self.folder.rglob("*.npy"))
        size = sum(f.stat().st_size for f in files)
        log.info("feature cache %s: %d utterances, %.1f MB", self.folder, len(files), size / 1e6)


class CachedFeatureDataset(Dataset):
    """Items ``{"id", "hidden" (layers, T', D) float16, "label"}`` from a :class:`FeatureStore`,
    cropped to ``max_secs`` in frame space (random in ``"random"`` mode, seeded like
    :class:`AudioDataset`'s crops; the centre otherwise). ``hidden`` is a view of the
    memory-mapped entry: :func:`collate_features` reads it, once, straight into the float32
    batch. ``audio`` supplies ids, labels, lengths and the skip bookkeeping; its waveforms are
    not read."""

    def __init__(self, audio: AudioDataset, store: FeatureStore, entries: list[Path],
                 frames_per_sec: float, max_secs: float | None = None, crop: str = "center"):
        self.audio, self.store, self.entries = audio, store, entries
        self.labels = audio.labels
        self.max_frames = int(max_secs * frames_per_sec) if max_secs else None
        self.crop = crop

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        self.audio.set_epoch(epoch)

    def item_durations(self) -> list[float]:
        return self.audio.item_durations()

    def __getitem__(self, index: int) -> dict | Skipped:
        if not self.entries[index].is_file():  # its audio failed at extraction
            return self.audio.skip(index, "no cached features (its audio failed to decode)")
        hidden = self.store.read(self.entries[index])
        offset, frames = self.window(index, hidden.shape[1])
        item = {"id": self.audio.ids[index], "hidden": hidden[:, offset:offset + frames]}
        if self.labels is not None:
            item["label"] = self.labels[index]
        return item

    def window(self, index: int, total: int) -> tuple[int, int]:
        if self.max_frames is None or total <= self.max_frames:
            return 0, total
        spare = total - self.max_frames
        if self.crop == "center":
            return spare // 2, self.max_frames
        rng = np.random.default_rng((self.audio.seed, self.audio.epoch, index))
        return int(rng.integers(0, spare + 1)), self.max_frames


def collate_features(items: list, layers: list[int]) -> dict:
    """Pad cached items: ``hidden_states`` {layer: (B, T', D) float32}, ``hidden_lens`` (B,),
    ``id``, ``label`` (B,) when known, ``skipped`` (the :class:`Skipped` markers left out).

    Loading a batch is mostly memory traffic (~2 MB of float32 per item with 13 layers × 768),
    comparable to the training step itself, so each item is read once, fp16 → float32, from
    its memory map into the batch, and only the padding is zeroed. One tensor per layer
    (~5 MB at batch 32) is reused from the heap; one 60 MB tensor is a fresh mapping whose
    pages fault in at every batch. NumPy does the copies, on one thread: torch's copy of each
    37k-element slice spreads over its intra-op threads, which on a busy machine made
    loading several times slower (bench/kws_train_throughput.py --upstream ssl)."""
    skipped = [x for x in items if isinstance(x, Skipped)]
    items = [x for x in items if not isinstance(x, Skipped)]
    lens = torch.tensor([x["hidden"].shape[1] for x in items], dtype=torch.long)
    size = items[0]["hidden"].shape[2] if items else 0
    longest = int(lens.max()) if items else 0
    hidden_states = {}
    for i, layer in enumerate(layers):
        hidden_states[layer] = torch.empty(len(items), longest, size)
        out = hidden_states[layer].numpy()
        for row, item in enumerate(items):
            frames = item["hidden"].shape[1]
            out[row, :frames] = item["hidden"][i]
            out[row, frames:] = 0
    batch = {"id": [x["id"] for x in items], "hidden_lens": lens, "skipped": skipped,
             "hidden_states": hidden_states}
    if items and "label" in items[0]:
        batch["label"] = torch.tensor([x["label"] for x in items], dtype=torch.long)
    return batch


def entries_for(store: FeatureStore, audio: AudioDataset) -> list[Path]:
    return [store.entry(path, start, end, audio.sample_rate)
            for path, start, end in zip(audio.paths, audio.starts, audio.ends)]


def extract_missing(store: FeatureStore, upstream, audio: AudioDataset, entries: list[Path],
                    device, dist) -> None:
    """Compute the entries not yet on disk, batched on ``device``; under a distributed run
    rank r computes every world_size-th missing entry, then all ranks wait for each other."""
    missing = [i for i, entry in enumerate(entries) if not entry.is_file()]
    if dist.is_main:
        check_free_space(store, upstream, audio, missing)
    mine = missing[dist.rank::dist.world_size]
    upstream.eval()
    for batch in progress(extraction_batches(audio, mine), desc="extract features",
                          unit="batch", disable=not dist.is_main):
        extract_batch(store, upstream, audio, entries, batch, device)
    dist.barrier()
    if dist.is_main:
        store.describe()


def extraction_batches(audio: AudioDataset, indices: list[int]) -> list[list[int]]:
    """Groups of similar length (longest first), up to BATCH_ITEMS and BATCH_SECS padded."""
    order = sorted(indices, key=lambda i: -(audio.num_frames(i) or 0))
    batches, current = [], []
    for index in order:
        longest = audio.num_frames(current[0]) if current else audio.num_frames(index)
        if current and (len(current) == BATCH_ITEMS or
                        (len(current) + 1) * (longest or 0) > BATCH_SECS * audio.sample_rate):
            batches.append(current)
            current = []
        current.append(index)
    return batches + ([current] if current else [])


@torch.no_grad()
def extract_batch(store, upstream, audio, entries, batch: list[int], device) -> None:
    wavs, kept = [], []
    for index in batch:
        try:
            wavs.append(audio.window(index, None, None))
            kept.append(index)
        except AudioError as err:
            audio.skip(index, err.reason)
    if not kept:
        return
    lens = torch.tensor([len(w) for w in wavs], dtype=torch.long)
    padded = torch.zeros(len(wavs), int(lens.max()))
    for row, wav in enumerate(wavs):
        padded[row, : len(wav)] = wav
    hidden, frames = upstream(padded.to(device), lens.to(device))
    chosen = torch.stack([hidden[layer] for layer in store.layers]).cpu().numpy()
    for row, index in enumerate(kept):
        store.write(entries[index], chosen[:, row, : int(frames[row])])


def check_free_space(store: FeatureStore, upstream, audio: AudioDataset,
                     missing: list[int]) -> None:
    """Refuse to start an extraction the disk cannot hold (estimate: frames × layers ×
    size × 2 bytes)."""
    size = upstream.hidden_sizes[store.layers[0]]
    frames = sum((audio.num_frames(i) or 0) // upstream.downsample_rate + 1 for i in missing)
    need = frames * len(store.layers) * size * 2
    require_free_space(store.folder, need, "feature cache", "select fewer layers "
                       "(build_featurizer.layer_selections), or set "
                       "build_upstream.cache_features=false")
    if missing:
        log.info("feature cache: extracting %d utterances (about %.1f MB)", len(missing),
                 need / 1e6)
