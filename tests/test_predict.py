"""`predict` and `evaluate` on a trained tiny KWS run: the real command line on short, long
(windowed) and unreadable files; the Predictor API on arrays and from several threads;
evaluating another manifest writes predictions, metrics and a report and leaves the run's
stage records alone."""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from corpora.synthesize import synthesize_voxceleb1
from framework.errors import AudioError, UserError
from framework.evaluate_new import NewData, evaluate_new_data
from framework.predict import Predictor
from recipes.asv import ASV
from recipes.kws import KWS
from tests.conftest import FAST, corpus_overrides, merge


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "framework", *args], capture_output=True,
                          text=True, env={"SPEECH_RECIPES_PROGRESS": "off",
                                          "PATH": "/usr/bin:/bin"}, timeout=300)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus):
    """(target_dir, files): a tiny KWS run (stages 0-4, no test window: predict windows by
    its 1-s test crop) and a short test "yes", the same clip tiled to 30 s, an unreadable
    and a missing file."""
    target = tmp_path_factory.mktemp("predict") / "run"
    KWS().run(target_dir=str(target), **merge(FAST, corpus_overrides(corpus)))
    test = pd.read_csv(target / "data" / "test.csv", dtype=str)
    short = test[(test["label"] == "yes") & (test["duration"] == "1.0")]["wav_path"].iloc[0]
    word, rate = sf.read(short, dtype="int16")
    files = {"short": short, "long": target.parent / "long.wav",
             "broken": target.parent / "broken.wav", "missing": target.parent / "gone.wav"}
    sf.write(files["long"], np.tile(word, 30), rate)  # 30 windows, each the short clip
    files["broken"].write_text("not audio\n")
    return target, {k: str(v) for k, v in files.items()}


def stage3_scores(target, wav_path: str) -> pd.Series:
    """The scores stage 3 gave the test item of ``wav_path`` (``score_<label>`` → value)."""
    test = pd.read_csv(target / "data" / "test.csv", dtype=str).set_index("wav_path")
    table = pd.read_csv(target / "evaluate/valid_best/test/predictions.csv",
                        dtype={"id": str}).set_index("id")
    return table.loc[test.loc[wav_path, "id"]].filter(like="score_")


def test_predict_prints_top_k_json_per_file_and_names_the_unreadable(trained):
    target, files = trained
    done = run_cli("predict", str(target), files["short"], files["long"], files["broken"],
                   files["missing"], "--top-k", "3")
    assert done.returncode == 1, done.stderr[-2000:]
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 2 and "Traceback" not in done.stderr
    assert errors[0].startswith(f"error: {files['broken']}: not readable as audio")
    assert errors[1] == f"error: {files['missing']}: file not found"
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [line["file"] for line in lines] == [files["short"], files["long"]]
    classes = json.loads((target / "encoder.json").read_text())["classes"]
    for line in lines:
        top = line["predictions"]
        assert [sorted(item) for item in top] == [["label", "score"]] * 3
        scores = [item["score"] for item in top]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
        assert {item["label"] for item in top} <= set(classes)
    # the short clip scores as stage 3 scored it (its 1-s crop is the whole clip); the long
    # one is 30 windows of that very clip, so their mean logits are the clip's
    expected = stage3_scores(target, files["short"])
    for line in lines:
        for item in line["predictions"]:
            assert item["score"] == pytest.approx(expected[f"score_{item['label']}"],
                                                  abs=1e-5)


def test_predict_csv_writes_one_row_per_file_and_rank(trained, tmp_path):
    target, files = trained
    out = tmp_path / "out.csv"
    done = run_cli("predict", str(target), files["short"], files["long"], "--top-k", "2",
                   "--csv", str(out))
    assert done.returncode == 0 and done.stdout == "", done.stderr[-2000:]
    table = pd.read_csv(out)
    assert list(table.columns) == ["file", "rank", "label", "score"]
    assert table["file"].tolist() == [files["short"]] * 2 + [files["long"]] * 2
    assert table["rank"].tolist() == [1, 2, 1, 2]
    expected = stage3_scores(target, files["short"])
    assert table["label"][0] == expected.idxmax().removeprefix("score_")
    assert table["score"][0] > table["score"][1]


def test_predictor_takes_arrays_resamples_and_is_thread_safe(trained, tmp_path):
    target, files = trained
    predictor = Predictor.open(target)
    word, rate = sf.read(files["short"], dtype="float32")
    low = AF.resample(torch.from_numpy(word), rate, 8000).numpy()
    sf.write(tmp_path / "low.wav", low, 8000, subtype="FLOAT")
    from_file = predictor.predict(str(tmp_path / "low.wav"), top_k=12)
    from_array = predictor.predict((np.stack([low, low], axis=1), 8000), top_k=12)  # stereo
    assert [x["label"] for x in from_array] == [x["label"] for x in from_file]
    np.testing.assert_allclose([x["score"] for x in from_array],
                               [x["score"] for x in from_file], atol=1e-6)
    assert sum(x["score"] for x in from_file) == pytest.approx(1, abs=1e-5)

    inputs = [files["short"], files["long"], (word, rate)]
    alone = predictor.predict_many(inputs, top_k=3)
    together: list = [None] * 6

    def work(slot: int) -> None:
        together[slot] = predictor.predict_many(inputs, top_k=3)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    def labels_and_scores(results):
        return ([[x["label"] for x in r.top] for r in results],
                np.array([[x["score"] for x in r.top] for r in results]))

    expected_labels, expected_scores = labels_and_scores(alone)
    for result in together:  # six concurrent calls, each as one call alone
        labels, scores = labels_and_scores(result)
        assert labels == expected_labels
        np.testing.assert_allclose(scores, expected_scores, atol=1e-6)
    with pytest.raises(AudioError, match="NaN"):
        predictor.predict((np.full(800, np.nan), 8000))


def test_predict_on_a_verification_run_points_to_score(tmp_path):
    roots = synthesize_voxceleb1(tmp_path / "vox", speakers=5, test_speakers=2, videos=1,
                                 utterances=2, min_secs=1.0, max_secs=1.5)
    target = tmp_path / "asv"
    ASV().run(target_dir=str(target), stop="prepare_data", num_workers=0,
              prepare_data={**{k: str(v) for k, v in roots.items()}, "valid_speakers": 2,
                            "valid_trials": 4})
    with pytest.raises(UserError) as err:
        Predictor.open(target)
    message = str(err.value)
    assert "\n" not in message and "speaker-verification" in message
    assert f"python -m framework score {target}" in message


def snapshot(target) -> dict:
    """Every stage record and stage-3/4 result file of target_dir, with its bytes."""
    paths = [*target.glob("stages/*.json"), target / "evaluate/results.json",
             *target.glob("evaluate/valid_best/test/*"), *target.glob("report/*.*")]
    return {str(p.relative_to(target)): p.read_bytes() for p in paths}


def test_evaluate_on_a_new_manifest_writes_predictions_metrics_and_report(trained,
                                                                           tmp_path):
    target, files = trained
    before = snapshot(target)
    test = pd.read_csv(target / "data" / "test.csv", dtype=str, keep_default_na=False)
    new = test[["id", "wav_path", "label"]].copy()
    new.loc[len(new)] = ["long/yes", files["long"], "yes"]
    new.loc[len(new)] = ["broken", files["broken"], "no"]
    new.to_csv(tmp_path / "new.csv", index=False)
    done = run_cli("evaluate", str(target), "--manifest", str(tmp_path / "new.csv"),
                   "--name", "fresh")
    assert done.returncode == 0, done.stderr[-2000:]
    out = target / "evaluate" / "fresh"
    predictions = pd.read_csv(out / "valid_best/predictions.csv", dtype={"id": str})
    assert sorted(predictions["id"]) == sorted([*test["id"], "long/yes"])
    excluded = pd.read_csv(out / "excluded.csv", dtype=str)
    assert excluded["id"].tolist() == ["broken"] and "not readable as audio" in \
        excluded["reason"][0]
    # the test items score exactly as stage 3 scored them: the same code path
    stage3 = pd.read_csv(target / "evaluate/valid_best/test/predictions.csv",
                         dtype={"id": str}).set_index("id")
    mine = predictions.set_index("id").loc[stage3.index]
    np.testing.assert_allclose(mine.filter(like="score_").to_numpy(),
                               stage3.filter(like="score_").to_numpy(), atol=1e-6)
    metrics = json.loads((out / "valid_best/metrics.json").read_text())
    assert metrics["n"] == len(test) + 1 and 0 <= metrics["accuracy"] <= 1
    report = (target / "report" / "fresh" / "report.md").read_text()
    assert "valid_best on fresh" in report
    assert (target / "report" / "fresh" / "confusion_matrix.png").stat().st_size > 10_000
    assert snapshot(target) == before  # stage records and stage 3/4 outputs untouched


def test_evaluate_csv_of_files_and_refusing_an_unseen_label(trained, tmp_path):
    target, _ = trained
    test = pd.read_csv(target / "data" / "test.csv", dtype=str, keep_default_na=False)
    audio_dir = tmp_path / "clips"
    audio_dir.mkdir()
    for index, path in enumerate(test["wav_path"]):
        (audio_dir / f"clip{index}.wav").symlink_to(path)
    table = pd.DataFrame({"file_name": [f"clip{i}.wav" for i in range(len(test))],
                          "target": test["label"]})
    table.to_csv(tmp_path / "kaggle.csv", index=False)
    result = evaluate_new_data(KWS().attach(target), NewData(
        str(tmp_path / "kaggle.csv"), str(audio_dir), "file_name", "target"))["result"]
    stage3 = json.loads((target / "evaluate/valid_best/test/metrics.json").read_text())
    assert result["split"] == "kaggle" and result["metrics"]["n"] == len(test)
    assert result["metrics"]["accuracy"] == pytest.approx(stage3["accuracy"])

    table.loc[len(table)] = ["clip0.wav", "banana"]
    table.to_csv(tmp_path / "unseen.csv", index=False)
    listing = sorted(p for p in target.rglob("*"))
    done = run_cli("evaluate", str(target), "--manifest", str(tmp_path / "unseen.csv"),
                   "--audio-dir", str(audio_dir), "--file-column", "file_name",
                   "--label-column", "target")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line, = done.stderr.strip().splitlines()
    assert line.startswith(f"error: {tmp_path / 'unseen.csv'}: label(s) 'banana' never seen")
    assert sorted(p for p in target.rglob("*")) == listing  # nothing written
