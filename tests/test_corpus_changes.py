"""Stage 0 notices a changed corpus; a file damaged after stage 0 is skipped, never fatal.

Stage 0's record holds one digest per input named by ``prepare_data`` (a folder's listing with
sizes and mtimes, the real path it resolves to), so a corpus that gained a file or a symlinked
root pointed elsewhere reruns it. A file that stage 0 accepted but that is damaged afterwards
(while a run trains, or before ``start=train``) is left out of its batches with a warning, in
training and evaluation, with and without the waveform cache.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from framework.audio.dataset import AudioDataset, Skipped, SkippedItems, collate_padded
from framework.audio.segments import WindowDataset, collate_windows, pool_windows
from recipes.kws import KWS
from tests.conftest import FAST, corpus_overrides, merge

NEW_CLIP = "yes/feedbeef_nohash_0"


def log_since(target, offset: int) -> str:
    return (target / "log.txt").read_text()[offset:]


def log_size(target) -> int:
    path = target / "log.txt"
    return len(path.read_text()) if path.exists() else 0


def ids(target, split="train") -> set[str]:
    return set(pd.read_csv(target / "data" / f"{split}.csv", dtype=str)["id"])


def add_clip(root, name=NEW_CLIP):
    """A new, valid clip in ``root`` (a copy of another clip of the same word)."""
    source = sorted((root / name.split("/")[0]).glob("*.wav"))[0]
    shutil.copyfile(source, root / f"{name}.wav")


# ---------------------------------------------------------------- stage 0 sees the corpus


def test_a_corpus_that_gains_a_file_reruns_stage_0(tmp_path, corpus, run_kws):
    root = tmp_path / "sc"
    shutil.copytree(corpus["v0.01"], root)
    target = tmp_path / "exp"
    first = run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(root)})
    assert str(root) in first["prepare_data"]["inputs"]  # one digest per input, not per file
    assert first["prepare_data"]["inputs"][str(root)].startswith("listing:")

    offset = log_size(target)
    run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(root)})
    assert "stage 0 prepare_data: up to date, skipped" in log_since(target, offset)

    add_clip(root)
    offset = log_size(target)
    third = run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(root)})
    log = log_since(target, offset)
    assert f"stage 0 prepare_data: rerun: {root} changed" in log
    assert "up to date" not in log
    assert NEW_CLIP in ids(target)
    assert third["prepare_data"]["fingerprint"] != first["prepare_data"]["fingerprint"]


def test_a_symlinked_root_pointed_at_another_corpus_reruns_stage_0(tmp_path, corpus, run_kws):
    other = tmp_path / "other"
    shutil.copytree(corpus["v0.01"], other)  # same names, sizes and mtimes (copy2) ...
    add_clip(other)                          # ... plus one clip
    link = tmp_path / "speech_commands"
    link.symlink_to(corpus["v0.01"], target_is_directory=True)
    target = tmp_path / "exp"
    run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(link)})
    assert NEW_CLIP not in ids(target)

    link.unlink()
    link.symlink_to(other, target_is_directory=True)
    offset = log_size(target)
    run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(link)})
    assert f"rerun: {link} changed" in log_since(target, offset)
    assert NEW_CLIP in ids(target)


def test_a_re_pointed_symlink_with_identical_listing_still_reruns(tmp_path, corpus, run_kws):
    """Two copies whose listings match entry for entry differ in the real path only."""
    other = tmp_path / "other"
    shutil.copytree(corpus["v0.01"], other)
    link = tmp_path / "speech_commands"
    link.symlink_to(corpus["v0.01"], target_is_directory=True)
    target = tmp_path / "exp"
    run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(link)})
    link.unlink()
    link.symlink_to(other, target_is_directory=True)
    offset = log_size(target)
    run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(link)})
    assert "as many entries, but names, sizes, modification times or the folder it " \
           "resolves to differ" in log_since(target, offset)


# ---------------------------------------------------------------- damaged after stage 0


def damage(path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"\x00garbled" * 100)


def prepared_copy(root_dir, corpus, **settings):
    """Stages 0 and 1 over a copy of the corpus; returns (target, settings for later runs)."""
    for name, key in (("sc", "v0.01"), ("sc_test", "test_v0.01")):
        shutil.copytree(corpus[key], root_dir / name)
    settings = merge(merge(FAST, corpus_overrides(corpus)), merge(
        {"prepare_data": {"dataset_root": str(root_dir / "sc"),
                          "test_root": str(root_dir / "sc_test")}}, settings))
    target = root_dir / "exp"
    KWS().run(target_dir=str(target), stop="build_encoder", **settings)
    return target, settings


def train_paths(target) -> list[str]:
    return sorted(pd.read_csv(target / "data" / "train.csv")["wav_path"])


@pytest.fixture(scope="module", params=[True, False], ids=["cache", "no-cache"])
def damaged_training(request, corpus, tmp_path_factory):
    """A run trained (``start=train``) after two train wavs were damaged: one truncated, one
    garbled. Every item is read: the fixed sampler covers the train set each epoch."""
    target, settings = prepared_copy(
        tmp_path_factory.mktemp("damaged-train"), corpus,
        build_dataset={"cache_waveforms": request.param},
        build_batch_sampler={"train": {"name": "fixed"}})
    paths = [p for p in train_paths(target) if "_background_noise_" not in p][:2]
    for path, how in zip(paths, ("truncated", "garbled")):
        damage(Path(path), how)
    offset = log_size(target)
    records = KWS().run(target_dir=str(target), start="train", stop="train", **settings)
    return target, records, paths, log_since(target, offset)


def test_training_goes_on_past_files_damaged_after_stage_0(damaged_training):
    target, records, paths, log = damaged_training
    assert records["train"] is not None
    assert (target / "train" / "checkpoints" / "valid_best.pt").is_file()
    truncated, garbled = paths
    assert f"{truncated}): truncated: header promises" in log
    assert f"{garbled}): not readable as audio" in log
    assert "2 file(s) skipped so far" in log
    assert log.count("skipping ") == 2  # one warning per file, not one per read


def test_skipped_training_items_are_listed(damaged_training):
    target, _, paths, log = damaged_training
    listed = pd.read_csv(target / "train" / "skipped_items.csv")
    assert sorted(listed["wav_path"]) == paths
    assert listed["reason"].str.startswith(("truncated", "not readable")).all()
    assert "2 training items skipped" in log


@pytest.fixture(scope="module")
def damaged_evaluation(corpus, tmp_path_factory):
    """A run evaluated (``start=train``) after one test wav was garbled."""
    target, settings = prepared_copy(tmp_path_factory.mktemp("damaged-test"), corpus)
    bad = sorted(pd.read_csv(target / "data" / "test.csv", dtype=str)["wav_path"])[3]
    damage(Path(bad), "garbled")
    offset = log_size(target)
    records = KWS().run(target_dir=str(target), start="train", **settings)
    return target, records, bad, log_since(target, offset)


def test_evaluation_goes_on_past_a_test_file_damaged_after_stage_0(damaged_evaluation):
    target, records, bad, log = damaged_evaluation
    assert records["report"] is not None
    assert f"{bad}): not readable as audio" in log
    predictions = pd.read_csv(target / "evaluate" / "valid_best" / "test" / "predictions.csv")
    test_ids = pd.read_csv(target / "data" / "test.csv", dtype=str)
    bad_id = test_ids.loc[test_ids["wav_path"] == bad, "id"].item()
    assert bad_id not in set(predictions["id"])
    assert len(predictions) == len(test_ids) - 1


def test_a_skipped_test_item_is_counted_and_listed_in_the_metrics(damaged_evaluation):
    target, _, bad, _ = damaged_evaluation
    metrics = json.loads((target / "evaluate" / "valid_best" / "test" / "metrics.json")
                         .read_text())
    assert metrics["skipped"] == 1
    assert [item["wav_path"] for item in metrics["skipped_items"]] == [bad]


def test_a_batch_of_unreadable_items_only_is_a_skipped_step(tmp_path, corpus):
    target, settings = prepared_copy(tmp_path, corpus, build_dataset={"cache_waveforms": False},
                                     build_batch_sampler={"train": {"name": "fixed",
                                                                    "batch_size": 1}})
    for path in set(pd.read_csv(target / "data" / "train.csv")["wav_path"]):
        damage(Path(path), "garbled")
    KWS().run(target_dir=str(target), start="train", stop="train",
              **merge(settings, {"train": {"total_steps": 3, "eval_step": 3}}))
    log = (target / "log.txt").read_text()
    assert "step 1: update skipped (1 skipped in all): a micro-batch held no readable item" in log
    assert "step 3: update skipped (3 skipped in all)" in log


# ---------------------------------------------------------------- the pieces, directly


def clip_manifest(corpus, count=3) -> pd.DataFrame:
    """``count`` real clips copied to a fresh folder, as a screened manifest would list them."""
    folder = Path(corpus["v0.01"]).parent / "unit-clips"
    folder.mkdir(exist_ok=True)
    paths = []
    for index, source in enumerate(sorted((Path(corpus["v0.01"]) / "yes").glob("*.wav"))[:count]):
        paths.append(folder / f"{index}-{os.getpid()}-{source.name}")
        shutil.copyfile(source, paths[-1])
    return pd.DataFrame({"id": [f"u{i}" for i in range(count)], "wav_path": map(str, paths),
                         "duration": [sf.info(p).duration for p in paths]})


@contextlib.contextmanager
def warnings_of(name: str):
    """The warning messages logged to logger ``name`` inside the block."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())
    logging.getLogger(name).addHandler(handler)
    try:
        yield messages
    finally:
        logging.getLogger(name).removeHandler(handler)


@pytest.mark.parametrize("cached", [True, False], ids=["cache", "no-cache"])
def test_an_unreadable_item_is_a_marker_the_collate_leaves_out(tmp_path, corpus, cached):
    manifest = clip_manifest(corpus)
    Path(manifest["wav_path"][1]).unlink()  # deleted after stage 0
    damage(Path(manifest["wav_path"][2]), "truncated")
    with warnings_of("framework.audio.dataset") as warnings:
        dataset = AudioDataset(manifest, cache_dir=tmp_path / "cache" if cached else None)
        items = [dataset[i] for i in (0, 1, 2, 1, 2)]
    assert isinstance(items[1], Skipped) and items[1].reason == "file not found"
    assert items[2].reason.startswith("truncated: header promises")
    assert len(warnings) == 2 and "u1 (" in warnings[0]  # once per file, naming it

    batch = collate_padded(items)
    assert batch["id"] == ["u0"] and batch["wav"].shape[0] == 1
    found = SkippedItems()
    found.note(batch)
    assert [item.id for item in found.items] == ["u1", "u2"]
    assert found.write_csv(tmp_path / "skipped.csv") == tmp_path / "skipped.csv"
    assert list(pd.read_csv(tmp_path / "skipped.csv")["id"]) == ["u1", "u2"]
    empty = collate_padded(items[1:3])
    assert empty["id"] == [] and empty["wav"].shape == (0, 0) and len(empty["skipped"]) == 2


def test_an_unreadable_utterance_yields_no_window_and_a_nan_embedding(corpus):
    manifest = clip_manifest(corpus)
    damage(Path(manifest["wav_path"][1]), "garbled")
    windows = WindowDataset(AudioDataset(manifest), chunk_secs=0.3)
    batch = collate_windows([windows[i] for i in range(len(windows))])
    assert set(batch["utt"].tolist()) == {0, 2}  # u1 is garbled: none of its windows
    assert {item.id for item in batch["skipped"]} == {"u1"}
    embeddings = torch.ones(len(batch["utt"]), 4).numpy()
    pooled = pool_windows(batch["utt"].numpy(), batch["wav_len"].numpy(), embeddings, count=3)
    assert np.isnan(pooled[1]).all() and (pooled[[0, 2]] == 1).all()


def test_asv_evaluation_goes_on_past_a_test_utterance_damaged_after_stage_0(tmp_path):
    from corpora.synthesize import synthesize_voxceleb1
    from tests.test_asv import run_asv

    corpus = synthesize_voxceleb1(tmp_path / "corpus", min_secs=1.5, max_secs=3.0)
    target, short = tmp_path / "asv", {"train": {"total_steps": 20, "eval_step": 20,
                                                 "save_step": 20}}
    run_asv(target, corpus, stop="train", **short)
    utts = pd.read_csv(target / "data" / "veri_test2_utts.csv", dtype=str)
    trials = pd.read_csv(target / "data" / "veri_test2.csv", dtype=str)
    bad = utts.iloc[-1]  # the last row: the embeddings then end one row short
    damage(Path(bad["wav_path"]), "garbled")
    run_asv(target, corpus, start="evaluate", **short)
    metrics = json.loads((target / "evaluate" / "valid_best" / "veri_test2" / "metrics.json")
                         .read_text())
    naming_bad = int(((trials["id1"] == bad["id"]) | (trials["id2"] == bad["id"])).sum())
    assert naming_bad > 0 and metrics["skipped_trials"] == naming_bad
    assert metrics["n_trials"] == len(trials) - naming_bad
    assert f"{bad['wav_path']}): not readable as audio" in (target / "log.txt").read_text()
