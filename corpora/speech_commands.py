"""Google Speech Commands folders → ``train.csv`` / ``valid.csv`` / ``test.csv`` manifests.

Layouts read (nothing is ever downloaded):

* ``speech_commands_v0.01`` / ``speech_commands_v0.02``: one folder per word (30 or 35) of
  ``<speaker>_nohash_<n>.wav`` clips, ``_background_noise_/`` with long noise wavs,
  ``validation_list.txt`` and ``testing_list.txt`` (one ``word/file.wav`` per line).
* ``speech_commands_test_set_v0.01``: 12 folders (the 10 SUPERB words, ``_unknown_``,
  ``_silence_``); a clip's label is its folder.

Two label sets (``classes``):

* ``"superb12"`` (SUPERB keyword spotting on v0.01): the 10 words of :data:`SUPERB_WORDS`,
  ``_unknown_`` (every other word) and ``_silence_`` (1-s cuts of the background noise).
  Train = word clips named by neither list; valid = ``validation_list.txt``; test = every
  wav under ``test_root``.
* ``"all"`` (v0.02): one label per word folder; the two lists give valid and test.

Manifest columns, in this order; rows sorted by ``id``:

==========  ===============================================================================
id          unique key: ``<folder>/<file stem>`` for a clip (``yes/0a7c2a8d_nohash_0``),
            ``_silence_/<noise stem>/<segment, 4 digits>`` for a noise cut
wav_path    absolute path of the wav file (str)
start       segment start, seconds (float); empty = start of the file
end         segment end, seconds (float); empty = end of the file
label       a word, ``_unknown_`` or ``_silence_``
speaker     ``<speaker>`` of ``<speaker>_nohash_<n>.wav`` (8 hex digits in the real
            corpus); empty when the file name has another form
utterance   ``<n>`` of that name (int); empty otherwise
==========  ===============================================================================

Speaker ids such as ``1e100000`` look like numbers to pandas, so read manifests with
``pandas.read_csv(path, dtype=MANIFEST_DTYPES)``.
"""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import NamedTuple

import soundfile

from framework.errors import CorpusError
from framework.registry import closest

SUPERB_WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
WORDS_V1 = SUPERB_WORDS + (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    "bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
WORDS_V2 = WORDS_V1 + ("backward", "forward", "follow", "learn", "visual")
UNKNOWN, SILENCE, NOISE_DIR = "_unknown_", "_silence_", "_background_noise_"
VALID_LIST, TEST_LIST = "validation_list.txt", "testing_list.txt"
TEST_SET_FOLDERS = SUPERB_WORDS + (UNKNOWN, SILENCE)
CLASS_MODES = ("superb12", "all")
COLUMNS = ("id", "wav_path", "start", "end", "label", "speaker", "utterance")
MANIFEST_DTYPES = {"id": str, "wav_path": str, "start": float, "end": float,
                   "label": str, "speaker": str, "utterance": "Int64"}

ROOT_KEY, TEST_KEY = "prepare_data.dataset_root", "prepare_data.test_root"
_RELEASE = {"superb12": "speech_commands_v0.01", "all": "speech_commands_v0.02"}
_NAME = re.compile(r"(?P<speaker>[0-9A-Za-z]+)_nohash_(?P<utterance>\d+)\.wav")
_SHOWN = 3  # how many offending paths an error message quotes


class Row(NamedTuple):
    """One manifest line; ``None`` is written as an empty field."""
    id: str
    wav_path: str
    start: float | None
    end: float | None
    label: str
    speaker: str
    utterance: int | None


def prepare_speech_commands(target_dir, dataset_root, test_root=None, classes="superb12",
                            silence_secs=1.0, valid_silence_fraction=0.1,
                            get_path_only=False) -> dict[str, Path]:
    """Write ``train.csv``, ``valid.csv`` and ``test.csv`` into ``target_dir``.

    ``get_path_only`` checks the options and that ``dataset_root`` exists, and returns the
    paths without reading the corpus or writing anything.

    ``classes`` is ``"superb12"`` (needs ``test_root``) or ``"all"`` (ignores it).
    ``silence_secs`` is the length of a ``_silence_`` cut; the last
    ``ceil(valid_silence_fraction * cuts)`` cuts of each noise file go to valid (a file
    always keeps at least one cut for train). Returns ``{"train": path, "valid": path,
    "test": path}``. Raises :class:`CorpusError` naming the config key to fix.

    >>> import shutil, tempfile
    >>> from corpora.synthesize import synthesize_speech_commands
    >>> tmp = Path(tempfile.mkdtemp())
    >>> roots = synthesize_speech_commands(tmp / "corpus", speakers=3)
    >>> paths = prepare_speech_commands(tmp / "kws", roots["v0.01"], roots["test_v0.01"])
    >>> paths["train"].read_text().splitlines()[0]
    'id,wav_path,start,end,label,speaker,utterance'
    >>> shutil.rmtree(tmp)
    """
    _check_options(classes, silence_secs, valid_silence_fraction)
    root = _corpus_root(dataset_root, classes)
    if get_path_only:
        return {split: Path(target_dir) / f"{split}.csv" for split in ("train", "valid", "test")}
    test_set = _test_set_rows(test_root) if classes == "superb12" else []  # fail fast
    words = _word_folders(root, classes)
    valid, test = (_read_list(root, name, words) for name in (VALID_LIST, TEST_LIST))
    if classes == "superb12":
        splits = _clip_splits(root, words, valid, test, _superb_label)
        train_noise, valid_noise = _silence_rows(root, silence_secs, valid_silence_fraction)
        splits["train"] += train_noise
        splits["valid"] += valid_noise
        splits["test"] = test_set
    else:
        splits = _clip_splits(root, words, valid, test, lambda word: word)
    target = Path(target_dir)
    target.mkdir(parents=True, exist_ok=True)
    return {split: _write_manifest(splits[split], target / f"{split}.csv")
            for split in ("train", "valid", "test")}


def _check_options(classes, silence_secs, valid_silence_fraction) -> None:
    """Reject option values before touching the disk."""
    if classes not in CLASS_MODES:
        raise CorpusError(f"prepare_data.classes={classes!r}: choose one of "
                          f"{', '.join(CLASS_MODES)}{closest(str(classes), CLASS_MODES)}")
    if not silence_secs > 0:
        raise CorpusError(f"prepare_data.silence_secs={silence_secs!r} must be > 0 "
                          "(seconds per _silence_ cut).")
    if not 0 <= valid_silence_fraction < 1:
        raise CorpusError(f"prepare_data.valid_silence_fraction={valid_silence_fraction!r} "
                          "must be in [0, 1).")


def _root_hint(classes: str) -> str:
    return (f"set it to the folder holding {_RELEASE[classes]} (with {VALID_LIST}, "
            f"{TEST_LIST} and one folder per word)")


def _corpus_root(dataset_root, classes: str) -> Path:
    """The absolute corpus root, after checking it exists and holds both list files."""
    if dataset_root in (None, ""):
        raise CorpusError(f"{ROOT_KEY} is not set; {_root_hint(classes)}")
    root = Path(os.path.abspath(os.path.expanduser(dataset_root)))
    if not root.is_dir():
        raise CorpusError(f"{ROOT_KEY}={dataset_root} does not exist; {_root_hint(classes)}")
    for name in (VALID_LIST, TEST_LIST):
        if not (root / name).is_file():
            raise CorpusError(f"{ROOT_KEY}={dataset_root} has no {name}; {_root_hint(classes)}")
    return root


def _wav_names(folder: Path) -> list[str]:
    """Sorted ``*.wav`` file names directly inside ``folder`` (one directory read)."""
    with os.scandir(folder) as entries:
        # not is_file(): a FIFO or a dangling symlink must reach the screening, which lists it
        return sorted(e.name for e in entries if e.name.endswith(".wav") and not e.is_dir())


def _word_folders(root: Path, classes: str) -> dict[str, list[str]]:
    """``{word: wav names}`` for every folder holding wavs whose name has no leading ``_``."""
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries
                       if e.is_dir() and not e.name.startswith(("_", ".")))
    words = {name: wavs for name in names if (wavs := _wav_names(root / name))}
    if not words:
        raise CorpusError(f"{ROOT_KEY}={root} has no word folders with .wav files; "
                          f"{_root_hint(classes)}")
    missing = [w for w in SUPERB_WORDS if w not in words] if classes == "superb12" else []
    if missing:
        raise CorpusError(f"{ROOT_KEY}={root} lacks the word folders {', '.join(missing)} "
                          f"needed by prepare_data.classes=superb12; {_root_hint(classes)}")
    return words


def _read_list(root: Path, name: str, words: dict[str, list[str]]) -> set[str]:
    """The ``word/file.wav`` paths of a list file; every one must be a scanned clip."""
    listed = {line.strip() for line in (root / name).read_text().splitlines() if line.strip()}
    known = {f"{word}/{wav}" for word, wavs in words.items() for wav in wavs}
    missing = sorted(listed - known)
    if missing:
        raise CorpusError(
            f"{ROOT_KEY}={root}: {name} names {len(missing)} file(s) that do not exist, "
            f"e.g. {', '.join(missing[:_SHOWN])}; the list and the word folders must come "
            "from the same extracted release (re-extract the archive into one folder)")
    return listed


def _superb_label(word: str) -> str:
    return word if word in SUPERB_WORDS else UNKNOWN


def _clip_row(folder: Path, name: str, label: str) -> Row:
    """The row of the clip ``folder/name``; speaker and utterance come from its name."""
    match = _NAME.fullmatch(name)
    speaker, utterance = (match["speaker"], int(match["utterance"])) if match else ("", None)
    return Row(f"{folder.name}/{name[:-len('.wav')]}", str(folder / name), None, None,
               label, speaker, utterance)


def _clip_splits(root: Path, words: dict[str, list[str]], valid: set[str], test: set[str],
                 label_of) -> dict[str, list[Row]]:
    """Clip rows split by the lists; a clip named by both lists counts as valid."""
    splits = {"train": [], "valid": [], "test": []}
    for word, wavs in words.items():
        label = label_of(word)
        for name in wavs:
            rel = f"{word}/{name}"
            split = "valid" if rel in valid else "test" if rel in test else "train"
            splits[split].append(_clip_row(root / word, name, label))
    return splits


def _silence_rows(root: Path, secs: float, fraction: float) -> tuple[list[Row], list[Row]]:
    """(train, valid) ``_silence_`` cuts of every ``_background_noise_/*.wav``."""
    noise_dir = root / NOISE_DIR
    if not noise_dir.is_dir():
        raise CorpusError(f"{ROOT_KEY}={root} has no {NOISE_DIR}/ folder, the source of the "
                          f"{SILENCE} class; {_root_hint('superb12')}")
    train, valid = [], []
    for name in _wav_names(noise_dir):
        file_train, file_valid = _noise_cuts(noise_dir / name, secs, fraction)
        train += file_train
        valid += file_valid
    return train, valid


def _noise_cuts(path: Path, secs: float, fraction: float) -> tuple[list[Row], list[Row]]:
    """Consecutive, non-overlapping ``secs``-long cuts of one noise file as (train, valid).

    The valid cuts are the last ones, so no train cut shares a sample with a valid cut; a
    tail shorter than ``secs`` is dropped. An unreadable file yields one train row without
    ``end``, so that audio screening excludes it and reports why.
    """
    stem = path.stem
    try:
        if not path.is_file():  # a FIFO would block soundfile.info; screening says what it is
            raise OSError(f"{path} is not a regular file")
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError):
        return [Row(f"{SILENCE}/{stem}/0000", str(path), 0.0, None, SILENCE, "", None)], []
    count = int(info.frames // max(1, round(secs * info.samplerate)))
    n_valid = min(math.ceil(count * fraction), count - 1) if count > 1 else 0
    rows = [Row(f"{SILENCE}/{stem}/{i:04d}", str(path), round(i * secs, 6),
                round((i + 1) * secs, 6), SILENCE, "", None) for i in range(count)]
    return rows[:count - n_valid], rows[count - n_valid:]


def _test_set_rows(test_root) -> list[Row]:
    """Every wav of the 12 folders of the separate v0.01 test set, labelled by folder."""
    hint = (f"set it to the folder holding speech_commands_test_set_v0.01 "
            f"(folders {', '.join(TEST_SET_FOLDERS)})")
    if test_root in (None, ""):
        raise CorpusError(f"{TEST_KEY} is not set but prepare_data.classes=superb12 "
                          f"needs it; {hint}")
    root = Path(os.path.abspath(os.path.expanduser(test_root)))
    if not root.is_dir():
        raise CorpusError(f"{TEST_KEY}={test_root} does not exist; {hint}")
    folders = {name: _wav_names(root / name) if (root / name).is_dir() else []
               for name in TEST_SET_FOLDERS}
    empty = [name for name, wavs in folders.items() if not wavs]
    if empty:
        raise CorpusError(f"{TEST_KEY}={test_root} lacks (or has no .wav in) the folders "
                          f"{', '.join(empty)}; {hint}")
    return [_clip_row(root / name, wav, name) for name, wavs in folders.items() for wav in wavs]


def _field(value) -> str:
    return "" if value is None else str(value)


def _write_manifest(rows: list[Row], path: Path) -> Path:
    """Write ``rows`` sorted by id with a :data:`COLUMNS` header; replaces ``path`` whole."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(COLUMNS)
        writer.writerows([_field(v) for v in row] for row in sorted(rows, key=lambda r: r.id))
    os.replace(partial, path)
    return path
