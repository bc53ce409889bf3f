"""Utterance classification: cross-entropy over the label encoder's classes."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

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
        logits = self.model(batch)
        out = {"id": list(batch["id"]), "scores": logits.softmax(-1).cpu().numpy()}
        if "label" in batch:
            out["label"] = batch["label"].cpu().numpy()
            out["loss"] = F.cross_entropy(logits, batch["label"], reduction="none").cpu().numpy()
        return out

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
        table = self.predictions(outputs)
        if "label" not in outputs:
            return {"n": len(table)}, table
        metrics = classification_metrics(table, self.classes, top_k=self.top_k)
        metrics["loss"] = float(np.mean(outputs["loss"])) if len(table) else float("nan")
        return metrics, table
