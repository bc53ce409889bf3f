"""The joined model: upstream → featurizer → downstream."""
from __future__ import annotations

import contextlib

import torch
from torch import nn


class UpstreamDownstreamModel(nn.Module):
    """``model(batch)`` → the downstream's output.

    ``batch`` holds ``wav`` (B, T) float and ``wav_len`` (B,) long, or, when a frozen
    upstream's features were cached, ``hidden_states`` (a list of (B, T', D) tensors, the
    selected layers in upstream order) and ``hidden_lens`` (B,) long; then the upstream is
    not run at all. With ``upstream_trainable=False`` the upstream is frozen: no gradients,
    eval mode, and it is left out of :meth:`trainable_state_dict`, so checkpoints do not copy
    its weights.

    ``augmentation`` (:mod:`framework.models.augment`, or None) acts in training mode only:
    on ``wav``/``wav_len`` before the upstream and on the featurizer's output.
    """

    def __init__(self, upstream: nn.Module, featurizer: nn.Module, downstream: nn.Module,
                 upstream_trainable: bool = False, freeze_feature_encoder: bool = False,
                 augmentation: nn.Module | None = None):
        """``freeze_feature_encoder`` (with ``upstream_trainable``): keep the upstream's CNN
        feature encoder frozen (its ``freeze_feature_encoder()``) while the rest fine-tunes."""
        super().__init__()
        self.upstream, self.featurizer, self.downstream = upstream, featurizer, downstream
        self.augmentation = augmentation
        self.upstream_trainable = upstream_trainable
        self.upstream.requires_grad_(upstream_trainable)
        if upstream_trainable and freeze_feature_encoder:
            if not hasattr(upstream, "freeze_feature_encoder"):
                raise ValueError(f"build_model.freeze_feature_encoder: {type(upstream).__name__}"
                                 " has no CNN feature encoder to freeze")
            upstream.freeze_feature_encoder()

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.upstream_trainable:
            self.upstream.eval()
        return self

    def forward(self, batch: dict):
        augment = self.augmentation if self.training else None
        if augment is not None:
            batch = augment.augment_batch(batch)
        hidden, lens = self.hidden_states(batch)
        features, lens = self.featurizer(hidden, lens)
        if augment is not None:
            features = augment.augment_features(features, lens)
        return self.downstream(features, lens)

    def hidden_states(self, batch: dict) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The upstream's layers for ``batch``: cached ones, else computed from the wave."""
        if "hidden_states" in batch:
            return batch["hidden_states"], batch["hidden_lens"]
        frozen = not (self.upstream_trainable and self.training)
        with torch.no_grad() if frozen else contextlib.nullcontext():
            return self.upstream(batch["wav"], batch["wav_len"])

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
