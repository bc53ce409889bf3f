"""Windowed whole-clip evaluation (``build_dataset.test.window_secs``) through KWS().run:
one prediction per clip, equal to the mean of its windows' logits, in window-sized batches
whatever the clip's length."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from framework.audio.io import read_audio
from framework.audio.segments import window_starts
from framework.inference import TrainedModels
from recipes.kws import KWS
from tests.conftest import FAST, corpus_overrides, merge

WINDOW_SECS, LONG_SECS, RATE = 0.4, 60.0, 16000
WINDOW = int(WINDOW_SECS * RATE)
BATCH = FAST["build_batch_sampler"]["test"]["batch_size"]


class LongClipKWS(KWS):
    """KWS whose test manifest also holds a 60-s clip (a test "yes" repeated under a little
    noise), and whose model records the shape of every waveform batch it runs on."""

    seen: list[tuple[int, int]] = []

    def prepare_data(self, prepare_data, target_dir, cache_dir, get_path_only=False):
        manifests = super().prepare_data(prepare_data, target_dir, cache_dir, get_path_only)
        if not get_path_only:
            test = pd.read_csv(manifests["test"], dtype=str, keep_default_na=False)
            word, rate = sf.read(test[test["label"] == "yes"]["wav_path"].iloc[0])
            clip = np.resize(word, int(LONG_SECS * rate))
            clip += np.random.default_rng(0).normal(0, 0.01, len(clip))
            path = target_dir / "long_yes.wav"
            sf.write(path, np.clip(clip, -1, 1), rate, subtype="PCM_16")
            test.loc[len(test)] = {**dict.fromkeys(test, ""), "id": "long/yes",
                                   "wav_path": str(path), "label": "yes"}
            test.to_csv(manifests["test"], index=False)
        return manifests

    def build_model(self, *args, **kwargs):
        model = super().build_model(*args, **kwargs)
        model.register_forward_pre_hook(
            lambda module, inputs: LongClipKWS.seen.append(tuple(inputs[0]["wav"].shape)))
        return model


@pytest.fixture(scope="module")
def windowed_run(tmp_path_factory, corpus):
    """(target_dir, batch shapes seen in stage 3) of a tiny run with 0.4-s windows."""
    target = tmp_path_factory.mktemp("windowed") / "run"
    settings = merge(merge(FAST, corpus_overrides(corpus)),
                     {"build_dataset": {"test": {"window_secs": WINDOW_SECS}}})
    LongClipKWS().run(target_dir=str(target), stop="train", **settings)
    LongClipKWS.seen.clear()
    LongClipKWS().run(target_dir=str(target), start="evaluate", **settings)
    return target, list(LongClipKWS.seen)


def test_one_row_per_clip_and_window_sized_batches(windowed_run):
    target, seen = windowed_run
    manifest = pd.read_csv(target / "data" / "test.csv", dtype=str)
    predictions = pd.read_csv(target / "evaluate/valid_best/test/predictions.csv", dtype=str)
    assert sorted(predictions["id"]) == sorted(manifest["id"]) and "long/yes" in set(
        manifest["id"])
    frames = (manifest["duration"].astype(float) * RATE).round().astype(int)
    windows = sum(len(window_starts(n, WINDOW)) for n in frames)
    assert len(window_starts(int(LONG_SECS * RATE), WINDOW)) == 150  # the long clip's
    # every window once, never more than a batch of windows at a time (not 60 s of audio)
    assert sum(batch for batch, _ in seen) == windows
    assert max(batch * samples for batch, samples in seen) <= BATCH * WINDOW


def test_clip_scores_are_the_softmax_of_the_mean_window_logits(windowed_run):
    target, _ = windowed_run
    task, _, _ = TrainedModels(LongClipKWS().attach(target)).load(
        target / "train/checkpoints/valid_best.pt")
    manifest = pd.read_csv(target / "data" / "test.csv", dtype=str).set_index("id")
    predictions = pd.read_csv(target / "evaluate/valid_best/test/predictions.csv",
                              dtype={"id": str}).set_index("id")
    columns = [f"score_{c}" for c in task.classes]
    for clip in ["long/yes", *manifest.index[:3]]:
        wave = read_audio(manifest.loc[clip, "wav_path"], sample_rate=RATE)
        with torch.no_grad():  # the model on each window alone, by hand
            logits = torch.cat([task.model({"wav": wave[None, s:s + WINDOW],
                                            "wav_len": torch.tensor([WINDOW])})
                                for s in window_starts(len(wave), WINDOW)])
        expected = logits.mean(0).softmax(-1).numpy()
        np.testing.assert_allclose(predictions.loc[clip, columns].to_numpy(float), expected,
                                   atol=1e-5)
