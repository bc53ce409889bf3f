"""Speaker-classification losses: embeddings + speaker labels → (loss, logits).

Every loss is built as ``cls(input_size, num_classes, **conf)`` and called as
``loss_fn(embeddings (B, E) float, labels (B,) long) -> (loss scalar, logits (B, num_classes))``.
The class weights are parameters of the loss module, so they live in the task's state_dict.
The returned logits are exactly the ones the cross-entropy is taken over (margin included,
scaled), so an accuracy computed from them is the stricter margin accuracy.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from framework.registry import Registry

LOSSES: Registry[nn.Module] = Registry("loss")


@LOSSES.register("softmax")
class Softmax(nn.Module):
    """Linear classifier + cross-entropy."""

    def __init__(self, input_size: int, num_classes: int):
        super().__init__()
        self.classify = nn.Linear(input_size, num_classes)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        logits = self.classify(embeddings)
        return F.cross_entropy(logits, labels), logits


class MarginSoftmax(nn.Module):
    """Base of the cosine-margin losses: ``scale * cos(θ_j)`` logits, with the target class's
    cosine replaced by :meth:`with_margin`, then cross-entropy.

    cos(θ_j) is the cosine between the embedding and class j's weight row (both L2-normalised),
    so only directions are learnt; ``scale`` sets how peaked the softmax can get.
    """

    def __init__(self, input_size: int, num_classes: int, margin: float, scale: float):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, input_size))
        nn.init.xavier_normal_(self.weight)
        self.margin = margin
        self.scale = scale

    def with_margin(self, cos: torch.Tensor) -> torch.Tensor:
        """Target cosines (B, 1) → penalised target cosines (B, 1)."""
        raise NotImplementedError

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor):
        cos = F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).T
        target = labels.unsqueeze(1)
        cos = cos.scatter(1, target, self.with_margin(cos.gather(1, target)))
        logits = self.scale * cos
        return F.cross_entropy(logits, labels), logits


@LOSSES.register("amsoftmax")
class AMSoftmax(MarginSoftmax):
    """Additive margin softmax (CosFace): target logit ``scale * (cos θ - margin)``."""

    def __init__(self, input_size: int, num_classes: int, margin: float = 0.4,
                 scale: float = 30.0):
        super().__init__(input_size, num_classes, margin, scale)

    def with_margin(self, cos: torch.Tensor) -> torch.Tensor:
        return cos - self.margin


@LOSSES.register("aamsoftmax")
class AAMSoftmax(MarginSoftmax):
    """Additive angular margin softmax (ArcFace): target logit ``scale * cos(θ + margin)``.

    Threshold variant (not "easy margin"): when θ + margin > π, cos(θ + m) would grow again as
    θ grows, rewarding a worse angle, so there the target cosine becomes the monotonic
    ``cos θ - margin * sin(margin)`` instead (the usual ArcFace fallback). The two branches
    meet at θ = π - m up to a small jump (about m²/2: 0.02 for m = 0.2).
    """

    def __init__(self, input_size: int, num_classes: int, margin: float = 0.2,
                 scale: float = 30.0):
        super().__init__(input_size, num_classes, margin, scale)

    def with_margin(self, cos: torch.Tensor) -> torch.Tensor:
        # the floor keeps the gradient of sqrt finite at cos = ±1
        sin = (1.0 - cos.square()).clamp(min=1e-7).sqrt()
        shifted = cos * math.cos(self.margin) - sin * math.sin(self.margin)
        fallback = cos - self.margin * math.sin(self.margin)
        return torch.where(cos > math.cos(math.pi - self.margin), shifted, fallback)
