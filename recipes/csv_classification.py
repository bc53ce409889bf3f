"""Classify your own folder of clips listed in a CSV (the Kaggle layout), with a submission.

Three keys are enough: ``prepare_data.train_csv``, ``prepare_data.audio_dir`` and
``target_dir``. With ``prepare_data.test_csv`` (unlabeled clips) stage 3 also writes
``evaluate/<checkpoint>/test/submission.csv`` in the user's layout (:mod:`corpora.csv_clips`),
and the report links it.
"""
from __future__ import annotations

import json
from pathlib import Path

from corpora.csv_clips import prepare_csv_clips, submission_format, write_submission
from framework.classification import UtteranceClassification
from framework.errors import ConfigError
from framework.files import atomic_write_text
from framework.metrics.classification import load_predictions
from framework.report.markdown import link


class CSVClassification(UtteranceClassification):
    """Your own clips listed in a CSV (file and label columns, Kaggle layout); submission CSV."""

    config_file = "csv_classification.yaml"
    result_paths = UtteranceClassification.result_paths + ("submission_csv",)

    @classmethod
    def compose_config(cls, config_files=(), dotlist=(), overrides=None):
        """As the base class; then ``evaluate.splits`` loses ``test`` when there is no
        ``prepare_data.test_csv`` (the default lists it, so a run with a test CSV writes its
        submission and one without needs no other key)."""
        cfg = super().compose_config(config_files, dotlist, overrides)
        if not cfg.prepare_data.test_csv and "test" in cfg.evaluate.splits:
            cfg.evaluate.splits = [s for s in cfg.evaluate.splits if s != "test"]
            if not cfg.evaluate.splits:
                raise ConfigError("evaluate.splits=[test] but prepare_data.test_csv is null: "
                                  "set test_csv to the CSV of clips to predict, or evaluate "
                                  "valid")
        return cfg

    def prepare_data(self, prepare_data, target_dir, cache_dir, get_path_only=False):
        return prepare_csv_clips(target_dir, **prepare_data, get_path_only=get_path_only)

    def save_evaluation(self, task, loader, ckpt_name, split, state):
        """The base class's files, plus ``submission.csv`` beside the predictions of a split
        stage 0 made from ``test_csv``."""
        result = super().save_evaluation(task, loader, ckpt_name, split, state)
        if not result or split != "test" \
                or not (spec := submission_format(self.manifests()[split])).is_file():
            return result  # other ranks, or not test_csv's clips
        folder = self.target_dir / "evaluate" / ckpt_name / split
        out = folder / "submission.csv"
        missing = write_submission(spec, load_predictions(folder / "predictions.csv"), out)
        return {**result, "submission_csv": self.book.relative(out),
                "submission_unpredicted": missing}

    def report(self, report, results, report_dir):
        """The family's report of the labelled splits, then a section linking each
        submission (also ``submissions`` in report.json)."""
        paths = super().report(report, results, report_dir)
        made = [r for r in results if r.get("submission_csv")]
        if made:
            lines = ["## Submission (test_csv, unlabeled)", ""]
            for r in made:
                empty = r.get("submission_unpredicted", 0)
                lines.append(f"- {r['checkpoint']} (step {r['step']}): "
                             f"{link(r['submission_csv'], Path(report_dir))}, "
                             f"{r['metrics']['n']} clips predicted"
                             + (f", {empty} left empty (unreadable audio)" if empty else ""))
            md = Path(paths["report_md"])
            atomic_write_text(md, md.read_text() + "\n" + "\n".join(lines) + "\n")
            data = json.loads(Path(paths["report_json"]).read_text())
            data["submissions"] = [{k: str(r[k]) if k == "submission_csv" else r[k]
                                    for k in ("checkpoint", "step", "submission_csv",
                                              "submission_unpredicted")} for r in made]
            atomic_write_text(paths["report_json"], json.dumps(data, indent=2) + "\n")
        return paths
