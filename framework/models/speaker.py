"""Speaker-embedding heads: (B, T', D) features + lengths → (B, output_size) embeddings.

Registered in :data:`~framework.models.downstream.DOWNSTREAMS` (``xvector``, ``ecapa_tdnn``)
with the usual contract ``cls(input_size, output_size, input_stride, **conf)`` and
``head(features, lens)``; ``output_size`` is the embedding size.

Padding contract: frames at or past ``lens`` never change an embedding. Every tensor passed
between blocks is kept (B, C, T) with exact zeros on padded frames, so a convolution sees the
same zeros there as its own zero padding would give an utterance alone; poolings, SE means
and BatchNorm statistics are masked. ``lens`` is clamped to [1, T'] (an empty utterance is
treated as one frame rather than producing NaNs).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
import torch.nn.functional as F

from framework.errors import ConfigError
from framework.models.downstream import DOWNSTREAMS


def frame_mask(lens: torch.Tensor, length: int, dtype=torch.float32) -> torch.Tensor:
    """(B,) valid frame counts → (B, 1, length) mask, 1.0 on valid frames, 0.0 on padding."""
    steps = torch.arange(length, device=lens.device)
    return (steps[None, :] < lens[:, None]).to(dtype).unsqueeze(1)


def uniform_weights(mask: torch.Tensor) -> torch.Tensor:
    """(B, 1, T) mask → (B, 1, T) weights summing to 1 over the valid frames."""
    return mask / mask.sum(-1, keepdim=True).clamp(min=1.0)


def weighted_stats(x: torch.Tensor, weights: torch.Tensor, eps: float = 1e-5):
    """Weighted mean and standard deviation over time: x (B, C, T), weights (B, 1 or C, T)
    summing to 1 over T (zero on padding) → two (B, C) tensors.

    The variance is floored at ``eps`` before the square root: a one-frame utterance has zero
    variance, where the gradient of sqrt would be infinite.
    """
    mean = (x * weights).sum(-1)
    var = ((x - mean.unsqueeze(-1)).square() * weights).sum(-1)
    return mean, var.clamp(min=eps).sqrt()


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm over (B, C, T) whose training statistics come from valid frames only.

    ``forward(x, mask)`` with mask (B, 1, T). In training, batch mean and (biased) variance
    are taken over the frames where mask is 1, and the running statistics are updated from
    them exactly as :class:`torch.nn.BatchNorm1d` does (unbiased variance, ``momentum``), so
    with no padding both modules agree. In eval mode the running statistics are used and the
    mask is not needed. Padded output frames are not zeroed here.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        count = mask.sum()
        mean = (x * mask).sum((0, 2)) / count
        centred = x - mean[:, None]
        var = (centred.square() * mask).sum((0, 2)) / count
        self._track(mean, var, count)
        scale = self.weight * torch.rsqrt(var + self.eps)
        return centred * scale[:, None] + self.bias[:, None]

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
        self.num_batches_tracked += 1
        momentum = self.momentum
        if momentum is None:  # a cumulative average, as in torch's BatchNorm
            momentum = 1.0 / float(self.num_batches_tracked)
        self.running_mean.lerp_(mean, momentum)
        self.running_var.lerp_(var * count / (count - 1).clamp(min=1.0), momentum)


class ConvBlock(nn.Module):
    """Conv1d → ReLU → masked BatchNorm → zero the padded frames.

    ``same_length=True`` pads the convolution so T is kept (ECAPA); ``False`` is a valid
    convolution shrinking T by ``dilation * (kernel_size - 1)`` (x-vector TDNN), in which case
    ``mask`` must already be the mask of the shorter output.
    Input (B, in, T) with zeros on padded frames → (B, out, T or T - shrink), same invariant.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1,
                 dilation: int = 1, same_length: bool = True, batch_norm: bool = True):
        super().__init__()
        self.shrink = dilation * (kernel_size - 1)
        self.conv = nn.Conv1d(in_channels, out_channels, kernel_size, dilation=dilation,
                              padding=self.shrink // 2 if same_length else 0)
        self.norm = MaskedBatchNorm1d(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        if self.norm is not None:
            x = self.norm(x, mask)
        return x * mask


# -- x-vector -------------------------------------------------------------------------------

@DOWNSTREAMS.register("xvector")
class XVector(nn.Module):
    """SUPERB x-vector head: projection, TDNN stack, masked mean+std pooling, linear → (B, out).

    ``features`` (B, T', input_size) float, ``lens`` (B,) long → (B, output_size).

    - ``input_proj``: a per-frame linear ``input_size → hidden_size`` before the TDNN.
    - ``channels`` / ``kernel_sizes`` / ``dilations``: one entry per TDNN layer, each a valid
      (unpadded) dilated Conv1d → ReLU → BatchNorm (``batch_norm``). Layer i shortens the
      valid length by ``dilations[i] * (kernel_sizes[i] - 1)``; the head tracks this so the
      pooling only sees frames computed from valid input. An utterance shorter than the
      receptive field (``self.receptive_field`` frames, 15 by default) is zero-padded to it
      and pools its one remaining frame.
    - BatchNorm: masked (:class:`MaskedBatchNorm1d`), so in training the batch statistics
      ignore padded frames and the amount of padding in a batch changes nothing.

    ``input_stride`` is accepted for the downstream contract and unused.
    """

    def __init__(self, input_size: int, output_size: int, input_stride: int = 1,
                 input_proj: bool = True, hidden_size: int = 512,
                 channels: Sequence[int] = (512, 512, 512, 512, 1500),
                 kernel_sizes: Sequence[int] = (5, 3, 3, 1, 1),
                 dilations: Sequence[int] = (1, 2, 3, 1, 1), batch_norm: bool = True):
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(dilations) or not channels:
            raise ConfigError("xvector: channels, kernel_sizes and dilations need one entry "
                              f"per TDNN layer; got {len(channels)}, {len(kernel_sizes)} and "
                              f"{len(dilations)}")
        self.project = nn.Linear(input_size, hidden_size) if input_proj else None
        sizes = [hidden_size if input_proj else input_size, *channels]
        self.tdnn = nn.ModuleList(
            ConvBlock(sizes[i], sizes[i + 1], kernel_sizes[i], dilations[i],
                      same_length=False, batch_norm=batch_norm)
            for i in range(len(channels)))
        self.receptive_field = 1 + sum(layer.shrink for layer in self.tdnn)
        self.affine = nn.Linear(2 * channels[-1], output_size)
        self.output_size = output_size

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = features if self.project is None else self.project(features)
        x = x.transpose(1, 2)                                       # (B, C, T)
        lens = lens.clamp(1, x.shape[-1])
        if x.shape[-1] < self.receptive_field:
            x = F.pad(x, (0, self.receptive_field - x.shape[-1]))
        x = x * frame_mask(lens, x.shape[-1], x.dtype)
        for layer in self.tdnn:
            lens = (lens - layer.shrink).clamp(min=1)
            mask = frame_mask(lens, x.shape[-1] - layer.shrink, x.dtype)
            x = layer(x, mask)
        mean, std = weighted_stats(x, uniform_weights(mask))
        return self.affine(torch.cat([mean, std], 1))


# -- ECAPA-TDNN -----------------------------------------------------------------------------

class Res2Conv(nn.Module):
    """Res2Net-style multi-scale convolution (B, C, T) → (B, C, T).

    The channels are split into ``scale`` groups x_1..x_s; y_1 = x_1, y_2 = K_2(x_2),
    y_i = K_i(x_i + y_{i-1}): each group sees a larger receptive field than the one before.
    """

    def __init__(self, channels: int, scale: int, dilation: int, kernel_size: int = 3):
        super().__init__()
        self.scale = scale
        width = channels // scale
        self.convs = nn.ModuleList(ConvBlock(width, width, kernel_size, dilation)
                                   for _ in range(scale - 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        first, *rest = x.chunk(self.scale, 1)
        outputs, previous = [first], None
        for conv, part in zip(self.convs, rest):
            previous = conv(part if previous is None else part + previous, mask)
            outputs.append(previous)
        return torch.cat(outputs, 1)


class SqueezeExcite(nn.Module):
    """Channel gates from the utterance's masked mean: (B, C, T) → (B, C, T) rescaled."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.down = nn.Linear(channels, bottleneck)
        self.up = nn.Linear(bottleneck, channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mean = (x * uniform_weights(mask)).sum(-1)
        gates = torch.sigmoid(self.up(torch.relu(self.down(mean))))
        return x * gates.unsqueeze(-1)


class SERes2Block(nn.Module):
    """1x1 conv, dilated Res2 conv, 1x1 conv, SE gates, plus the block input (residual)."""

    def __init__(self, channels: int, scale: int, dilation: int, se_channels: int):
        super().__init__()
        self.reduce = ConvBlock(channels, channels)
        self.res2 = Res2Conv(channels, scale, dilation)
        self.expand = ConvBlock(channels, channels)
        self.se = SqueezeExcite(channels, se_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.expand(self.res2(self.reduce(x, mask), mask), mask)
        return x + self.se(y, mask)


class AttentiveStatsPooling(nn.Module):
    """Channel- and context-dependent attentive statistics pooling: (B, C, T) → (B, 2C).

    Per channel c and frame t a score e_tc = v_c · tanh(W [h_t; mean; std] + b), softmaxed
    over the valid frames only; the output is the attention-weighted mean and standard
    deviation. ``global_context`` appends the utterance's (masked) mean and std to every frame
    before scoring. The paper's per-channel score offset k_c is left out: a constant added to
    every frame of a channel cancels in the softmax over time, so it would get no gradient.
    """

    def __init__(self, channels: int, attention_channels: int, global_context: bool = True):
        super().__init__()
        self.global_context = global_context
        inputs = 3 * channels if global_context else channels
        self.score = nn.Sequential(nn.Conv1d(inputs, attention_channels, 1), nn.Tanh(),
                                   nn.Conv1d(attention_channels, channels, 1, bias=False))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        context = x
        if self.global_context:
            mean, std = weighted_stats(x, uniform_weights(mask))
            frames = x.shape[-1]
            context = torch.cat([x, mean.unsqueeze(-1).expand(-1, -1, frames),
                                 std.unsqueeze(-1).expand(-1, -1, frames)], 1)
        scores = self.score(context).masked_fill(mask == 0, torch.finfo(x.dtype).min)
        mean, std = weighted_stats(x, scores.softmax(-1))
        return torch.cat([mean, std], 1)


@DOWNSTREAMS.register("ecapa_tdnn")
class EcapaTdnn(nn.Module):
    """ECAPA-TDNN (Desplanques et al., 2020): SE-Res2Blocks, aggregation, attentive pooling.

    ``features`` (B, T', input_size) float, ``lens`` (B,) long → (B, output_size) embeddings
    (the paper uses 192).

    Layout: Conv1d(k=5) → ReLU → BN to ``channels`` (512; 1024 for the large model); one
    SE-Res2Block per entry of ``dilations`` (k=3, Res2 ``scale`` groups, SE bottleneck
    ``se_channels``); each block's input is the sum of the first convolution's output and all
    earlier blocks' outputs (the paper's summed residual connections); the blocks' outputs are
    concatenated and mixed by a 1x1 Conv1d → ReLU to ``mfa_channels`` (multi-layer feature
    aggregation, 1536 in the paper for both sizes); attentive statistics pooling with global
    context (``attention_channels`` bottleneck); BatchNorm; linear to ``output_size``.

    Masking: convolutions keep T and see zeros on padded frames, BatchNorm statistics, SE
    means and the attention softmax use valid frames only. The BatchNorm on the pooled
    statistics needs batches of two or more in training mode. ``input_stride`` is unused.
    """

    def __init__(self, input_size: int, output_size: int, input_stride: int = 1,
                 channels: int = 512, mfa_channels: int = 1536, scale: int = 8,
                 dilations: Sequence[int] = (2, 3, 4), se_channels: int = 128,
                 attention_channels: int = 128, global_context: bool = True):
        super().__init__()
        if channels % scale or not dilations:
            raise ConfigError(f"ecapa_tdnn: channels ({channels}) must be a multiple of scale "
                              f"({scale}) and dilations must not be empty ({list(dilations)})")
        self.stem = ConvBlock(input_size, channels, kernel_size=5)
        self.blocks = nn.ModuleList(SERes2Block(channels, scale, dilation, se_channels)
                                    for dilation in dilations)
        self.aggregate = nn.Conv1d(channels * len(dilations), mfa_channels, 1)
        self.pool = AttentiveStatsPooling(mfa_channels, attention_channels, global_context)
        self.norm = nn.BatchNorm1d(2 * mfa_channels)
        self.embed = nn.Linear(2 * mfa_channels, output_size)
        self.output_size = output_size

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)                                # (B, D, T)
        mask = frame_mask(lens.clamp(1, x.shape[-1]), x.shape[-1], x.dtype)
        total = self.stem(x * mask, mask)
        outputs = []
        for block in self.blocks:
            outputs.append(block(total, mask))
            total = total + outputs[-1]
        frames = torch.relu(self.aggregate(torch.cat(outputs, 1))) * mask
        return self.embed(self.norm(self.pool(frames, mask)))
