"""VoxCeleb1: the synthesizer writes the real layout, the parser turns it into SV manifests.

Everything goes through the public entry points: ``synthesize_voxceleb1`` / the
``python -m corpora.synthesize voxceleb1`` CLI, and ``prepare_voxceleb1_for_sv``.
"""
from __future__ import annotations

import doctest
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
import torch
import torchaudio

import corpora.voxceleb1
from corpora.synthesize import SAMPLE_RATE, main, synthesize_voxceleb1
from corpora.voxceleb1 import (IDEN_COLUMNS, MANIFEST_DTYPES, META_COLUMNS, TEST_SPEAKERS,
                               TRAIN_COLUMNS, TRIAL_COLUMNS, prepare_voxceleb1_for_sv)
from framework.errors import CorpusError

DEV, TEST, VIDEOS, UTTERANCES = 10, 8, 3, 3  # the shared corpus
SECS = (2.0, 4.0)
HELD_OUT, VALID_TRIALS = 3, 40
OPTIONS = {"valid_speakers": HELD_OUT, "valid_trials": VALID_TRIALS, "seed": 5,
           "trial_lists": ("veri_test2.txt", "veri_test.txt")}


def read(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype=MANIFEST_DTYPES)


def prepare(target, roots: dict, **options) -> dict[str, pd.DataFrame]:
    paths = prepare_voxceleb1_for_sv(target, **roots, **{**OPTIONS, **options})
    return {name: read(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    """``{"dev_root", "test_root", "trials_dir"}`` of a corpus the tests only read."""
    return synthesize_voxceleb1(tmp_path_factory.mktemp("vox"), speakers=DEV,
                                test_speakers=TEST, videos=VIDEOS, utterances=UTTERANCES,
                                min_secs=SECS[0], max_secs=SECS[1], seed=1)


@pytest.fixture(scope="module")
def split(corpus, tmp_path_factory) -> dict[str, pd.DataFrame]:
    return prepare(tmp_path_factory.mktemp("sv"), corpus)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A 5 + 2 speaker corpus of short clips that tests copy before changing it."""
    return synthesize_voxceleb1(tmp_path_factory.mktemp("tiny"), speakers=5, test_speakers=2,
                                videos=2, utterances=2, min_secs=0.3, max_secs=0.5, seed=2)


@pytest.fixture
def tiny_copy(tiny, tmp_path) -> dict[str, Path]:
    out = Path(shutil.copytree(tiny["trials_dir"], tmp_path / "copy"))
    return {key: out / path.relative_to(tiny["trials_dir"]) for key, path in tiny.items()}


TINY = {"valid_speakers": 2, "valid_trials": 4, "trial_lists": ("veri_test2.txt",)}


def single_root(roots: dict[str, Path], folder: Path) -> Path:
    """One root holding every speaker (links to the two archives) plus the side files."""
    for key in ("dev_root", "test_root"):
        for speaker in (roots[key] / "wav").iterdir():
            (folder / "wav").mkdir(parents=True, exist_ok=True)
            os.symlink(speaker, folder / "wav" / speaker.name)
    for side in roots["trials_dir"].glob("*.*"):
        shutil.copy(side, folder)
    return folder


def relative(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every ``wav_path*`` cut to its part after ``/wav/``."""
    return frame.assign(**{c: frame[c].str.split("/wav/").str[1]
                           for c in frame if c.startswith("wav_path")})


# ---------------------------------------------------------------- layouts

def test_one_root_and_the_two_archives_give_the_same_manifests(corpus, split, tmp_path):
    root = single_root(corpus, tmp_path / "vox1")
    single = prepare(tmp_path / "sv", {"dataset_root": root})  # trials and meta found in root
    assert list(single) == ["train", "valid", "veri_test2", "veri_test"]
    for name, frame in single.items():
        for column in frame.filter(like="wav_path"):
            assert frame[column].str.startswith(f"{root}/wav/").all()
        pd.testing.assert_frame_equal(relative(frame), relative(split[name]))


def test_the_wav_folders_themselves_are_accepted_as_roots(corpus, split, tmp_path):
    roots = {"dev_root": corpus["dev_root"] / "wav", "test_root": corpus["test_root"] / "wav",
             "trials_dir": corpus["trials_dir"]}
    for name, frame in prepare(tmp_path, roots).items():
        pd.testing.assert_frame_equal(frame, split[name])


def test_test_speakers_are_the_40_ids_and_never_train(split, tiny_copy, tmp_path):
    assert TEST_SPEAKERS == tuple(f"id{n}" for n in range(10270, 10310))
    assert not set(split["train"].spk) & set(TEST_SPEAKERS)
    assert set(split["veri_test2"].id1.str[:7]) <= set(TEST_SPEAKERS)
    # The id decides, not the folder: a test speaker inside the dev archive does not train.
    shutil.copytree(tiny_copy["test_root"] / "wav" / "id10271",
                    tiny_copy["dev_root"] / "wav" / "id10271")
    shutil.rmtree(tiny_copy["test_root"] / "wav" / "id10271")
    moved = prepare(tmp_path, tiny_copy, **TINY)
    assert "id10271" not in set(moved["train"].spk) | set(moved["valid"].id1.str[:7])
    assert moved["veri_test2"].wav_path2.str.contains("vox1_dev_wav/wav/id10271").any()


def test_train_manifest_rows_columns_and_meta(corpus, split):
    train = split["train"]
    assert list(train.columns) == list(TRAIN_COLUMNS + META_COLUMNS + IDEN_COLUMNS)
    assert train.id.is_unique and train.id.is_monotonic_increasing
    assert len(train) == (DEV - HELD_OUT) * VIDEOS * UTTERANCES
    assert (train.wav_path.map(lambda p: Path(p).is_absolute() and Path(p).is_file())).all()
    assert (train.wav_path.str.split("/wav/").str[1] == train.id + ".wav").all()
    assert (train.spk == train.id.str.split("/").str[0]).all()
    meta = pd.read_csv(corpus["trials_dir"] / "vox1_meta.csv", sep="\t", dtype=str)
    gender = dict(zip(meta["VoxCeleb1 ID"], meta["Gender"]))
    assert (train.gender == train.spk.map(gender)).all()
    assert set(train.nationality) <= set(meta["Nationality"])
    iden = dict(line.split()[::-1] for line in
                (corpus["trials_dir"] / "iden_split.txt").read_text().splitlines())
    codes = {"1": "train", "2": "dev", "3": "test"}
    assert (train.iden_split == (train.id + ".wav").map(iden).map(codes)).all()
    assert set(train.iden_split) == {"train", "dev", "test"}


def test_without_meta_files_those_columns_are_left_out(tiny_copy, tmp_path):
    for name in ("vox1_meta.csv", "iden_split.txt"):
        (tiny_copy["trials_dir"] / name).unlink()
    assert list(prepare(tmp_path, tiny_copy, **TINY)["train"].columns) == list(TRAIN_COLUMNS)


def test_meta_set_disagreeing_with_the_ids_warns_and_the_ids_win(tiny_copy, tmp_path,
                                                                  caplog):
    meta = tiny_copy["trials_dir"] / "vox1_meta.csv"
    lines = [line.replace("\tdev", "\ttest") if line.startswith("id10001\t") else line
             for line in meta.read_text().splitlines()]
    meta.write_text("\n".join(lines) + "\n")  # id10001 now claims to be a test speaker
    with caplog.at_level(logging.WARNING, logger="corpora.voxceleb1"):
        manifests = prepare(tmp_path, tiny_copy, **TINY)
    assert "1 speaker(s), e.g. id10001; using the id rule" in caplog.text
    assert "id10001" in set(manifests["train"].spk) | set(manifests["valid"].id1.str[:7])


# ---------------------------------------------------------------- trial lists

def test_trial_manifests_are_the_lists_resolved(corpus, split):
    lines = (corpus["trials_dir"] / "veri_test2.txt").read_text().split("\n")
    expected = sorted((a[:-4], b[:-4], int(label))
                      for label, a, b in (line.split() for line in lines if line))
    for name in ("veri_test2", "veri_test"):
        trials = split[name]
        assert list(trials.columns) == list(TRIAL_COLUMNS) and trials.label.dtype == int
        assert list(zip(trials.id1, trials.id2, trials.label)) == expected
        for k in "12":
            paths = trials[f"wav_path{k}"]
            assert (paths.str.split("/wav/").str[1] == trials[f"id{k}"] + ".wav").all()
            assert paths.map(lambda p: Path(p).is_file()).all()
    same = split["veri_test2"].id1.str[:7] == split["veri_test2"].id2.str[:7]
    assert (same == split["veri_test2"].label.astype(bool)).all()


def _append(path: Path, text: str) -> int:
    """Append ``text`` to ``path``; return the number of its first appended line."""
    before = len(path.read_text().splitlines())
    with open(path, "a") as out:
        out.write(text)
    return before + 1


def test_missing_trial_list_names_the_file_where_to_get_it_and_where_to_put_it(tiny,
                                                                               tmp_path):
    with pytest.raises(CorpusError) as error:
        prepare(tmp_path, tiny, **{**TINY, "trial_lists": ["list_test_hard2.txt"]})
    message = str(error.value)
    for part in ("list_test_hard2.txt", str(tiny["trials_dir"]), "prepare_data.trials_dir",
                 "https://mm.kaist.ac.kr/datasets/voxceleb/meta/list_test_hard2.txt"):
        assert part in message


def test_trial_naming_missing_files_gives_the_count_and_examples(tiny_copy, tmp_path):
    _append(tiny_copy["trials_dir"] / "veri_test2.txt",
            "1 id10270/aaaaaaaaaaa/00001.wav id10270/bbbbbbbbbbb/00001.wav\n"
            "0 id10999/ccccccccccc/00009.wav id10270/aaaaaaaaaaa/00001.wav\n")
    with pytest.raises(CorpusError, match=r"names 3 file\(s\) not in the corpus, e\.g\. "
                                          r"id10270/aaaaaaaaaaa/00001\.wav"):
        prepare(tmp_path, tiny_copy, **TINY)


@pytest.mark.parametrize("line", ["1 id10270/x/00001.wav\n", "2 a/b/c.wav d/e/f.wav\n",
                                  "1 id10270/x/00001.flac id10270/y/00002.flac\n"])
def test_malformed_trial_line_is_named_by_file_and_line(tiny_copy, tmp_path, line):
    trials = tiny_copy["trials_dir"] / "veri_test2.txt"
    number = _append(trials, line)
    with pytest.raises(CorpusError, match=f"{trials}:{number}: expected"):
        prepare(tmp_path, tiny_copy, **TINY)


# ---------------------------------------------------------------- errors name the key

@pytest.mark.parametrize("roots, key, detail", [
    ({"dataset_root": "/no/such/vox1"}, "prepare_data.dataset_root", "does not exist"),
    ({}, "prepare_data.dataset_root", "prepare_data.dev_root"),
    ({"dev_root": "DEV"}, "prepare_data.test_root", "not set"),
    ({"dev_root": "DEV", "test_root": "EMPTY"}, "prepare_data.test_root", "no <speaker>"),
    ({"dataset_root": "DEV", "test_root": "TEST"}, "prepare_data.dataset_root", "not both"),
    ({"dev_root": "DEV", "test_root": "TEST", "trials_dir": "/no/such"},
     "prepare_data.trials_dir", "does not exist"),
], ids=["root-missing", "nothing-set", "half-set", "empty-root", "both-kinds", "no-trials-dir"])
def test_root_errors_name_the_config_key(tiny, tmp_path, roots, key, detail):
    (tmp_path / "empty" / "wav" / "id10270").mkdir(parents=True)
    names = {"DEV": tiny["dev_root"], "TEST": tiny["test_root"], "EMPTY": tmp_path / "empty"}
    with pytest.raises(CorpusError) as error:
        prepare_voxceleb1_for_sv(tmp_path / "sv", **{k: names.get(v, v) for k, v in
                                                     roots.items()}, **TINY)
    assert key in str(error.value) and detail in str(error.value)


@pytest.mark.parametrize("options, match", [
    ({"valid_speakers": 4}, r"prepare_data.valid_speakers=4 is too many .* 2\.\.3"),
    ({"valid_speakers": 1}, r"prepare_data.valid_speakers=1 must be an integer >= 2"),
    ({"valid_trials": 400}, r"prepare_data.valid_trials=400 needs 200 same-speaker pairs"),
    ({"trial_lists": ["veri_test3.txt"]}, r"prepare_data.trial_lists.*did you mean"),
])
def test_option_errors_name_the_config_key(tiny, tmp_path, options, match):
    with pytest.raises(CorpusError, match=match):
        prepare(tmp_path, tiny, **{**TINY, **options})


# ---------------------------------------------------------------- validation split

def test_validation_speakers_are_held_out_of_train(split):
    valid, train = split["valid"], split["train"]
    held = set(valid.id1.str[:7]) | set(valid.id2.str[:7])
    assert len(held) == HELD_OUT and not held & set(train.spk)
    assert not held & set(TEST_SPEAKERS)
    assert set(train.spk) | held == {f"id{10001 + k}" for k in range(DEV)}


def test_validation_trials_are_balanced_distinct_and_correctly_labelled(split):
    valid = split["valid"]
    assert list(valid.columns) == list(TRIAL_COLUMNS) and len(valid) == VALID_TRIALS
    assert valid.label.sum() == VALID_TRIALS // 2
    pairs = {frozenset(pair) for pair in zip(valid.id1, valid.id2)}
    assert len(pairs) == VALID_TRIALS and (valid.id1 != valid.id2).all()
    same = valid.id1.str[:7] == valid.id2.str[:7]
    assert (same == valid.label.astype(bool)).all()
    target = valid[valid.label == 1]
    assert (target.id1.str.split("/").str[1] != target.id2.str.split("/").str[1]).all()
    assert valid.sort_values(["id1", "id2"]).index.equals(valid.index)


def test_validation_split_is_deterministic_for_a_seed(corpus, split, tmp_path):
    again = prepare(tmp_path / "again", corpus)
    other = prepare(tmp_path / "other", corpus, seed=6)
    for name in ("train", "valid"):
        pd.testing.assert_frame_equal(again[name], split[name])
    assert set(other["valid"].id1.str[:7]) != set(split["valid"].id1.str[:7])
    pd.testing.assert_frame_equal(other["veri_test2"], split["veri_test2"])


def test_single_utterance_speaker_is_kept_and_counted(tiny, tiny_copy, tmp_path, caplog):
    train = prepare(tmp_path / "before", tiny, **TINY)["train"]
    speaker = train.spk.iloc[0]
    for wav in sorted((tiny_copy["dev_root"] / "wav" / speaker).rglob("*.wav"))[1:]:
        wav.unlink()
    with caplog.at_level(logging.INFO, logger="corpora.voxceleb1"):
        after = prepare(tmp_path / "after", tiny_copy, **TINY)["train"]
    assert (after.spk == speaker).sum() == 1
    assert "1 training speaker(s) have a single utterance; kept" in caplog.text


def test_get_path_only_touches_nothing(tmp_path):
    paths = prepare_voxceleb1_for_sv(tmp_path / "sv", get_path_only=True,
                                     dataset_root="/no/such/root",
                                     trial_lists=["veri_test2.txt", "list_test_all2.txt"])
    assert paths == {name: tmp_path / "sv" / f"{name}.csv"
                     for name in ("train", "valid", "veri_test2", "list_test_all2")}
    assert not (tmp_path / "sv").exists()


# ---------------------------------------------------------------- synthesizer

def test_synthesized_layout_and_audio_format(corpus):
    for key, speakers in (("dev_root", DEV), ("test_root", TEST)):
        wavs = sorted((corpus[key] / "wav").glob("*/*/*.wav"))
        assert len(wavs) == speakers * VIDEOS * UTTERANCES
        assert {len(p.parent.name) for p in wavs} == {11}
        assert {p.name for p in wavs} == {f"{n:05d}.wav" for n in range(1, UTTERANCES + 1)}
        infos = [soundfile.info(str(p)) for p in wavs]
        assert {(i.samplerate, i.channels, i.subtype) for i in infos} == {
            (SAMPLE_RATE, 1, "PCM_16")}
        assert all(SECS[0] - 1e-3 <= i.duration <= SECS[1] + 1e-3 for i in infos)
    assert sorted(p.name for p in (corpus["test_root"] / "wav").iterdir()) == \
        list(TEST_SPEAKERS[:TEST])
    header = (corpus["trials_dir"] / "vox1_meta.csv").read_text().splitlines()[0]
    assert header == "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"


def test_synthesized_trials_are_balanced_cross_video_and_distinct(split):
    trials = split["veri_test2"]
    assert trials.label.mean() == 0.5
    assert len({frozenset(pair) for pair in zip(trials.id1, trials.id2)}) == len(trials)
    target = trials[trials.label == 1]
    assert (target.id1.str.split("/").str[1] != target.id2.str.split("/").str[1]).all()


def test_synthesizer_is_deterministic_for_a_seed(tmp_path):
    def files(out, seed):
        synthesize_voxceleb1(out, speakers=1, test_speakers=2, videos=2, utterances=1,
                             min_secs=0.3, max_secs=0.6, seed=seed)
        return {str(p.relative_to(out)): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    first = files(tmp_path / "a", seed=7)
    assert first == files(tmp_path / "b", seed=7)
    assert first != files(tmp_path / "c", seed=8)


def test_synthesizer_never_overwrites_foreign_trial_lists(tmp_path):
    (tmp_path / "veri_test2.txt").write_text("1 a/b/c.wav d/e/f.wav\n")
    with pytest.raises(FileExistsError, match="veri_test2.txt"):
        synthesize_voxceleb1(tmp_path, speakers=1, test_speakers=2, videos=1, utterances=2)
    assert (tmp_path / "veri_test2.txt").read_text() == "1 a/b/c.wav d/e/f.wav\n"


def test_cli_writes_the_corpus(tmp_path, capsys):
    assert main(["voxceleb1", str(tmp_path), "--speakers", "1", "--test-speakers", "2",
                 "--videos", "1", "--utterances", "2", "--min-secs", "0.3", "--max-secs",
                 "0.3", "--seed", "3"]) == 0
    assert capsys.readouterr().out.split() == [
        "dev_root:", str(tmp_path / "vox1_dev_wav"), "test_root:",
        str(tmp_path / "vox1_test_wav"), "trials_dir:", str(tmp_path)]


def test_docstring_examples_run():
    assert doctest.testmod(corpora.voxceleb1).failed == 0


def _mean_log_mel(paths) -> np.ndarray:
    """(N, 40) log-mel energies averaged over frames, minus each row's mean (level)."""
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=400, hop_length=160,
                                               n_mels=40)
    rows = [torch.log(mel(torch.from_numpy(soundfile.read(str(p), dtype="float32")[0]))
                      + 1e-6).mean(-1).numpy() for p in paths]
    features = np.stack(rows)
    return features - features.mean(1, keepdims=True)


def test_speakers_are_separable_across_videos(corpus):
    """Nearest speaker centroid, each video classified with centroids of the other videos:
    the speaker colour survives the channel. Chance is 1/8."""
    wavs = sorted((corpus["test_root"] / "wav").glob("*/*/*.wav"))
    speaker = np.array([p.parts[-3] for p in wavs])
    video = np.array([p.parts[-2] for p in wavs])
    features, speakers = _mean_log_mel(wavs), sorted(set(speaker))
    hits = []
    for held in sorted(set(video)):
        known = video != held
        centroids = np.stack([features[known & (speaker == s)].mean(0) for s in speakers])
        distances = ((features[video == held, None] - centroids[None]) ** 2).sum(-1)
        hits += list(np.array(speakers)[distances.argmin(1)] == speaker[video == held])
    # Measured: synthesizer seed 1 (this corpus) 0.97 (70 of 72) on AVX-512 and with torch/
    # oneDNN/MKL/numpy kernels capped at AVX2 or below (no change); synthesizer seeds 1..5:
    # 0.83-0.97. The kernels move this figure by less than one item; 0.8 is 12 items below.
    assert np.mean(hits) >= 0.8, np.mean(hits)
