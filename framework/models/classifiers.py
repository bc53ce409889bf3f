"""The tutorials' classification heads: M5 over raw samples, a ResNet-18-style 2-D CNN over a
spectrogram, and an MLP probe over pooled features.

Each is built as ``cls(input_size, output_size, input_stride, **conf)`` and called as
``head(features, lens)``: ``features`` (B, T, D) float, ``lens`` (B,) long valid frames →
logits (B, output_size) for cross-entropy.

Padding never changes an item's output. The CNNs track every item's valid length through
each layer, keep padded positions at zero before every convolution (so a border sees the zeros
it would see alone), take batch-norm statistics over valid positions only (training mode) and
pool over valid positions only; in eval mode an item's logits equal those of the item alone.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from framework.errors import ConfigError
from framework.models.downstream import DOWNSTREAMS
from framework.models.upstream import masked_mean


def valid_mask(lens: torch.Tensor, length: int) -> torch.Tensor:
    """(B,) valid lengths → (B, length) bool, True on valid positions."""
    return torch.arange(length, device=lens.device)[None, :] < lens[:, None]


def masked_batch_norm(norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """``norm`` (a BatchNorm1d/2d, for its parameters and running statistics) applied to
    ``x`` (B, C, T[, F]) whose padded positions are 0 in ``mask`` ((B, 1, T[, 1]) float).

    Training mode normalises with the mean and variance of the valid positions and updates
    the running statistics from them (unbiased variance, as torch does); eval mode uses the
    running statistics. Padded positions of the result are 0."""
    if not norm.training:
        return norm(x) * mask
    dims = [0, *range(2, x.dim())]
    x32 = x.float()
    count = mask.expand(x.shape[0], 1, *x.shape[2:]).sum()
    mean = (x32 * mask).sum(dims) / count
    shape = (1, -1) + (1,) * (x.dim() - 2)
    centred = x32 - mean.view(shape)
    var = (centred.square() * mask).sum(dims) / count
    with torch.no_grad():
        momentum = norm.momentum if norm.momentum is not None else 0.1
        unbiased = var * count / (count - 1).clamp(min=1)
        norm.running_mean.lerp_(mean.to(norm.running_mean.dtype), momentum)
        norm.running_var.lerp_(unbiased.to(norm.running_var.dtype), momentum)
        norm.num_batches_tracked += 1
    out = centred * torch.rsqrt(var + norm.eps).view(shape)
    out = out * norm.weight.view(shape) + norm.bias.view(shape)
    return (out * mask).to(x.dtype)


def strided_lens(lens: torch.Tensor, kernel: int, stride: int, padding: int) -> torch.Tensor:
    """Valid output length of a convolution or pooling over ``lens`` valid inputs."""
    return (lens + 2 * padding - kernel) // stride + 1


def check_positive(**values) -> None:
    for key, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"build_downstream.conf.{key}={value!r}: must be an integer >= 1")


@DOWNSTREAMS.register("m5")
class M5(nn.Module):
    """M5 raw-waveform 1-D CNN (torchaudio's Speech Commands tutorial), for the waveform upstream.

    ``features`` (B, T, D): the ``waveform`` upstream's samples (D = 1; another upstream's
    D channels also work), ``lens`` (B,) → logits (B, output_size). As the tutorial's
    ``M5(n_input=1, stride=16, n_channel=32)``: four conv blocks (a conv of kernel 80 and
    stride ``stride``, then three of kernel 3; ``channels``, ``channels``, 2·``channels``,
    2·``channels`` outputs), each conv followed by batch norm, ReLU and max-pool 4; a global
    average pool and a linear layer.
    The tutorial resamples to 8 kHz (``build_upstream.conf.sample_rate=8000`` here) and ends
    in log-softmax for an NLL loss; this head returns logits for cross-entropy, the same loss.
    Items shorter than :attr:`min_samples` are zero-padded to it, alone or in a batch.
    """

    first_kernel, kernel, pool = 80, 3, 4

    def __init__(self, input_size: int, output_size: int, input_stride: int = 1,
                 channels: int = 32, stride: int = 16):
        super().__init__()
        check_positive(channels=channels, stride=stride)
        sizes = [input_size, channels, channels, 2 * channels, 2 * channels]
        self.strides = [stride, 1, 1, 1]
        self.kernels = [self.first_kernel] + [self.kernel] * 3
        self.convs = nn.ModuleList(nn.Conv1d(cin, cout, k, s) for cin, cout, k, s in
                                   zip(sizes, sizes[1:], self.kernels, self.strides))
        self.norms = nn.ModuleList(nn.BatchNorm1d(c) for c in sizes[1:])
        self.classify = nn.Linear(sizes[-1], output_size)
        self.min_samples = self.shortest_input()

    def shortest_input(self) -> int:
        """The fewest samples that leave one frame after the last pooling."""
        frames = 1
        for kernel, stride in zip(reversed(self.kernels), reversed(self.strides)):
            frames = (frames * self.pool - 1) * stride + kernel
        return frames

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = features.transpose(1, 2)  # (B, D, T)
        if x.shape[-1] < self.min_samples:
            x = F.pad(x, (0, self.min_samples - x.shape[-1]))
        x = x * valid_mask(lens, x.shape[-1])[:, None].to(x.dtype)
        lens = lens.clamp(min=self.min_samples)  # the zeros after a short item count as its own
        for conv, norm, kernel, stride in zip(self.convs, self.norms, self.kernels,
                                              self.strides):
            x, lens = conv(x), strided_lens(lens, kernel, stride, 0)
            mask = valid_mask(lens, x.shape[-1])[:, None].to(x.dtype)
            x = F.max_pool1d(F.relu(masked_batch_norm(norm, x, mask)), self.pool)
            lens = lens // self.pool
        return self.classify(masked_mean(x.transpose(1, 2), lens))


class BasicBlock(nn.Module):
    """ResNet's basic block on (B, C, T, F) maps: two 3×3 convs with batch norm, plus a
    shortcut (a strided 1×1 conv and batch norm when the shape changes). Stride applies to
    both axes, as in ResNet."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False)
            self.shortcut_bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor, lens: torch.Tensor):
        """``x`` zero past ``lens`` on the time axis (dim 2) → (output, its valid lengths)."""
        lens = strided_lens(lens, 3, self.stride, 1)  # the 1×1 shortcut gives the same
        y = self.conv1(x)
        mask = valid_mask(lens, y.shape[2])[:, None, :, None].to(y.dtype)
        y = F.relu(masked_batch_norm(self.bn1, y, mask))
        y = masked_batch_norm(self.bn2, self.conv2(y), mask)
        if self.shortcut is not None:
            x = masked_batch_norm(self.shortcut_bn, self.shortcut(x), mask)
        return F.relu(y + x) * mask, lens


@DOWNSTREAMS.register("resnet18")
class ResNet18(nn.Module):
    """ResNet-18-style 2-D CNN over the (T, D) feature map as a 1-channel image.

    ``features`` (B, T, D), e.g. the ``mel`` upstream with ``n_mels=64`` (dB already, as in
    the Kaggle walkthrough's 64-mel spectrogram into ResNet-18), ``lens`` (B,) → logits
    (B, output_size). torchvision's resnet18 with one input channel: a 7×7 stride-2 conv,
    batch norm, ReLU, 3×3 stride-2 max-pool; four stages of two basic blocks with ``width``,
    2·, 4·, 8·``width`` channels (strides 1, 2, 2, 2); global average pool; linear.
    ``width=64`` is torchvision's (11.2 M parameters, 16× the multiply-adds of the default;
    measured 0.68 s per training step of 32 one-second clips on one CPU thread). The default
    16 (0.7 M parameters; 0.12 s per such step) is ample for the tens of classes of KWS or
    GTZAN on a CPU; raise it on a GPU.
    """

    def __init__(self, input_size: int, output_size: int, input_stride: int = 1,
                 width: int = 16):
        super().__init__()
        check_positive(width=width)
        self.stem = nn.Conv2d(1, width, 7, 2, 3, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        channels = [width, 2 * width, 4 * width, 8 * width]
        blocks, cin = [], width
        for stage, cout in enumerate(channels):
            for index in range(2):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.classify = nn.Linear(channels[-1], output_size)

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        x = features.unsqueeze(1)  # (B, 1, T, D)
        x = x * valid_mask(lens, x.shape[2])[:, None, :, None].to(x.dtype)
        x, lens = self.stem(x), strided_lens(lens, 7, 2, 3)
        mask = valid_mask(lens, x.shape[2])[:, None, :, None].to(x.dtype)
        x = F.relu(masked_batch_norm(self.stem_bn, x, mask))
        # values are >= 0 and padding is 0, so zero padding of the max-pool cannot win
        x, lens = F.max_pool2d(x, 3, 2, 1), strided_lens(lens, 3, 2, 1)
        x = x * valid_mask(lens, x.shape[2])[:, None, :, None].to(x.dtype)
        for block in self.blocks:
            x, lens = block(x, lens)
        return self.classify(masked_mean(x.mean(3).transpose(1, 2), lens))


def masked_mean_std(x: torch.Tensor, lens: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Mean and standard deviation over the valid frames: x (B, T, D), lens (B,) → (B, 2D)."""
    mask = valid_mask(lens, x.shape[1]).unsqueeze(-1).to(x.dtype)
    count = mask.sum(1).clamp(min=1.0)
    mean = (x * mask).sum(1) / count
    var = ((x - mean.unsqueeze(1)).square() * mask).sum(1) / count
    return torch.cat([mean, torch.sqrt(var + eps)], dim=-1)


@DOWNSTREAMS.register("mlp_probe")
class MLPProbe(nn.Module):
    """HEAR-style probe: an MLP over mean+std pooled features.

    ``features`` (B, T, D), ``lens`` (B,) → the masked mean and standard deviation over time
    (B, 2D) → ``num_layers`` hidden layers of ``hidden_size`` (Linear, ReLU, dropout) → a
    linear layer → logits (B, output_size); ``num_layers=0`` is a linear probe. As the HEAR
    benchmark's downstream classifier over frozen embeddings (hear-eval-kit: 1 or 2 hidden
    layers of 1024, dropout 0.1); the default width is smaller for CPU runs.
    """

    def __init__(self, input_size: int, output_size: int, input_stride: int = 1,
                 hidden_size: int = 256, num_layers: int = 1, dropout: float = 0.1):
        super().__init__()
        check_positive(hidden_size=hidden_size)
        if not isinstance(num_layers, int) or num_layers < 0:
            raise ConfigError(f"build_downstream.conf.num_layers={num_layers!r}: must be an "
                              "integer >= 0")
        if not 0 <= dropout < 1:
            raise ConfigError(f"build_downstream.conf.dropout={dropout!r}: must be >= 0 and < 1")
        layers, size = [], 2 * input_size
        for _ in range(num_layers):
            layers += [nn.Linear(size, hidden_size), nn.ReLU(), nn.Dropout(dropout)]
            size = hidden_size
        self.mlp = nn.Sequential(*layers, nn.Linear(size, output_size))

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        return self.mlp(masked_mean_std(features, lens))
