"""Throughput of ``screen_manifest`` on N short synthetic WAVs (files per second).

Usage: python bench/audio_screen.py [--files 5000] [--seconds 1.0] [--workers 1 2 4]
       [--subtype PCM_16]

Writes the files and a manifest to a temporary folder, screens a fresh copy of the manifest
once per worker count, and prints one line per run. Use ``--subtype FLOAT`` to measure the
decoding path (float data is scanned for NaN/inf; integer-PCM WAV is checked from its header).
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import soundfile as sf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from framework.audio.io import screen_manifest  # noqa: E402


def synthesize(folder: str, files: int, seconds: float, subtype: str) -> str:
    """Write ``files`` noise WAVs (16 kHz mono) and a manifest; return the manifest path."""
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(int(16000 * seconds))).astype(np.float32)
    paths = [os.path.join(folder, f"utt{i:06d}.wav") for i in range(files)]
    for path in paths:
        sf.write(path, wave, 16000, subtype=subtype)
    manifest = os.path.join(folder, "manifest.csv")
    ids = [f"utt{i:06d}" for i in range(files)]
    pd.DataFrame({"id": ids, "wav_path": paths, "label": "yes"}).to_csv(manifest, index=False)
    return manifest


def time_screen(manifest: str, workers: int) -> float:
    """Seconds one screen_manifest call takes on a fresh copy of ``manifest``."""
    copy = manifest + f".w{workers}.csv"
    shutil.copy(manifest, copy)
    begin = time.perf_counter()
    result = screen_manifest(copy, copy + ".excluded.csv", num_workers=workers,
                             desc=f"{workers} worker(s)")
    elapsed = time.perf_counter() - begin
    assert result.excluded == 0, result
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--subtype", default="PCM_16")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        manifest = synthesize(folder, args.files, args.seconds, args.subtype)
        time_screen(manifest, 1)  # warm the page cache so every run reads from memory
        for workers in args.workers:
            elapsed = time_screen(manifest, workers)
            print(f"{args.files} x {args.seconds:g} s {args.subtype}, {workers} worker(s): "
                  f"{elapsed:.2f} s, {args.files / elapsed:,.0f} files/s")


if __name__ == "__main__":
    main()
