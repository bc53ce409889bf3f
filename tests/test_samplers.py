"""Batch samplers: class balance, sharding across ranks, deterministic mid-epoch resume."""
from __future__ import annotations

import collections

import numpy as np

from framework.audio.samplers import (BalancedBatchSampler, DurationBatchSampler,
                                     FixedBatchSampler)


def test_balanced_sampler_draws_classes_equally_often():
    labels = ["a"] * 900 + ["b"] * 90 + ["c"] * 10
    sampler = BalancedBatchSampler(labels, batch_size=50, num_samples=30000, seed=3)
    counts = collections.Counter(labels[i] for batch in sampler for i in batch)
    shares = np.array([counts[c] for c in "abc"]) / sum(counts.values())
    assert np.allclose(shares, 1 / 3, atol=0.02)


def test_ranks_split_each_global_batch_like_one_process_with_a_bigger_batch():
    one = list(FixedBatchSampler(103, batch_size=8, seed=1))
    ranks = [list(FixedBatchSampler(103, batch_size=4, seed=1, world_size=2, rank=r))
             for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == len(one) == 13
    for whole, left, right in zip(one, *ranks):
        assert whole == left + right


def test_epochs_reshuffle_identically_and_start_batch_resumes_mid_epoch():
    sampler = FixedBatchSampler(50, batch_size=5, seed=7)
    sampler.set_epoch(0)
    epoch0 = list(sampler)
    sampler.set_epoch(1)
    epoch1 = list(sampler)
    assert epoch0 != epoch1
    again = FixedBatchSampler(50, batch_size=5, seed=7)
    again.set_epoch(1, start_batch=4)
    assert list(again) == epoch1[4:]
    assert sorted(i for b in epoch1 for i in b) == list(range(50))


def test_evaluation_sampler_yields_every_item_exactly_once_in_order():
    batches = list(FixedBatchSampler(10, batch_size=4, shuffle=False, pad_last=False))
    assert batches == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_training_sampler_pads_the_last_batch_so_every_step_is_full():
    batches = list(FixedBatchSampler(10, batch_size=4, shuffle=False))
    assert [len(b) for b in batches] == [4, 4, 4] and batches[2][:2] == [8, 9]


def test_duration_batches_stay_under_the_budget_and_cover_every_item_once():
    durations = np.random.default_rng(0).uniform(1, 10, 200)
    sampler = DurationBatchSampler(durations, batch_secs=30, shuffle=False, pad_last=False)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(200))
    for batch in batches:
        assert max(durations[batch]) * len(batch) <= 30
    assert [len(b) for b in batches][:2] == [3, 3]  # the longest first: 3 × ~10 s


def test_duration_batches_shard_into_equal_counts_and_reshuffle_per_epoch():
    durations = np.random.default_rng(1).uniform(1, 8, 101)
    ranks = [DurationBatchSampler(durations, 20, seed=3, world_size=2, rank=r) for r in (0, 1)]
    left, right = list(ranks[0]), list(ranks[1])
    assert len(left) == len(right)
    one = list(DurationBatchSampler(durations, 20, seed=3))
    assert set(map(tuple, one)) == set(map(tuple, left + right))  # the same batches, dealt
    assert len(left + right) == len(one) + 1  # 101 items pack into an odd count: one repeated
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != left


def test_an_item_longer_than_the_budget_is_a_batch_alone():
    batches = list(DurationBatchSampler([50, 5, 5], batch_secs=20, shuffle=False))
    assert batches == [[0], [1, 2]]
