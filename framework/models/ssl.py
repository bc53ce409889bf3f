"""Self-supervised upstreams on Hugging Face ``transformers``: ``wav2vec2``, ``hubert``,
``wavlm``, ``distilhubert``, ``data2vec_audio``.

Each wraps the library's own model class (``Wav2Vec2Model``, ``HubertModel``, ``WavLMModel``,
``Data2VecAudioModel``; DistilHuBERT is a ``HubertModel`` with 2 layers, as transformers
converts it); no transformer is written here. ``build_upstream.conf``:

- ``checkpoint``: a Hugging Face model folder (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, possibly sharded, as ``save_pretrained`` writes it), a snapshot folder
  of the local Hugging Face cache (or its ``models--org--name`` folder), or a model id such as
  ``microsoft/wavlm-base-plus`` looked up in the local cache only (``HF_HUB_CACHE``, else
  ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``). Nothing is ever downloaded.
  ``pytorch_model.bin`` is read with ``torch.load(weights_only=True)``: a pickle that would
  run code is refused.
- ``random_init: true`` with ``size`` (``base`` | ``large``) builds the architecture untrained
  (SUPERB's randomised baselines, tests); ``config`` is a mapping of config keywords
  overriding the size's (``{num_hidden_layers: 2, hidden_size: 64}``) or the checkpoint's.
- ``normalize``: standardise each utterance (zero mean, unit variance over its valid
  samples) before the model. Default: the checkpoint's ``preprocessor_config.json``
  ``do_normalize`` when present, else what fairseq trained with: on for models whose CNN is
  layer-normalised (large wav2vec2/HuBERT/WavLM) and for data2vec-audio, off otherwise.

``forward(wavs (B, T) float at 16 kHz, wav_lens (B,) long)`` returns ``(hidden_states, lens)``:
``num_hidden_layers + 1`` tensors (B, T', hidden_size), the CNN features after the
projection and positional convolution, then each transformer layer's output (transformers'
``output_hidden_states``), and the valid frame counts from the CNN's length formula
(``T' = f(T)``, ``f(L) = ⌊(L - k)/s⌋ + 1`` per conv layer: 49 frames per second). Frames past
``lens`` are zeros. An utterance shorter than the CNN's receptive field (400 samples) is
zero-padded to it and gives one frame.

Padding never changes an utterance's features (tested against each utterance alone):

- Models whose every operation before attention is frame-local or sees zeros past each
  utterance's end (a layer-normalised CNN, one positional convolution, applied to features
  transformers zeroes at padded frames) run the padded batch at once with an
  ``attention_mask``: large wav2vec2, HuBERT and WavLM (``feat_extract_norm="layer"``).
- Models that cannot honour a padding mask run **one call per distinct length**: utterances
  of equal length are batched unpadded, so a batch of equal-length clips is still one call,
  and a batch of all-different lengths runs one by one. These are the group-normalised CNNs
  (``feat_extract_norm="group"``: base wav2vec2/HuBERT/WavLM and DistilHuBERT), whose first
  GroupNorm takes its statistics over every frame including padding, and data2vec-audio,
  whose positional embedding stacks five convolutions: after the first, padded frames are
  no longer zero and leak into valid frames near the end.

:meth:`HFUpstream.identity` names what the features depend on (for a feature cache).
"""
from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import re
import warnings
from pathlib import Path

import torch

from framework.errors import CheckpointError, ConfigError
from framework.models.upstream import UPSTREAMS, Upstream
from framework.registry import closest

KEY = "build_upstream.conf"
MODEL_ID = re.compile(r"[\w-][\w.-]*/[\w.-]+")  # org/name; not ./x, ../x, /x
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MIB = 1 << 20
# Config entries that change no feature: left out of identity().
VOLATILE = {"transformers_version", "architectures", "dtype", "torch_dtype", "return_dict",
            "output_hidden_states", "output_attentions", "id2label", "label2id"}
LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
             intermediate_size=4096, feat_extract_norm="layer", do_stable_layer_norm=True)


class HFUpstream(Upstream):
    """Base of the transformers upstreams; subclasses name the model and its sizes."""

    name: str                    # registry name
    model_types: tuple[str, ...]  # config.json model_type values this upstream loads
    model_class: str             # transformers class names
    config_class: str
    sizes: dict[str, dict] = {"base": {}, "large": LARGE}
    sample_rate = 16000
    learned = True

    @classmethod
    def check_conf(cls, conf: dict) -> None:
        """Before stage 0: exactly one of ``checkpoint`` and ``random_init``, and the
        checkpoint folder exists (a missing one would otherwise surface at stage 2)."""
        cls.source_of(conf.get("checkpoint"), conf.get("random_init", False), conf.get("size"))

    @classmethod
    def source_of(cls, checkpoint, random_init: bool, size) -> Path | None:
        """The checkpoint folder to load (None for ``random_init``); ConfigError otherwise."""
        if bool(checkpoint) == bool(random_init):
            raise ConfigError(f"{KEY}: {cls.name} needs either checkpoint=PATH (a Hugging Face "
                              f"model folder or a model id in the local cache) or "
                              f"random_init=true, not {'both' if checkpoint else 'neither'}")
        if random_init:
            return None
        if size is not None:
            raise ConfigError(f"{KEY}.size: applies to random_init only; the checkpoint "
                              f"sets the size (override keywords with {KEY}.config)")
        return resolve_checkpoint(checkpoint)

    def __init__(self, checkpoint: str | None = None, random_init: bool = False,
                 size: str | None = None, config: dict | None = None,
                 normalize: bool | None = None, seed: int = 0):
        super().__init__()
        self.source = self.source_of(checkpoint, random_init, size)
        # LayerDrop off unless asked (s3prl does the same): transformers returns no hidden
        # state for a skipped layer, which the featurizer's layer weights cannot take
        overrides = {"layerdrop": 0.0, **self.check_overrides(config or {})}
        if random_init:
            # its own seed: a frozen random upstream is not checkpointed, so evaluation and
            # every later run must rebuild exactly the same weights
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = self.build_random(size or "base", overrides)
        else:
            self.model = self.load(self.source, overrides)
        self.model.train(self.training)
        cfg = self.model.config
        self.hidden_sizes = [cfg.hidden_size] * (cfg.num_hidden_layers + 1)
        self.downsample_rate = math.prod(cfg.conv_stride)
        self.receptive_field = receptive_field(cfg.conv_kernel, cfg.conv_stride)
        self.normalize = default_normalize(self.source, self.layer_norm_cnn(cfg)) \
            if normalize is None else normalize
        self._digest: str | None = None

    # -- building ---------------------------------------------------------------------------

    def transformers_class(self, which: str):
        return getattr(importlib.import_module("transformers"), which)

    def check_overrides(self, overrides: dict) -> dict:
        defaults = self.transformers_class(self.config_class)()
        for key in overrides:
            if not hasattr(defaults, key):
                raise ConfigError(f"{KEY}.config.{key}: not a {self.config_class} keyword"
                                  f"{closest(key, vars(defaults))}")
        return dict(overrides)

    def build_random(self, size: str, overrides: dict):
        if size not in self.sizes:
            raise ConfigError(f"{KEY}.size={size}: {self.name} comes in "
                              f"{', '.join(self.sizes)}")
        config = self.transformers_class(self.config_class)(**{**self.sizes[size], **overrides})
        return self.transformers_class(self.model_class)(config)

    def load(self, folder: Path, overrides: dict):
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type not in self.model_types:
            users = [n for n in UPSTREAMS.names()
                     if model_type in getattr(UPSTREAMS.get(n), "model_types", ())]
            raise ConfigError(f"{KEY}.checkpoint={folder}: a '{model_type}' model, not "
                              f"{self.name}; use build_upstream.name="
                              f"{'|'.join(users) or 'one of ' + ', '.join(UPSTREAMS.names())}")
        config = self.transformers_class(self.config_class).from_pretrained(
            folder, local_files_only=True, **overrides)
        try:
            model, info = self.transformers_class(self.model_class).from_pretrained(
                folder, config=config, local_files_only=True, output_loading_info=True)
        except Exception as err:  # UnpicklingError (or OSError) for a .bin that is not weights
            bins = any(p.suffix == ".bin" for p in weight_files(folder))
            hint = "; a .bin must hold tensors only: it is read with torch.load(weights_only=" \
                   "True)" if bins else ""
            raise CheckpointError(f"{folder}: cannot load the weights ({type(err).__name__}: "
                                  f"{first_line(err)}){hint}") from err
        missing = sorted(k for k in info["missing_keys"] if k != "masked_spec_embed")
        if missing:
            raise CheckpointError(f"{folder}: the weights lack {len(missing)} tensors of a "
                                  f"{self.model_class} (e.g. {', '.join(missing[:3])})")
        return model.float()

    def layer_norm_cnn(self, config) -> bool:
        return getattr(config, "feat_extract_norm", "layer") == "layer"

    @property
    def honours_padding_mask(self) -> bool:
        """True when a padded batch with an attention mask gives each utterance's features
        exactly (see the module docstring); else one call per distinct length."""
        return self.layer_norm_cnn(self.model.config)

    def freeze_feature_encoder(self) -> None:
        """Freeze the CNN feature encoder (``model.feature_extractor``) for fine-tuning: its
        parameters get no gradient and stay as loaded; the projection and transformer train."""
        self.model.feature_extractor._freeze_parameters()  # what freeze_feature_encoder() does

    # -- forward ----------------------------------------------------------------------------

    def frame_lens(self, wav_lens: torch.Tensor) -> torch.Tensor:
        """Valid output frames of utterances of ``wav_lens`` samples (at least one)."""
        lens = wav_lens.long().clamp(min=self.receptive_field)
        for kernel, stride in zip(self.model.config.conv_kernel, self.model.config.conv_stride):
            lens = torch.div(lens - kernel, stride, rounding_mode="floor") + 1
        return lens

    def prepare(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        """Zero the padding, standardise if ``normalize``; → (wavs, lengths the model runs,
        their sample mask); utterances shorter than the receptive field run zero-padded to it."""
        wav_lens = wav_lens.to(wavs.device).long()
        if wavs.shape[1] < self.receptive_field:
            wavs = torch.nn.functional.pad(wavs, (0, self.receptive_field - wavs.shape[1]))
        valid = (torch.arange(wavs.shape[1], device=wavs.device) < wav_lens[:, None])
        wavs = wavs * valid
        if self.normalize:  # transformers' zero_mean_unit_var_norm, over valid samples
            count = wav_lens[:, None].clamp(min=1).to(wavs.dtype)
            mean = wavs.sum(1, keepdim=True) / count
            var = ((wavs - mean) * valid).square().sum(1, keepdim=True) / count
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * valid
        # the model sees an utterance shorter than its receptive field zero-padded to it
        model_lens = wav_lens.clamp(min=self.receptive_field)
        steps = torch.arange(wavs.shape[1], device=wavs.device)
        return wavs, model_lens, steps < model_lens[:, None]

    def run(self, wavs: torch.Tensor, attention_mask: torch.Tensor | None = None):
        out = self.model(wavs, attention_mask=attention_mask, output_hidden_states=True)
        return list(out.hidden_states)

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor):
        wavs, wav_lens, valid = self.prepare(wavs, wav_lens)
        frame_lens = self.frame_lens(wav_lens)
        frames = int(self.frame_lens(torch.tensor(wavs.shape[1])))
        lengths = wav_lens.unique().tolist()
        if self.honours_padding_mask and len(lengths) > 1:
            hidden = self.run(wavs, valid.long())
        else:
            hidden = self.run_by_length(wavs, wav_lens, lengths, frames)
        keep = (torch.arange(frames, device=wavs.device) < frame_lens[:, None]).unsqueeze(-1)
        return [h * keep.to(h.dtype) for h in hidden], frame_lens

    def run_by_length(self, wavs, wav_lens, lengths: list[int], frames: int):
        """One unpadded call per distinct length, scattered back into (B, frames, D)."""
        if len(lengths) == 1:  # the common case: nothing to scatter
            hidden = self.run(wavs[:, :lengths[0]])
            return [torch.nn.functional.pad(h, (0, 0, 0, frames - h.shape[1])) for h in hidden]
        hidden = None
        for length in lengths:
            rows = (wav_lens == length).nonzero().squeeze(1)
            part = self.run(wavs[rows, :length])
            if hidden is None:
                hidden = [h.new_zeros(len(wavs), frames, h.shape[2]) for h in part]
            for h, p in zip(hidden, part):
                h[rows, :p.shape[1]] = p
        return hidden

    # -- identity ---------------------------------------------------------------------------

    def identity(self) -> dict:
        """What this upstream's features depend on, JSON-serialisable: the registry name, a
        digest of the weights (of the weight files; of the parameters for ``random_init``),
        the model config (less entries that change no feature) and ``normalize``."""
        if self._digest is None:
            self._digest = file_digest(weight_files(self.source)) if self.source else \
                "random:" + tensor_digest(self.model.state_dict())
        config = {k: v for k, v in self.model.config.to_dict().items()
                  if k not in VOLATILE and not k.startswith("_")}
        return {"upstream": self.name, "weights": self._digest, "config": config,
                "normalize": self.normalize}


@UPSTREAMS.register("wav2vec2")
class Wav2Vec2(HFUpstream):
    """wav2vec 2.0 (transformers Wav2Vec2Model): 12×768 base or 24×1024 large, 20 ms frames."""

    name, model_types = "wav2vec2", ("wav2vec2",)
    model_class, config_class = "Wav2Vec2Model", "Wav2Vec2Config"
    sizes = {"base": {}, "large": {**LARGE, "conv_bias": True}}


@UPSTREAMS.register("hubert")
class Hubert(HFUpstream):
    """HuBERT (transformers HubertModel): 12×768 base or 24×1024 large, 20 ms frames."""

    name, model_types = "hubert", ("hubert",)
    model_class, config_class = "HubertModel", "HubertConfig"
    sizes = {"base": {}, "large": {**LARGE, "conv_bias": True}}


@UPSTREAMS.register("wavlm")
class WavLM(HFUpstream):
    """WavLM (transformers WavLMModel): 12×768 base/base-plus or 24×1024 large, 20 ms frames."""

    name, model_types = "wavlm", ("wavlm",)
    model_class, config_class = "WavLMModel", "WavLMConfig"

    def run(self, wavs, attention_mask=None):
        # transformers' WavLM passes a float position bias with a bool padding mask to
        # F.multi_head_attention_forward, which warns on every padded batch: nothing to act on
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
            return super().run(wavs, attention_mask)


@UPSTREAMS.register("distilhubert")
class DistilHubert(HFUpstream):
    """DistilHuBERT (a 2-layer transformers HubertModel, as ntu-spml/distilhubert): 2×768."""

    name, model_types = "distilhubert", ("hubert",)
    model_class, config_class = "HubertModel", "HubertConfig"
    # transformers' DistilHuBERT conversion: HuBERT-base CNN without conv bias, 2 layers,
    # no layer norm before the feature projection.
    sizes = {"base": dict(num_hidden_layers=2, conv_bias=False, feat_extract_norm="group",
                          feat_proj_layer_norm=False, do_stable_layer_norm=False,
                          layer_norm_eps=1e-5, layerdrop=0.0, apply_spec_augment=False)}


@UPSTREAMS.register("data2vec_audio")
class Data2VecAudio(HFUpstream):
    """data2vec-audio (transformers Data2VecAudioModel): 12×768 base or 24×1024 large."""

    name, model_types = "data2vec_audio", ("data2vec-audio",)
    model_class, config_class = "Data2VecAudioModel", "Data2VecAudioConfig"
    sizes = {"base": {}, "large": dict(hidden_size=1024, num_hidden_layers=24,
                                       num_attention_heads=16, intermediate_size=4096)}

    def layer_norm_cnn(self, config) -> bool:
        return True  # every conv layer is layer-normalised (and fairseq normalised its input)

    @property
    def honours_padding_mask(self) -> bool:
        return False  # the stacked positional convolutions leak padding (module docstring)


# -- checkpoints ----------------------------------------------------------------------------

def resolve_checkpoint(checkpoint: str) -> Path:
    """``checkpoint`` (folder, cache folder or model id) → a folder holding config.json and
    weights, or a one-line :class:`ConfigError` saying what to put where."""
    path = Path(os.path.expanduser(str(checkpoint)))
    if path.is_dir() and (path / "snapshots").is_dir():
        folder = cache_snapshot(path)
        if folder is None:
            raise ConfigError(f"{KEY}.checkpoint={checkpoint}: a Hugging Face cache folder "
                              f"without a refs/main snapshot (or a single snapshot)")
    elif path.exists():
        folder = path
    elif MODEL_ID.fullmatch(str(checkpoint)):
        repo = hf_cache_dir() / f"models--{str(checkpoint).replace('/', '--')}"
        folder = cache_snapshot(repo)
        if folder is None:
            raise ConfigError(f"{KEY}.checkpoint={checkpoint}: no such folder, nor a model in "
                              f"the local Hugging Face cache ({repo} has no snapshot); nothing "
                              f"is downloaded: fetch it where there is internet (`hf download "
                              f"{checkpoint}`) and copy {repo.name} into {repo.parent}, or set "
                              f"checkpoint to a save_pretrained folder")
    else:
        raise ConfigError(f"{KEY}.checkpoint={checkpoint}: no such folder; put a Hugging Face "
                          f"model folder there (config.json + model.safetensors or "
                          f"pytorch_model.bin, as save_pretrained writes it)")
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{KEY}.checkpoint={checkpoint}: {folder} has no config.json (a "
                          f"Hugging Face model folder, as save_pretrained writes it)")
    if not weight_files(folder):
        raise ConfigError(f"{KEY}.checkpoint={checkpoint}: {folder} has config.json but no "
                          f"model.safetensors or pytorch_model.bin")
    return folder


def cache_snapshot(repo: Path) -> Path | None:
    """The snapshot of ``refs/main``, else the only snapshot, of a cache folder
    ``models--org--name``; None when there is neither."""
    ref = repo / "refs" / "main"
    if ref.is_file() and (repo / "snapshots" / ref.read_text().strip()).is_dir():
        return repo / "snapshots" / ref.read_text().strip()
    snapshots = sorted((repo / "snapshots").glob("*")) if (repo / "snapshots").is_dir() else []
    return snapshots[0] if len(snapshots) == 1 else None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (not at import)."""
    env = os.environ
    if env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE"):
        return Path(env.get("HF_HUB_CACHE") or env["HUGGINGFACE_HUB_CACHE"]).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"),
                                              "huggingface")
    return Path(home).expanduser() / "hub"


def weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())


def default_normalize(folder: Path | None, layer_norm_cnn: bool) -> bool:
    preprocessor = folder / "preprocessor_config.json" if folder else None
    if preprocessor and preprocessor.is_file():
        return bool(json.loads(preprocessor.read_text()).get("do_normalize", layer_norm_cnn))
    return layer_norm_cnn


def receptive_field(kernels, strides) -> int:
    """Input samples seen by one output frame of a stack of valid convolutions (400)."""
    field, jump = 1, 1
    for kernel, stride in zip(kernels, strides):
        field, jump = field + (kernel - 1) * jump, jump * stride
    return field


# -- digests ----------------------------------------------------------------------------------

def file_digest(paths, full_below: int = 64 * MIB) -> str:
    """sha256 over each file's size and content (in name order; names themselves are left out,
    so a renamed copy has the same digest); a file larger than ``full_below`` contributes its
    mtime and its first, middle and last MiB instead of all its bytes."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        size = path.stat().st_size
        digest.update(f"{size}\0".encode())
        with open(path, "rb") as f:
            if size <= full_below:
                while chunk := f.read(8 * MIB):
                    digest.update(chunk)
            else:
                digest.update(str(path.stat().st_mtime_ns).encode())
                for offset in (0, size // 2, size - MIB):
                    f.seek(offset)
                    digest.update(f.read(MIB))
    return digest.hexdigest()


def tensor_digest(state: dict) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        digest.update(key.encode())
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [""])[0][:200]
