"""Downstream heads: (B, T', D) features + lengths → task outputs.

Every head is built as ``cls(input_size, output_size, input_stride, **conf)`` where
``input_stride`` is the feature stride in 16 kHz samples, and is called as
``head(features, lens)``.
"""
from __future__ import annotations

import torch
from torch import nn

from framework.models.upstream import masked_mean
from framework.registry import Registry

DOWNSTREAMS: Registry[nn.Module] = Registry("downstream")


@DOWNSTREAMS.register("mean_linear")
class MeanLinear(nn.Module):
    """SUPERB utterance head: frame projection + ReLU, masked mean pooling, linear → (B, out)."""

    def __init__(self, input_size: int, output_size: int, input_stride: int = 1,
                 hidden_size: int = 256):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(input_size, hidden_size), nn.ReLU())
        self.classify = nn.Linear(hidden_size, output_size)
        self.output_size = output_size

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.classify(masked_mean(self.project(features), lens))


# The speaker-embedding and the tutorials' classification heads register themselves in
# DOWNSTREAMS (after it exists above).
from framework.models import classifiers, speaker  # noqa: E402,F401
