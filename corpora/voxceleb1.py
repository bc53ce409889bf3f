"""VoxCeleb1 folders → speaker-verification manifests: ``train.csv``, ``valid.csv`` and one
trial manifest per official trial list.

Layout read (nothing is ever downloaded): ``<root>/wav/<speaker>/<video>/<nnnnn>.wav``,
e.g. ``wav/id10270/x6uYqmx31kE/00001.wav``. Either one root holding every speaker
(``dataset_root``) or the two extracted archives (``dev_root`` = ``vox1_dev_wav``,
``test_root`` = ``vox1_test_wav``). A root may be the folder holding ``wav/`` or the ``wav``
folder itself; "the folder of a root" below is the one holding ``wav/``.

Speakers id10270–id10309 (:data:`TEST_SPEAKERS`) are the verification test speakers and
never train, whatever folder they are in; every other speaker is a training speaker.

Optional side files, looked up in ``trials_dir``, then each root as given, then its folder:

* ``vox1_meta.csv`` (tab-separated: ``VoxCeleb1 ID, VGGFace1 ID, Gender, Nationality,
  Set``) adds ``gender`` and ``nationality`` to the train manifest. Where its ``Set`` column
  disagrees with the id rule above, a warning is logged and the id rule wins.
* ``iden_split.txt`` (``<1|2|3> id10001/1zcIwhmdeo4/00001.wav``) adds ``iden_split``
  (``train``/``dev``/``test``, the identification split; informative only).

Trial lists (:data:`TRIAL_LISTS`, official format ``<1|0> <path1> <path2>``, paths relative
to ``wav/``, 1 = same speaker) are looked up in ``trials_dir``, by default the folder of
``dataset_root``, else of ``test_root``. ``list_test_all2.txt`` and ``list_test_hard2.txt``
also name dev speakers: their paths resolve across both roots.

Validation: ``valid_speakers`` training speakers, drawn with ``seed``, are held out of
``train.csv`` and give ``valid_trials`` validation trials (half same-speaker pairs, from
different videos when the speaker has several; half pairs of two held-out speakers; no pair
twice). Checkpoints are therefore chosen on held-out training speakers, never on the test
trials (s3prl's VoxCeleb1 recipe selected them on the test list).

Manifests, rows sorted (train by ``id``, trials by ``id1, id2``):

``train.csv``  ``id, wav_path, spk`` [+ ``gender, nationality``] [+ ``iden_split``]
``valid.csv``, ``<list stem>.csv`` (e.g. ``veri_test2.csv``)
               ``id1, id2, wav_path1, wav_path2, label``

``id`` is the path relative to ``wav/`` without ``.wav`` (``id10270/x6uYqmx31kE/00001``);
``wav_path`` is absolute; ``label`` is 1 (same speaker) or 0. Audio is not read here: stage 0
screening adds the ``duration`` column. Read with ``pandas.read_csv(path,
dtype=MANIFEST_DTYPES)``.
"""
from __future__ import annotations

import logging
import numbers
import os
import re
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from framework.errors import CorpusError
from framework.registry import closest

TEST_SPEAKERS = tuple(f"id{n}" for n in range(10270, 10310))
TRIAL_LISTS = ("veri_test2.txt", "veri_test.txt", "list_test_all2.txt", "list_test_hard2.txt")
TRAIN_COLUMNS = ("id", "wav_path", "spk")
META_COLUMNS = ("gender", "nationality")  # train columns present when vox1_meta.csv is
IDEN_COLUMNS = ("iden_split",)  # present when iden_split.txt is
TRIAL_COLUMNS = ("id1", "id2", "wav_path1", "wav_path2", "label")
MANIFEST_DTYPES = {"id": str, "wav_path": str, "spk": str, "gender": str, "nationality": str,
                   "iden_split": str, "id1": str, "id2": str, "wav_path1": str,
                   "wav_path2": str, "label": int}
META_FILE, IDEN_SPLIT_FILE = "vox1_meta.csv", "iden_split.txt"
META_HEADER = "VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet"
TRIALS_URL = "https://mm.kaist.ac.kr/datasets/voxceleb/meta/{name}"

ROOT_KEY, DEV_KEY, TEST_KEY = ("prepare_data.dataset_root", "prepare_data.dev_root",
                               "prepare_data.test_root")
TRIALS_KEY = "prepare_data.trials_dir"
_IDEN_NAMES = {"1": "train", "2": "dev", "3": "test"}
_SPEAKER_DIR = re.compile(r"id\d+")
_TRIAL_LINE = "'<1|0> idXXXXX/<video>/<nnnnn>.wav idXXXXX/<video>/<nnnnn>.wav'"
_SHOWN = 3  # how many offending items an error message quotes
_HINTS = {
    ROOT_KEY: f"set it to the VoxCeleb1 folder holding wav/<speaker>/<video>/<nnnnn>.wav for "
              f"the dev and test speakers, or set {DEV_KEY} and {TEST_KEY} instead",
    DEV_KEY: "set it to the extracted vox1_dev_wav folder (holding wav/id10001/...)",
    TEST_KEY: "set it to the extracted vox1_test_wav folder (holding wav/id10270/...)",
}
log = logging.getLogger("corpora.voxceleb1")


@dataclass(frozen=True)
class _Root:
    """One corpus root: the config ``key`` naming it, its ``wav`` folder, its utterances."""
    key: str
    given: Path  # as configured, made absolute
    wav: Path
    utterances: dict[str, str]  # id → absolute wav path


def prepare_voxceleb1_for_sv(target_dir, cache_dir=None, get_path_only=False, dataset_root=None,
                             dev_root=None, test_root=None, trials_dir=None,
                             trial_lists=("veri_test2.txt",), valid_speakers=40,
                             valid_trials=2000, seed=0) -> dict[str, Path]:
    """Write the manifests into ``target_dir``; return ``{"train", "valid", <list stem>…}``.

    Set ``dataset_root``, or both ``dev_root`` and ``test_root``. ``trial_lists`` names
    files of :data:`TRIAL_LISTS`; each gives the key of its stem. ``valid_speakers`` (>= 2,
    leaving >= 2 training speakers) and ``valid_trials`` (>= 2; an odd count has one more
    different-speaker trial) shape the validation split drawn with ``seed``. ``cache_dir``
    is accepted for s3prl compatibility and unused. ``get_path_only`` returns the paths
    without reading or writing anything. Raises :class:`CorpusError` naming the config key
    to fix.

    >>> import shutil, tempfile
    >>> from corpora.synthesize import synthesize_voxceleb1
    >>> tmp = Path(tempfile.mkdtemp())
    >>> roots = synthesize_voxceleb1(tmp / "corpus", speakers=4, test_speakers=2, videos=2,
    ...                              utterances=2, min_secs=0.5, max_secs=0.5)
    >>> paths = prepare_voxceleb1_for_sv(tmp / "sv", **roots, valid_speakers=2,
    ...                                  valid_trials=4)
    >>> sorted(paths)
    ['train', 'valid', 'veri_test2']
    >>> paths["veri_test2"].read_text().splitlines()[0]
    'id1,id2,wav_path1,wav_path2,label'
    >>> shutil.rmtree(tmp)
    """
    lists = _check_options(trial_lists, valid_speakers, valid_trials)
    target = Path(target_dir)
    stems = [Path(name).stem for name in lists]
    paths = {name: target / f"{name}.csv" for name in ["train", "valid"] + stems}
    if get_path_only:
        return paths
    roots = _roots(dataset_root, dev_root, test_root)
    corpus = _merge(roots)
    trials_home = _trials_dir(trials_dir, roots)
    side_dirs = _side_dirs(trials_home, roots)
    tables = {Path(name).stem: _trial_table(trials_home, name, corpus, roots)
              for name in lists}  # fail on the lists before any split work
    train_ids = sorted(i for i in corpus if _speaker(i) not in TEST_SPEAKERS)
    held_out, rng = _hold_out(train_ids, valid_speakers, seed)
    tables["valid"] = _valid_table(rng, [i for i in train_ids if _speaker(i) in held_out],
                                   valid_trials, corpus)
    train = [i for i in train_ids if _speaker(i) not in held_out]
    tables["train"] = _train_table(train, corpus, side_dirs)
    target.mkdir(parents=True, exist_ok=True)
    return {name: _write_csv(tables[name], path) for name, path in paths.items()}


# ---------------------------------------------------------------- options and roots

def _check_options(trial_lists, valid_speakers, valid_trials) -> list[str]:
    """The trial list names without repeats, after checking every option (no disk access)."""
    names = [trial_lists] if isinstance(trial_lists, str) else list(trial_lists or ())
    if not names:
        raise CorpusError(f"prepare_data.trial_lists is empty; name at least one of "
                          f"{', '.join(TRIAL_LISTS)}")
    for name in names:
        if name not in TRIAL_LISTS:
            raise CorpusError(f"prepare_data.trial_lists: {name!r} is not a VoxCeleb1 trial "
                              f"list; choose from {', '.join(TRIAL_LISTS)}"
                              f"{closest(str(name), TRIAL_LISTS)}")
    for key, value in (("valid_speakers", valid_speakers), ("valid_trials", valid_trials)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 2:
            raise CorpusError(f"prepare_data.{key}={value!r} must be an integer >= 2")
    return list(dict.fromkeys(names))


def _unset(value) -> bool:
    return value is None or str(value) == ""


def _roots(dataset_root, dev_root, test_root) -> list[_Root]:
    """The scanned roots: ``[dataset_root]`` or ``[dev_root, test_root]``."""
    if not _unset(dataset_root):
        if not (_unset(dev_root) and _unset(test_root)):
            raise CorpusError(f"set either {ROOT_KEY} (one folder with every speaker) or "
                              f"{DEV_KEY} and {TEST_KEY} (the two archives), not both")
        return [_scan_root(ROOT_KEY, dataset_root)]
    if _unset(dev_root) and _unset(test_root):
        raise CorpusError(f"no VoxCeleb1 folder is set: set {ROOT_KEY} to the folder holding "
                          f"wav/ with every speaker, or {DEV_KEY} and {TEST_KEY} to the "
                          "extracted vox1_dev_wav and vox1_test_wav folders")
    for key, value in ((DEV_KEY, dev_root), (TEST_KEY, test_root)):
        if _unset(value):
            raise CorpusError(f"{key} is not set but the other archive is; {_HINTS[key]}")
    return [_scan_root(DEV_KEY, dev_root), _scan_root(TEST_KEY, test_root)]


def _scan_root(key: str, value) -> _Root:
    """Find the ``wav`` folder of a configured root and list its utterances."""
    given = Path(os.path.abspath(os.path.expanduser(str(value))))
    if not given.is_dir():
        raise CorpusError(f"{key}={value} does not exist; {_HINTS[key]}")
    wav = given / "wav" if (given / "wav").is_dir() else given
    utterances = _scan_wav(wav)
    if not utterances:
        # A common slip: the folder *holding* the extracted archives.
        nested = [name for name in _subdirs(given) if (given / name / "wav").is_dir()]
        inside = f"; it holds {', '.join(nested)}, each with a wav/ folder" if nested else ""
        raise CorpusError(f"{key}={value} has no <speaker>/<video>/<nnnnn>.wav files "
                          f"(looked in {wav}){inside}; {_HINTS[key]}")
    return _Root(key, given, wav, utterances)


def _subdirs(folder: Path, pattern: re.Pattern | None = None) -> list[str]:
    """Sorted names of the folders directly inside ``folder`` (one directory read)."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith(".")
                      and (pattern is None or pattern.fullmatch(e.name)))


def _scan_wav(wav: Path) -> dict[str, str]:
    """``{id: absolute path}`` of every ``<speaker>/<video>/*.wav`` under ``wav``.

    Directory reads only (about 23k for the real corpus), no per-file ``stat``.
    """
    found = {}
    for spk in _subdirs(wav, _SPEAKER_DIR):
        for video in _subdirs(wav / spk):
            folder = wav / spk / video
            with os.scandir(folder) as entries:
                names = sorted(e.name for e in entries
                               if e.name.endswith(".wav") and not e.is_dir())
            for name in names:
                found[f"{spk}/{video}/{name[:-len('.wav')]}"] = str(folder / name)
    return found


def _merge(roots: list[_Root]) -> dict[str, str]:
    """Every root's utterances in one table; the same id in two places is an error."""
    corpus: dict[str, str] = {}
    for root in roots:
        for utt, path in root.utterances.items():
            if corpus.setdefault(utt, path) != path:
                raise CorpusError(f"{utt} is both {corpus[utt]} and {path}: {DEV_KEY} and "
                                  f"{TEST_KEY} must be two different archives")
    return dict(sorted(corpus.items()))


def _speaker(utt: str) -> str:
    return utt.split("/", 1)[0]


def _video(utt: str) -> str:
    return utt.split("/", 2)[1]


def _trials_dir(trials_dir, roots: list[_Root]) -> Path:
    """Where trial lists live: ``trials_dir``, else the folder of the (test) root."""
    if _unset(trials_dir):
        return roots[-1].wav.parent
    folder = Path(os.path.abspath(os.path.expanduser(str(trials_dir))))
    if not folder.is_dir():
        raise CorpusError(f"{TRIALS_KEY}={trials_dir} does not exist; set it to the folder "
                          f"holding the trial lists ({', '.join(TRIAL_LISTS)})")
    return folder


def _side_dirs(trials_home: Path, roots: list[_Root]) -> list[Path]:
    """Folders searched for the meta files, in order, without repeats."""
    dirs = [trials_home] + [d for root in roots for d in (root.given, root.wav.parent)]
    return list(dict.fromkeys(dirs))


# ---------------------------------------------------------------- trial lists

def _trial_table(folder: Path, name: str, corpus: dict[str, str],
                 roots: list[_Root]) -> pd.DataFrame:
    """The trial manifest of the list ``folder/name``; every path must be in ``corpus``."""
    path = folder / name
    if not path.is_file():
        raise CorpusError(
            f"trial list {name} not found in {folder}; download it from "
            f"{TRIALS_URL.format(name=name)} and put it in {folder}, or set {TRIALS_KEY} to "
            "the folder holding it")
    trials = _read_trials(path)
    missing = sorted({utt for _, a, b in trials for utt in (a, b)} - corpus.keys())
    if missing:
        looked = ", ".join(f"{root.key}={root.wav}" for root in roots)
        no_test = not any(_speaker(utt) in TEST_SPEAKERS for utt in corpus)
        advice = (f"no test speaker (id10270-id10309) is under any root: point "
                  f"{roots[-1].key} at the extracted vox1_test_wav" if no_test else
                  f"the list and the audio must be the same VoxCeleb1 release, and lists "
                  f"naming dev speakers need them too ({ROOT_KEY} or {DEV_KEY})")
        raise CorpusError(
            f"{path} names {len(missing)} file(s) not in the corpus, e.g. "
            f"{', '.join(m + '.wav' for m in missing[:_SHOWN])} (looked under {looked}); "
            f"{advice}")
    return _trial_frame([(a, b, label) for label, a, b in trials], corpus)


def _read_trials(path: Path) -> list[tuple[int, str, str]]:
    """``(label, id1, id2)`` of each non-blank line of an official trial list."""
    trials = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if (len(fields) != 3 or fields[0] not in ("0", "1")
                or not all(f.endswith(".wav") and f.count("/") == 2 for f in fields[1:])):
            raise CorpusError(f"{path}:{number}: expected {_TRIAL_LINE}, got {line.strip()!r}")
        trials.append((int(fields[0]), fields[1][:-len(".wav")], fields[2][:-len(".wav")]))
    if not trials:
        raise CorpusError(f"{path} holds no trials; expected lines like {_TRIAL_LINE}")
    return trials


def _trial_frame(trials: list[tuple[str, str, int]], corpus: dict[str, str]) -> pd.DataFrame:
    """:data:`TRIAL_COLUMNS` rows of ``(id1, id2, label)`` sorted by ``id1, id2``."""
    frame = pd.DataFrame(trials, columns=["id1", "id2", "label"])
    frame["wav_path1"] = frame.id1.map(corpus)
    frame["wav_path2"] = frame.id2.map(corpus)
    frame["label"] = frame.label.astype(int)
    frame = frame.sort_values(["id1", "id2"], kind="stable", ignore_index=True)
    return frame[list(TRIAL_COLUMNS)]


# ---------------------------------------------------------------- validation split

def _hold_out(train_ids: list[str], count: int, seed: int
              ) -> tuple[set[str], np.random.Generator]:
    """``count`` training speakers drawn with ``seed``, and the generator for the trials."""
    speakers = sorted({_speaker(i) for i in train_ids})
    if len(speakers) < 4:
        raise CorpusError(
            f"the corpus has {len(speakers)} training speaker(s) (speakers outside "
            "id10270-id10309); prepare_data.valid_speakers needs at least 4: 2 to validate "
            f"and 2 to train. Check {ROOT_KEY} / {DEV_KEY}")
    if len(speakers) < count + 2:
        raise CorpusError(
            f"prepare_data.valid_speakers={count} is too many for {len(speakers)} training "
            f"speakers: at least 2 must remain for training; set it to 2..{len(speakers) - 2}")
    rng = np.random.default_rng(seed)
    return {speakers[k] for k in rng.permutation(len(speakers))[:count]}, rng


def _valid_table(rng: np.random.Generator, held_ids: list[str], count: int,
                 corpus: dict[str, str]) -> pd.DataFrame:
    """``count`` validation trials among the held-out utterances ``held_ids``."""
    by_speaker: dict[str, list[str]] = {}
    for utt in held_ids:
        by_speaker.setdefault(_speaker(utt), []).append(utt)
    n_target = count // 2
    n_other = count - n_target
    target = _target_pairs(rng, by_speaker, n_target, count)
    other = _pick_pairs(rng, held_ids, n_other, _cross_pairs_count(by_speaker),
                        lambda a, b: _speaker(a) != _speaker(b),
                        _capacity_hint("different-speaker", n_other, count))
    trials = [(a, b, 1) for a, b in target] + [(a, b, 0) for a, b in other]
    return _trial_frame(trials, corpus)


def _capacity_hint(kind: str, wanted: int, count: int):
    def hint(capacity: int) -> str:
        return (f"prepare_data.valid_trials={count} needs {wanted} {kind} pairs but the "
                f"validation speakers give only {capacity}; lower prepare_data.valid_trials "
                "or raise prepare_data.valid_speakers")
    return hint


def _pairs_count(n: int) -> int:
    return n * (n - 1) // 2


def _cross_pairs_count(groups: dict[str, list[str]]) -> int:
    """Pairs of items from two different groups."""
    total = sum(len(items) for items in groups.values())
    return _pairs_count(total) - sum(_pairs_count(len(items)) for items in groups.values())


def _target_pairs(rng: np.random.Generator, by_speaker: dict[str, list[str]], wanted: int,
                  count: int) -> list[tuple[str, str]]:
    """``wanted`` same-speaker pairs spread evenly over the speakers; a speaker with
    several videos pairs utterances of different videos only."""
    def eligible(utts):
        videos = {_video(u) for u in utts}
        if len(videos) < 2:
            return _pairs_count(len(utts)), lambda a, b: True
        per_video = {v: sum(_video(u) == v for u in utts) for v in videos}
        return (_pairs_count(len(utts)) - sum(map(_pairs_count, per_video.values())),
                lambda a, b: _video(a) != _video(b))

    rules = {spk: eligible(utts) for spk, utts in by_speaker.items()}
    capacity = sum(cap for cap, _ in rules.values())
    if capacity < wanted:
        raise CorpusError(_capacity_hint("same-speaker", wanted, count)(capacity))
    quotas = _spread(wanted, [rules[spk][0] for spk in by_speaker])
    pairs = []
    for (spk, utts), quota in zip(by_speaker.items(), quotas):
        pairs += _pick_pairs(rng, utts, quota, rules[spk][0], rules[spk][1], None)
    return pairs


def _spread(total: int, capacities: list[int]) -> list[int]:
    """Split ``total`` as evenly as possible without exceeding any capacity (sum fits)."""
    quotas = [0] * len(capacities)
    remaining = total
    open_ = [i for i, cap in enumerate(capacities) if cap > 0]
    while remaining and open_:
        share, extra = divmod(remaining, len(open_))
        for rank, i in enumerate(open_):
            give = min(capacities[i] - quotas[i], share + (rank < extra))
            quotas[i] += give
            remaining -= give
        open_ = [i for i in open_ if quotas[i] < capacities[i]]
    return quotas


def _pick_pairs(rng: np.random.Generator, items: list[str], wanted: int, capacity: int,
                allowed, hint) -> list[tuple[str, str]]:
    """``wanted`` distinct unordered pairs ``(a, b)``, ``a < b``, of ``items`` with
    ``allowed(a, b)``, of which there are ``capacity``; sorted.

    Near capacity every allowed pair is listed and a sample taken; otherwise random pairs
    are drawn until enough distinct ones are found (cheap: at least half are new).
    """
    if wanted > capacity:
        raise CorpusError(hint(capacity))
    if wanted == 0:
        return []
    if 2 * wanted >= capacity:
        every = [(a, b) for a, b in combinations(sorted(items), 2) if allowed(a, b)]
        return sorted(every[k] for k in rng.choice(len(every), wanted, replace=False))
    chosen: set[tuple[str, str]] = set()
    while len(chosen) < wanted:
        a, b = (items[k] for k in rng.integers(0, len(items), 2))
        if a != b and allowed(a, b):
            chosen.add((min(a, b), max(a, b)))
    return sorted(chosen)


# ---------------------------------------------------------------- train manifest

def _train_table(ids: list[str], corpus: dict[str, str], side_dirs: list[Path]) -> pd.DataFrame:
    """:data:`TRAIN_COLUMNS` rows, plus the meta and identification-split columns found."""
    frame = pd.DataFrame({"id": ids, "wav_path": [corpus[i] for i in ids],
                          "spk": [_speaker(i) for i in ids]})
    counts = frame.spk.value_counts()
    single = int((counts == 1).sum())
    if single:
        log.info("%d training speaker(s) have a single utterance; kept (they add speakers "
                 "but no same-speaker pairs)", single)
    meta = _find(side_dirs, META_FILE)
    if meta is not None:
        table = _read_meta(meta)
        for column in META_COLUMNS:
            frame[column] = frame.spk.map(table[column]).fillna("")
    iden = _find(side_dirs, IDEN_SPLIT_FILE)
    if iden is not None:
        frame["iden_split"] = frame.id.map(_read_iden_split(iden)).fillna("")
    return frame


def _find(dirs: list[Path], name: str) -> Path | None:
    return next((d / name for d in dirs if (d / name).is_file()), None)


def _read_meta(path: Path) -> pd.DataFrame:
    """``vox1_meta.csv`` indexed by speaker: ``gender, nationality, set`` (stripped text).

    Warns when its ``Set`` disagrees with :data:`TEST_SPEAKERS`; the id rule is kept.
    """
    try:
        raw = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as error:
        raise CorpusError(f"{path} is not a tab-separated {META_FILE}: {error}") from None
    raw.columns = [c.strip() for c in raw.columns]
    wanted = {"VoxCeleb1 ID": "spk", "Gender": "gender", "Nationality": "nationality",
              "Set": "set"}
    if not set(wanted) <= set(raw.columns):
        raise CorpusError(f"{path}: expected the header {META_HEADER!r} (tab-separated), got "
                          f"{list(raw.columns)}; replace it with the official {META_FILE}")
    table = raw[list(wanted)].rename(columns=wanted).apply(lambda col: col.str.strip())
    table = table.drop_duplicates("spk").set_index("spk")
    says_test = table["set"].str.lower() == "test"
    is_test = table.index.isin(TEST_SPEAKERS)
    disagree = sorted(table.index[says_test != is_test])
    if disagree:
        log.warning("%s: Set disagrees with the id rule (test = id10270-id10309) for %d "
                    "speaker(s), e.g. %s; using the id rule", path, len(disagree),
                    ", ".join(disagree[:_SHOWN]))
    return table


def _read_iden_split(path: Path) -> dict[str, str]:
    """``{id: train|dev|test}`` from ``iden_split.txt`` lines ``<1|2|3> <path>.wav``."""
    split = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[0] not in _IDEN_NAMES or not fields[1].endswith(".wav"):
            raise CorpusError(f"{path}:{number}: expected '<1|2|3> idXXXXX/<video>/"
                              f"<nnnnn>.wav', got {line.strip()!r}")
        split[fields[1][:-len(".wav")]] = _IDEN_NAMES[fields[0]]
    return split


def _write_csv(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` without its index; replaces ``path`` whole."""
    partial = path.with_name(path.name + ".partial")
    frame.to_csv(partial, index=False)
    os.replace(partial, path)
    return path
