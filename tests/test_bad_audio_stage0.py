"""Unusable files met at stage 0 are listed with a reason, counted, left out; training runs."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pandas as pd
import soundfile as sf

from tests.test_audio_io import fifo_watchdog


def corrupt_copy(corpus, root):
    """A copy of the synthesized v0.01 corpus with one file of each bad kind added."""
    shutil.copytree(corpus["v0.01"], root / "sc")
    yes = root / "sc" / "yes"
    (yes / "0badc0de_nohash_0.wav").write_text("this is not audio")
    (yes / "0badc0de_nohash_1.wav").write_bytes(b"")
    sf.write(yes / "0badc0de_nohash_2.wav", np.full(16000, np.nan, dtype=np.float32), 16000,
             subtype="FLOAT")
    sf.write(yes / "0badc0de_nohash_3.wav", np.zeros(16000, dtype=np.int16), 16000)
    good = sorted((root / "sc" / "no").glob("*.wav"))[0].read_bytes()
    (root / "sc" / "no" / "0badc0de_nohash_4.wav").write_bytes(good[: len(good) // 2 + 1])
    return root / "sc"


def test_bad_files_are_listed_and_left_out_and_training_still_runs(tmp_path, corpus, run_kws):
    root = corrupt_copy(corpus, tmp_path)
    target = tmp_path / "exp"
    records = run_kws(target, stop="train", prepare_data={"dataset_root": str(root)},
                      train={"total_steps": 10, "eval_step": 10})
    excluded = pd.read_csv(target / "data" / "excluded.csv")
    reasons = dict(zip(excluded["wav_path"].map(lambda p: p.rsplit("/", 1)[-1]),
                       excluded["reason"]))
    assert set(reasons) == {f"0badc0de_nohash_{i}.wav" for i in (0, 1, 2, 4)}
    assert "NaN" in reasons["0badc0de_nohash_2.wav"]
    assert "truncated" in reasons["0badc0de_nohash_4.wav"]
    train = pd.read_csv(target / "data" / "train.csv")
    assert not train["id"].str.contains("0badc0de_nohash_[0124]").any()
    assert train["id"].str.contains("0badc0de_nohash_3").any()  # silent audio is fine
    assert "4 unusable audio files are listed" in (target / "log.txt").read_text()
    assert records["train"] is not None


def test_fifo_and_dangling_symlink_are_excluded_with_a_reason(tmp_path, corpus, run_kws):
    root = tmp_path / "sc"
    shutil.copytree(corpus["v0.01"], root)
    fifo, link = root / "yes" / "0badc0de_nohash_5.wav", root / "no" / "0badc0de_nohash_6.wav"
    noise_fifo = root / "_background_noise_" / "pipe.wav"  # the parser reads noise headers
    for path in (fifo, noise_fifo):
        os.mkfifo(path)
    link.symlink_to(root / "no" / "gone.wav")
    target = tmp_path / "exp"
    with fifo_watchdog(fifo), fifo_watchdog(noise_fifo):  # a blocking open fails, never hangs
        run_kws(target, stop="prepare_data", prepare_data={"dataset_root": str(root)})
    excluded = pd.read_csv(target / "data" / "excluded.csv")
    reasons = dict(zip(excluded["wav_path"], excluded["reason"]))
    assert reasons.get(str(fifo)) == "not a regular file: a FIFO (named pipe)"
    assert reasons.get(str(noise_fifo)) == "not a regular file: a FIFO (named pipe)"
    assert reasons.get(str(link)) == f"dangling symlink: its target {root}/no/gone.wav " \
                                     "does not exist"
