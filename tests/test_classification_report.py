"""Classification metrics against hand-computed values, and the report files they feed."""
from __future__ import annotations

import doctest
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import framework.metrics.classification as metrics_module
import framework.report.classification as report_module
import framework.report.summary as summary_module
from framework.metrics.classification import (classification_metrics, load_predictions,
                                              score_columns)
from framework.report.classification import (class_counts, row_normalized,
                                             write_classification_report)
from framework.report.summary import config_summary, read_history, read_history_data

CLASSES = ["yes", "no", "_unknown_"]
# (label, predicted, runner-up): predicted scores 0.6, runner-up 0.3, the other class 0.1.
ROWS = [("yes", "yes", "no"), ("yes", "yes", "_unknown_"), ("yes", "yes", "no"),
        ("yes", "no", "yes"),
        ("no", "no", "yes"), ("no", "no", "_unknown_"), ("no", "_unknown_", "yes"),
        ("_unknown_", "yes", "_unknown_"), ("_unknown_", "yes", "no"),
        ("_unknown_", "_unknown_", "no")]
# Worked out on paper from ROWS (rows = true, columns = predicted, CLASSES order).
CONFUSION = [[3, 1, 0], [0, 2, 1], [2, 0, 1]]


def make_predictions(rows=ROWS, classes=CLASSES) -> pd.DataFrame:
    """A predictions table whose scores rank predicted > runner-up > the rest."""
    records = []
    for i, (label, predicted, runner_up) in enumerate(rows):
        scores = {name: 0.1 / max(len(classes) - 2, 1) for name in classes}
        scores[predicted], scores[runner_up] = 0.6, 0.3
        records.append({"id": f"utt{i}", "label": label, "predicted": predicted,
                        **{f"score_{name}": value for name, value in scores.items()}})
    return pd.DataFrame(records)


def pairwise_auc(positive: np.ndarray, score: np.ndarray) -> float:
    """AUC as the share of (positive, negative) pairs ranked right, ties counting half."""
    pos, neg = score[positive], score[~positive]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_metrics_match_hand_computed_values():
    m = classification_metrics(make_predictions(), CLASSES, top_k=(1, 2))
    assert m["n"] == 10
    assert m["confusion_matrix"] == CONFUSION
    assert m["accuracy"] == pytest.approx(6 / 10)
    assert m["hamming_loss"] == pytest.approx(4 / 10)
    # kappa = (p_o - p_e) / (1 - p_e); p_e from row sums (4, 3, 3) and column sums (5, 3, 2).
    p_o, p_e = 0.6, (4 * 5 + 3 * 3 + 3 * 2) / 100
    assert m["cohen_kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    recalls = {"yes": 3 / 4, "no": 2 / 3, "_unknown_": 1 / 3}
    precisions = {"yes": 3 / 5, "no": 2 / 3, "_unknown_": 1 / 2}
    for name in CLASSES:
        assert m["per_class"][name]["recall"] == pytest.approx(recalls[name])
        assert m["per_class"][name]["precision"] == pytest.approx(precisions[name])
    f1 = {name: 2 * precisions[name] * recalls[name] / (precisions[name] + recalls[name])
          for name in CLASSES}
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3)
    assert m["weighted_f1"] == pytest.approx((4 * f1["yes"] + 3 * f1["no"]
                                              + 3 * f1["_unknown_"]) / 10)
    assert [c["support"] for c in m["per_class"].values()] == [4, 3, 3]
    assert m["confusion_matrix_normalized"] == pytest.approx(np.array(CONFUSION) / 10)
    # Top-1 is the argmax (= predicted here); top-2 misses rows 7 and 9 of ROWS only.
    assert m["top_1_accuracy"] == pytest.approx(0.6)
    assert m["top_2_accuracy"] == pytest.approx(0.8)


def test_roc_auc_is_mean_of_one_vs_rest_pair_counts():
    table = make_predictions()
    m = classification_metrics(table, CLASSES)
    labels = table["label"].to_numpy()
    expected = np.mean([pairwise_auc(labels == name, table[f"score_{name}"].to_numpy())
                        for name in CLASSES])
    assert m["roc_auc_ovr_macro"] == pytest.approx(expected)
    assert m["roc_auc_ovr_excluded"] == [] and m["roc_auc_ovr_reason"] is None


def test_class_absent_from_labels_is_left_out_of_roc_auc():
    classes = CLASSES + ["_silence_"]
    table = make_predictions(classes=classes)
    m = classification_metrics(table, classes)
    labels = table["label"].to_numpy()
    expected = np.mean([pairwise_auc(labels == name, table[f"score_{name}"].to_numpy())
                        for name in CLASSES])
    assert m["roc_auc_ovr_macro"] == pytest.approx(expected)
    assert m["roc_auc_ovr_excluded"] == ["_silence_"]
    assert "_silence_" in m["roc_auc_ovr_reason"]
    assert m["per_class"]["_silence_"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0,
                                           "support": 0}
    assert len(m["confusion_matrix"]) == 4 and m["confusion_matrix"][3] == [0, 0, 0, 0]
    json.dumps(m, allow_nan=False)


def test_single_class_present_gives_none_with_reason():
    rows = [("yes", "yes", "no"), ("yes", "yes", "no"), ("yes", "yes", "_unknown_")]
    m = classification_metrics(make_predictions(rows), CLASSES)
    assert m["roc_auc_ovr_macro"] is None
    assert "only 1 class" in m["roc_auc_ovr_reason"]
    assert m["cohen_kappa"] is None  # undefined (0 / 0), not NaN
    json.dumps(m, allow_nan=False)


def test_top_k_only_below_number_of_classes():
    m = classification_metrics(make_predictions(), CLASSES)  # default top_k=(1, 5)
    assert "top_1_accuracy" in m and "top_5_accuracy" not in m


def test_two_classes():
    rows = [("a", "a", "b"), ("b", "a", "b"), ("b", "b", "a"), ("a", "b", "a")]
    m = classification_metrics(make_predictions(rows, ["a", "b"]), ["a", "b"])
    assert m["accuracy"] == m["top_1_accuracy"] == pytest.approx(0.5)
    assert m["roc_auc_ovr_macro"] == pytest.approx(0.5)


def test_load_predictions_keeps_class_names_like_na(tmp_path):
    classes = ["NA", "None"]
    table = make_predictions([("NA", "NA", "None"), ("None", "NA", "None")], classes)
    table.to_csv(tmp_path / "predictions.csv", index=False)
    loaded = load_predictions(tmp_path / "predictions.csv")
    assert list(loaded["label"]) == ["NA", "None"]
    assert classification_metrics(loaded, classes)["accuracy"] == pytest.approx(0.5)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.drop(columns=["predicted", "score_no"]), "predicted, score_no"),
    (lambda t: t.assign(label=["maybe"] + list(t["label"][1:])), "'maybe'"),
    (lambda t: t.assign(predicted=["nein"] * len(t)), "'nein'"),
    (lambda t: t.assign(score_yes=[np.nan] + list(t["score_yes"][1:])), "score_yes"),
    (lambda t: t.iloc[:0], "no rows"),
])
def test_bad_input_is_a_value_error_naming_the_culprit(change, message):
    with pytest.raises(ValueError, match=message):
        classification_metrics(change(make_predictions()), CLASSES)


def test_repeated_class_names_are_rejected():
    with pytest.raises(ValueError, match="repeat: yes"):
        classification_metrics(make_predictions(), CLASSES + ["yes"])


def _results(tmp_path):
    """A step checkpoint on valid, then valid_best on test (the default headline)."""
    table = make_predictions()
    csv = tmp_path / "eval" / "predictions.csv"
    csv.parent.mkdir()
    table.to_csv(csv, index=False)
    other = make_predictions([(label, label, runner) for label, _, runner in ROWS])
    return [
        {"checkpoint": "step-1000", "split": "valid", "step": 1000, "predictions_csv": csv,
         "metrics": classification_metrics(other, CLASSES)},
        {"checkpoint": "valid_best", "split": "test", "step": 2000, "predictions_csv": csv,
         "metrics": classification_metrics(table, CLASSES)},
    ]


def test_report_files(tmp_path):
    results = _results(tmp_path)
    paths = write_classification_report(tmp_path / "report", results, CLASSES, "Toy KWS", None)
    assert set(paths) == {"report_json", "report_md", "confusion_matrix"}
    assert all(path.is_file() for path in paths.values())
    text = paths["report_md"].read_text()
    assert "## Headline: valid_best on test (step 2000)" in text
    assert "| Accuracy | 60.00 % |" in text  # the headline, not step-1000's 100 %
    assert all(f"`{name}`" in text for name in CLASSES)
    assert ("![Confusion matrix: counts and recall (share of each true class)]"
            "(confusion_matrix.png)") in text
    assert "1. `_unknown_` → `yes`: 2" in text
    assert "](../eval/predictions.csv)" in text
    report = json.loads(paths["report_json"].read_text())
    assert report["headline"]["checkpoint"] == "valid_best"
    assert [r["checkpoint"] for r in report["results"]] == ["step-1000", "valid_best"]
    with Image.open(paths["confusion_matrix"]) as image:
        image.verify()
        assert image.format == "PNG"
        assert 600 <= image.size[0] <= 4000 and 300 <= image.size[1] <= 3000


def test_report_headline_choice(tmp_path):
    results = _results(tmp_path)
    chosen = {"checkpoint": "step-1000", "split": "valid"}
    paths = write_classification_report(tmp_path / "a", results, CLASSES, "Toy", chosen)
    assert "| Accuracy | 100.00 % |" in paths["report_md"].read_text()
    with pytest.raises(ValueError, match="matches no result"):
        write_classification_report(tmp_path / "b", results, CLASSES, "Toy",
                                    {"checkpoint": "step-9"})
    with pytest.raises(ValueError, match="no results"):
        write_classification_report(tmp_path / "c", [], CLASSES, "Toy", None)


def test_recall_panel_rows_are_shares_of_each_true_class(tmp_path):
    recall = row_normalized(CONFUSION)
    np.testing.assert_allclose(recall.sum(axis=1), 1.0)
    m = classification_metrics(make_predictions(), CLASSES)
    np.testing.assert_allclose(np.diag(recall), [m["per_class"][c]["recall"] for c in CLASSES])
    assert row_normalized([[0, 0], [1, 3]]).tolist() == [[0.0, 0.0], [0.25, 0.75]]
    paths = write_classification_report(tmp_path / "report", _results(tmp_path), CLASSES, "Toy")
    saved = json.loads(paths["report_json"].read_text())["confusion_matrix_recall"]
    np.testing.assert_allclose(np.sum(saved, axis=1), 1.0)


def _training(tmp_path, history) -> dict:
    """A training summary as the report stage builds it, over a real (tiny) task."""
    from framework.models.downstream import DOWNSTREAMS
    from framework.models.featurizer import Featurizer
    from framework.models.model import UpstreamDownstreamModel
    from framework.models.upstream import UPSTREAMS
    from framework.tasks.classification import UtteranceClassificationTask

    upstream = UPSTREAMS.build("fbank", {}, "build_upstream.conf")
    featurizer = Featurizer(upstream)
    head = DOWNSTREAMS.build("mean_linear", {"hidden_size": 8}, "build_downstream.conf",
                             input_size=featurizer.output_size, output_size=3,
                             input_stride=featurizer.downsample_rate)
    task = UtteranceClassificationTask(UpstreamDownstreamModel(upstream, featurizer, head),
                                       CLASSES)
    cfg = {"build_upstream": {"name": "fbank", "conf": {}},
           "build_featurizer": {"layer_selections": None, "normalize": False},
           "build_downstream": {"name": "mean_linear", "conf": {"hidden_size": 8}},
           "build_model": {"upstream_trainable": False},
           "build_optimizer": {"name": "Adam", "conf": {"lr": 0.001}},
           "build_scheduler": {"name": "ExponentialLR", "conf": {"gamma": 1.0}},
           "build_batch_sampler": {"train": {"batch_size": 4}}, "world_size": 2,
           "train": {"total_steps": 30, "gradient_accumulate": 3, "use_scheduler": False,
                     "valid_metric": "accuracy", "valid_higher_better": True}}
    history_json = tmp_path / "history.json"
    history_json.write_text(json.dumps(history))
    return {"config": config_summary(cfg, task, {"name": "cross_entropy", "conf": {}}),
            "history": read_history(history_json), "history_json": str(history_json)}


HISTORY = {"valid": [{"step": 10, "n": 10, "accuracy": 0.5, "loss": 1.2},
                     {"step": 20, "n": 10, "accuracy": 0.7, "loss": 0.9}],
           "train": [{"step": s, "loss": 2.0 / s, "lr": 0.001} for s in (5, 10, 15, 20)]}


def test_report_with_training_setup_curves_and_class_counts(tmp_path):
    manifests = {}
    for split, labels in {"train": ["yes"] * 5 + ["no"] * 3 + ["maybe"],
                          "test": ["no", "_unknown_"]}.items():
        manifests[split] = tmp_path / f"{split}.csv"
        pd.DataFrame({"id": [f"{split}{i}" for i in range(len(labels))],
                      "label": labels}).to_csv(manifests[split], index=False)
    counts = class_counts(manifests, CLASSES)
    assert counts == {"train": {"yes": 5, "no": 3, "_unknown_": 0, "maybe": 1},
                      "test": {"yes": 0, "no": 1, "_unknown_": 1}}
    training = _training(tmp_path, HISTORY)
    paths = write_classification_report(tmp_path / "report", _results(tmp_path), CLASSES,
                                        "Toy", None, training=training, counts=counts)
    report = json.loads(paths["report_json"].read_text())
    config = report["config"]
    assert config["effective_batch_size"] == 4 * 3 * 2 and config["lr"] == 0.001
    # fbank has no weights; mean_linear: Linear(80 mel bins → 8) and Linear(8 → 3 classes)
    head = 80 * 8 + 8 + 8 * 3 + 3
    assert config["parameters"]["trainable"] == config["parameters"]["total"] == head
    assert config["parameters"]["by_part"]["downstream"] == {"trainable": head, "total": head}
    assert report["class_counts"] == counts
    assert report["training"]["train_records"] == 4
    md = paths["report_md"].read_text()
    assert "| `maybe` | 1 | 0 |" in md and "| **total** | **9** | **2** |" in md
    assert "| Parameters (trainable / total) | 675 / 675 (downstream 675 / 675) |" in md
    assert "| Batch | 4 per process × 2 process(es) × 3 accumulated = 24 per update |" in md
    assert "`mean_linear` `hidden_size=8`" in md and "`Adam` `lr=0.001`" in md
    assert "last training loss 0.1000 at step 20" in md
    with Image.open(paths["training_curves"]) as image:
        assert image.format == "PNG" and 1000 <= image.size[0] <= 2500


def test_old_history_form_is_read_as_validation_records(tmp_path):
    old = HISTORY["valid"]
    assert read_history_data(old) == {"valid": old, "train": []}
    assert read_history(tmp_path / "absent.json") == {"valid": [], "train": []}
    paths = write_classification_report(tmp_path / "report", _results(tmp_path), CLASSES,
                                        "Toy", training=_training(tmp_path, old))
    assert "0 training records, 2 validations" in paths["report_md"].read_text()
    assert paths["training_curves"].read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("module", [metrics_module, report_module, summary_module])
def test_docstring_examples(module):
    assert doctest.testmod(module).failed == 0


def test_score_columns_follow_class_order():
    assert score_columns(CLASSES) == ["score_yes", "score_no", "score__unknown_"]
