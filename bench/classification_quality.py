"""Benchmark: test accuracy of each shipped classification head at a fixed step budget, next
to an untrained baseline (scikit-learn logistic regression on MFCC mean+std).

Corpora (synthesized in the real layouts, nothing downloaded):
  * ``speech_commands``: Speech Commands v0.02, all 35 words (``prepare_data.classes=all``),
    in the synthesizer's hard setting (SNR -5 to 10 dB, speakers' formants ±12 %: the default
    corpus is so easy every head and the baseline score 100 %);
  * ``gtzan``: the GTZAN layout (10 genres, 22,050 Hz clips), ``genre`` problem.
Every head runs the real stages 0-3 through ``Problem.run`` with the recipe's defaults and
only what the row names changed, for ``--steps`` optimisation steps, with and without the
training augmentation; one cache_dir is shared, so audio is decoded once per corpus. The
baseline reads the same train and test manifests with the framework's MFCC front end.
``s/step`` is the train stage's wall time (one validation included) over its steps.

Usage: python bench/classification_quality.py [--corpus speech_commands gtzan]
       [--steps 600] [--speakers 40] [--clips-per-genre 30] [--gtzan-secs 10]
       [--rows NAME ...]
       [--augment both|off|on] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from framework.audio.dataset import read_manifest  # noqa: E402
from framework.audio.io import read_audio  # noqa: E402
from framework.models.upstream import Mfcc  # noqa: E402

#: row name → config overrides (dotlist: a ``conf={...}`` replaces the recipe's whole mapping)
ROWS = {
    "mean_linear (fbank)": [],
    "mlp_probe (fbank)": ["build_downstream.name=mlp_probe", "build_downstream.conf={}"],
    "resnet18 (mel 64)": ["build_upstream.name=mel", "build_upstream.conf={n_mels: 64}",
                          "build_downstream.name=resnet18", "build_downstream.conf={}"],
    "m5 (waveform)": ["build_upstream.name=waveform", "build_upstream.conf={}",
                      "build_downstream.name=m5", "build_downstream.conf={}"],
}
#: the training augmentation a "+ aug" row adds (Speech Commands adds its own noise folder)
AUGMENT = {"build_augmentation": {"spec_augment": {"time_masks": 2, "freq_masks": 2},
                                  "speed": {"factors": [0.9, 1.0, 1.1]}}}


def corpus_settings(name: str, root: Path, args) -> tuple[str, dict, dict]:
    """(registered problem, prepare_data overrides, augmentation) for a synthesized corpus
    under ``root``."""
    if name == "speech_commands":
        from corpora.synthesize import synthesize_speech_commands

        roots = synthesize_speech_commands(root, speakers=args.speakers, version="v0.02",
                                           snr_db=(-5, 10), speaker_spread=0.12)
        noise = {"build_augmentation": {"noise": {
            "folder": str(roots["v0.02"] / "_background_noise_")}}}
        return "kws", {"dataset_root": str(roots["v0.02"]), "classes": "all"}, \
            merge(AUGMENT, noise)
    from corpora.synth_gtzan import synthesize_gtzan

    folder = synthesize_gtzan(root, clips_per_genre=args.clips_per_genre,
                              secs=args.gtzan_secs)["dataset_root"]
    return "genre", {"dataset_root": str(folder)}, AUGMENT


def run_row(problem, overrides: dict, target_dir: Path, cache_dir: Path, steps: int,
            dotlist=()) -> dict:
    """Stages 0-3 of one row; → {"accuracy", "s_per_step"} on the test split."""
    settings = {"target_dir": str(target_dir), "cache_dir": str(cache_dir),
                "train": {"total_steps": steps, "eval_step": steps, "save_step": steps,
                          "log_step": max(1, steps // 4)}, **overrides}
    problem().run(dotlist=dotlist, stop="build_encoder", **settings)
    started = time.perf_counter()
    problem().run(dotlist=dotlist, start="train", stop="train", **settings)
    seconds = time.perf_counter() - started
    records = problem().run(dotlist=dotlist, start="evaluate", stop="evaluate", **settings)
    results = read_results(target_dir / "evaluate" / "results.json")
    return {"accuracy": results["accuracy"], "s_per_step": seconds / steps, "records": records}


def read_results(path: Path) -> dict:
    import json

    return next(r["metrics"] for r in json.loads(path.read_text()) if r["split"] == "test")


def mfcc_stats(csv: Path, sample_rate: int = 16000) -> tuple[np.ndarray, list[str]]:
    """(N, 80) MFCC mean and std per clip of a manifest, and its labels."""
    rows, front = read_manifest(csv), Mfcc(sample_rate=sample_rate)
    feats = []
    for row in rows.itertuples():
        start = None if np.isnan(row.start) else row.start
        end = None if np.isnan(row.end) else row.end
        wav = read_audio(row.wav_path, start, end, sample_rate)
        [mfcc], _ = front(wav[None], torch.tensor([len(wav)]))
        feats.append(torch.cat([mfcc[0].mean(0), mfcc[0].std(0)]).numpy())
    return np.stack(feats), rows["label"].tolist()


def baseline_accuracy(data_dir: Path) -> float:
    """Logistic regression on MFCC mean+std: fit on train.csv, accuracy on test.csv."""
    x_train, y_train = mfcc_stats(data_dir / "train.csv")
    x_test, y_test = mfcc_stats(data_dir / "test.csv")
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(x_train, y_train)
    return float(model.score(x_test, y_test))


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and \
            isinstance(out.get(key), dict) else value
    return out


def bench_corpus(name: str, work: Path, args) -> list[tuple]:
    from framework.problems import load_problem

    problem_name, prepare, augment = corpus_settings(name, work / "corpus", args)
    problem, cache, table = load_problem(problem_name), work / "cache", []
    for row in args.rows:
        for augmented in {"both": (False, True), "off": (False,), "on": (True,)}[args.augment]:
            overrides = merge({"prepare_data": prepare}, augment) if augmented \
                else {"prepare_data": prepare}
            label = f"{row}{' + aug' if augmented else ''}"
            out = run_row(problem, overrides, work / label.replace(" ", "_"), cache,
                          args.steps, [*ROWS[row], *args.set])
            table.append((name, label, out["accuracy"], out["s_per_step"]))
            print(f"{name:<16} {label:<28} acc {out['accuracy']:.3f}  "
                  f"{out['s_per_step'] * 1000:.0f} ms/step", flush=True)
    data_dir = work / args.rows[0].replace(" ", "_") / "data"
    table.append((name, "logistic regression, MFCC mean+std (untrained baseline)",
                  baseline_accuracy(data_dir), float("nan")))
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", nargs="+", default=["speech_commands", "gtzan"],
                        choices=["speech_commands", "gtzan"])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--speakers", type=int, default=40)
    parser.add_argument("--clips-per-genre", type=int, default=30)
    parser.add_argument("--gtzan-secs", type=float, default=10.0,
                        help="length of the synthesized GTZAN clips (the real ones: 30 s)")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--augment", choices=["both", "off", "on"], default="both",
                        help="rows without and/or with the training augmentation")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides applied to every row (e.g. a learning rate)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("SPEECH_RECIPES_PROGRESS", "off")
    table = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.corpus:
            table += bench_corpus(name, Path(tmp) / name, args)
    print(f"\n{args.steps} steps, torch threads {torch.get_num_threads()}\n")
    print("| corpus | head | test accuracy | ms/step |\n|---|---|---|---|")
    for corpus, label, accuracy, per_step in table:
        cost = "—" if np.isnan(per_step) else f"{per_step * 1000:.0f}"
        print(f"| {corpus} | {label} | {accuracy:.3f} | {cost} |")


if __name__ == "__main__":
    main()
