"""Benchmark: KWS training with the frozen-feature cache vs recomputing the upstream each step.

A frozen base-size upstream (random-init wav2vec2: CNN + 12 transformer layers of 768, 13
hidden states) on a synthesized Speech Commands corpus, on the CPU. An LR sweep of ``--lrs``
runs of ``--steps`` steps each (batch 32), every run in a fresh process (as a sweep of
commands would be) and in its own target_dir, all sharing one cache_dir:

  * cached: ``build_upstream.cache_features=true``; the first run extracts the 13 layers of the
    train and valid utterances once (timed on its own), the others only read them;
  * uncached: ``cache_features=false``; every step runs the upstream on the batch's waves.
    It is slow, so by default only ``--uncached-runs 1`` of the sweep's runs is measured and
    the sweep total is that run's time × the number of runs (printed as an extrapolation).

Steps/s are the real train stage's: intervals between successive optimizer steps (loading
included), from the second step to the last (model building and validation left out). Peak
memory is each run process's VmHWM. Disk is the feature folder's bytes per hour of cached
audio, for all 13 layers and, in a last run, for ``layer_selections=[12]`` alone.
Usage: python bench/feature_cache_speed.py [--speakers 6] [--steps 20] [--uncached-runs 1]
       [--lrs 1e-4 3e-4 1e-3 3e-3 1e-2] [--threads N] [--workdir DIR] [--no-one-layer]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

UPSTREAM = {"name": "wav2vec2", "conf": {"random_init": True, "size": "base"}}
FRAMES_PER_SEC = 49  # wav2vec2's CNN: 400-sample field, stride 320 → 49 frames in 1 s


def settings(target: Path, cache: Path, roots: dict, steps: int, lr: float, cached: bool,
             layers=None) -> dict:
    return dict(target_dir=str(target), cache_dir=str(cache), stop="train", num_workers=0,
                prepare_data={"dataset_root": roots["v0.01"], "test_root": roots["test_v0.01"]},
                build_upstream={**UPSTREAM, "cache_features": cached},
                build_featurizer={"layer_selections": layers},
                build_optimizer={"conf": {"lr": lr}},
                train={"total_steps": steps, "eval_step": 10**9, "save_step": 10**9,
                       "log_step": 10**9, "auto_resume": False}, eval_batch=1)


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def one_run(conf: dict, threads: int | None) -> dict:
    """In a fresh process: stages 0-2 of one sweep run, with timing hooks on the trainer's
    optimizer step and on the feature extraction."""
    os.environ["TQDM_DISABLE"] = "1"
    sys.stderr = open(os.devnull, "w")  # the run's console log (log.txt keeps it)
    import torch

    from framework import feature_cache
    from framework.trainer import Trainer
    from recipes.kws import KWS

    starts, extractions = [], []
    step, extract = Trainer.optimizer_step, feature_cache.extract_missing

    def timed_step(self, batches):
        starts.append(time.perf_counter())
        return step(self, batches)

    def timed_extract(store, upstream, audio, entries, *args):
        missing = sum(not entry.is_file() for entry in entries)
        started = time.perf_counter()
        extract(store, upstream, audio, entries, *args)
        extractions.append((missing, time.perf_counter() - started))

    Trainer.optimizer_step, feature_cache.extract_missing = timed_step, timed_extract
    if threads:
        torch.set_num_threads(threads)
    KWS().run(**conf)
    return {"starts": starts, "extractions": extractions, "peak_rss": peak_rss_bytes()}


def timed_run(conf: dict, threads: int | None) -> dict:
    """One run in a fresh process; adds its wall time (process start to exit)."""
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        out = pool.submit(one_run, conf, threads).result()
    out["seconds"] = time.perf_counter() - started
    out["steps_per_sec"] = (len(out["starts"]) - 1) / (out["starts"][-1] - out["starts"][0])
    out["load"] = os.getloadavg()[0]
    return out


def sweep(work: Path, roots: dict, args, cached: bool, runs: int) -> list[dict]:
    results = []
    for lr in args.lrs[:runs]:
        target = work / f"{'cached' if cached else 'uncached'}_lr{lr:g}"
        results.append(timed_run(settings(target, work / "cache", roots, args.steps, lr,
                                          cached), args.threads))
        r = results[-1]
        print(f"  {'cached  ' if cached else 'uncached'} lr {lr:<7g} {r['seconds']:7.1f} s  "
              f"{r['steps_per_sec']:8.3f} steps/s  peak RSS {r['peak_rss'] / 2**20:6.0f} MiB  "
              f"extracted {sum(n for n, _ in r['extractions'])} utt  "
              f"(load {r['load']:.1f})", flush=True)
    return results


def cached_hours(target: Path) -> float:
    """Hours of audio in the train and valid manifests (the utterances a run caches)."""
    import pandas as pd

    return sum(pd.read_csv(target / "data" / f"{split}.csv")["duration"].sum()
               for split in ("train", "valid")) / 3600


def disk_use(cache: Path) -> dict[tuple, dict]:
    """Per feature folder (keyed by its selected layers): files, bytes, allocated bytes."""
    out = {}
    for folder in sorted((cache / "features").iterdir()):
        layers = tuple(json.loads((folder / "upstream.json").read_text())["layers"])
        files = list(folder.rglob("*.npy"))
        out[layers] = {"files": len(files), "bytes": sum(f.stat().st_size for f in files),
                       "allocated": sum(f.stat().st_blocks * 512 for f in files)}
    return out


def spread(values: list[float], fmt: str = ".3f") -> str:
    if len(values) == 1:
        return format(values[0], fmt)
    return f"{statistics.median(values):{fmt}} (median; {min(values):{fmt}}–{max(values):{fmt}})"


def report_speed(cached: list[dict], uncached: list[dict], runs: int, steps: int,
                 project: int) -> None:
    fast = [r["steps_per_sec"] for r in cached]
    slow = [r["steps_per_sec"] for r in uncached]
    ratios = [f / statistics.median(slow) for f in fast]
    print(f"\nsteps/s, cached  : {spread(fast)}")
    print(f"steps/s, uncached: {spread(slow, '.4f')}")
    print(f"speed-up         : {spread(ratios, '.0f')} × (goal ≥ 10×)")
    count, secs = map(sum, zip(*cached[0]["extractions"]))
    print(f"one-time extraction: {count} utterances in {secs:.1f} s "
          f"({count / secs:.2f} utt/s), inside the first cached run")
    total_cached = sum(r["seconds"] for r in cached)
    measured = sum(r["seconds"] for r in uncached)
    total_uncached = measured / len(uncached) * runs
    note = "measured" if len(uncached) == runs else \
        f"EXTRAPOLATED: {len(uncached)} of {runs} runs measured ({measured:.0f} s), × {runs}/" \
        f"{len(uncached)} (the runs differ only in lr)"
    print(f"LR sweep of {runs} runs, cached  : {total_cached:7.1f} s (measured, extraction "
          f"included)")
    print(f"LR sweep of {runs} runs, uncached: {total_uncached:7.1f} s ({note})")
    print(f"sweep speed-up: {total_uncached / total_cached:.1f} ×")
    projected = [projection(group, steps, project, runs) for group in (cached, uncached)]
    print(f"PROJECTED to {runs} runs of {project} steps (each run's measured fixed time + "
          f"{project} steps at its median measured steps/s; not measured): cached "
          f"{projected[0] / 60:.1f} min, uncached {projected[1] / 60:.1f} min, "
          f"{projected[1] / projected[0]:.0f} ×")


def projection(group: list[dict], steps: int, project: int, runs: int) -> float:
    """Seconds for ``runs`` runs of ``project`` steps: the measured runs' fixed part (time not
    spent in steps, extraction included) per run, plus the steps at the median rate."""
    rate = statistics.median(r["steps_per_sec"] for r in group)
    fixed = [r["seconds"] - steps / r["steps_per_sec"] for r in group]
    fixed += [statistics.median(fixed[1:] or fixed)] * (runs - len(group))
    return sum(fixed) + runs * project / rate


def report_memory(cached: list[dict], uncached: list[dict], hours: float, cache: Path,
                  one_layer: dict | None) -> None:
    mib = 2**20
    print(f"\npeak RSS, first cached run (extraction): {cached[0]['peak_rss'] / mib:6.0f} MiB")
    print(f"peak RSS, later cached runs           : "
          f"{spread([r['peak_rss'] / mib for r in cached[1:]] or [0], '.0f')} MiB")
    print(f"peak RSS, uncached runs               : "
          f"{spread([r['peak_rss'] / mib for r in uncached], '.0f')} MiB")
    if one_layer:
        print(f"peak RSS, one-layer cached run        : {one_layer['peak_rss'] / mib:6.0f} MiB")
    print(f"cached audio: {hours * 3600:.0f} s ({hours:.4f} h, train + valid)")
    for layers, use in disk_use(cache).items():
        expected = len(layers) * 768 * 2 * FRAMES_PER_SEC * 3600
        print(f"cache disk, {len(layers):2d} layer(s): {use['files']} files, "
              f"{use['bytes'] / 1e6:.1f} MB ({use['allocated'] / 1e6:.1f} MB allocated) → "
              f"{use['bytes'] / hours / 1e9:.2f} GB/h ({use['allocated'] / hours / 1e9:.2f} GB/h "
              f"allocated); {len(layers)}×768×2 B×{FRAMES_PER_SEC} frames/s = "
              f"{expected / 1e9:.2f} GB/h")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--uncached-runs", type=int, default=1)
    parser.add_argument("--project-steps", type=int, default=2000)
    parser.add_argument("--no-one-layer", action="store_true")
    parser.add_argument("--threads", type=int, default=None)  # torch threads (default: torch's)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    import torch

    from corpora.synthesize import synthesize_speech_commands

    work = Path(args.workdir or tempfile.mkdtemp(prefix="feature_cache_bench_"))
    roots = {k: str(v) for k, v in
             synthesize_speech_commands(work / "corpus", speakers=args.speakers, seed=0).items()}
    runs = len(args.lrs)
    print(f"{runs}-run LR sweep, {args.steps} steps of batch 32 each, upstream wav2vec2 base "
          f"(random init, 13 hidden states × 768), CPU, "
          f"{args.threads or torch.get_num_threads()} torch threads, "
          f"{os.cpu_count()} cores; load average at start {os.getloadavg()}", flush=True)
    cached = sweep(work, roots, args, True, runs)
    uncached = sweep(work, roots, args, False, min(args.uncached_runs, runs))
    one_layer = None if args.no_one_layer else timed_run(settings(
        work / "cached_one_layer", work / "cache", roots, args.steps, args.lrs[0], True, [12]),
        args.threads)
    if one_layer:
        count, secs = map(sum, zip(*one_layer["extractions"]))
        print(f"  cached, layer_selections=[12]: {one_layer['seconds']:.1f} s, "
              f"{one_layer['steps_per_sec']:.3f} steps/s, its own extraction of {count} utt "
              f"{secs:.1f} s (load {one_layer['load']:.1f})")
    report_speed(cached, uncached, runs, args.steps, args.project_steps)
    report_memory(cached, uncached, cached_hours(work / f"cached_lr{args.lrs[0]:g}"),
                  work / "cache", one_layer)
    print(f"\nload average at end {os.getloadavg()}; work folder {work}")


if __name__ == "__main__":
    main()
