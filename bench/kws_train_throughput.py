"""Benchmark: KWS training utterances/s through the real train stage vs a bare PyTorch loop.

Synthesizes a Speech Commands corpus (real layout), prepares it with stages 0-1, runs the train
stage once to warm up, then, ``--repeats`` times, measures one after the other:
  * stage: the real train stage (DataLoader over the waveform cache or the feature cache,
    sampler, trainer) in steady state: the time from its second optimizer step to its last
    (taken by a hook on ``Trainer.optimizer_step``), so model building, the feature-cache
    lookup, the final validation and checkpoint are left out, and the loading of every batch
    but the first is in;
  * bare: the same model, optimizer and batch size in a plain loop over batches already in
    memory (forward, backward, clip, step): the limit on this machine.
Each repeat gives a ratio (stage and bare measured back to back, which matters on a shared
machine); the median and the range are printed.
``--upstream fbank`` (default): the fbank front end, ~10k utterances. ``--upstream ssl``: a
frozen base-size wav2vec2 (random init, 13 hidden states × 768) read from the frozen-feature
cache (build_upstream.cache_features); the bare loop then runs the same task on batches of
cached hidden states in memory. Its corpus is smaller (the one-time extraction runs the
upstream on every utterance: it is timed, in the warm-up run, and left out of the ratio).
Usage: python bench/kws_train_throughput.py [--upstream fbank|ssl] [--speakers N] [--steps N]
       [--repeats 3] [--workers 0] [--threads N]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import torch  # noqa: E402

from corpora.synthesize import synthesize_speech_commands  # noqa: E402
from framework.trainer import Trainer  # noqa: E402
from recipes.kws import KWS  # noqa: E402

SSL = {"name": "wav2vec2", "conf": {"random_init": True, "size": "base"},
       "cache_features": True}
DEFAULTS = {"fbank": {"speakers": 330, "steps": 1500, "bare_batches": 32},
            "ssl": {"speakers": 8, "steps": 150, "bare_batches": 8}}  # a batch is 63 MB


def settings(args, target: Path, roots: dict, steps: int) -> dict:
    extra = {"build_upstream": SSL} if args.upstream == "ssl" else {}
    return dict(target_dir=str(target), num_workers=args.workers,
                prepare_data={"dataset_root": str(roots["v0.01"]),
                              "test_root": str(roots["test_v0.01"])},
                train={"total_steps": steps, "eval_step": 10**9, "save_step": 10**9,
                       "auto_resume": False,  # a rerun must train, not resume the last run
                       "log_step": 10**9}, eval_batch=1, **extra)


@contextlib.contextmanager
def step_clock(starts: list):
    """Record ``time.perf_counter()`` as every optimizer step of the real trainer begins."""
    original = Trainer.optimizer_step

    def timed(self, batches):
        starts.append(time.perf_counter())
        return original(self, batches)

    Trainer.optimizer_step = timed
    try:
        yield starts
    finally:
        Trainer.optimizer_step = original


def stage_rate(args, target: Path, roots: dict, steps: int, batch: int) -> float:
    """Steady-state utterances/s of one real train stage of ``steps`` steps."""
    with step_clock([]) as starts:
        KWS().run(start="train", stop="train", force=True,
                  **settings(args, target, roots, steps))
    return (len(starts) - 1) * batch / (starts[-1] - starts[0])


class BareLoop:
    """The same task in a plain loop over ``distinct`` in-memory batches (of waveforms, or of
    cached hidden states when the run uses the feature cache)."""

    def __init__(self, problem: KWS, distinct: int):
        cfg = problem.cfg
        self.task = problem.build_model_and_task(cfg)
        loader = problem.build_loader(cfg, "train", problem.manifests()["train"],
                                      self.task.model)
        self.batches = []
        while len(self.batches) < distinct:  # a small corpus has fewer batches per epoch
            self.batches += [b for _, b in zip(range(distinct - len(self.batches)), loader)]
        self.params = [p for p in self.task.parameters() if p.requires_grad]
        self.optimizer = problem.build_optimizer(dict(cfg.build_optimizer), self.params)
        self.rate(2)  # optimizer state allocated before anything is timed

    def rate(self, steps: int) -> float:
        """Utterances/s of forward+backward+clip+step."""
        self.task.train()
        started = time.perf_counter()
        for step in range(steps):
            loss = self.task.train_step(self.batches[step % len(self.batches)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return steps * len(self.batches[0]["id"]) / (time.perf_counter() - started)


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} (median of {len(values)}; " \
           f"{min(values):{fmt}}–{max(values):{fmt}})"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", choices=sorted(DEFAULTS), default="fbank")
    parser.add_argument("--speakers", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0)  # in-process: the default and fastest
    parser.add_argument("--threads", type=int, default=None)  # torch threads (default: torch's)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    for key, value in DEFAULTS[args.upstream].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    return args


def measure(args, problem: KWS, target: Path, roots: dict, batch: int) -> dict:
    """Warm up, then ``args.repeats`` × (one stage run, one bare loop), back to back."""
    started = time.perf_counter()  # imports, page cache, the feature extraction
    KWS().run(start="train", stop="train", force=True,
              **settings(args, target, roots, max(2, args.steps // 5)))
    out = {"warm_up": time.perf_counter() - started, "stage": [], "bare": [], "load": []}
    bare_loop = BareLoop(problem, args.bare_batches)
    for _ in range(args.repeats):
        out["stage"].append(stage_rate(args, target, roots, args.steps, batch))
        out["bare"].append(bare_loop.rate(args.steps))
        out["load"].append(round(os.getloadavg()[0], 1))
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="kws_bench_"))
    roots = synthesize_speech_commands(work / "corpus", speakers=args.speakers, seed=0)
    target = work / "exp"
    problem = KWS()
    problem.run(stop="build_encoder", **settings(args, target, roots, 1))
    batch = problem.cfg.build_batch_sampler.train.batch_size
    utterances = len(problem.manifests()["train"].read_text().splitlines()) - 1
    got = measure(args, problem, target, roots, batch)
    upstream = "fbank" if args.upstream == "fbank" else \
        "wav2vec2 base (random init), frozen, from the feature cache (13 × 768, fp16 on disk)"
    print(f"upstream {upstream}; train utterances: {utterances}, batch {batch}, "
          f"workers {args.workers}, torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} cores")
    print(f"warm-up run of {max(2, args.steps // 5)} steps: {got['warm_up']:.1f} s"
          + (" (includes the one-time feature extraction)" if args.upstream == "ssl" else ""))
    print(f"stage: {spread(got['stage'], '.0f')} utt/s   (real train stage, steady state, "
          f"{args.steps} steps a run)")
    print(f"bare : {spread(got['bare'], '.0f')} utt/s   (same model, {args.bare_batches} "
          f"in-memory batches)")
    ratios = [s / b for s, b in zip(got["stage"], got["bare"])]
    print(f"ratio: {spread(ratios, '.1%')}   (goal: 90 %)")
    print(f"load average before {tuple(round(x, 1) for x in load_before)}, 1-min after each "
          f"repeat {got['load']}")


if __name__ == "__main__":
    main()
