"""GTZAN genre folders → ``train.csv`` / ``valid.csv`` / ``test.csv`` manifests.

Layout read (nothing is ever downloaded): ``genres_original/<genre>/<genre>.000NN.wav`` (the
Kaggle download, under ``Data/``) or the older ``genres/<genre>/...`` (the Marsyas tarball,
the Hugging Face ``marsyas/gtzan`` files). ``dataset_root`` may name the folder holding
``genres_original/`` (or ``genres/``) or that folder itself. Every non-hidden sub-folder
holding ``*.wav`` files is a genre (GTZAN has the ten of :data:`GENRES`); a clip's label is
its folder. Unreadable files (the real ``jazz/jazz.00054.wav``) are listed here like any
other and left out by the stage-0 audio screening, which names them with the reason in
``excluded.csv``.

Exact duplicates: every file's sha256 (streamed) groups byte-identical files, which the real
corpus has. Each group is placed whole in one split (or fold), so no copy of a test clip is
trained on; ``duplicates.csv`` beside the manifests lists the groups (columns ``group,
sha256, id, label, split, fold, wav_path``; ``fold`` empty unless ``split=kfold``).

Splits (``split``):

* ``random``: per genre (stratified) and seeded, ``test_fraction`` of the clips for test,
  then ``valid_fraction`` of the rest for valid, the remainder train: 81/9/10 % by default.
  The unit drawn is a duplicate group; a genre of three or more groups keeps at least one
  in each split.
* ``file``: ``split_lists`` names three text files (``train``, ``valid``, ``test``), one clip
  a line, as a file name (``jazz.00054.wav``) or ending in ``<genre>/<file name>`` (the
  published fault-filtered lists' form); blank lines and ``#`` comments are skipped. A clip
  in no list is left out (counted in the log); a duplicate group the lists split is warned
  about, not moved (the lists are the user's).
* ``kfold``: per genre (stratified), duplicate groups dealt to ``folds`` folds, balanced in
  clips; fold ``fold`` is test, fold ``(fold + 1) % folds`` valid (s3prl's HEAR
  convention), the rest train.

Manifest columns, rows sorted by ``id``: ``id`` (``<genre>/<file stem>``), ``wav_path``
(absolute), ``start``, ``end`` (empty: the whole file), ``label`` (the genre).
"""
from __future__ import annotations

import csv
import hashlib
import logging
import os
import stat
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from framework.errors import CorpusError
from framework.files import atomic_path
from framework.progress import progress
from framework.registry import closest

GENRES = ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal", "pop", "reggae",
          "rock")
SPLITS = ("random", "file", "kfold")
LIST_SPLITS = ("train", "valid", "test")
FOLDERS = ("genres_original", "genres")  # the Kaggle download's name, then the older one
COLUMNS = ("id", "wav_path", "start", "end", "label")
DUPLICATE_COLUMNS = ("group", "sha256", "id", "label", "split", "fold", "wav_path")
ROOT_KEY = "prepare_data.dataset_root"
_HINT = ("set it to the folder holding genres_original/ (the unpacked GTZAN download) or "
         "genres/, or to that folder itself")
_BLOCK = 1 << 20  # bytes hashed per read
_SHOWN = 3  # offending names quoted in an error

log = logging.getLogger(__name__)


class Clip(NamedTuple):
    id: str  # <genre>/<file stem>
    wav_path: str  # absolute
    label: str


def prepare_gtzan(target_dir, dataset_root, split="random", seed=42, test_fraction=0.1,
                  valid_fraction=0.1, split_lists=None, folds=5, fold=None,
                  get_path_only=False) -> dict[str, Path]:
    """Write ``train.csv``, ``valid.csv``, ``test.csv`` and ``duplicates.csv`` into
    ``target_dir``; return ``{"train": path, "valid": path, "test": path}``.

    ``get_path_only`` checks the options, the root and the split lists exist, and returns the
    paths without reading the corpus or writing anything. Raises :class:`CorpusError`
    naming the ``prepare_data`` key to fix.

    >>> import shutil, tempfile
    >>> from corpora.synth_gtzan import synthesize_gtzan
    >>> tmp = Path(tempfile.mkdtemp())
    >>> roots = synthesize_gtzan(tmp / "corpus", clips_per_genre=4, secs=0.2)
    >>> paths = prepare_gtzan(tmp / "data", roots["dataset_root"], test_fraction=0.25,
    ...                       valid_fraction=0.25)
    >>> paths["test"].read_text().splitlines()[0]
    'id,wav_path,start,end,label'
    >>> shutil.rmtree(tmp)
    """
    _check_options(split, test_fraction, valid_fraction, folds, fold)
    root = genre_root(dataset_root)
    lists = _list_paths(split_lists) if split == "file" else {}
    target = Path(target_dir)
    paths = {name: target / f"{name}.csv" for name in LIST_SPLITS}
    if get_path_only:
        return paths
    if split == "kfold" and fold is None:
        raise CorpusError("prepare_data.fold is null: set the test fold (0 to "
                          f"{folds - 1}) to write one fold's manifests (the genre recipe "
                          "runs every fold itself, one sub-run each)")
    clips = scan_clips(root)
    groups = duplicate_groups(clips)
    fold_of = kfold_assignment(groups, folds, seed) if split == "kfold" else {}
    assigned = random_split(groups, seed, test_fraction, valid_fraction) \
        if split == "random" else list_split(clips, groups, lists) if split == "file" \
        else fold_splits(fold_of, folds, fold)
    target.mkdir(parents=True, exist_ok=True)
    for name, path in paths.items():
        _write_manifest([c for c in clips if assigned.get(c.id) == name], path)
    _report_duplicates(groups, assigned, fold_of, target / "duplicates.csv")
    counts = {name: sum(1 for s in assigned.values() if s == name) for name in LIST_SPLITS}
    log.info("GTZAN: %d clips in %d genres under %s; train %d, valid %d, test %d",
             len(clips), len({c.label for c in clips}), root, *counts.values())
    return paths


def _check_options(split, test_fraction, valid_fraction, folds, fold) -> None:
    """Reject option values before touching the disk."""
    if split not in SPLITS:
        raise CorpusError(f"prepare_data.split={split!r}: choose one of "
                          f"{', '.join(SPLITS)}{closest(str(split), SPLITS)}")
    for key, value in (("test_fraction", test_fraction), ("valid_fraction", valid_fraction)):
        if not 0 < value < 1:
            raise CorpusError(f"prepare_data.{key}={value!r} must be in (0, 1)")
    if split == "kfold":
        if not (isinstance(folds, int) and folds >= 3):
            raise CorpusError(f"prepare_data.folds={folds!r} must be an integer >= 3 (test, "
                              "valid and at least one training fold)")
        if fold is not None and not 0 <= fold < folds:
            raise CorpusError(f"prepare_data.fold={fold!r} must be in [0, {folds}) or null "
                              "(every fold)")


def genre_root(dataset_root) -> Path:
    """The absolute folder whose sub-folders are the genres (see the module docstring)."""
    if dataset_root in (None, ""):
        raise CorpusError(f"{ROOT_KEY} is not set; {_HINT}")
    given = Path(os.path.abspath(os.path.expanduser(str(dataset_root))))
    if not given.is_dir():
        raise CorpusError(f"{ROOT_KEY}={dataset_root} does not exist; {_HINT}")
    root = next((given / name for name in FOLDERS if (given / name).is_dir()), given)
    if not any(_has_wav(folder) for folder in _genre_folders(root)):
        raise CorpusError(f"{ROOT_KEY}: {root} has no genre folders with .wav files "
                          f"(expected {', '.join(GENRES)}); {_HINT}")
    return root


def _genre_folders(root: Path) -> list[Path]:
    """The non-hidden sub-folders of ``root``, sorted."""
    with os.scandir(root) as entries:
        return sorted(root / e.name for e in entries
                      if e.is_dir() and not e.name.startswith("."))


def _has_wav(folder: Path) -> bool:
    with os.scandir(folder) as entries:
        return any(e.name.lower().endswith(".wav") and not e.is_dir() for e in entries)


def _list_paths(split_lists) -> dict[str, Path]:
    """The three split-list files of ``split=file``, each checked to exist."""
    split_lists = split_lists or {}
    paths = {}
    for name in LIST_SPLITS:
        key, value = f"prepare_data.split_lists.{name}", split_lists.get(name)
        if value in (None, ""):
            raise CorpusError(f"{key} is not set but prepare_data.split=file needs it: a text "
                              "file of clip names (jazz.00054.wav or jazz/jazz.00054.wav), "
                              "one a line")
        path = Path(os.path.abspath(os.path.expanduser(str(value))))
        if not path.is_file():
            raise CorpusError(f"{key}={value} does not exist (a text file of clip names, one "
                              "a line)")
        paths[name] = path
    return paths


def _wav_names(folder: Path) -> list[str]:
    with os.scandir(folder) as entries:
        # not is_file(): a FIFO or a dangling symlink must reach the screening, which lists it
        return sorted(e.name for e in entries
                      if e.name.lower().endswith(".wav") and not e.is_dir())


def scan_clips(root: Path) -> list[Clip]:
    """Every ``<genre>/*.wav`` under ``root`` (checked by :func:`genre_root` to hold some),
    sorted by id."""
    return [Clip(f"{folder.name}/{name[:-4]}", str(folder / name), folder.name)
            for folder in _genre_folders(root) for name in _wav_names(folder)]


def content_digest(path: str) -> str | None:
    """sha256 of the file's bytes, read in blocks; None for what is not a readable regular
    file (a FIFO would block: the screening reports those)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                digest.update(block)
        return digest.hexdigest()
    except OSError:
        return None


def duplicate_groups(clips: list[Clip]) -> list[tuple[str | None, list[Clip]]]:
    """``(sha256, clips)`` per distinct content, in id order of each group's first clip;
    an unhashable file is a group of its own (sha256 None). Duplicate groups are logged."""
    by_digest: dict[str, list[Clip]] = {}
    groups: list[tuple[str | None, list[Clip]]] = []
    for clip in progress(clips, desc="hash GTZAN files", unit="file"):
        digest = content_digest(clip.wav_path)
        if digest is None:
            groups.append((None, [clip]))
        elif digest in by_digest:
            by_digest[digest].append(clip)
        else:
            by_digest[digest] = [clip]
            groups.append((digest, by_digest[digest]))
    copies = [members for _, members in groups if len(members) > 1]
    if copies:
        log.warning("%d groups of exact duplicates (%d files, same sha256), each kept in one "
                    "split: %s", len(copies), sum(map(len, copies)),
                    "; ".join(" = ".join(c.id for c in members) for members in copies))
    for members in copies:
        if len({c.label for c in members}) > 1:
            log.warning("the same audio is filed under several genres: %s",
                        ", ".join(c.id for c in members))
    return groups


def _by_genre(groups) -> dict[str, list[list[Clip]]]:
    """Groups by the genre of their first clip (the stratum), in order."""
    strata: dict[str, list[list[Clip]]] = {}
    for _, members in groups:
        strata.setdefault(members[0].label, []).append(members)
    return strata


def _shuffled(units: list, seed: int, genre: str) -> list:
    """``units`` in a seeded order of their own per genre (independent of the others)."""
    rng = np.random.default_rng([seed, zlib.crc32(genre.encode())])
    return [units[i] for i in rng.permutation(len(units))]


def random_split(groups, seed: int, test_fraction: float, valid_fraction: float
                 ) -> dict[str, str]:
    """id → split: per genre, shuffled groups fill test to ``test_fraction`` of its clips,
    then valid to ``valid_fraction`` of the rest; the remainder is train."""
    assigned = {}
    for genre, units in _by_genre(groups).items():
        units = _shuffled(units, seed, genre)
        clips = sum(map(len, units))
        want_test = _quota(test_fraction * clips, len(units))
        want_valid = _quota(valid_fraction * (clips - want_test), len(units))
        filled = {"test": 0, "valid": 0}
        for members in units:
            split = "test" if filled["test"] < want_test else \
                "valid" if filled["valid"] < want_valid else "train"
            if split != "train":
                filled[split] += len(members)
            assigned.update((c.id, split) for c in members)
    return assigned


def _quota(share: float, units: int) -> int:
    """Clips a held-out split wants: at least one when the genre has three or more units."""
    return max(1, round(share)) if units >= 3 else round(share)


def kfold_assignment(groups, folds: int, seed: int) -> dict[str, int]:
    """id → fold: per genre, groups (largest first, else in a seeded order) each go to the
    fold with the fewest clips of that genre (ties: fewest clips overall, then the lowest
    number)."""
    fold_of, total = {}, [0] * folds
    for genre, units in _by_genre(groups).items():
        mine = [0] * folds
        # largest groups first (then in the seeded order): the folds end up most even
        for members in sorted(_shuffled(units, seed, genre), key=len, reverse=True):
            best = min(range(folds), key=lambda f: (mine[f], total[f], f))
            mine[best] += len(members)
            total[best] += len(members)
            fold_of.update((c.id, best) for c in members)
    return fold_of


def fold_splits(fold_of: dict[str, int], folds: int, test_fold: int) -> dict[str, str]:
    """id → split for one fold: ``test_fold`` test, ``(test_fold + 1) % folds`` valid."""
    valid_fold = (test_fold + 1) % folds
    return {i: "test" if f == test_fold else "valid" if f == valid_fold else "train"
            for i, f in fold_of.items()}


def _read_list(path: Path) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [line for line in lines if line]


def list_split(clips: list[Clip], groups, lists: dict[str, Path]) -> dict[str, str]:
    """id → split from the three list files; unlisted clips are left out."""
    by_rel = {f"{c.label}/{Path(c.wav_path).name}": c.id for c in clips}
    by_name: dict[str, list[str]] = {}
    for c in clips:
        by_name.setdefault(Path(c.wav_path).name, []).append(c.id)
    assigned: dict[str, str] = {}
    for split, path in lists.items():
        key = f"prepare_data.split_lists.{split}"
        for entry in _read_list(path):
            clip_id = _listed_clip(entry, by_rel, by_name, key, path)
            if clip_id in assigned:
                raise CorpusError(f"{key}={path}: {entry} is also in the {assigned[clip_id]} "
                                  "list; a clip belongs to one split")
            assigned[clip_id] = split
    left = [c.id for c in clips if c.id not in assigned]
    if left:
        log.info("%d clips are in no split list and are left out, e.g. %s", len(left),
                 ", ".join(left[:_SHOWN]))
    spanning = [members for _, members in groups
                if len({assigned.get(c.id) for c in members} - {None}) > 1]
    for members in spanning:
        log.warning("the split lists put copies of the same audio in different splits: %s",
                    ", ".join(f"{c.id} ({assigned.get(c.id)})" for c in members))
    return assigned


def _listed_clip(entry: str, by_rel, by_name, key: str, path: Path) -> str:
    """The id of the clip a list line names."""
    parts = Path(entry).parts
    if len(parts) >= 2 and f"{parts[-2]}/{parts[-1]}" in by_rel:
        return by_rel[f"{parts[-2]}/{parts[-1]}"]
    found = by_name.get(parts[-1], []) if parts else []
    if len(found) == 1:
        return found[0]
    if found:
        raise CorpusError(f"{key}={path}: {entry} matches {', '.join(found)}; write it as "
                          "<genre>/<file name>")
    raise CorpusError(f"{key}={path}: {entry} is not a clip under {ROOT_KEY} (lines are "
                      "file names such as jazz.00054.wav or jazz/jazz.00054.wav)")


def _write_manifest(clips: list[Clip], path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows((c.id, c.wav_path, "", "", c.label) for c in clips)


def _report_duplicates(groups, assigned: dict[str, str], fold_of: dict[str, int],
                       path: Path) -> None:
    """``duplicates.csv``: one row per file of every group of two or more (header only when
    there are none)."""
    copies = [(digest, members) for digest, members in groups if len(members) > 1]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(DUPLICATE_COLUMNS)
        for number, (digest, members) in enumerate(copies):
            writer.writerows((number, digest, c.id, c.label, assigned.get(c.id, ""),
                              fold_of.get(c.id, ""), c.wav_path) for c in members)
