"""The speaker-verification report: files, headline choice, and what the page says."""
from __future__ import annotations

import doctest
import json
from statistics import NormalDist

import numpy as np
import pandas as pd
import pytest

import framework.report.verification as report_module
from framework.metrics.verification import verification_metrics
from framework.report.verification import (best_by_valid_eer, probit, split_counts,
                                           write_verification_report)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# checkpoint → separation of target from non-target scores (in standard deviations).
# step-2000 separates better; step-3000 is better on test but worse on validation, so it
# must never be chosen.
SEPARATION = {"step-1000": {"valid": 1.0, "veri_test2": 1.0},
              "step-2000": {"valid": 3.0, "veri_test2": 2.5},
              "step-3000": {"valid": 2.0, "veri_test2": 4.0}}


def make_results(folder, separation=SEPARATION, trials=2000, seed=0) -> list[dict]:
    """Gaussian scores per checkpoint × split, written as scores.csv, with their metrics."""
    rng = np.random.default_rng(seed)
    results = []
    for checkpoint, splits in separation.items():
        for split, gap in splits.items():
            labels = (rng.random(trials) < 0.5).astype(int)
            scores = rng.normal(size=trials) + gap * labels
            path = folder / checkpoint / split / "scores.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame({"id1": [f"spk{i % 40}/u{i}.wav" for i in range(trials)],
                          "id2": [f"spk{i % 37}/v{i}.wav" for i in range(trials)],
                          "label": labels, "score": scores}).to_csv(path, index=False)
            results.append({"checkpoint": checkpoint, "split": split,
                            "step": int(checkpoint.split("-")[1]),
                            "metrics": verification_metrics(scores, labels),
                            "scores_csv": path})
    return results


def record(results, checkpoint, split):
    return next(r for r in results if r["checkpoint"] == checkpoint and r["split"] == split)


def test_best_is_chosen_on_validation_only(tmp_path):
    results = make_results(tmp_path)
    assert best_by_valid_eer(results) == "step-2000"
    with pytest.raises(ValueError, match="no 'valid' results"):
        best_by_valid_eer([r for r in results if r["split"] != "valid"])


def test_report_files_and_content(tmp_path):
    results = make_results(tmp_path / "eval")
    best = record(results, best_by_valid_eer(results), "valid")
    paths = write_verification_report(tmp_path / "report", results, best, "VoxCeleb1 ASV")
    assert set(paths) == {"report_md", "report_json", "det_curve_png", "score_histogram_png"}
    for key in ("det_curve_png", "score_histogram_png"):
        data = paths[key].read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    test = record(results, "step-2000", "veri_test2")["metrics"]
    md = paths["report_md"].read_text()
    assert md.startswith("# VoxCeleb1 ASV\n")
    assert "**Chosen checkpoint: `step-2000` (step 2000)**" in md
    assert f"**{100 * test['eer']:.2f} %**" in md
    assert f"{test['min_dcf_0.01']:.4f}" in md and f"{test['min_dcf_0.05']:.4f}" in md
    assert f"{test['n_trials']:,} ({test['n_target']:,} / {test['n_nontarget']:,})" in md
    assert "[csv](../eval/step-1000/valid/scores.csv)" in md  # links relative to the report
    assert md.count("| `step-2000` ★ |") == 2 and "never" in md


def test_report_json_round_trips(tmp_path):
    results = make_results(tmp_path / "eval")
    paths = write_verification_report(tmp_path / "report", results, None, "ASV")
    report = json.loads(paths["report_json"].read_text())
    assert report["chosen"]["checkpoint"] == "step-2000" and report["chosen"]["step"] == 2000
    assert report["chosen"]["valid"]["metrics"] == record(results, "step-2000",
                                                          "valid")["metrics"]
    [headline] = report["headline"]
    assert headline["split"] == "veri_test2"
    assert headline["metrics"] == record(results, "step-2000", "veri_test2")["metrics"]
    assert [(r["checkpoint"], r["split"]) for r in report["results"]] == [
        (r["checkpoint"], r["split"]) for r in results]
    assert report["results"][0]["scores_csv"] == str(results[0]["scores_csv"])


def test_headline_error_rates_at_the_validation_threshold(tmp_path):
    results = make_results(tmp_path)
    paths = write_verification_report(tmp_path / "report", results, None, "ASV")
    at = json.loads(paths["report_json"].read_text())["headline"][0]["at_valid_threshold"]
    threshold = record(results, "step-2000", "valid")["metrics"]["eer_threshold"]
    table = pd.read_csv(record(results, "step-2000", "veri_test2")["scores_csv"])
    targets = table[table.label == 1].score
    nontargets = table[table.label == 0].score
    assert at["threshold"] == threshold
    assert at["p_miss"] == pytest.approx((targets < threshold).mean())
    assert at["p_fa"] == pytest.approx((nontargets >= threshold).mean())


def test_several_test_splits_are_all_in_the_headline(tmp_path):
    separation = {"step-1": {"valid": 2.0, "veri_test2": 2.0, "veri_test_hard": 1.0}}
    results = make_results(tmp_path, separation, trials=500)
    paths = write_verification_report(tmp_path / "report", results, None, "ASV")
    headline = json.loads(paths["report_json"].read_text())["headline"]
    assert [entry["split"] for entry in headline] == ["veri_test2", "veri_test_hard"]
    assert paths["score_histogram_png"].read_bytes().startswith(PNG_MAGIC)


def test_best_must_be_a_validation_record(tmp_path):
    results = make_results(tmp_path)
    with pytest.raises(ValueError, match="chosen on validation, never on test"):
        write_verification_report(tmp_path / "report", results,
                                  record(results, "step-3000", "veri_test2"), "ASV")
    only_valid = [r for r in results if r["split"] == "valid"]
    with pytest.raises(ValueError, match="at least one test result"):
        write_verification_report(tmp_path / "report", only_valid, None, "ASV")


def write_trial_split(folder, name, labels, ids) -> dict:
    """A trial list ``name`` (trials over ``ids``) and its ``_utts`` manifest."""
    trials = folder / f"{name}.csv"
    pd.DataFrame({"id1": [ids[i % len(ids)] for i in range(len(labels))],
                  "id2": [ids[(i + 1) % len(ids)] for i in range(len(labels))],
                  "label": labels}).to_csv(trials, index=False)
    pd.DataFrame({"id": ids, "wav_path": [f"/x/{i}.wav" for i in ids]}).to_csv(
        folder / f"{name}_utts.csv", index=False)
    return {name: trials, f"{name}_utts": folder / f"{name}_utts.csv"}


def test_data_section_counts_splits_and_names_the_dropped_trials(tmp_path):
    train = tmp_path / "train.csv"
    pd.DataFrame({"id": ["a/1", "a/2", "b/1"], "spk": ["a", "a", "b"]}).to_csv(train,
                                                                              index=False)
    manifests = {"train": train,
                 **write_trial_split(tmp_path, "valid", [1, 0, 1, 0], ["c/1", "c/2", "d/1"]),
                 **write_trial_split(tmp_path, "veri_test2", [1, 1, 0],
                                     ["e/1", "f/1", "f/2", "g/1"])}
    counts = split_counts(manifests)
    assert counts == {
        "train": {"utterances": 3, "speakers": 2},
        "valid": {"utterances": 3, "speakers": 2, "trials": 4, "target": 2, "nontarget": 2},
        "veri_test2": {"utterances": 4, "speakers": 3, "trials": 3, "target": 2,
                       "nontarget": 1}}
    dropped = {"valid": {"listed": 4, "dropped": 0, "kept": 4, "excluded_utterances": []},
               "veri_test2": {"listed": 10, "dropped": 7, "kept": 3, "excluded_utterances": [
                   {"id": "h/1", "reason": "header only: file holds none."}]}}
    data = {"splits": counts, "dropped_trials": dropped}
    results = make_results(tmp_path / "eval", trials=300)
    paths = write_verification_report(tmp_path / "report", results, None, "ASV", data=data)
    md = paths["report_md"].read_text()
    assert "| `veri_test2` | 4 | 3 | 3 (2 / 1) | 7 |" in md
    assert "| `train` | 3 | 2 | — | — |" in md
    assert ("`veri_test2`: 7 of 10 listed trials dropped at stage 0, because they name 1 "
            "utterance(s) whose audio is unusable") in md
    assert "`h/1`: header only: file holds none." in md
    assert json.loads(paths["report_json"].read_text())["data"] == data
    unknown = write_verification_report(tmp_path / "old", results, None, "ASV",
                                        data={"splits": counts, "dropped_trials": None})
    assert "not recorded" in unknown["report_md"].read_text()


def test_training_section_and_curves(tmp_path):
    history = {"valid": [{"step": 60, "eer": 0.3, "eer_threshold": 0.5, "n_trials": 100},
                         {"step": 120, "eer": 0.2, "eer_threshold": 0.4, "n_trials": 100}],
               "train": [{"step": 20 * i, "loss": 10.0 / i, "lr": 0.01} for i in (1, 2, 3)]}
    config = {"upstream": {"name": "fbank", "conf": {}}, "featurizer": {"normalize": False},
              "downstream": {"name": "xvector", "embedding_size": 64, "conf": {}},
              "upstream_trainable": False, "loss": {"name": "aamsoftmax",
                                                    "conf": {"margin": 0.2}},
              "optimizer": {"name": "AdamW", "conf": {}}, "lr": None,
              "scheduler": {"name": "ExponentialLR", "conf": {"gamma": 0.9}, "stepped": True},
              "batch_size": 10, "gradient_accumulate": 5, "world_size": 1,
              "effective_batch_size": 50, "total_steps": 120, "valid_metric": "eer",
              "valid_higher_better": False,
              "parameters": {"trainable": 110, "total": 130, "by_part": {
                  "upstream": {"trainable": 0, "total": 20},
                  "downstream": {"trainable": 100, "total": 100},
                  "task": {"trainable": 10, "total": 10}}}}
    training = {"config": config, "history": history, "history_json": "train/history.json"}
    paths = write_verification_report(tmp_path / "report", make_results(tmp_path, trials=300),
                                      None, "ASV", training=training)
    md = paths["report_md"].read_text()
    assert "| Loss | `aamsoftmax` `margin=0.2` |" in md
    assert "| Optimizer | `AdamW` (defaults), lr: the optimizer's default |" in md
    assert "`ExponentialLR` `gamma=0.9`, stepped every update" in md
    assert "| Checkpoint choice | validation eer (lower is better) |" in md
    assert ("110 / 130 (upstream 0 / 20, downstream 100 / 100, loss/task 10 / 10)") in md
    report = json.loads(paths["report_json"].read_text())
    assert report["config"] == config and report["training"]["validations"] == 2
    data = paths["training_curves_png"].read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_probit_is_the_normal_inverse_cdf():
    p = np.array([0.001, 0.02, 0.3, 0.5, 0.9, 0.999])
    expected = [NormalDist().inv_cdf(value) for value in p]
    np.testing.assert_allclose(probit(p), expected, rtol=1e-9)
    assert np.isfinite(probit([0.0, 1.0])).all()  # clipped, so plotting never sees inf


def test_docstring_examples():
    assert doctest.testmod(report_module).failed == 0
