"""Evaluate a trained classification model on another labelled manifest or CSV, without
retraining: per-item predictions and metrics, then the family's whole report.

The new data is a manifest (``id, wav_path, label``, optional ``start, end``) or a CSV of
``file, label`` (a Kaggle-style table; column names configurable). Its audio is screened as
stage 0 screens a corpus (unusable files are left out and listed with the reason), then
evaluated through stage 3's code (:meth:`Problem.build_loader` with the checkpoint's config,
so windows too when it sets ``build_dataset.test.window_secs``, and
:meth:`Problem.save_evaluation`) and reported by the problem's own :meth:`report`:

* ``target_dir/evaluate/<name>/``: ``data.csv`` (the screened manifest), ``excluded.csv``
  (``id, wav_path, reason``; only when a file was left out), ``new_data.json`` (source,
  counts, the results) and ``<checkpoint>/predictions.csv``, ``<checkpoint>/metrics.json``;
* ``target_dir/report/<name>/``: the report (``report.md``, ``report.json``, figures).

Stage records are not touched, so the run's stages stay as they were. Everything that can be
checked (name, columns, labels against the checkpoint's, the checkpoint) is checked before
anything is written.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from framework import config as cfglib
from framework import workspace
from framework.audio.io import screen_manifest
from framework.errors import CorpusError, UserError
from framework.files import atomic_write_text
from framework.inference import TrainedModels
from framework.inference import named_checkpoint
from framework.predict import require_classification
from framework.problem import headline

log = logging.getLogger("framework.evaluate_new")

MARKER = "new_data.json"  # marks evaluate/<name>/ as this module's (not a checkpoint's)
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
STEP = re.compile(r"^step-\d+$")


@dataclass(frozen=True)
class NewData:
    """Where the labelled items are. ``path``: a manifest with ``id, wav_path`` columns, or
    a CSV with a file column (``file_column``; default ``file``; used when given, when
    ``audio_dir`` is given, or when the table has no ``id, wav_path``). Relative paths are
    relative to ``audio_dir`` (default: ``path``'s folder). ``label_column``: the labels."""

    path: str
    audio_dir: str | None = None
    file_column: str | None = None
    label_column: str = "label"

    def manifest(self) -> pd.DataFrame:
        """Columns ``id, wav_path`` (absolute), ``label`` and any ``start, end``."""
        path = Path(self.path)
        if not path.is_file():
            raise UserError(f"--manifest {path}: no such file")
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        columns = set(table.columns)
        as_csv = self.file_column or self.audio_dir or not {"id", "wav_path"} <= columns
        file_column = self.file_column or ("file" if as_csv else "wav_path")
        for column, option in ((file_column, "--file-column"),
                               (self.label_column, "--label-column")):
            if column not in columns:
                raise CorpusError(f"{path}: no column '{column}' (it has {', '.join(table)}); "
                                  f"name the right one with {option}, or give a manifest "
                                  "with id,wav_path,label")
        if table.empty:
            raise CorpusError(f"{path}: no rows to evaluate")
        root = Path(self.audio_dir) if self.audio_dir else path.parent
        out = pd.DataFrame({"id": table[file_column] if as_csv else table["id"],
                            "wav_path": [str((root / f).resolve()) for f in table[file_column]],
                            "label": table[self.label_column]})
        for column in ("start", "end"):
            if column in columns:
                out[column] = table[column]
        return out


def evaluate_new_data(problem, data: NewData, name: str | None = None,
                      checkpoint: str = "valid_best") -> dict:
    """Evaluate ``checkpoint`` of an attached classification ``problem`` on ``data`` and
    write the files of the module's doc. Returns ``{"result": the evaluation record (paths
    absolute), "report_md", "excluded"}``."""
    require_classification(problem, "evaluate")
    name = check_name(problem.target_dir, name or Path(data.path).stem)
    _, path = named_checkpoint(problem, checkpoint)
    table = data.manifest()
    task, state, trained = TrainedModels(problem).load(path)
    check_labels(problem, data.path, table, task.classes)
    lock = workspace.TargetLock(problem.target_dir).acquire()
    try:
        folder, excluded = screened(problem.target_dir, name, table, data.path)
        problem.cfg.eval_batch = -1  # every item: not the last command's validation limit
        loader = problem.build_loader(trained, "test", folder / "data.csv", task.model)
        label = checkpoint if checkpoint == "valid_best" or STEP.match(checkpoint) \
            else path.stem  # a checkpoint file: its name, as stage 3's test_ckpt_dir
        # stage 3's writer, with the folder evaluate/<name>/<checkpoint>/: its arguments
        # are (checkpoint, split) swapped, so its own log line would swap them too
        with quiet("framework.problem"):
            record = problem.save_evaluation(task, loader, name, label, state)
        record.update(checkpoint=label, split=name, excluded=excluded)
        log.info("%s (step %d) on %s: %s", label, record["step"], name,
                 headline(record["metrics"]))
        result = {k: str(problem.book.resolve(v)) if k in problem.result_paths and v else v
                  for k, v in record.items()}
        report_dir = problem.target_dir / "report" / name
        paths = problem.report(cfglib.to_plain(problem.cfg.report), [result], report_dir)
        atomic_write_text(folder / MARKER, json.dumps(
            {"source": str(Path(data.path).resolve()), "checkpoint": str(path),
             "items": len(table), "excluded": excluded, "result": record}, indent=1,
            default=str))
    finally:
        lock.release()
    log.info("%s on %s: %d items evaluated, %d excluded; report: %s", label, name,
             len(table) - excluded, excluded, paths["report_md"])
    return {"result": result, "report_md": Path(paths["report_md"]), "excluded": excluded}


def check_name(target_dir: Path, name: str) -> str:
    """``name`` if it can name ``evaluate/<name>/`` and ``report/<name>/`` without touching
    stage 3's or stage 4's files; a UserError otherwise."""
    if not _NAME.match(name) or name in ("valid_best", "embeddings") or STEP.match(name):
        raise UserError(f"--name {name!r}: use letters, digits, '_' and '-' (not valid_best, "
                        "step-N or embeddings, which stage 3 uses)")
    folder = target_dir / "evaluate" / name
    if folder.exists() and not (folder / MARKER).is_file():
        raise UserError(f"--name {name}: {folder} holds stage 3's results; choose another "
                        "name")
    return name


def check_labels(problem, source, table: pd.DataFrame, classes: list[str]) -> None:
    """Every label of ``table`` must be one the checkpoint was trained on (and the run's
    encoder must list the checkpoint's labels, which the dataset encodes with)."""
    unseen = sorted(set(table["label"]) - set(classes))
    if unseen:
        raise UserError(f"{source}: label(s) {', '.join(map(repr, unseen))} never seen in "
                        f"training; the model knows {', '.join(classes)}; drop or relabel "
                        "those rows")
    encoder = problem.load_encoder(problem.artifact("build_encoder", "encoder"))
    if list(encoder.classes) != list(classes):
        raise UserError(f"the checkpoint's labels differ from {problem.target_dir}'s "
                        "encoder.json; evaluate a checkpoint of this run")


def screened(target_dir: Path, name: str, table: pd.DataFrame, source) -> tuple[Path, int]:
    """Screen ``table``'s audio (as stage 0 does) in a scratch folder; with any usable item,
    move the screened ``data.csv`` (and ``excluded.csv``) into ``evaluate/<name>/`` (its
    earlier content replaced) and return (that folder, excluded count)."""
    with tempfile.TemporaryDirectory() as scratch:
        data_csv, excluded_csv = Path(scratch, "data.csv"), Path(scratch, "excluded.csv")
        table.to_csv(data_csv, index=False)
        result = screen_manifest(data_csv, excluded_csv, num_workers=2,
                                 desc=f"check {name} audio")
        if not result.kept:
            first = pd.read_csv(excluded_csv, dtype=str).iloc[0]
            raise UserError(f"{source}: none of its {result.excluded} files is usable audio "
                            f"(first: {first['wav_path']}: {first['reason']})")
        folder = target_dir / "evaluate" / name
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        shutil.move(data_csv, folder / "data.csv")
        if result.excluded:
            shutil.move(excluded_csv, folder / "excluded.csv")
            log.warning("%d of %d files left out (unusable audio), listed with reasons in %s",
                        result.excluded, len(table), folder / "excluded.csv")
    return folder, result.excluded


@contextlib.contextmanager
def quiet(logger_name: str):
    """The logger's INFO lines dropped for the block (warnings still show)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)
