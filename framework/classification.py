"""The utterance-classification family (keyword spotting, genre classification, ...).

Manifests carry a ``label`` column (a split of clips to predict has none: predictions, no
figures); the encoder is a JSON list of the training labels; the
task is cross-entropy; the report is accuracy, F1, a confusion matrix and friends.
"""
from __future__ import annotations

from framework.audio.dataset import AudioDataset, Skipped, collate_padded, read_manifest
from framework.audio.segments import WindowDataset, collate_windows
from framework import folds
from framework.errors import CorpusError, UserError
from framework.problem import Problem
from framework.report.classification import class_counts, write_classification_report
from framework.report.summary import training_summary
from framework.tasks.classification import UtteranceClassificationTask


class UtteranceClassification(Problem):
    """One label per utterance (or segment) from a ``label`` manifest column."""

    config_file = "classification.yaml"  # the family's defaults, under each recipe's YAML

    def run(self, config_files=(), dotlist=(), **overrides) -> dict:
        """:meth:`Problem.run`; with cross-validation folds (:meth:`cross_validation_folds`)
        one sub-run per fold, then their aggregate report (:mod:`framework.folds`)."""
        return folds.run(self, super().run, config_files, dotlist, overrides)

    def cross_validation_folds(self, cfg) -> list[dict]:
        """The ``run()`` overrides of each fold's sub-run under config ``cfg``; empty (the
        default): one ordinary run."""
        return []

    def model_output_size(self, encoder, cfg) -> int:
        return len(encoder)

    def build_dataset(self, build_dataset, target_dir, cache_dir, mode, data_csv,
                      encoder_path):
        """Training: random crops of at most ``train.max_secs``. Valid/test: whole clips (or
        their centre ``test.max_secs``), or, with ``test.window_secs``, every clip as
        windows of that length (:class:`LabelledWindows`; the task pools them per clip)."""
        conf = build_dataset["train" if mode == "train" else "test"]
        manifest = read_manifest(data_csv)
        if mode == "train" and conf.get("min_secs"):
            manifest = manifest[manifest["duration"] >= conf["min_secs"]]
        encoder = self.load_encoder(encoder_path)
        labels = encoder.index if "label" in manifest else None  # None: clips to predict
        cache = cache_dir if build_dataset["cache_waveforms"] else None
        window = conf.get("window_secs") if mode != "train" else None
        clips = AudioDataset(manifest, labels, build_dataset["sample_rate"],
                             None if window else conf.get("max_secs"),
                             "random" if mode == "train" else "center",
                             seed=self.cfg.train.seed, cache_dir=cache)
        return LabelledWindows(clips, window) if window else clips

    def build_collate_fn(self, build_collate_fn, mode):
        return collate_padded if mode == "train" else collate_clips

    def build_encoder(self, build_encoder, target_dir, cache_dir, train_csv, valid_csv,
                      test_csvs):
        """The training labels (JSON), once every labelled valid/test manifest is checked to
        hold only labels training saw (:func:`check_known_labels`)."""
        check_known_labels(train_csv, {"valid": valid_csv, **test_csvs})
        return super().build_encoder(build_encoder, target_dir, cache_dir, train_csv,
                                     valid_csv, test_csvs)

    def build_task(self, build_task, model, encoder):
        return UtteranceClassificationTask(model, encoder.classes, **build_task)

    def report(self, report, results, report_dir):
        """The classification report of the labelled results, with the training setup and
        curves and the items per class in every labelled manifest. Unlabeled splits (clips to
        predict) have predictions but no figures, and are left out."""
        classes = self.load_encoder(self.artifact("build_encoder", "encoder")).classes
        labelled = [r for r in results if "accuracy" in r["metrics"]]
        if not labelled:
            raise UserError(f"nothing to report: every evaluated split "
                            f"({', '.join(r['split'] for r in results)}) is unlabeled; add a "
                            "labelled one (valid) to evaluate.splits")
        best = next((r for r in labelled if r["checkpoint"] == "valid_best"
                     and r["split"] == "test"), labelled[0])
        training = training_summary(self, lambda cfg: {"name": "cross_entropy", "conf": {}})
        manifests = {split: csv for split, csv in self.manifests().items()
                     if "label" in read_manifest(csv).columns}
        return write_classification_report(report_dir, labelled, classes,
                                           title=type(self).__name__, best=best,
                                           training=training,
                                           counts=class_counts(manifests, classes))


def check_known_labels(train_csv, others: dict) -> None:
    """Raise :class:`CorpusError` naming the first manifest of ``others`` (split → CSV) with
    a ``label`` training (``train_csv``) never saw: stage 2 could not score it. Manifests
    without a ``label`` column (clips to predict) are skipped."""
    known = set(read_manifest(train_csv)["label"])
    for split, csv in others.items():
        table = read_manifest(csv)
        if "label" not in table.columns:
            continue
        unseen = table.loc[~table["label"].isin(known), "label"].value_counts()
        if len(unseen):
            shown = ", ".join(f"'{name}' ({n} item{'s' * (n > 1)})"
                              for name, n in unseen.astype(int).items())
            listed = sorted(known)
            listed = ", ".join(listed[:12]) + (", ..." if len(listed) > 12 else "")
            raise CorpusError(f"{csv}: the {split} manifest has label(s) training never saw: "
                              f"{shown}; the {len(known)} training labels are {listed}; give "
                              f"training clips of them or remove those {split} clips, then "
                              "rerun stage 0")


class LabelledWindows(WindowDataset):
    """:class:`~framework.audio.segments.WindowDataset` over labelled clips: each window
    item also carries its clip's ``label`` (int), and ``labels`` lists them per window."""

    def __getitem__(self, item: int) -> dict | Skipped:
        window = super().__getitem__(item)
        if isinstance(window, dict) and self.utterances.labels is not None:
            window["label"] = self.utterances.labels[window["utt"]]
        return window

    @property
    def labels(self) -> list[int]:
        return [self.utterances.labels[index] for index, _, _ in self.windows]


def collate_clips(items: list) -> dict:
    """Evaluation batches: :func:`collate_windows` for window items (they carry ``utt``),
    :func:`collate_padded` for whole clips."""
    windows = any(isinstance(item, dict) and "utt" in item for item in items)
    return collate_windows(items) if windows else collate_padded(items)
