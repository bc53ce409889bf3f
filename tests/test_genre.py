"""The genre recipe end to end on a synthesized GTZAN (unreadable jazz.00054.wav, planted
duplicates): `python -m framework run genre` stages 0-4, k-fold cross-validation in one
command (framework/folds.py), and the Hugging Face course's fine-tuning config with a tiny
random-init DistilHuBERT written by save_pretrained."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from corpora.synth_gtzan import synthesize_gtzan
from framework.models.upstream import UPSTREAMS
from framework.stages import STAGES
from recipes.genre import Genre

# tiny tensors on 2 shared cores: one torch thread (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
# 12 clips of ~3 s per genre; quarters for test and valid; 2-s crops and 2-s windows
TINY = ["prepare_data.test_fraction=0.25", "prepare_data.valid_fraction=0.25",
        "build_dataset.train.max_secs=2.0", "build_dataset.test.window_secs=2.0",
        "build_batch_sampler.train.batch_size=16", "build_optimizer.conf.lr=3e-3",
        "train.log_step=10"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return synthesize_gtzan(tmp_path_factory.mktemp("gtzan"), clips_per_genre=12,
                            secs=3.0)["dataset_root"]


def steps(total: int, every: int) -> list[str]:
    return [f"train.total_steps={total}", f"train.eval_step={every}",
            f"train.save_step={every}"]


def test_cli_runs_all_stages_far_above_chance(corpus, tmp_path):
    target = tmp_path / "exp"
    command = [sys.executable, "-m", "framework", "run", "genre", f"target_dir={target}",
               f"prepare_data.dataset_root={corpus}", *TINY, *steps(80, 40)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECH_RECIPES_PROGRESS": "off"}
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    excluded = pd.read_csv(target / "data" / "excluded.csv")
    assert [Path(p).name for p in excluded["wav_path"]] == ["jazz.00054.wav"]
    where = {clip: split for split in ("train", "valid", "test")
             for clip in pd.read_csv(target / "data" / f"{split}.csv")["id"]}
    duplicates = pd.read_csv(target / "data" / "duplicates.csv")
    assert duplicates["group"].nunique() == 3  # the planted groups
    for _, group in duplicates.groupby("group"):
        assert group["id"].map(where).nunique() == 1, list(group["id"])
    predictions = pd.read_csv(target / "evaluate" / "valid_best" / "test" / "predictions.csv")
    assert sorted(predictions["id"]) == sorted(c for c, s in where.items() if s == "test")
    report = json.loads((target / "report" / "report.json").read_text())
    # Measured (30 test clips, chance 0.10): corpus seeds 0-2 x train.seed 1337, 1, 2, 3 gave
    # 0.43-0.80 (corpus 0, the one here: 0.63-0.70). 0.25 is 0.18 below the lowest of the 12
    # runs and 0.38 below this corpus's lowest, 2.5x chance.
    assert report["headline"]["metrics"]["accuracy"] > 0.25


def test_kfold_runs_every_fold_in_one_command_and_aggregates(corpus, tmp_path):
    target = tmp_path / "cv"
    dotlist = [f"target_dir={target}", f"prepare_data.dataset_root={corpus}",
               "prepare_data.split=kfold", "prepare_data.folds=3", *TINY, *steps(40, 20)]
    result = Genre().run(dotlist=dotlist)
    assert sorted(result["folds"]) == ["fold0", "fold1", "fold2"]
    tests = []
    for name in result["folds"]:
        fold = target / name
        assert all((fold / "stages" / f"{i}-{stage}.json").is_file()
                   for i, stage in enumerate(STAGES)), name
        assert not (fold / "cache").exists()  # one cache_dir for every fold
        tests.append(set(pd.read_csv(fold / "data" / "test.csv")["id"]))
    assert (target / "cache" / "waveforms").is_dir()
    for i in range(3):  # s3prl HEAR: fold i validates on the test fold of fold i + 1
        valid = set(pd.read_csv(target / f"fold{i}" / "data" / "valid.csv")["id"])
        assert valid == tests[(i + 1) % 3] and not tests[i] & tests[(i + 1) % 3]
    assert sum(map(len, tests)) == len(set().union(*tests)) == 12 * 10  # jazz.00054 excluded

    report = json.loads((target / "report" / "report.json").read_text())
    accuracies = [json.loads((target / f"fold{i}" / "report" / "report.json").read_text())
                  ["headline"]["metrics"]["accuracy"] for i in range(3)]
    assert [f["metrics"]["accuracy"] for f in report["folds"]] == accuracies
    stats = report["summary"]["accuracy"]
    assert stats["mean"] == pytest.approx(statistics.mean(accuracies))
    assert stats["std"] == pytest.approx(statistics.stdev(accuracies))
    markdown = (target / "report" / "report.md").read_text()
    assert f"{stats['mean']:.4f} ± {stats['std']:.4f}" in markdown
    assert "[fold2](fold2/report/report.md)" in markdown
    # Measured (40 training clips per fold, ~40 test clips, chance 0.10): mean over the folds
    # 0.51-0.52 for train.seed 1337, 1, 2 (single folds 0.44-0.60); 0.2 is 0.3 below, 2x chance.
    assert stats["mean"] > 0.2

    again = Genre().run(dotlist=dotlist)  # resumable: every fold is found finished
    assert again["folds"] == result["folds"]
    log = (target / "fold1" / "log.txt").read_text().split("====")[-1]
    assert log.count("up to date, skipped") == len(STAGES)


@pytest.fixture(scope="module")
def tiny_distilhubert(tmp_path_factory) -> Path:
    """A DistilHuBERT-architecture model (2 layers of 32) as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("distilhubert")
    config = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, conv_dim=[16] * 7, num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=4)
    UPSTREAMS.build("distilhubert", {"random_init": True, "config": config}).model \
        .save_pretrained(folder)
    return folder


def test_course_config_fine_tunes_distilhubert(corpus, tmp_path, tiny_distilhubert,
                                               monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    course = [str(REPO / "configs" / "gtzan_finetune.yaml")]
    defaults = Genre.compose_config(course, [f"target_dir={tmp_path}",
                                             f"prepare_data.dataset_root={corpus}"])
    # the --config file switches the scheduler to warmup: its conf replaces ExponentialLR's
    assert dict(defaults.build_scheduler.conf) == {"warmup_ratio": 0.1, "decay": "linear"}
    assert defaults.train.total_steps == 10 * -(-899 // 8)  # 10 epochs of 899 clips by 8

    target = tmp_path / "ft"
    Genre().run(config_files=course, dotlist=[
        f"target_dir={target}", f"prepare_data.dataset_root={corpus}",
        f"build_upstream.conf.checkpoint={tiny_distilhubert}", *steps(4, 2)])
    state = torch.load(target / "train" / "checkpoints" / "step-00000004.pt",
                       weights_only=True)
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups.keys() == {"others", "upstream"} and groups["upstream"]["initial_lr"] == 5e-5
    before = UPSTREAMS.build("distilhubert", {"checkpoint": str(tiny_distilhubert)}) \
        .state_dict()
    after = {k[len("model.upstream."):]: v for k, v in state["task"].items()
             if k.startswith("model.upstream.")}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".feature_extractor." in k for k in changed)  # the CNN trains too (course)
    assert any(".encoder.layers." in k for k in changed)
    report = json.loads((target / "report" / "report.json").read_text())
    assert 0 <= report["headline"]["metrics"]["accuracy"] <= 1
