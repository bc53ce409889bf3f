"""Task: what one training step and one evaluation step mean for a problem family.

A task owns the model (``task.model``) and any learnable state of its own (a loss's class
weights, say). The trainer only calls :meth:`train_step`; evaluation calls :meth:`eval_step`
per batch and :meth:`summarize` once over all batches' outputs.
"""
from __future__ import annotations

import torch
from torch import nn


class Task(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        """The training loss: what DistributedDataParallel wraps and synchronises."""
        return self.train_step(batch)

    def train_step(self, batch: dict) -> torch.Tensor:
        """The scalar loss of one batch (the trainer does backward and the update)."""
        raise NotImplementedError

    def eval_step(self, batch: dict) -> dict:
        """Per-item outputs of one batch: a dict of equal-length lists or arrays."""
        raise NotImplementedError

    def summarize(self, outputs: dict) -> tuple[dict, object]:
        """All items' outputs (concatenated) → (metrics dict, per-item table or None)."""
        raise NotImplementedError

    def trainable_state_dict(self) -> dict:
        """State worth checkpointing: all but a frozen upstream's weights."""
        frozen = not getattr(self.model, "upstream_trainable", True)
        skip = ("model.upstream.",) if frozen else ()
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def load_trainable_state_dict(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if not getattr(self.model, "upstream_trainable", True):
            missing = [k for k in missing if not k.startswith("model.upstream.")]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit this model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
