"""The joined model: upstream → featurizer → downstream."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class UpstreamDownstreamModel(nn.Module):
    """``model(wavs (B, T), wav_lens (B,))`` → the downstream's output.

    With ``upstream_trainable=False`` the upstream is frozen: no gradients, eval mode, and it
    is left out of :meth:`trainable_state_dict`, so checkpoints do not copy its weights.
    """

    def __init__(self, upstream: nn.Module, featurizer: nn.Module, downstream: nn.Module,
                 upstream_trainable: bool = False):
        super().__init__()
        self.upstream, self.featurizer, self.downstream = upstream, featurizer, downstream
        self.upstream_trainable = upstream_trainable
        self.upstream.requires_grad_(upstream_trainable)

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.upstream_trainable:
            self.upstream.eval()
        return self

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        frozen = not (self.upstream_trainable and self.training)
        with torch.no_grad() if frozen else contextlib.nullcontext():
            hidden, lens = self.upstream(wavs, wav_lens)
        features, lens = self.featurizer(hidden, lens)
        return self.downstream(features, lens)

    def trainable_state_dict(self) -> dict:
        """State to checkpoint: everything but a frozen upstream."""
        skip = () if self.upstream_trainable else ("upstream.",)
        return {k: v for k, v in self.state_dict().items() if not k.startswith(skip)}

    def load_trainable_state_dict(self, state: dict) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        if not self.upstream_trainable:
            missing = [k for k in missing if not k.startswith("upstream.")]
        if missing or unexpected:
            raise KeyError(f"checkpoint does not fit this model: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
