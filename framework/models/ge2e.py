"""``ge2e``: the GE2E speaker encoder of ``resemblyzer``, trained on real speech.

The weights are resemblyzer's ``pretrained.pt`` (17 MB, Apache-2.0), found through the
installed package without importing it (its ``__init__`` imports librosa and webrtcvad, which
are not needed: install it with ``pip install --no-deps resemblyzer``), or any file given as
``build_upstream.conf.checkpoint``; it is read with ``torch.load(weights_only=True)``.

The network and its front end are re-implemented here, equal to resemblyzer's within float
tolerance (tested against its ``VoiceEncoder``):

- front end (``resemblyzer.audio.wav_to_mel_spectrogram``, i.e. librosa's
  ``melspectrogram`` defaults): 16 kHz, 400-sample (25 ms) periodic Hann window, hop 160
  (10 ms), centred frames zero-padded at both ends (librosa ≥ 0.10), power spectrum, 40
  Slaney-scale mel bands 0–8 kHz with Slaney area normalisation; mel power, not its log;
- ``normalize_volume`` (default on): as resemblyzer's ``preprocess_wav``, each utterance is
  raised to -30 dBFS RMS over its valid samples if quieter (never lowered). Its webrtcvad
  silence trimming and resampling are not done (audio arrives at 16 kHz);
- network (``VoiceEncoder``): 3 LSTM layers of 256 over the mel frames; the embedding is the
  top layer's last state → linear 256→256 → ReLU → L2 normalisation.

``forward(wavs (B, T), wav_lens (B,))`` returns the three LSTM layers' outputs, each
(B, 1 + T // 160, 256), and ``lens = 1 + wav_lens // 160``; frames past ``lens`` are zeros.
:meth:`GE2E.embed` returns the (B, 256) utterance embeddings.

Padding never changes an utterance's features: the waveform is zeroed past each length, so a
centred frame near the end sees the same zeros as the utterance alone would get from the
STFT's own padding; the volume gain uses valid samples only; the LSTMs run on packed
sequences, so each utterance's recurrence stops at its own last frame.
"""
from __future__ import annotations

import importlib.util
import pickle
from pathlib import Path

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from framework.errors import CheckpointError, ConfigError
from framework.models.upstream import UPSTREAMS, Upstream

KEY = "build_upstream.conf.checkpoint"
TARGET_DBFS = -30.0


@UPSTREAMS.register("ge2e")
class GE2E(Upstream):
    """GE2E speaker encoder (resemblyzer's pretrained 3×256 LSTM on 40 mel bands), 10 ms frames."""

    sample_rate = 16000
    learned = True
    downsample_rate = 160
    n_fft, n_mels, hidden_size, num_lstm_layers = 400, 40, 256, 3

    def __init__(self, checkpoint: str | None = None, normalize_volume: bool = True):
        super().__init__()
        self.path = Path(checkpoint).expanduser() if checkpoint else packaged_weights()
        self.normalize_volume = normalize_volume
        sizes = [self.n_mels] + [self.hidden_size] * (self.num_lstm_layers - 1)
        # one LSTM per layer (not nn.LSTM(num_layers=3)) so every layer's output is visible
        self.lstms = nn.ModuleList(nn.LSTM(n, self.hidden_size, batch_first=True) for n in sizes)
        self.linear = nn.Linear(self.hidden_size, self.hidden_size)
        self.load_resemblyzer(read_state(self.path))
        self.hidden_sizes = [self.hidden_size] * self.num_lstm_layers
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        # = librosa.filters.mel(sr=16000, n_fft=400, n_mels=40), transposed
        mel = torchaudio.functional.melscale_fbanks(
            self.n_fft // 2 + 1, 0.0, self.sample_rate / 2, self.n_mels, self.sample_rate,
            norm="slaney", mel_scale="slaney")
        self.register_buffer("mel", mel, persistent=False)

    def load_resemblyzer(self, state: dict) -> None:
        """Map VoiceEncoder's ``lstm.*_l{k}`` / ``linear.*`` onto the per-layer LSTMs."""
        state = state.get("model_state", state)
        mine = {}
        for k in range(self.num_lstm_layers):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                mine[f"lstms.{k}.{kind}_l0"] = state.get(f"lstm.{kind}_l{k}")
        mine["linear.weight"], mine["linear.bias"] = state.get("linear.weight"), state.get(
            "linear.bias")
        missing = [k for k, v in mine.items() if v is None]
        if missing:
            raise CheckpointError(f"{self.path}: not a resemblyzer VoiceEncoder state "
                                  f"(no {', '.join(missing[:3])})")
        self.load_state_dict(mine)

    def frame_lens(self, wav_lens: torch.Tensor) -> torch.Tensor:
        return 1 + wav_lens.long() // self.downsample_rate

    def mels(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """(B, T) → mel power (B, 1 + T // 160, 40), padding zeroed and volume raised first."""
        valid = torch.arange(wavs.shape[1], device=wavs.device) < wav_lens[:, None]
        wavs = wavs * valid
        if self.normalize_volume:
            rms = torch.sqrt(wavs.square().sum(1) / wav_lens.clamp(min=1)).clamp(min=1e-8)
            gain = (10 ** (TARGET_DBFS / 20) / rms).clamp(min=1.0)
            wavs = wavs * gain[:, None]
        spec = torch.stft(wavs, self.n_fft, self.downsample_rate, window=self.window,
                          center=True, pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()   # (B, F, T')
        return power.transpose(1, 2) @ self.mel

    def encode(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """→ (the LSTM layers' outputs, frame lens, the top layer's last state (B, 256))."""
        wav_lens = wav_lens.to(wavs.device).long()
        mels = self.mels(wavs, wav_lens)
        lens = self.frame_lens(wav_lens).clamp(max=mels.shape[1])
        packed = pack_padded_sequence(mels, lens.cpu(), batch_first=True, enforce_sorted=False)
        hidden = []
        for lstm in self.lstms:
            packed, (last, _) = lstm(packed)
            hidden.append(pad_packed_sequence(packed, batch_first=True,
                                              total_length=mels.shape[1])[0])
        return hidden, lens, last[-1]

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        hidden, lens, _ = self.encode(wavs, wav_lens)
        return hidden, lens

    def embed(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """(B, 256) L2-normalised speaker embeddings, as ``VoiceEncoder.forward`` on the
        utterances' whole mel sequences (resemblyzer's ``embed_utterance`` instead averages
        1.6 s partial windows)."""
        _, _, last = self.encode(wavs, wav_lens)
        return F.normalize(torch.relu(self.linear(last)), dim=1)

    def identity(self) -> dict:
        """What the features depend on: name, digest of the weight file, front-end settings."""
        # imported here: ssl and ge2e are both loaded from upstream.py, in either order
        from framework.models.ssl import file_digest
        return {"upstream": "ge2e", "weights": file_digest([self.path]),
                "config": {"n_fft": self.n_fft, "hop": self.downsample_rate,
                           "n_mels": self.n_mels, "normalize_volume": self.normalize_volume}}


def packaged_weights() -> Path:
    """resemblyzer's ``pretrained.pt``, located without importing the package."""
    spec = importlib.util.find_spec("resemblyzer")
    folders = list(spec.submodule_search_locations or []) if spec else []
    path = Path(folders[0]) / "pretrained.pt" if folders else None
    if path is None or not path.is_file():
        raise ConfigError(f"{KEY}: ge2e reads resemblyzer's pretrained.pt; install it with "
                          f"`pip install --no-deps resemblyzer` or set {KEY}=PATH/pretrained.pt")
    return path


def read_state(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{KEY}={path}: no such file; point it at resemblyzer's "
                          f"pretrained.pt (or a state dict of its VoiceEncoder)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise CheckpointError(f"{path}: not a weights-only torch file "
                              f"({type(err).__name__})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(state).__name__}")
    return state
