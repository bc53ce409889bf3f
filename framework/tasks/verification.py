"""Speaker verification: learn embeddings through speaker classification, score by cosine.

Training: ``model(batch)`` gives embeddings (B, E), a speaker-classification loss from
:data:`~framework.models.losses.LOSSES` (softmax, AM-, AAM-softmax) turns them into a loss.
The loss's class weights belong to the task, so they are checkpointed and restored with it.
Evaluation: each batch holds windows of utterances (:mod:`framework.audio.segments`);
:meth:`summarize` pools them into one embedding per utterance.
"""
from __future__ import annotations

import numpy as np
import torch

from framework.audio.segments import pool_windows
from framework.models.losses import LOSSES
from framework.tasks.base import Task


class SpeakerVerificationTask(Task):
    def __init__(self, model, num_speakers: int, embedding_size: int,
                 loss_type: str = "amsoftmax", loss_conf: dict | None = None):
        super().__init__(model)
        self.loss = LOSSES.build(loss_type, loss_conf or {}, "build_task.loss_conf",
                                 input_size=embedding_size, num_classes=num_speakers)

    def train_step(self, batch):
        loss, _ = self.loss(self.model(batch), batch["label"])
        return loss

    @torch.no_grad()
    def eval_step(self, batch):
        embeddings = self.model(batch)
        return {"utt": batch["utt"].numpy(), "frames": batch["wav_len"].cpu().numpy(),
                "embedding": embeddings.float().cpu().numpy()}

    def summarize(self, outputs):
        """Window outputs → ({"n_utterances": N}, embeddings (N, E) in utterance order)."""
        utt = np.asarray(outputs["utt"])
        count = int(utt.max()) + 1 if len(utt) else 0
        embeddings = pool_windows(utt, np.asarray(outputs["frames"]),
                                  np.asarray(outputs["embedding"]), count)
        return {"n_utterances": count}, embeddings
