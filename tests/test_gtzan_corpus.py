"""GTZAN parsing (corpora/gtzan.py) on a synthesized corpus in the real layout: the layouts
dataset_root may name, the unreadable jazz.00054.wav, exact duplicates kept in one split,
and the random, file and k-fold splits; bad input is refused before stage 0."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest
import soundfile as sf

from corpora import synthesize
from corpora.gtzan import GENRES, prepare_gtzan
from corpora.synth_gtzan import SAMPLE_RATE, synthesize_gtzan
from framework.errors import ConfigError, CorpusError
from recipes.genre import Genre

CLIPS, SECS = 6, 0.5
# planted by the synthesizer for 6 clips per genre (corpora/synth_gtzan.py)
PLANTED = [{"pop/pop.00000", "pop/pop.00004", "pop/pop.00005"},
           {"reggae/reggae.00000", "reggae/reggae.00005"},
           {"metal/metal.00005", "rock/rock.00001"}]
QUARTERS = {"test_fraction": 0.25, "valid_fraction": 0.25}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("gtzan")
    assert synthesize.main(["gtzan", str(root), "--clips-per-genre", str(CLIPS),
                            "--secs", str(SECS)]) == 0
    return root


def manifests(folder) -> dict[str, pd.DataFrame]:
    return {split: pd.read_csv(folder / f"{split}.csv", dtype=str, keep_default_na=False)
            for split in ("train", "valid", "test")}


def split_of(tables: dict[str, pd.DataFrame]) -> dict[str, str]:
    return {clip: split for split, table in tables.items() for clip in table["id"]}


def test_synthesized_layout_rate_and_lengths(corpus):
    genres = corpus / "genres_original"
    assert sorted(p.name for p in genres.iterdir() if p.is_dir()) == sorted(GENRES)
    infos = [sf.info(str(p)) for p in genres.glob("*/*.wav") if p.name != "jazz.00054.wav"]
    assert len(infos) == CLIPS * len(GENRES)
    assert {i.samplerate for i in infos} == {SAMPLE_RATE} and {i.channels for i in infos} == {1}
    secs = [i.frames / i.samplerate for i in infos]
    assert 0.96 * SECS < min(secs) and max(secs) < SECS + 0.02 and len(set(secs)) > 10
    with pytest.raises(sf.LibsndfileError):
        sf.info(str(genres / "jazz" / "jazz.00054.wav"))
    for group in PLANTED:
        contents = {(genres / f"{clip}.wav").read_bytes() for clip in group}
        assert len(contents) == 1, group


def test_stage0_excludes_jazz_00054_and_keeps_each_duplicate_group_in_one_split(corpus,
                                                                                 tmp_path):
    records = Genre().run(target_dir=str(tmp_path / "exp"), stop="prepare_data",
                          prepare_data={"dataset_root": str(corpus), **QUARTERS})
    data = tmp_path / "exp" / "data"
    excluded = pd.read_csv(data / "excluded.csv")
    assert list(excluded["id"]) == ["jazz/jazz.00054"] and excluded["reason"].str.len().min() > 5
    tables = manifests(data)
    where = split_of(tables)
    assert len(where) == CLIPS * len(GENRES)  # every readable clip in exactly one manifest
    duplicates = pd.read_csv(data / "duplicates.csv", dtype=str, keep_default_na=False)
    groups = [set(rows["id"]) for _, rows in duplicates.groupby("group")]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, PLANTED))
    for group in groups:
        assert len({where[clip] for clip in group}) == 1, group
    assert (duplicates["split"] == duplicates["id"].map(where)).all()
    assert records["prepare_data"]["outputs"].keys() == {"train_csv", "valid_csv", "test_csv"}


def test_random_split_is_seeded_and_stratified(corpus, tmp_path):
    one = manifests(prepare_gtzan(tmp_path / "a", corpus, seed=42, **QUARTERS)["test"].parent)
    again = manifests(prepare_gtzan(tmp_path / "b", corpus, seed=42, **QUARTERS)["test"].parent)
    other = manifests(prepare_gtzan(tmp_path / "c", corpus, seed=7, **QUARTERS)["test"].parent)
    assert split_of(one) == split_of(again) and split_of(one) != split_of(other)
    clips = pd.concat(one.values())
    for genre, count in clips.groupby("label").size().items():
        test = (one["test"]["label"] == genre).sum()
        # a quarter of the genre's clips, rounded; a duplicate group drawn last may add up to
        # two more; rock's copy of a metal clip is drawn with metal (its first id), one fewer
        assert round(0.25 * (count - 1)) <= test <= round(0.25 * count) + 2, genre
        assert (one["valid"]["label"] == genre).sum() >= 1 and \
            (one["train"]["label"] == genre).sum() >= 1, genre


@pytest.mark.parametrize("layout", ["genres_original itself", "older genres/"])
def test_dataset_root_may_be_the_genre_folder_or_hold_the_older_name(corpus, tmp_path, layout):
    expected = split_of(manifests(prepare_gtzan(tmp_path / "ref", corpus)["test"].parent))
    if layout == "older genres/":
        root = tmp_path / "marsyas"
        shutil.copytree(corpus / "genres_original", root / "genres")
    else:
        root = corpus / "genres_original"
    got = manifests(prepare_gtzan(tmp_path / "got", root)["test"].parent)
    assert split_of(got) == expected  # the same ids, hence the same seeded split
    assert got["test"]["wav_path"].str.startswith(str(root)).all()


def test_split_lists_choose_the_splits_and_leave_unlisted_clips_out(corpus, tmp_path):
    genres = corpus / "genres_original"
    names = sorted(p.relative_to(genres).as_posix() for p in genres.glob("*/*.wav"))
    chosen = {"train": names[0:30], "valid": names[30:40], "test": names[40:50]}
    lists = {}
    for split, entries in chosen.items():
        lists[split] = tmp_path / f"{split}_filtered.txt"
        # published lists write genre/name; a bare file name works too; comments and blanks
        lines = [e if i % 2 else e.split("/")[1] for i, e in enumerate(entries)]
        lists[split].write_text("# my split\n\n" + "\n".join(lines) + "\n")
    paths = prepare_gtzan(tmp_path / "data", corpus, split="file",
                          split_lists={k: str(v) for k, v in lists.items()})
    got = manifests(paths["test"].parent)
    for split, entries in chosen.items():
        assert sorted(got[split]["id"]) == sorted(e[:-len(".wav")] for e in entries)
    lists["test"].write_text(names[0] + "\n")  # also in the train list
    with pytest.raises(CorpusError, match="also in the train list"):
        prepare_gtzan(tmp_path / "data", corpus, split="file",
                      split_lists={k: str(v) for k, v in lists.items()})
    lists["test"].write_text("blues.00999.wav\n")
    with pytest.raises(CorpusError, match=r"prepare_data\.split_lists\.test=.*blues\.00999"):
        prepare_gtzan(tmp_path / "data", corpus, split="file",
                      split_lists={k: str(v) for k, v in lists.items()})


def test_kfold_follows_the_hear_convention_with_duplicates_in_one_fold(corpus, tmp_path):
    folds = 3
    runs = [manifests(prepare_gtzan(tmp_path / f"f{f}", corpus, split="kfold", folds=folds,
                                    fold=f)["test"].parent) for f in range(folds)]
    tests = [set(run["test"]["id"]) for run in runs]
    everything = set().union(*(set(t["id"]) for t in runs[0].values()))
    assert set().union(*tests) == everything and sum(map(len, tests)) == len(everything)
    for f, run in enumerate(runs):
        assert set(run["valid"]["id"]) == tests[(f + 1) % folds]  # valid = (test + 1) mod k
        assert set(run["train"]["id"]) == everything - tests[f] - tests[(f + 1) % folds]
    fold_of = {clip: f for f, test in enumerate(tests) for clip in test}
    for group in PLANTED:
        assert len({fold_of[clip] for clip in group}) == 1, group
    per_genre = pd.DataFrame([(clip.split("/")[0], fold_of[clip]) for clip in fold_of],
                             columns=["genre", "fold"]).value_counts().unstack(fill_value=0)
    # stratified: each genre's clips spread evenly (pop's group of three allows 3/2/1)
    assert (per_genre.max(axis=1) - per_genre.min(axis=1)).max() <= 2
    with pytest.raises(CorpusError, match="prepare_data.fold is null"):
        prepare_gtzan(tmp_path / "none", corpus, split="kfold", folds=folds)


@pytest.mark.parametrize("prepare_data, error, message", [
    ({"dataset_root": "{tmp}/nowhere"}, CorpusError,
     r"prepare_data\.dataset_root=.*nowhere does not exist; set it to the folder holding "
     r"genres_original/"),
    ({"dataset_root": "{tmp}/empty"}, CorpusError,
     r"prepare_data\.dataset_root: .*empty has no genre folders with \.wav files"),
    ({"split": "k-fold"}, CorpusError, r"prepare_data\.split='k-fold'.*kfold"),
    ({"split": "kfold", "folds": 2}, ConfigError, r"prepare_data\.folds=2: must be >= 3"),
    ({"split": "file"}, CorpusError,
     r"prepare_data\.split_lists\.train is not set but prepare_data\.split=file needs it"),
])
def test_bad_input_is_refused_before_anything_is_written(corpus, tmp_path, prepare_data,
                                                         error, message):
    (tmp_path / "empty" / "blues").mkdir(parents=True)
    settings = {"dataset_root": str(corpus), **prepare_data}
    settings["dataset_root"] = settings["dataset_root"].format(tmp=tmp_path)
    target = tmp_path / "exp"
    with pytest.raises(error, match=message):
        Genre().run(target_dir=str(target), prepare_data=settings)
    assert not target.exists()
