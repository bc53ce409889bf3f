"""Utterance classification: cross-entropy over the label encoder's classes.

Evaluation batches hold whole clips, or windows of clips (a batch with ``utt``, see
:mod:`framework.audio.segments`); :meth:`UtteranceClassificationTask.summarize` then averages
each clip's window logits (weighted by window length) into one clip prediction, so tables
and metrics are per clip either way.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from framework.audio.segments import pool_windows
from framework.metrics.classification import classification_metrics
from framework.tasks.base import Task


class UtteranceClassificationTask(Task):
    """``model(batch)`` gives logits (B, C) over ``classes`` (names in index order)."""

    def __init__(self, model, classes: list[str], top_k: tuple[int, ...] = (1, 5)):
        super().__init__(model)
        self.classes = list(classes)
        self.top_k = tuple(top_k)

    def train_step(self, batch):
        logits = self.model(batch)
        return F.cross_entropy(logits, batch["label"])

    @torch.no_grad()
    def eval_step(self, batch):
        logits = self.model(batch).float()
        if "utt" in batch:  # windows: pooled per clip in summarize
            out = {"id": list(batch["id"]), "utt": batch["utt"].cpu().numpy(),
                   "frames": batch["wav_len"].cpu().numpy(), "logits": logits.cpu().numpy()}
            if "label" in batch:
                out["label"] = batch["label"].cpu().numpy()
            return out
        out = {"id": list(batch["id"]), "scores": logits.softmax(-1).cpu().numpy()}
        if "label" in batch:
            out["label"] = batch["label"].cpu().numpy()
            out["loss"] = F.cross_entropy(logits, batch["label"], reduction="none").cpu().numpy()
        return out

    def pool_clips(self, outputs: dict) -> dict:
        """Window outputs (``id``, ``utt``, ``frames``, ``logits`` (W, C), ``label``?) → clip
        outputs like :meth:`eval_step`'s for whole clips (``id``, ``scores`` (N, C),
        ``label``, ``loss``), in clip order; a clip is pooled from the windows present (one
        with none, its audio unreadable, is absent, as a skipped whole clip would be)."""
        utt = np.asarray(outputs["utt"], dtype=np.int64)
        clips, first = np.unique(utt, return_index=True)
        count = int(clips[-1]) + 1 if len(clips) else 0
        logits = pool_windows(utt, np.asarray(outputs["frames"]),
                              np.asarray(outputs["logits"], dtype=np.float32), count)[clips]
        logits = torch.from_numpy(logits.reshape(len(clips), len(self.classes)))
        pooled = {"id": [outputs["id"][i] for i in first],
                  "scores": logits.softmax(-1).numpy()}
        if "label" in outputs:
            labels = torch.from_numpy(np.asarray(outputs["label"], dtype=np.int64)[first])
            pooled["label"] = labels.numpy()
            pooled["loss"] = F.cross_entropy(logits, labels, reduction="none").numpy()
        return pooled

    def predictions(self, outputs: dict) -> pd.DataFrame:
        """Columns: id, label (if known), predicted, score_<class> for every class."""
        scores = np.asarray(outputs["scores"])
        table = pd.DataFrame({"id": outputs["id"]})
        if "label" in outputs:
            table["label"] = [self.classes[i] for i in outputs["label"]]
        table["predicted"] = [self.classes[i] for i in scores.argmax(1)]
        score_cols = pd.DataFrame(scores, columns=[f"score_{c}" for c in self.classes])
        return pd.concat([table, score_cols], axis=1)

    def summarize(self, outputs):
        if "utt" in outputs:
            outputs = self.pool_clips(outputs)
        table = self.predictions(outputs)
        if "label" not in outputs:
            return {"n": len(table)}, table
        metrics = classification_metrics(table, self.classes, top_k=self.top_k)
        metrics["loss"] = float(np.mean(outputs["loss"])) if len(table) else float("nan")
        return metrics, table
