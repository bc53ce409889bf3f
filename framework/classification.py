"""The utterance-classification family (keyword spotting, genre classification, ...).

Manifests carry a ``label`` column; the encoder is a JSON list of the training labels; the
task is cross-entropy; the report is accuracy, F1, a confusion matrix and friends.
"""
from __future__ import annotations

from framework.audio.dataset import AudioDataset, Skipped, collate_padded, read_manifest
from framework.audio.segments import WindowDataset, collate_windows
from framework.problem import Problem
from framework.report.classification import class_counts, write_classification_report
from framework.report.summary import training_summary
from framework.tasks.classification import UtteranceClassificationTask


class UtteranceClassification(Problem):
    """One label per utterance (or segment) from a ``label`` manifest column."""

    config_file = "classification.yaml"  # the family's defaults, under each recipe's YAML

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
        cache = cache_dir if build_dataset["cache_waveforms"] else None
        window = conf.get("window_secs") if mode != "train" else None
        clips = AudioDataset(manifest, encoder.index, build_dataset["sample_rate"],
                             None if window else conf.get("max_secs"),
                             "random" if mode == "train" else "center",
                             seed=self.cfg.train.seed, cache_dir=cache)
        return LabelledWindows(clips, window) if window else clips

    def build_collate_fn(self, build_collate_fn, mode):
        return collate_padded if mode == "train" else collate_clips

    def build_task(self, build_task, model, encoder):
        return UtteranceClassificationTask(model, encoder.classes, **build_task)

    def report(self, report, results, report_dir):
        """The classification report, with the training setup and curves and the items per
        class in every manifest."""
        classes = self.load_encoder(self.artifact("build_encoder", "encoder")).classes
        best = next((r for r in results if r["checkpoint"] == "valid_best"
                     and r["split"] == "test"), results[0])
        training = training_summary(self, lambda cfg: {"name": "cross_entropy", "conf": {}})
        return write_classification_report(report_dir, results, classes,
                                           title=type(self).__name__, best=best,
                                           training=training,
                                           counts=class_counts(self.manifests(), classes))


class LabelledWindows(WindowDataset):
    """:class:`~framework.audio.segments.WindowDataset` over labelled clips: each window
    item also carries its clip's ``label`` (int), and ``labels`` lists them per window."""

    def __getitem__(self, item: int) -> dict | Skipped:
        window = super().__getitem__(item)
        if isinstance(window, dict):
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
