"""`sweep` and `compare` through the command line: a learning-rate grid of real KWS runs on the
synthesized corpus, killed mid-point and resumed, its shared cache, and its comparison table
read against each run's own files."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from omegaconf import OmegaConf

from framework import cli
from framework import compare as comparison
from framework.stages import STAGES
from framework.workspace import TargetLock
from tests.conftest import FAST, corpus_overrides

LRS = "build_optimizer.conf.lr=[3e-3,3e-4]"
POINTS = ["lr=0.003", "lr=0.0003"]


def sweep_args(corpus, tmp_path, target, *extra):
    """A sweep command's arguments: FAST's settings as a --config file amid the overrides."""
    fast = tmp_path / "fast.yaml"
    OmegaConf.save({k: v for k, v in FAST.items() if k != "build_optimizer"}, fast)
    roots = corpus_overrides(corpus)["prepare_data"]
    return ["sweep", "kws", f"target_dir={target}", *extra, "--config", str(fast),
            f"prepare_data.dataset_root={roots['dataset_root']}",
            f"prepare_data.test_root={roots['test_root']}"]


def main(args) -> int:
    """``python -m framework ARGS`` in this process; its exit code."""
    try:
        cli.main(args)
    except SystemExit as done:
        return done.code
    return 0


def records(folder) -> dict:
    """Each stage record's content and write time."""
    return {path.name: (path.read_text(), path.stat().st_mtime_ns)
            for path in (folder / "stages").glob("*.json")}


def last_invocation(log_txt) -> str:
    return log_txt.read_text().rsplit("====", 1)[-1]


def read_csv(path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory, corpus):
    """A two-point lr sweep whose first point is killed at step 30 (checkpoint at 20) by a
    real SIGKILL, compared while unfinished, then resumed by the same command."""
    tmp = tmp_path_factory.mktemp("sweep")
    target = tmp / "lr"
    args = sweep_args(corpus, tmp, target, LRS)
    env = {**os.environ, "SPEECH_RECIPES_KILL_AT": "step@30"}
    killed = subprocess.run([sys.executable, "-m", "framework", *args], env=env,
                            capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    unfinished = comparison.compare([str(target)])
    started = time.time()
    assert main(args) == 0
    return {"target": target, "args": args, "unfinished": unfinished,
            "seconds": time.time() - started}


def test_each_point_runs_in_its_named_folder_and_the_killed_one_resumed(lr_sweep):
    target = lr_sweep["target"]
    plan = json.loads((target / "sweep.json").read_text())
    assert plan["axes"] == [{"key": "build_optimizer.conf.lr", "values": [3e-3, 3e-4]}]
    assert [(p["name"], p["values"], p["status"]) for p in plan["points"]] == [
        ("lr=0.003", {"build_optimizer.conf.lr": 3e-3}, "done"),
        ("lr=0.0003", {"build_optimizer.conf.lr": 3e-4}, "done")]
    for name, lr in zip(POINTS, (3e-3, 3e-4)):
        trained = OmegaConf.load(target / name / "train" / "config.yaml")
        assert trained.build_optimizer.conf.lr == lr and trained.target_dir == str(target / name)
        assert trained.cache_dir == str(target / "cache")
        assert all((target / name / "stages" / f"{i}-{s}.json").is_file()
                   for i, s in enumerate(STAGES))
    first = last_invocation(target / POINTS[0] / "log.txt")
    assert "resumed from" in first and "step-00000020.pt at step 20" in first
    history = json.loads((target / POINTS[0] / "train" / "history.json").read_text())
    assert [r["step"] for r in history["train"]] == [10, 20, 30, 40]


def test_an_unfinished_sweep_compares_with_its_state(lr_sweep):
    [row] = lr_sweep["unfinished"]["rows"]  # the second point had not started
    assert row["run"] == POINTS[0] and row["valid"] is None and not row["best"]
    assert row["state"] == "unfinished: stage 2 train not done (checkpoint step 20 of 40)"
    assert any("Not ranked" in note and POINTS[0] in note
               for note in lr_sweep["unfinished"]["notes"])


def test_points_share_one_cache_built_once(lr_sweep):
    target = lr_sweep["target"]
    built = sorted((target / "cache" / "waveforms").iterdir())
    assert len(built) == 3  # train, valid and test manifests: one cache each, for both points
    second_started = (target / POINTS[1] / "problem.json").stat().st_mtime_ns
    assert all((folder / "meta.json").stat().st_mtime_ns < second_started for folder in built)
    assert not any((target / name / "cache").exists() for name in POINTS)


def test_rerunning_the_sweep_reruns_nothing(lr_sweep):
    target = lr_sweep["target"]
    before = {name: records(target / name) for name in POINTS}
    caches = {p: p.stat().st_mtime_ns for p in (target / "cache").rglob("*")}
    assert main(lr_sweep["args"]) == 0
    assert {name: records(target / name) for name in POINTS} == before
    assert {p: p.stat().st_mtime_ns for p in (target / "cache").rglob("*")} == caches
    for name in POINTS:
        text = last_invocation(target / name / "log.txt")
        assert text.count("up to date, skipped") == len(STAGES) and ": running" not in text


def test_compare_table_holds_each_runs_own_figures(lr_sweep, capsys):
    target = lr_sweep["target"]
    assert main(["compare", str(target)]) == 0
    printed = capsys.readouterr().out
    assert printed == (target / "compare.md").read_text()
    rows = read_csv(target / "compare.csv")
    assert [row["run"] for row in rows] == POINTS
    for row in rows:
        run = target / row["run"]
        [result] = json.loads((run / "evaluate" / "results.json").read_text())
        report = json.loads((run / "report" / "report.json").read_text())
        history = json.loads((run / "train" / "history.json").read_text())["valid"]
        assert (row["state"], row["checkpoint"]) == ("finished", "valid_best")
        assert float(row["test accuracy"]) == result["metrics"]["accuracy"]
        assert float(row["test macro_f1"]) == result["metrics"]["macro_f1"]
        assert int(row["step"]) == result["step"] == report["headline"]["step"]
        assert float(row["valid"]) == next(r["accuracy"] for r in history
                                           if r["step"] == result["step"])
        assert float(row["lr"]) == report["config"]["lr"]
        assert int(row["steps"]) == report["config"]["total_steps"] == 40
        assert int(row["parameters"]) == report["config"]["parameters"]["trainable"]
        assert (row["upstream"], row["head"]) == ("fbank", "mean_linear")
        assert float(row["wall_s"]) > 0
    # the resumed sweep ran all but the killed invocation's stages 0-1 and 20 steps
    assert sum(float(row["wall_s"]) for row in rows) <= lr_sweep["seconds"] + 1
    best = max(rows, key=lambda row: float(row["valid"]))
    assert [row["best"] for row in rows] == [json.dumps(row is best) for row in rows]
    assert "| valid accuracy | test accuracy | test macro_f1 |" in printed
    assert f"**★ {best['run']}**" in printed and "never used to choose" in printed


def deranged_test_set(root, out):
    """A copy of a Speech Commands test set whose ten word folders swap names in a cycle:
    every word clip then carries another word's label."""
    shutil.copytree(root, out)
    words = sorted(p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith("_"))
    for word in words:
        (out / word).rename(out / f"{word}.tmp")
    for word, new in zip(words, words[1:] + words[:1]):
        (out / f"{word}.tmp").rename(out / new)
    return out


def test_best_is_chosen_on_validation_even_when_test_disagrees(lr_sweep, run_kws, corpus,
                                                                tmp_path, capsys):
    slow = lr_sweep["target"] / POINTS[1]
    fast = tmp_path / "fast_on_mislabelled_test"
    run_kws(fast, prepare_data={"test_root": str(deranged_test_set(
        corpus["test_v0.01"], tmp_path / "deranged"))}, cache_dir=str(tmp_path / "cache"))
    assert main(["compare", str(fast), str(slow), "--out", str(tmp_path / "table")]) == 0
    printed = capsys.readouterr().out
    fast_row, slow_row = read_csv(tmp_path / "table" / "compare.csv")
    # the case: validation prefers the fast run, its (mislabelled) test set the slow one
    assert float(fast_row["valid"]) > float(slow_row["valid"])
    assert float(fast_row["test accuracy"]) < float(slow_row["test accuracy"])
    assert (fast_row["best"], slow_row["best"]) == ("true", "false")
    assert fast_row["prepare_data.test_root"] != slow_row["prepare_data.test_root"]
    assert printed.splitlines()[2].startswith(f"| **★ {fast}**")


def test_a_bad_override_is_refused_before_any_point_runs(corpus, tmp_path, capsys):
    for bad, named in (("build_optimizer.conf.lr=[1e-3,-1]", "build_optimizer.conf.lr=-1"),
                       ("train.total_step=[10,20]", "train.total_step"),
                       ("build_optimizer.conf.lrr=[1e-3,1e-4]", "lrr")):
        assert main(sweep_args(corpus, tmp_path, tmp_path / "lr", bad)) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and named in err and err.count("\n") == 1, err
        assert not (tmp_path / "lr").exists()
    assert main(sweep_args(corpus, tmp_path, tmp_path / "lr", "evaluate.splits=[test]")) == 2
    assert "no axis" in capsys.readouterr().err and not (tmp_path / "lr").exists()


def test_grid_names_list_axes_and_a_failed_point(corpus, tmp_path, capsys):
    target = tmp_path / "grid"
    (target / "lr=1e-05,splits=test").mkdir(parents=True)
    held = TargetLock(target / "lr=1e-05,splits=test").acquire()  # another run holds it
    try:
        code = main(sweep_args(corpus, tmp_path, target, "stop=prepare_data",
                               "build_optimizer.conf.lr=[0.01,1e-5]",
                               "evaluate.splits=[[test],[valid,test]]",
                               "build_featurizer.layer_selections=[[0]]"))
    finally:
        held.release()
    err = capsys.readouterr().err
    names = ["lr=0.01,splits=test", "lr=0.01,splits=valid+test", "lr=1e-05,splits=test",
             "lr=1e-05,splits=valid+test"]
    plan = json.loads((target / "sweep.json").read_text())
    assert [p["name"] for p in plan["points"]] == names
    assert [k["key"] for k in plan["axes"]] == ["build_optimizer.conf.lr", "evaluate.splits"]
    statuses = {p["name"]: p["status"] for p in plan["points"]}
    assert statuses.pop(names[2]).startswith("failed: ") and set(statuses.values()) == {"done"}
    assert code == 2 and "1 of 4 sweep points did not finish" in err and names[2] in err
    for name, lr, splits in zip(names, (0.01, 0.01, 1e-5, 1e-5), (["test"], ["valid", "test"],
                                                                 ["test"], ["valid", "test"])):
        if name != names[2]:
            cfg = OmegaConf.load(target / name / "config.yaml")
            assert (cfg.build_optimizer.conf.lr, list(cfg.evaluate.splits)) == (lr, splits)
            assert list(cfg.build_featurizer.layer_selections) == [0]
    states = {row["run"]: row["state"] for row in read_csv(target / "compare.csv")}
    assert states[names[0]] == "unfinished: stage 1 build_encoder not done"
    assert states[names[2]] == "unfinished: stage 0 prepare_data not done"


def test_runs_of_another_valid_metric_share_the_table_with_a_note(lr_sweep, run_kws, tmp_path,
                                                                  capsys):
    by_loss = tmp_path / "by_loss"
    run_kws(by_loss, stop="evaluate", cache_dir=str(lr_sweep["target"] / "cache"),
            train={"total_steps": 10, "eval_step": 10, "save_step": 10,
                   "valid_metric": "loss", "valid_higher_better": False})
    points = [str(lr_sweep["target"] / name) for name in POINTS]
    assert main(["compare", *points, str(by_loss)]) == 0
    printed = capsys.readouterr().out
    rows = comparison.compare([*points, str(by_loss)])["rows"]
    [result] = json.loads((by_loss / "evaluate" / "results.json").read_text())
    [history] = json.loads((by_loss / "train" / "history.json").read_text())["valid"]
    assert (rows[2]["valid_metric"], rows[2]["valid"]) == ("loss", history["loss"])
    assert rows[2]["tests"]["test"]["loss"] == result["metrics"]["loss"]
    assert [row["best"] for row in rows] == [True, False, True]  # the best of each metric
    assert rows[2]["state"] == "unfinished: stage 4 report not done"
    assert "| valid |" in printed and f"loss {history['loss']:.4f}" in printed
    assert "different problems or validation metrics (KWS by accuracy, KWS by loss)" in printed
