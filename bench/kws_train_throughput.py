"""Benchmark: KWS training utterances/s through the real train stage vs a bare PyTorch loop.

Synthesizes a Speech Commands corpus of ~10k utterances (real layout), prepares it with stages
0-1, then measures:
  * stage: the real train stage (DataLoader from wav files, sampler, trainer, checkpoints) —
    steady state, as the time difference between a long and a short run, so model building
    and the final validation cancel out;
  * bare: the same model, optimizer and batch size in a plain loop over batches already in
    memory (forward, backward, clip, step): the limit on this machine.
Usage: python bench/kws_train_throughput.py [--speakers 330] [--steps 1500] [--workers 0]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from corpora.synthesize import synthesize_speech_commands
from recipes.kws import KWS


def settings(args, target: Path, roots: dict, steps: int) -> dict:
    return dict(target_dir=str(target), num_workers=args.workers,
                prepare_data={"dataset_root": str(roots["v0.01"]),
                              "test_root": str(roots["test_v0.01"])},
                train={"total_steps": steps, "eval_step": 10**9, "save_step": 10**9,
                       "auto_resume": False,  # a rerun must train, not resume the last run
                       "log_step": 10**9}, eval_batch=1)


def stage_seconds(args, target: Path, roots: dict, steps: int) -> float:
    started = time.perf_counter()
    KWS().run(start="train", stop="train", force=True, **settings(args, target, roots, steps))
    return time.perf_counter() - started


def bare_loop(problem: KWS, steps: int) -> float:
    """Utterances/s of forward+backward+clip+step over in-memory batches."""
    cfg = problem.cfg
    task = problem.build_model_and_task(cfg)
    loader = problem.build_loader(cfg, "train", problem.manifests()["train"])
    batches = [batch for _, batch in zip(range(32), loader)]
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = problem.build_optimizer(dict(cfg.build_optimizer), params)
    task.train()
    started = time.perf_counter()
    for step in range(steps):
        loss = task.train_step(batches[step % len(batches)])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * len(batches[0]["id"]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=330)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--workers", type=int, default=0)  # in-process: the default and fastest
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kws_bench_"))
    roots = synthesize_speech_commands(work / "corpus", speakers=args.speakers, seed=0)
    target = work / "exp"
    problem = KWS()
    problem.run(stop="build_encoder", **settings(args, target, roots, 1))
    batch = problem.cfg.build_batch_sampler.train.batch_size
    utterances = len(problem.manifests()["train"].read_text().splitlines()) - 1
    short_steps = args.steps // 5
    stage_seconds(args, target, roots, short_steps)  # warm-up: imports, page cache
    short = stage_seconds(args, target, roots, short_steps)
    long = stage_seconds(args, target, roots, args.steps)
    stage = (args.steps - short_steps) * batch / (long - short)
    bare = bare_loop(problem, args.steps)
    print(f"train utterances: {utterances}, batch {batch}, workers {args.workers}, "
          f"torch threads {torch.get_num_threads()}")
    print(f"stage: {stage:8.0f} utt/s   (real train stage, steady state)")
    print(f"bare : {bare:8.0f} utt/s   (same model, in-memory batches)")
    print(f"ratio: {stage / bare:8.1%}")


if __name__ == "__main__":
    main()
