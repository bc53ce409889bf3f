"""Training-time augmentation, the ``build_augmentation`` section.

Two places in the model's forward pass (:class:`framework.models.model.UpstreamDownstreamModel`
calls them in training mode only, never at validation or test):

* the padded waveform batch before the upstream: speed perturbation (:class:`Speed`), then
  additive noise (:class:`Noise`), both in float32 outside autocast;
* the featurizer's output (B, T', D): SpecAugment time and frequency masks
  (:class:`SpecAugment`).

Every random draw comes from torch's global generator, whose state the trainer checkpoints,
so a resumed run draws what an unbroken run would. Waveform augmentation cannot act on cached
frozen features: with noise or speed on, training reads waveforms
(:func:`framework.problem.uses_feature_cache`).
"""
from __future__ import annotations

import logging
import math
from fractions import Fraction
from pathlib import Path

import torch
import torchaudio
import torchaudio.functional as AF
from torch import nn

from framework.audio.io import read_audio
from framework.errors import AudioError, ConfigError

log = logging.getLogger(__name__)

SECTION = "build_augmentation"
SPEED_RANGE = (0.5, 2.0)  # factors outside it would halve or double items' lengths


def check(conf: dict | None) -> None:
    """Fail (before stage 0) on a noise folder that is missing or holds no ``*.wav``, SNR
    bounds in the wrong order, or a speed factor outside 0.5-2 or finer than 0.01."""
    if not conf:
        return
    noise = conf.get("noise") or {}
    if noise.get("folder"):
        noise_files(noise["folder"])
        if noise["min_snr_db"] > noise["max_snr_db"]:
            raise ConfigError(f"{SECTION}.noise.min_snr_db={noise['min_snr_db']} is above "
                              f"{SECTION}.noise.max_snr_db={noise['max_snr_db']}")
    for factor in (conf.get("speed") or {}).get("factors") or []:
        speed_ratio(factor)


def build(conf: dict | None, sample_rate: int) -> "Augmentation | None":
    """The augmentation ``conf`` (the section, plain) asks for at ``sample_rate`` Hz; None
    when the section is absent or everything in it is off."""
    if not conf:
        return None
    spec = SpecAugment(**conf["spec_augment"]) if conf["spec_augment"]["time_masks"] or \
        conf["spec_augment"]["freq_masks"] else None
    noise = Noise(sample_rate, **conf["noise"]) if conf["noise"]["folder"] else None
    factors = conf["speed"]["factors"]
    speed = Speed(factors) if any(speed_ratio(f) != 1 for f in factors) else None
    if spec is None and noise is None and speed is None:
        return None
    return Augmentation(spec, noise, speed)


class Augmentation(nn.Module):
    """The configured pieces (each None when off); holds no parameters or buffers, so
    checkpoints are the same with and without it."""

    def __init__(self, spec: "SpecAugment | None", noise: "Noise | None",
                 speed: "Speed | None"):
        super().__init__()
        self.spec, self.noise, self.speed = spec, noise, speed

    @property
    def changes_waveform(self) -> bool:
        """Whether it acts on the waveform (then cached features cannot be used)."""
        return self.noise is not None or self.speed is not None

    def augment_batch(self, batch: dict) -> dict:
        """``batch`` with its ``wav`` (B, T) and ``wav_len`` (B,) augmented (a new dict)."""
        if not self.changes_waveform:
            return batch
        if "hidden_states" in batch:
            raise RuntimeError("build_augmentation: noise/speed need waveforms, but this "
                               "training batch holds cached features")
        wavs, lens = batch["wav"], batch["wav_len"]
        with torch.autocast(wavs.device.type, enabled=False):
            wavs = wavs.float()
            if self.speed is not None:
                wavs, lens = self.speed(wavs, lens)
            if self.noise is not None:
                wavs = self.noise(wavs, lens)
        return {**batch, "wav": wavs, "wav_len": lens}

    def augment_features(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """SpecAugment on the featurizer's output (B, T', D), when configured."""
        return features if self.spec is None else self.spec(features, lens)


class SpecAugment(nn.Module):
    """Time and frequency masks (torchaudio's TimeMasking and FrequencyMasking), drawn
    independently for every item; masked values become 0.

    Each of ``time_masks`` masks covers a width drawn uniformly in [0, ``time_mask_frames``)
    frames at a position drawn over the batch's padded length (torchaudio's rule), each of
    ``freq_masks`` masks up to ``freq_mask_bins`` feature dimensions, and never more than
    half of them: a one-dimensional feature (the ``waveform`` upstream) gets no frequency
    mask, which would otherwise erase the whole input."""

    def __init__(self, time_masks: int = 0, time_mask_frames: int = 20, freq_masks: int = 0,
                 freq_mask_bins: int = 10):
        super().__init__()
        self.time_masks, self.freq_masks = time_masks, freq_masks
        self.freq_mask_bins = freq_mask_bins
        self.time = torchaudio.transforms.TimeMasking(time_mask_frames, iid_masks=True)

    def forward(self, features: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """(B, T', D) → (B, T', D) with masks; ``lens`` unchanged (padding stays padding)."""
        x = features.transpose(1, 2).unsqueeze(1)  # torchaudio's (B, channel, freq, time)
        for _ in range(self.time_masks):
            x = self.time(x)
        widest = min(self.freq_mask_bins, x.shape[2] // 2)
        for _ in range(self.freq_masks if widest > 0 else 0):
            x = torchaudio.functional.mask_along_axis_iid(x, widest, 0.0, axis=2)
        return x.squeeze(1).transpose(1, 2)


def noise_files(folder) -> list[Path]:
    """Every ``*.wav`` under ``folder`` (recursive, sorted); ConfigError naming the key when
    the folder is missing or holds none."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise ConfigError(f"{SECTION}.noise.folder: no such folder {root}; point it at a "
                          "folder of noise wavs (e.g. Speech Commands' _background_noise_) or "
                          "set it to null")
    files = sorted(p for p in root.rglob("*.wav") if p.is_file())
    if not files:
        raise ConfigError(f"{SECTION}.noise.folder: no .wav file under {root} (searched "
                          "recursively); point it at a folder of noise wavs or set it to null")
    return files


class Noise:
    """Adds a random segment of a random noise file to each item with ``probability``, at an
    SNR drawn uniformly in [``min_snr_db``, ``max_snr_db``] (torchaudio's add_noise: signal
    and noise power over the item's valid samples; padding stays 0).

    The folder's wavs are read once, at the first training batch, resampled to
    ``sample_rate`` and held in memory (4 bytes per sample); unreadable and all-zero files
    are left out with a warning. A file shorter than the item is repeated."""

    def __init__(self, sample_rate: int, folder: str, probability: float = 0.8,
                 min_snr_db: float = 5.0, max_snr_db: float = 20.0):
        self.sample_rate, self.folder, self.probability = sample_rate, folder, probability
        self.min_snr_db, self.max_snr_db = min_snr_db, max_snr_db
        self.bank: list[torch.Tensor] | None = None

    def clips(self) -> list[torch.Tensor]:
        if self.bank is None:
            self.bank = []
            for path in noise_files(self.folder):
                try:
                    wave = read_audio(path, sample_rate=self.sample_rate)
                except AudioError as err:
                    log.warning("noise file left out: %s", err)
                    continue
                if len(wave) and bool(wave.abs().max() > 0):
                    self.bank.append(wave)
                else:
                    log.warning("noise file left out: %s: silent or empty", path)
            if not self.bank:
                raise ConfigError(f"{SECTION}.noise.folder: no usable noise wav in "
                                  f"{self.folder} (see the warnings above)")
            secs = sum(len(w) for w in self.bank) / self.sample_rate
            log.info("noise augmentation: %d files, %.0f s, from %s", len(self.bank), secs,
                     self.folder)
        return self.bank

    def __call__(self, wavs: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """(B, T) float32, (B,) long → (B, T) with noise added to the chosen items."""
        bank, count = self.clips(), wavs.shape[0]
        which = torch.randint(len(bank), (count,)).tolist()
        offsets = torch.rand(count).tolist()
        snr = self.min_snr_db + (self.max_snr_db - self.min_snr_db) * torch.rand(count)
        chosen = torch.rand(count) < self.probability
        noise = torch.zeros_like(wavs)
        for row in chosen.nonzero().flatten().tolist():
            noise[row, : int(lens[row])] = segment(bank[which[row]], int(lens[row]),
                                                   offsets[row])
        energy = noise.square().sum(1)
        mixed = AF.add_noise(wavs, noise, snr.to(wavs), lens.to(wavs.device))
        use = chosen.to(wavs.device) & (energy > 0) & (wavs.square().sum(1) > 0)
        return torch.where(use[:, None], mixed, wavs)


def segment(clip: torch.Tensor, length: int, offset: float) -> torch.Tensor:
    """``length`` samples of ``clip`` from a start at fraction ``offset`` in [0, 1) of the
    possible starts (the clip repeated when shorter than ``length``)."""
    if len(clip) < length:
        clip = clip.repeat(math.ceil(length / len(clip)))
    start = min(int(offset * (len(clip) - length + 1)), len(clip) - length)
    return clip[start:start + length]


def speed_ratio(factor) -> Fraction:
    """A speed factor as an exact fraction (0.9 → 9/10); ConfigError outside 0.5-2 or when
    finer than 0.01 (a finer ratio would need a huge resampling kernel)."""
    key = f"{SECTION}.speed.factors"
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
            or not math.isfinite(factor):
        raise ConfigError(f"{key}: {factor!r} is not a number")
    ratio = Fraction(round(factor * 100), 100)
    if abs(float(ratio) - factor) > 1e-9 or not SPEED_RANGE[0] <= factor <= SPEED_RANGE[1]:
        raise ConfigError(f"{key}: {factor!r} must be between {SPEED_RANGE[0]} and "
                          f"{SPEED_RANGE[1]} in steps of 0.01")
    return ratio


class Speed:
    """Speed perturbation: each item plays ``factor`` times faster (tempo and pitch, as
    Kaldi's sox speed), a factor drawn uniformly from ``factors`` per item. An item of L
    samples becomes ceil(L / factor) samples: torchaudio's resample from rate ``factor``·r
    to r, run on the padded rows sharing a factor; what lies past the new lengths is 0."""

    def __init__(self, factors: list[float]):
        self.ratios = [speed_ratio(f) for f in factors]

    def __call__(self, wavs: torch.Tensor, lens: torch.Tensor):
        """(B, T), (B,) → (B, T2), (B,): the new batch, padded to its longest item."""
        drawn = torch.randint(len(self.ratios), (wavs.shape[0],)).tolist()
        rows_of: dict[Fraction, list[int]] = {}
        for row, index in enumerate(drawn):
            rows_of.setdefault(self.ratios[index], []).append(row)
        parts, new_lens = {}, lens.clone()
        for ratio, rows in rows_of.items():
            sub = wavs[rows, : int(lens[rows].max())]
            if ratio != 1:
                sub = AF.resample(sub, ratio.numerator, ratio.denominator)
                new_lens[rows] = -(-lens[rows] * ratio.denominator // ratio.numerator)
            parts.update(zip(rows, sub))
        out = wavs.new_zeros(wavs.shape[0], int(new_lens.max()) if len(new_lens) else 0)
        for row, wave in parts.items():
            out[row, : int(new_lens[row])] = wave[: int(new_lens[row])]
        return out, new_lens
