"""Benchmark: speaker-verification scoring and metrics at VoxCeleb1 test size.

Builds 4,874 utterance embeddings (512-d, 40 speakers: a random centroid per speaker plus
noise, like VoxCeleb1's test set) and 37,720 trials (as many as ``veri_test.txt``), half of
them same-speaker, then times, as the median of ``--repeats`` runs after one warm-up:
  * scoring: ``cosine_scores`` over all trials;
  * metrics: ``verification_metrics`` (EER, minDCF at 0.01 and 0.05);
  * AS-norm: ``as_norm`` against a 5,000-utterance cohort, top 300.
The goal is scoring + metrics under 1 s on the 2-core machine.
Usage: python bench/asv_scoring.py [--trials 37720] [--utterances 4874] [--dim 512]
       [--cohort 5000] [--top-k 300] [--repeats 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from framework.metrics.verification import (as_norm, cosine_scores,  # noqa: E402
                                            verification_metrics)

SPEAKERS = 40


def synthesize(args) -> dict:
    """Embeddings (float32), trial indices and labels, and a cohort of other speakers."""
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(SPEAKERS, args.dim))
    speaker = rng.integers(0, SPEAKERS, args.utterances)
    # Noise 2.2 x the centroid spread puts the EER near 2-3 %, like a decent x-vector system.
    embeddings = centroids[speaker] + 2.2 * rng.normal(size=(args.utterances, args.dim))
    first = rng.integers(0, args.utterances, args.trials)
    second = rng.integers(0, args.utterances, args.trials)
    target = np.arange(args.trials) % 2 == 0
    # Target trials: a random utterance of the first one's speaker, picked from the
    # utterances sorted by speaker (start of that speaker's run + a random offset in it).
    order = np.argsort(speaker, kind="stable")
    counts = np.bincount(speaker, minlength=SPEAKERS)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    own = speaker[first[target]]
    second[target] = order[starts[own] + (rng.random(len(own)) * counts[own]).astype(int)]
    # Non-target trials: resample until the speakers differ (a few rounds with 40 speakers).
    clash = ~target & (speaker[first] == speaker[second])
    while clash.any():
        second[clash] = rng.integers(0, args.utterances, int(clash.sum()))
        clash = ~target & (speaker[first] == speaker[second])
    # The cohort: utterances of 200 other speakers drawn the same way.
    cohort_centroids = rng.normal(size=(200, args.dim))
    cohort = (cohort_centroids[rng.integers(0, 200, args.cohort)]
              + 2.2 * rng.normal(size=(args.cohort, args.dim)))
    return {"embeddings": torch.from_numpy(embeddings.astype(np.float32)),
            "index1": first, "index2": second,
            "labels": (speaker[first] == speaker[second]).astype(int),
            "cohort": torch.from_numpy(cohort.astype(np.float32))}


def median_seconds(run, repeats: int) -> tuple[float, object]:
    """Median wall time of ``run()`` over ``repeats`` calls after one warm-up, and its result."""
    result = run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=37720)
    parser.add_argument("--utterances", type=int, default=4874)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--cohort", type=int, default=5000)
    parser.add_argument("--top-k", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = synthesize(args)
    emb, i1, i2, labels = data["embeddings"], data["index1"], data["index2"], data["labels"]
    scoring, scores = median_seconds(lambda: cosine_scores(emb, i1, i2), args.repeats)
    metrics_time, metrics = median_seconds(lambda: verification_metrics(scores, labels),
                                           args.repeats)
    norm_time, normed = median_seconds(
        lambda: as_norm(scores, emb, i1, i2, data["cohort"], top_k=args.top_k), args.repeats)
    normed_eer = verification_metrics(normed, labels)["eer"]
    print(f"{args.trials} trials, {len(np.unique(np.concatenate([i1, i2])))} utterances, "
          f"{args.dim}-d, torch threads {torch.get_num_threads()}; median of {args.repeats}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"cosine_scores       : {1000 * scoring:8.1f} ms")
    print(f"verification_metrics: {1000 * metrics_time:8.1f} ms   "
          f"(EER {100 * metrics['eer']:.2f} %, minDCF 0.01 {metrics['min_dcf_0.01']:.4f})")
    print(f"scoring + metrics   : {1000 * (scoring + metrics_time):8.1f} ms   (goal < 1000 ms)")
    print(f"as_norm (cohort {args.cohort}, top {args.top_k}): {1000 * norm_time:8.1f} ms   "
          f"(EER after AS-norm {100 * normed_eer:.2f} %)")


if __name__ == "__main__":
    main()
