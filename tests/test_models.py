"""Upstreams, featurizer and the joined model on real (synthetic) waveforms."""
from __future__ import annotations

import math

import pytest
import torch

from framework.models.featurizer import Featurizer
from framework.models.model import UpstreamDownstreamModel
from framework.models.downstream import DOWNSTREAMS
from framework.models.upstream import UPSTREAMS, Upstream


def tone(freq: float, secs: float) -> torch.Tensor:
    t = torch.arange(int(16000 * secs)) / 16000
    return 0.5 * torch.sin(2 * math.pi * freq * t)


@pytest.mark.parametrize("name, size", [("fbank", 80), ("mel", 80), ("mfcc", 40)])
def test_batched_features_match_one_utterance_at_a_time(name, size):
    upstream = UPSTREAMS.build(name)
    short, long = tone(440, 0.5), tone(1000, 1.0)
    wavs = torch.zeros(2, len(long))
    wavs[0, : len(short)], wavs[1] = short, long
    [batch], lens = upstream(wavs, torch.tensor([len(short), len(long)]))
    assert batch.shape == (2, 97, size) and lens.tolist() == [47, 97]  # 1 + (T - 512) // 160
    assert upstream.num_layers == 1 and upstream.hidden_sizes == [size]
    assert upstream.downsample_rate == 160
    [alone], _ = upstream(short[None], torch.tensor([len(short)]))
    assert torch.allclose(batch[0, :47], alone[0], atol=1e-4)  # padding never leaks in


def test_fbank_peaks_at_the_tone_and_stays_finite_on_silence():
    upstream = UPSTREAMS.build("fbank", {"mean_norm": False})
    [feats], _ = upstream(torch.stack([tone(300, 1), tone(4000, 1)]), torch.tensor([16000] * 2))
    low, high = feats.mean(1).argmax(-1).tolist()
    assert low < high
    [silent], _ = upstream(torch.zeros(2, 16000), torch.tensor([16000, 0]))
    assert torch.isfinite(silent).all()


class ThreeLayers(Upstream):
    """A toy upstream whose layers are its input scaled by 1, 2 and 3."""

    def __init__(self):
        super().__init__()
        self.hidden_sizes, self.downsample_rate = [4, 4, 4], 1
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward(self, wavs, lens):
        x = wavs.unsqueeze(-1).expand(-1, -1, 4) * self.scale
        return [x, 2 * x, 3 * x], lens


def test_featurizer_is_a_softmax_weighted_sum_of_selected_layers():
    upstream = ThreeLayers()
    featurizer = Featurizer(upstream, layer_selections=[0, 2])
    hidden, lens = upstream(torch.ones(1, 5), torch.tensor([5]))
    out, _ = featurizer(hidden, lens)
    assert torch.allclose(out, torch.full((1, 5, 4), 2.0))  # equal weights: (1 + 3) / 2
    with torch.no_grad():
        featurizer.weights.copy_(torch.tensor([0.0, 100.0]))
    assert torch.allclose(featurizer(hidden, lens)[0], torch.full((1, 5, 4), 3.0))
    assert Featurizer(UPSTREAMS.build("fbank")).weights is None  # one layer: identity


def test_frozen_upstream_gets_no_gradient_and_is_not_checkpointed():
    upstream = ThreeLayers()
    head = DOWNSTREAMS.build("mean_linear", {"hidden_size": 3}, input_size=4, output_size=2)
    model = UpstreamDownstreamModel(upstream, Featurizer(upstream), head, upstream_trainable=False)
    model.train()
    model({"wav": torch.randn(2, 6), "wav_len": torch.tensor([6, 3])}).sum().backward()
    assert upstream.scale.grad is None and not upstream.training
    assert not [k for k in model.trainable_state_dict() if k.startswith("upstream.")]
    trainable = UpstreamDownstreamModel(upstream, Featurizer(upstream), head, True)
    assert "upstream.scale" in trainable.trainable_state_dict()
