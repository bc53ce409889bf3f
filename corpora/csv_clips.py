"""A folder of audio clips listed in CSV files (the Kaggle layout) → manifests.

Input (nothing is downloaded; column names are options)::

    train.csv        file_name,target      one labelled clip per row (other columns ignored)
    test.csv         file_name[,target]    optional clips to predict; a label column is ignored
    valid.csv        file_name,target      optional labelled clips to validate on instead of
                                           a split of train.csv
    audio_files/     the clips; a relative name in a CSV is relative to ``audio_dir``, an
                     absolute one is used as it is

Without ``valid_csv``, ``valid_fraction`` of train.csv's clips are held out for validation,
stratified by label (scikit-learn ``train_test_split``, seeded by ``seed``).

Output, into ``target_dir``:

==============================  ===========================================================
``train.csv``, ``valid.csv``    manifests ``id, wav_path, start, end, label``, in the
                                order of the user's CSV
``test.csv`` (with test_csv)    manifest ``id, wav_path, start, end``: no ``label`` column
``test_submission.json``        what :func:`write_submission` needs: the user's file and
                                label columns, their order, every test file in order
==============================  ===========================================================

``id`` is the file name exactly as the CSV writes it (unique within a CSV); ``wav_path`` is
absolute; ``start``/``end`` are empty (whole files). Labels are read as text ("01", "NA" and
"no" stay strings).
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from framework.errors import CorpusError
from framework.files import atomic_path, atomic_write_text, read_json

log = logging.getLogger(__name__)

COLUMNS = ("id", "wav_path", "start", "end", "label")
SUBMISSION_FORMAT = "test_submission.json"
_SHOWN = 3  # how many offending names an error message quotes


def prepare_csv_clips(target_dir, train_csv, audio_dir, file_column="file_name",
                      label_column="target", valid_fraction=0.2, seed=0, valid_csv=None,
                      test_csv=None, get_path_only=False) -> dict[str, Path]:
    """Write the manifests (module docstring) into ``target_dir``; return ``{"train": path,
    "valid": path}`` plus ``"test"`` when ``test_csv`` is given.

    Every check runs with ``get_path_only`` too, which reads the CSVs and lists the folders
    holding the clips but writes nothing: a missing CSV or column, a listed file that does not
    exist, or a class too small to split is a :class:`CorpusError` naming the key to fix
    before stage 0. Unreadable audio is left to the stage-0 screening (listed as excluded).
    """
    if not 0 < valid_fraction < 1:
        raise CorpusError(f"prepare_data.valid_fraction={valid_fraction!r} must be > 0 and < 1")
    audio_root = _folder("audio_dir", audio_dir)
    train = _read_clips("train_csv", train_csv, audio_root, file_column, label_column)
    if valid_csv:
        valid = _read_clips("valid_csv", valid_csv, audio_root, file_column, label_column)
    else:
        train, valid = stratified_split(train, valid_fraction, seed, train_csv)
    test = _read_clips("test_csv", test_csv, audio_root, file_column, None) if test_csv else None
    target = Path(target_dir)
    paths = {"train": target / "train.csv", "valid": target / "valid.csv"}
    if test is not None:
        paths["test"] = target / "test.csv"
    if get_path_only:
        return paths
    target.mkdir(parents=True, exist_ok=True)
    _write_manifest(train, paths["train"])
    _write_manifest(valid, paths["valid"])
    if test is not None:
        _write_manifest(test, paths["test"])
        order = _column_order(test_csv, train_csv, file_column, label_column)
        atomic_write_text(submission_format(paths["test"]), json.dumps(
            {"file_column": file_column, "label_column": label_column, "columns": order,
             "files": test["id"].tolist()}, indent=1) + "\n")
    return paths


def submission_format(test_manifest: Path) -> Path:
    """Where :func:`prepare_csv_clips` put the submission format of ``test_manifest``."""
    return Path(test_manifest).with_name(SUBMISSION_FORMAT)


def write_submission(format_json: Path, predictions: pd.DataFrame, out_csv: Path) -> int:
    """Write ``out_csv`` in the user's layout: one row per test file in test_csv's order, the
    file column and the label column (the ``predicted`` label of ``predictions``, matched on
    ``id``), in the user's column order, nothing else. A file without a prediction (its
    audio was excluded at stage 0 or became unreadable) gets an empty label, with a warning.
    Returns how many files have none."""
    spec = read_json(format_json, "stage 0's submission format")
    predicted = dict(zip(predictions["id"].astype(str), predictions["predicted"].astype(str)))
    labels = [predicted.get(name, "") for name in spec["files"]]
    table = pd.DataFrame({spec["file_column"]: spec["files"], spec["label_column"]: labels})
    with atomic_path(out_csv) as tmp:
        table[spec["columns"]].to_csv(tmp, index=False)
    missing = sum(1 for name in spec["files"] if name not in predicted)
    log.info("submission: %s (%d clips)", out_csv, len(table))
    if missing:
        log.warning("%s: %d clip(s) have no prediction and an empty %s: their audio is "
                    "unreadable (data/excluded.csv, or skipped_items in metrics.json)",
                    out_csv, missing, spec["label_column"])
    return missing


def stratified_split(clips: pd.DataFrame, fraction: float, seed: int, source
                     ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, valid) rows of ``clips`` (with a ``label`` column), ``fraction`` of them in
    valid with every label in the same proportion, each part in its original order.
    ``source`` names the CSV in errors."""
    counts = clips["label"].value_counts()
    small = counts[counts < 2]
    if len(small):
        shown = [f"'{name}' ({n} clip)" for name, n in small.items()]
        raise CorpusError(f"prepare_data.train_csv={source}: {len(small)} class(es) with fewer "
                          f"than 2 clips, too few for a stratified train/valid split: "
                          f"{_few(shown, len(shown))}; add clips, drop those rows, or give a "
                          "labelled prepare_data.valid_csv")
    n_valid = math.ceil(fraction * len(clips))  # how scikit-learn rounds test_size
    if min(n_valid, len(clips) - n_valid) < len(counts):
        raise CorpusError(f"prepare_data.valid_fraction={fraction} holds out {n_valid} of "
                          f"{len(clips)} clips of prepare_data.train_csv={source}, but a "
                          f"stratified split needs each part to hold all {len(counts)} "
                          "classes; change valid_fraction or give prepare_data.valid_csv")
    train, valid = train_test_split(list(range(len(clips))), test_size=fraction,
                                    stratify=clips["label"], random_state=seed)
    return clips.iloc[sorted(train)], clips.iloc[sorted(valid)]


# --------------------------------------------------------------------------- reading


def _folder(key: str, value) -> Path:
    """The absolute folder named by ``prepare_data.<key>``, after checking it exists."""
    if value in (None, ""):
        raise CorpusError(f"prepare_data.{key} is not set; set it to the folder holding the "
                          "clips the CSVs name")
    folder = Path(os.path.abspath(os.path.expanduser(str(value))))
    if not folder.is_dir():
        raise CorpusError(f"prepare_data.{key}={value} is not a folder; set it to the folder "
                          "holding the clips the CSVs name")
    return folder


def _read_table(key: str, path, needed: list[str]) -> pd.DataFrame:
    """``prepare_data.<key>``'s CSV as text cells, after checking it has the ``needed``
    columns and at least one row."""
    csv_path = Path(os.path.expanduser(str(path)))
    if not csv_path.is_file():
        raise CorpusError(f"prepare_data.{key}={path} does not exist (or is not a file); set "
                          f"it to a CSV with the columns {', '.join(needed)}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorpusError(f"prepare_data.{key}={path} cannot be read as CSV ({reason})") from err
    missing = [name for name in needed if name not in table.columns]
    if missing:
        options = {needed[0]: "file_column", **({needed[1]: "label_column"}
                                               if len(needed) > 1 else {})}
        named = ", ".join(f"'{m}' (prepare_data.{options[m]})" for m in missing)
        raise CorpusError(f"prepare_data.{key}={path} has no column {named}; its columns are: "
                          f"{', '.join(map(str, table.columns)) or 'none'}")
    if table.empty:
        raise CorpusError(f"prepare_data.{key}={path} has no rows")
    return table


def _read_clips(key: str, path, audio_root: Path, file_column: str,
                label_column: str | None) -> pd.DataFrame:
    """Manifest rows (:data:`COLUMNS`, no ``label`` when ``label_column`` is None) of one
    CSV, after checking names and labels are non-empty, names unique and every file there."""
    needed = [file_column] + ([label_column] if label_column else [])
    table = _read_table(key, path, needed)
    for column in needed:
        blank = [i + 2 for i, value in enumerate(table[column]) if not value.strip()]
        if blank:  # +2: the header is line 1
            raise CorpusError(f"prepare_data.{key}={path}: column '{column}' is empty on "
                              f"{len(blank)} line(s), e.g. line(s) "
                              f"{', '.join(map(str, blank[:_SHOWN]))}")
    names = table[file_column]
    repeated = names[names.duplicated()].unique().tolist()
    if repeated:
        raise CorpusError(f"prepare_data.{key}={path} lists {len(repeated)} file(s) more than "
                          f"once, e.g. {_few(repeated, len(repeated))}; give each clip one row")
    wav_paths = [os.path.abspath(os.path.join(audio_root, name)) for name in names]
    _check_present(key, path, names.tolist(), wav_paths, audio_root, file_column)
    rows = pd.DataFrame({"id": names.tolist(), "wav_path": wav_paths, "start": "", "end": ""})
    if label_column:
        rows["label"] = table[label_column].tolist()
    return rows


def _check_present(key: str, path, names: list[str], wav_paths: list[str], audio_root: Path,
                   file_column: str) -> None:
    """Every file must exist; one listing per folder, no ``stat`` per file. A dangling link
    or a FIFO counts as present: the stage-0 screening lists it with the reason."""
    listed: dict[str, set[str]] = {}
    missing = []
    for name, wav in zip(names, wav_paths):
        folder, base = os.path.split(wav)
        if folder not in listed:
            try:
                with os.scandir(folder) as entries:
                    listed[folder] = {entry.name for entry in entries}
            except OSError:
                listed[folder] = set()
        if base not in listed[folder]:
            missing.append(name)
    if missing:
        raise CorpusError(f"prepare_data.{key}={path}: {len(missing)} of {len(names)} files in "
                          f"column '{file_column}' do not exist under prepare_data.audio_dir="
                          f"{audio_root}, e.g. {_few(missing, len(missing))}")


def _column_order(test_csv, train_csv, file_column: str, label_column: str) -> list[str]:
    """The file and label columns in the order test_csv has them (if it has both), else in
    train_csv's order."""
    for path in (test_csv, train_csv):
        header = pd.read_csv(Path(os.path.expanduser(str(path))), dtype=str, nrows=0,
                             encoding="utf-8-sig").columns
        if file_column in header and label_column in header:
            return [name for name in header if name in (file_column, label_column)]
    return [file_column, label_column]


def _few(items: list, total: int) -> str:
    shown = ", ".join(map(str, items[:_SHOWN]))
    return shown + (f" (and {total - _SHOWN} more)" if total > _SHOWN else "")


def _write_manifest(rows: pd.DataFrame, path: Path) -> Path:
    """Write ``rows`` under a :data:`COLUMNS` header (``label`` only when present)."""
    columns = [c for c in COLUMNS if c in rows.columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows[columns].itertuples(index=False, name=None))
    return path
