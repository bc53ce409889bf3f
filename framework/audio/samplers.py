"""Batch samplers: deterministic per epoch, resumable mid-epoch, shard-aware.

Every sampler draws one epoch's *global batches* from ``(seed, epoch)``; a global batch is
``world_size`` shards and rank ``r`` takes shard ``r``. So every rank gets the same number of
batches, ranks never share an item within a global batch, and concatenating the shards of each
global batch gives the one-process order (how evaluation gathers results exactly).
Fixed-size samplers cut one order into global batches of ``batch_size * world_size`` items, so
N processes with batch b see exactly the items one process with batch N·b sees. The duration
sampler packs local batches up to a budget of seconds of padded audio.
``set_epoch(epoch, start_batch)`` skips the first ``start_batch`` batches (exact mid-epoch
resume).
"""
from __future__ import annotations

import math

import numpy as np
from torch.utils.data import Sampler

from framework.registry import Registry

BATCH_SAMPLERS: Registry[Sampler] = Registry("batch sampler")


class ShardedBatchSampler(Sampler):
    """Base class: subclasses implement :meth:`epoch_order` (a 1-D array of item indices) or,
    for batches of varying size, :meth:`epoch_batches`."""

    def __init__(self, batch_size: int, seed: int = 0, world_size: int = 1, rank: int = 0,
                 drop_last: bool = False, pad_last: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.seed = batch_size, seed
        self.world_size, self.rank, self.drop_last = world_size, rank, drop_last
        self.pad_last = pad_last
        self.epoch, self.start_batch = 0, 0
        self._cache: tuple[int, list] | None = None

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_order(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError

    def epoch_batches(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        """This epoch's global batches, each a list of ``world_size`` shards."""
        size = self.batch_size
        return [[batch[r * size:(r + 1) * size] for r in range(self.world_size)]
                for batch in self._cut(self.epoch_order(rng))]

    def global_batches(self) -> list[list[np.ndarray]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (self.epoch, self.epoch_batches(
                np.random.default_rng((self.seed, self.epoch))))
        return self._cache[1]

    def _cut(self, order: np.ndarray) -> list[np.ndarray]:
        size = self.batch_size * self.world_size
        count = len(order) // size if self.drop_last else math.ceil(len(order) / size)
        if self.pad_last and count * size > len(order) and len(order):
            # Wrap around so the last global batch is full: equal batches on every rank.
            # Training only: evaluation must see each item exactly once.
            order = np.concatenate([order, np.resize(order, count * size - len(order))])
        return [order[i * size:(i + 1) * size] for i in range(count)]

    def __iter__(self):
        for shards in self.global_batches()[self.start_batch:]:
            if self.rank < len(shards) and len(shards[self.rank]):
                yield shards[self.rank].tolist()

    def __len__(self) -> int:
        return len(self.global_batches()) - self.start_batch


@BATCH_SAMPLERS.register("fixed")
class FixedBatchSampler(ShardedBatchSampler):
    """Fixed-size batches over every item once per epoch, shuffled or in order."""

    def __init__(self, num_items: int, batch_size: int, shuffle: bool = True, **common):
        super().__init__(batch_size, **common)
        self.num_items, self.shuffle = num_items, shuffle

    def epoch_order(self, rng):
        return rng.permutation(self.num_items) if self.shuffle else np.arange(self.num_items)


@BATCH_SAMPLERS.register("balanced")
class BalancedBatchSampler(ShardedBatchSampler):
    """Class-balanced batches: items drawn with replacement, weight 1 / (count of its class).

    An epoch is ``num_samples`` draws (default: the number of items).
    """

    def __init__(self, labels: list, batch_size: int, num_samples: int | None = None,
                 **common):
        super().__init__(batch_size, **common)
        _, inverse, counts = np.unique(np.asarray(labels), return_inverse=True,
                                       return_counts=True)
        weights = 1.0 / counts[inverse]
        self.probabilities = weights / weights.sum()
        self.num_samples = num_samples or len(labels)

    def epoch_order(self, rng):
        return rng.choice(len(self.probabilities), self.num_samples, p=self.probabilities)


@BATCH_SAMPLERS.register("duration")
class DurationBatchSampler(ShardedBatchSampler):
    """Batches of similar-length items holding at most ``batch_secs`` of padded audio (the
    longest item × the count; an item longer than the budget is a batch alone). Items are
    sorted by length, packed, and the batches shuffled per epoch when ``shuffle``; memory per
    batch is bounded whatever the lengths. ``durations`` are the items' seconds."""

    def __init__(self, durations: list[float], batch_secs: float, shuffle: bool = True,
                 **common):
        super().__init__(1, **common)
        self.durations, self.batch_secs, self.shuffle = np.asarray(durations), batch_secs, shuffle

    def local_batches(self) -> list[np.ndarray]:
        order = np.argsort(-self.durations, kind="stable")
        batches, start = [], 0
        while start < len(order):
            longest, count = self.durations[order[start]], 1
            while (start + count < len(order)
                   and longest * (count + 1) <= self.batch_secs):
                count += 1
            batches.append(order[start:start + count])
            start += count
        return batches

    def epoch_batches(self, rng):
        batches = self.local_batches()
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        groups = math.ceil(len(batches) / self.world_size)
        if self.pad_last and batches:  # every rank needs a batch in every global step
            missing = groups * self.world_size - len(batches)
            batches += [batches[i % len(batches)] for i in range(missing)]
        return [batches[g * self.world_size:(g + 1) * self.world_size] for g in range(groups)]
