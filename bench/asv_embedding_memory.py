"""Benchmark: peak memory of speaker-embedding extraction against utterance length.

For each length, a fresh process embeds one utterance of white noise with the ASV recipe's
default model (fbank + SUPERB x-vector, 512-d) through the evaluation path (AudioDataset →
WindowDataset → DurationBatchSampler → collate_windows → task.eval_step → summarize) and
reports its peak resident memory (VmHWM) above the memory it had once the model was built.
With windows of ``chunk_secs`` batched up to ``batch_secs`` the figure must stay flat beyond
``batch_secs``; ``--chunk-secs 0`` embeds whole utterances, for contrast.
Usage: python bench/asv_embedding_memory.py [--lengths 10 30 60 120 300] [--chunk-secs 20]
       [--batch-secs 60]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

RATE = 16000


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def build_task():
    from framework.config import to_plain
    from framework.tasks.verification import SpeakerVerificationTask
    from recipes.asv import ASV

    problem = ASV()
    cfg = ASV.compose_config(overrides={"target_dir": "unused"})
    model = problem.build_model(to_plain(cfg.build_model), cfg.build_downstream.embedding_size,
                                to_plain(cfg.build_upstream), to_plain(cfg.build_featurizer),
                                to_plain(cfg.build_downstream))
    return SpeakerVerificationTask(model, 10, cfg.build_downstream.embedding_size).eval()


def measure(seconds: float, chunk_secs: float, batch_secs: float) -> dict:
    """Run in the child process: embed one ``seconds``-long utterance."""
    import numpy as np
    import pandas as pd
    import soundfile
    import torch

    from framework.audio.dataset import AudioDataset
    from framework.audio.samplers import DurationBatchSampler
    from framework.audio.segments import WindowDataset, collate_windows

    torch.set_num_threads(1)
    task = build_task()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "long.wav"
        noise = np.random.default_rng(0).normal(0, 0.1, int(seconds * RATE))
        soundfile.write(wav, noise.astype(np.float32), RATE, subtype="PCM_16")
        del noise
        manifest = pd.DataFrame({"id": ["long"], "wav_path": [str(wav)], "duration": [seconds]})
        windows = WindowDataset(AudioDataset(manifest), chunk_secs or seconds)
        batches = DurationBatchSampler(windows.item_durations(), batch_secs, shuffle=False,
                                       pad_last=False)
        loader = torch.utils.data.DataLoader(windows, batch_sampler=batches,
                                             collate_fn=collate_windows)
        base, started = peak_rss_mb(), time.perf_counter()
        outputs = {}
        for batch in loader:
            for key, value in task.eval_step(batch).items():
                outputs.setdefault(key, []).append(value)
        task.summarize({k: np.concatenate(v) for k, v in outputs.items()})
        return {"seconds": seconds, "windows": len(windows), "base_mb": base,
                "extra_peak_mb": peak_rss_mb() - base, "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=float, nargs="+", default=[10, 30, 60, 120, 300])
    parser.add_argument("--chunk-secs", type=float, default=20.0)
    parser.add_argument("--batch-secs", type=float, default=60.0)
    parser.add_argument("--child", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(measure(args.child, args.chunk_secs, args.batch_secs)))
        return
    print(f"chunk_secs={args.chunk_secs or 'whole utterance'} batch_secs={args.batch_secs}")
    print(f"{'length':>8} {'windows':>8} {'extra peak MB':>14} {'seconds':>8}")
    for seconds in args.lengths:
        out = subprocess.run([sys.executable, __file__, "--child", str(seconds),
                              "--chunk-secs", str(args.chunk_secs), "--batch-secs",
                              str(args.batch_secs)], check=True,
                             capture_output=True, text=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{seconds:>7.0f}s {row['windows']:>8d} {row['extra_peak_mb']:>14.0f} "
              f"{row['wall_s']:>8.2f}")


if __name__ == "__main__":
    main()
