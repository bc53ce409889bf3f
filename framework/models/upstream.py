"""Upstreams: padded waveforms → a list of hidden-state layers.

Contract (every upstream): ``forward(wavs, wav_lens)`` with ``wavs`` float (B, T) at 16 kHz
and ``wav_lens`` long (B,) returns ``(hidden_states, lens)``: a list of ``num_layers`` tensors
(B, T', hidden_sizes[i]) and long (B,) valid frame counts; frames past ``lens`` are padding.
``downsample_rate`` is the number of input samples per output frame.

The spectral upstreams below compute features for the whole batch at once on the model's
device (one batched STFT), never utterance by utterance.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn
import torchaudio

from framework.registry import Registry

UPSTREAMS: Registry[nn.Module] = Registry("upstream")


class Upstream(nn.Module):
    """Base class: subclasses set ``hidden_sizes`` and ``downsample_rate``."""

    hidden_sizes: list[int]
    downsample_rate: int
    #: a learned (pretrained or trainable) network, worth caching when frozen
    learned: bool = False

    @property
    def num_layers(self) -> int:
        return len(self.hidden_sizes)

    def identity(self) -> dict:
        """What this upstream's features depend on (JSON-serialisable): the class and its
        buffers' shapes here; learned upstreams add a digest of their weights."""
        return {"upstream": type(self).__name__, "sample_rate": getattr(self, "sample_rate", None),
                "hidden_sizes": list(self.hidden_sizes)}

    @classmethod
    def check_conf(cls, conf: dict) -> None:
        """Checks of ``conf`` that need no building, run before stage 0 (e.g. that a
        pretrained checkpoint exists); raise ConfigError. Nothing to check by default."""

    @classmethod
    def expected_sample_rate(cls, conf: dict) -> int:
        """The input rate (Hz) of this upstream built with ``conf``, without building it:
        its ``sample_rate`` argument when it takes one, else the class's ``sample_rate``."""
        param = inspect.signature(cls.__init__).parameters.get("sample_rate")
        if param is not None:
            return int(conf.get("sample_rate", param.default))
        return int(cls.sample_rate)


class SpectralUpstream(Upstream):
    """A single-layer upstream computing a frame-level spectral feature (25 ms / 10 ms)."""

    def __init__(self, sample_rate: int = 16000, win_ms: float = 25.0, hop_ms: float = 10.0,
                 n_fft: int | None = None):
        super().__init__()
        self.sample_rate = sample_rate
        self.win_length = int(sample_rate * win_ms / 1000)
        self.hop_length = int(sample_rate * hop_ms / 1000)
        self.downsample_rate = self.hop_length
        # default FFT size: the window length rounded up to a power of two
        self.n_fft = n_fft or 1 << (self.win_length - 1).bit_length()

    def frame_lens(self, wav_lens: torch.Tensor) -> torch.Tensor:
        # Frames are not centred (Kaldi's snip-edges): a frame counts as valid only when all
        # its n_fft samples lie inside the utterance, so padding never leaks into features.
        return ((wav_lens - self.n_fft) // self.hop_length + 1).clamp(min=1)

    def features(self, wavs: torch.Tensor) -> torch.Tensor:
        """(B, T) with T >= n_fft → (B, 1 + (T - n_fft) // hop, D)."""
        raise NotImplementedError

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        if wavs.shape[1] < self.n_fft:
            wavs = torch.nn.functional.pad(wavs, (0, self.n_fft - wavs.shape[1]))
        feats = self.features(wavs)
        lens = self.frame_lens(wav_lens).clamp(max=feats.shape[1])
        return [feats], lens


@UPSTREAMS.register("fbank")
class Fbank(SpectralUpstream):
    """Log mel filterbank (Kaldi-style: pre-emphasis, Hamming window, HTK mel), 80 bins."""

    def __init__(self, num_mel_bins: int = 80, preemphasis: float = 0.97,
                 mean_norm: bool = True, sample_rate: int = 16000, win_ms: float = 25.0,
                 hop_ms: float = 10.0):
        super().__init__(sample_rate, win_ms, hop_ms)
        self.preemphasis = preemphasis
        self.mean_norm = mean_norm
        self.register_buffer("window", torch.hamming_window(self.win_length), persistent=False)
        mel = torchaudio.functional.melscale_fbanks(
            self.n_fft // 2 + 1, 20.0, self.sample_rate / 2, num_mel_bins, self.sample_rate,
            mel_scale="htk")
        self.register_buffer("mel", mel, persistent=False)
        self.hidden_sizes = [num_mel_bins]

    def features(self, wavs):
        if self.preemphasis:
            wavs = torch.cat([wavs[:, :1], wavs[:, 1:] - self.preemphasis * wavs[:, :-1]], 1)
        spec = torch.stft(wavs, self.n_fft, self.hop_length, self.win_length, self.window,
                          center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()          # (B, F, T')
        logmel = torch.log(power.transpose(1, 2) @ self.mel + 1e-6)  # (B, T', mels)
        return logmel

    def forward(self, wavs, wav_lens):
        [feats], lens = super().forward(wavs, wav_lens)
        if self.mean_norm:
            feats = feats - masked_mean(feats, lens).unsqueeze(1)
        return [feats], lens


@UPSTREAMS.register("mel")
class LogMel(SpectralUpstream):
    """Log mel spectrogram in dB (torchaudio MelSpectrogram, Slaney mel), 80 bins."""

    def __init__(self, n_mels: int = 80, n_fft: int = 512, top_db: float = 80.0,
                 sample_rate: int = 16000, win_ms: float = 25.0, hop_ms: float = 10.0):
        super().__init__(sample_rate, win_ms, hop_ms, n_fft)
        self.mel = torchaudio.transforms.MelSpectrogram(
            self.sample_rate, n_fft=n_fft, win_length=self.win_length, center=False,
            hop_length=self.hop_length, n_mels=n_mels, norm="slaney", mel_scale="slaney")
        self.to_db = torchaudio.transforms.AmplitudeToDB("power", top_db=top_db)
        self.hidden_sizes = [n_mels]

    def features(self, wavs):
        # AmplitudeToDB clips top_db below the max of each item of a 4-D input, so the
        # (B, 1, F, T) view clips each utterance against its own peak, not the batch's.
        return self.to_db(self.mel(wavs).unsqueeze(1)).squeeze(1).transpose(1, 2)


@UPSTREAMS.register("mfcc")
class Mfcc(SpectralUpstream):
    """MFCCs (torchaudio MFCC over an HTK mel filterbank), 40 coefficients."""

    def __init__(self, n_mfcc: int = 40, n_mels: int = 80, n_fft: int = 512,
                 sample_rate: int = 16000, win_ms: float = 25.0, hop_ms: float = 10.0):
        super().__init__(sample_rate, win_ms, hop_ms, n_fft)
        self.mfcc = torchaudio.transforms.MFCC(
            self.sample_rate, n_mfcc=n_mfcc, log_mels=True,
            melkwargs=dict(n_fft=n_fft, win_length=self.win_length, center=False,
                           hop_length=self.hop_length, n_mels=n_mels, mel_scale="htk"))
        self.hidden_sizes = [n_mfcc]

    def features(self, wavs):
        return self.mfcc(wavs).transpose(1, 2)


@UPSTREAMS.register("waveform")
class Waveform(Upstream):
    """The raw samples as one layer (B, T, 1): the input of raw-waveform heads such as m5."""

    downsample_rate = 1

    def __init__(self, sample_rate: int = 16000):
        super().__init__()
        self.sample_rate = sample_rate
        self.hidden_sizes = [1]

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        return [wavs.unsqueeze(-1)], wav_lens


def masked_mean(x: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
    """Mean over the valid frames: x (B, T, D), lens (B,) → (B, D). Zero-length safe."""
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lens[:, None]).to(x.dtype)
    total = (x * mask.unsqueeze(-1)).sum(1)
    return total / mask.sum(1, keepdim=True).clamp(min=1.0)


# The SSL (transformers, imported lazily) and GE2E upstreams register themselves in UPSTREAMS.
from framework.models import ge2e, ssl  # noqa: E402,F401
