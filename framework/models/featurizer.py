"""Featurizer: the learned softmax-weighted sum of selected upstream layers."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framework.errors import ConfigError


class Featurizer(nn.Module):
    """Reduce an upstream's layers to one (B, T', D) tensor.

    ``layer_selections`` picks layer indices (None: all). With one selected layer it is the
    identity and has no parameters. ``normalize`` layer-normalises each layer (no affine)
    before weighting, which matters when layers have very different scales.
    """

    def __init__(self, upstream, layer_selections: list[int] | None = None,
                 normalize: bool = False):
        super().__init__()
        layers = list(range(upstream.num_layers)) if layer_selections is None \
            else list(layer_selections)
        bad = [i for i in layers if not -upstream.num_layers <= i < upstream.num_layers]
        if bad or not layers:
            raise ConfigError(f"build_featurizer.layer_selections={layer_selections}: the "
                              f"upstream has layers 0..{upstream.num_layers - 1}")
        sizes = {upstream.hidden_sizes[i] for i in layers}
        if len(sizes) > 1:
            raise ConfigError(f"build_featurizer.layer_selections: selected layers differ in "
                              f"size {sorted(sizes)}; select layers of one size")
        self.layers = [i % upstream.num_layers for i in layers]  # cached layers are keyed so
        self.normalize = normalize
        self.output_size = sizes.pop()
        self.downsample_rate = upstream.downsample_rate
        self.weights = nn.Parameter(torch.zeros(len(layers))) if len(layers) > 1 else None

    def forward(self, hidden_states, lens: torch.Tensor):
        """``hidden_states``: the upstream's list of layers, or a dict holding at least the
        selected ones by layer index (cached features); each (B, T', D)."""
        chosen = [hidden_states[i] for i in self.layers]
        if self.normalize:
            chosen = [F.layer_norm(h, h.shape[-1:]) for h in chosen]
        if self.weights is None:
            return chosen[0], lens
        weights = F.softmax(self.weights, dim=0)
        return sum(w * h for w, h in zip(weights, chosen)), lens

    def layer_weights(self) -> dict[int, float] | None:
        """Upstream layer → its softmax weight (None with one layer: nothing is learned)."""
        if self.weights is None:
            return None
        weights = F.softmax(self.weights.detach().float(), dim=0).tolist()
        return dict(zip(self.layers, weights))
