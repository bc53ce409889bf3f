"""Self-supervised upstreams (transformers) and the GE2E speaker encoder (resemblyzer weights).

Tiny models are written with transformers' own config classes and ``save_pretrained``; the
GE2E tests read the real ``resemblyzer/pretrained.pt`` and compare with resemblyzer's own
network."""
from __future__ import annotations

import functools

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
import torch

from framework.errors import CheckpointError, ConfigError, UserError
from framework.models.upstream import UPSTREAMS

# tiny tensors on 2 shared cores: one torch thread (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")

SSL = ["wav2vec2", "hubert", "wavlm", "distilhubert", "data2vec_audio"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            conv_dim=[16] * 7, num_conv_pos_embedding_groups=4)
EXTRA = {"wav2vec2": dict(num_conv_pos_embeddings=16), "hubert": dict(num_conv_pos_embeddings=16),
         "wavlm": dict(num_conv_pos_embeddings=16, num_buckets=16, max_bucket_distance=50),
         "distilhubert": dict(num_conv_pos_embeddings=16), "data2vec_audio": {}}
LAYER_NORM_CNN = dict(feat_extract_norm="layer", do_stable_layer_norm=True)
HAS_RESEMBLYZER = importlib.util.find_spec("resemblyzer") is not None


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def tiny_conf(name: str, **extra) -> dict:
    return {"random_init": True, "config": {**TINY, **EXTRA[name], **extra}}


def save_tiny(name: str, folder, form: str = "safetensors", seed: int = 0):
    """A tiny model of upstream ``name`` saved as transformers saves it; returns the model."""
    model = UPSTREAMS.build(name, {**tiny_conf(name), "seed": seed}).model
    if form == "safetensors":
        model.save_pretrained(folder)
    else:
        # transformers 5 writes safetensors even with safe_serialization=False; the
        # pytorch_model.bin that version 4 (and most checkpoints users have) wrote is this:
        model.config.save_pretrained(folder)
        torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    return model


def hf_cache_layout(src, cache, model_id: str) -> str:
    """Copy a save_pretrained folder into a hub cache: blobs, snapshots/<hash> of symlinks,
    refs/main. Returns the snapshot folder."""
    repo = cache / f"models--{model_id.replace('/', '--')}"
    revision = hashlib.sha1(model_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / revision
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for path in src.iterdir():
        blob = repo / "blobs" / hashlib.sha256(path.read_bytes()).hexdigest()
        shutil.copy(path, blob)
        (snapshot / path.name).symlink_to(os.path.relpath(blob, snapshot))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return str(snapshot)


def speechy(secs: float, f0: float = 140.0, seed: int = 0) -> torch.Tensor:
    """A voiced, syllable-modulated harmonic signal with a little noise (float32)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * secs)) / 16000
    voice = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 12))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t) ** 2
    wav = 0.1 * voice * envelope + 0.01 * rng.standard_normal(len(t))
    return torch.from_numpy(wav.astype(np.float32))


def padded(lens, total, seed=0):
    """Random utterances of ``lens`` in a (B, total) batch with loud garbage past each end."""
    gen = torch.Generator().manual_seed(seed)
    wavs = 5.0 * torch.randn(len(lens), total, generator=gen)
    utts = [0.3 * torch.randn(n, generator=gen) for n in lens]
    for i, utt in enumerate(utts):
        wavs[i, :len(utt)] = utt
    return wavs, torch.tensor(lens), utts


def check_shapes(upstream, hidden, lens, wav_lens, total):
    assert len(hidden) == upstream.num_layers == len(upstream.hidden_sizes)
    frames = upstream.frame_lens(torch.tensor([total]))[0]
    for h, size in zip(hidden, upstream.hidden_sizes):
        assert h.shape == (len(wav_lens), frames, size)
    assert lens.dtype == torch.long and lens.tolist() == upstream.frame_lens(wav_lens).tolist()


# -- the SSL upstreams ------------------------------------------------------------------------

@pytest.mark.parametrize("name", SSL)
@pytest.mark.parametrize("form", ["safetensors", "bin", "hf_cache", "random_init"])
def test_every_name_builds_and_runs_forward_on_cpu(name, form, tmp_path, monkeypatch):
    if form == "random_init":
        saved, conf = None, tiny_conf(name)
    else:
        saved = save_tiny(name, tmp_path / "model", "bin" if form == "bin" else "safetensors")
        conf = {"checkpoint": str(tmp_path / "model")}
        if form == "hf_cache":
            monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
            hf_cache_layout(tmp_path / "model", tmp_path / "hub", f"org/tiny-{name}")
            shutil.rmtree(tmp_path / "model")
            conf = {"checkpoint": f"org/tiny-{name}"}  # a model id, resolved in the cache
    upstream = UPSTREAMS.build(name, conf).eval()
    if form == "hf_cache":  # the cache's models--org--name folder names the same snapshot
        repo = tmp_path / "hub" / f"models--org--tiny-{name}"
        assert UPSTREAMS.build(name, {"checkpoint": str(repo)}).source == upstream.source
    if saved is not None:  # the weights are the saved ones, not a fresh initialisation
        assert all(torch.equal(v, upstream.model.state_dict()[k])
                   for k, v in saved.state_dict().items())
    assert upstream.hidden_sizes == [32] * 3 and upstream.num_layers == 3
    assert upstream.downsample_rate == 320 and upstream.sample_rate == 16000
    wavs, wav_lens, _ = padded([16000, 8000], 16000)
    with torch.no_grad():
        hidden, lens = upstream(wavs, wav_lens)
    check_shapes(upstream, hidden, lens, wav_lens, 16000)
    assert lens.tolist() == [49, 24]  # 20 ms frames: the CNN's length formula
    assert all(torch.isfinite(h).all() for h in hidden)


@pytest.mark.parametrize("name, extra, masked", [
    ("wav2vec2", {}, False), ("wav2vec2", LAYER_NORM_CNN, True),
    ("hubert", {}, False), ("hubert", LAYER_NORM_CNN, True),
    ("wavlm", {}, False), ("wavlm", LAYER_NORM_CNN, True),
    ("distilhubert", {}, False), ("data2vec_audio", {}, False),
])
def test_padding_never_changes_an_utterance(name, extra, masked):
    """Each utterance of a padded batch (garbage past its end, two of equal length, one
    shorter than the receptive field) has exactly its features alone."""
    upstream = UPSTREAMS.build(name, tiny_conf(name, **extra)).eval()
    assert upstream.honours_padding_mask is masked  # batched with a mask, else by length
    wavs, wav_lens, utts = padded([9000, 5000, 5000, 2100, 300], 9600)
    with torch.no_grad():
        hidden, lens = upstream(wavs, wav_lens)
        check_shapes(upstream, hidden, lens, wav_lens, 9600)
        for i, utt in enumerate(utts):
            alone, alone_lens = upstream(utt[None], torch.tensor([len(utt)]))
            assert alone_lens[0] == lens[i] and alone[0].shape[1] == lens[i]
            for layer, (h, a) in enumerate(zip(hidden, alone)):
                assert torch.allclose(h[i, :lens[i]], a[0], atol=2e-5), (i, layer)
                assert not h[i, lens[i]:].any()  # padded frames are zeros


def test_normalize_follows_fairseq_or_the_preprocessor_config(tmp_path):
    assert not UPSTREAMS.build("wav2vec2", tiny_conf("wav2vec2")).normalize
    assert UPSTREAMS.build("wavlm", tiny_conf("wavlm", **LAYER_NORM_CNN)).normalize
    assert UPSTREAMS.build("data2vec_audio", tiny_conf("data2vec_audio")).normalize
    save_tiny("hubert", tmp_path)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"do_normalize": True}))
    assert UPSTREAMS.build("hubert", {"checkpoint": str(tmp_path)}).normalize
    assert not UPSTREAMS.build("hubert", {"checkpoint": str(tmp_path),
                                          "normalize": False}).normalize
    # standardised over valid samples only: a loud padded tail changes nothing
    up = UPSTREAMS.build("hubert", {"checkpoint": str(tmp_path)})
    wavs, wav_lens, utts = padded([6000, 4000], 6000)
    prepared, _, _ = up.prepare(wavs, wav_lens)
    assert torch.allclose(prepared[1, :4000].mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(prepared[1, :4000].std(unbiased=False), torch.tensor(1.0), atol=1e-4)
    assert not prepared[1, 4000:].any()


def test_random_init_sizes_build_the_published_architectures():
    up = UPSTREAMS.build("distilhubert", {"random_init": True, "config": {"hidden_size": 64,
                         "num_attention_heads": 2, "intermediate_size": 64, "conv_dim": [8] * 7}})
    config = up.model.config
    assert (config.num_hidden_layers, config.feat_extract_norm, config.conv_bias,
            config.feat_proj_layer_norm) == (2, "group", False, False)
    with pytest.raises(ConfigError, match="size=large: distilhubert comes in base"):
        UPSTREAMS.build("distilhubert", {"random_init": True, "size": "large"})
    large = UPSTREAMS.get("wavlm").sizes["large"]
    assert (large["hidden_size"], large["num_hidden_layers"], large["feat_extract_norm"]) == \
        (1024, 24, "layer")


def one_line_error(exc_info, *fragments):
    message = str(exc_info.value)
    assert "\n" not in message and isinstance(exc_info.value, UserError)
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_checkpoint_is_a_one_line_error_saying_what_to_put_where(tmp_path,
                                                                          monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("wavlm", {"checkpoint": str(tmp_path / "nowhere")})
    one_line_error(err, "build_upstream.conf.checkpoint=", "no such folder", "config.json")
    with pytest.raises(ConfigError) as err:  # a model id absent from the local cache
        UPSTREAMS.build("wavlm", {"checkpoint": "microsoft/wavlm-base-plus"})
    one_line_error(err, "nor a model in the local Hugging Face cache", "nothing is downloaded",
                   str(tmp_path / "hub"), "microsoft/wavlm-base-plus")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("wavlm", {"checkpoint": str(tmp_path / "empty")})
    one_line_error(err, "has no config.json")
    save_tiny("wavlm", tmp_path / "noweights")
    os.remove(tmp_path / "noweights" / "model.safetensors")
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("wavlm", {"checkpoint": str(tmp_path / "noweights")})
    one_line_error(err, "no model.safetensors or pytorch_model.bin")
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("wavlm", {})
    one_line_error(err, "checkpoint=PATH", "random_init=true", "neither")


def test_wrong_model_type_and_unknown_config_keys_are_refused(tmp_path):
    save_tiny("wavlm", tmp_path)
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("hubert", {"checkpoint": str(tmp_path)})
    one_line_error(err, "a 'wavlm' model", "build_upstream.name=wavlm")
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("hubert", {"random_init": True, "config": {"num_hiden_layers": 2}})
    one_line_error(err, "config.num_hiden_layers", "did you mean 'num_hidden_layers'")
    with pytest.raises(ConfigError, match="size: applies to random_init only"):
        UPSTREAMS.build("wavlm", {"checkpoint": str(tmp_path), "size": "large"})


class Payload:
    """Unpickling this runs code: writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pytorch_model_bin_is_loaded_weights_only(tmp_path):
    model = save_tiny("hubert", tmp_path, "bin")
    marker = tmp_path / "code-ran"
    state = {**model.state_dict(), "payload": Payload(str(marker))}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        UPSTREAMS.build("hubert", {"checkpoint": str(tmp_path)})
    one_line_error(err, "cannot load the weights", "weights_only=True")
    assert not marker.exists()


def test_identity_names_weights_and_config(tmp_path):
    save_tiny("wav2vec2", tmp_path / "a", seed=0)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    save_tiny("wav2vec2", tmp_path / "b", seed=1)
    ids = {k: UPSTREAMS.build("wav2vec2", {"checkpoint": str(tmp_path / k)}).identity()
           for k in ("a", "copy", "b")}
    json.dumps(ids)  # serialisable
    assert ids["a"] == ids["copy"] and ids["a"]["weights"] != ids["b"]["weights"]
    assert ids["a"]["upstream"] == "wav2vec2" and ids["a"]["config"]["hidden_size"] == 32
    first = UPSTREAMS.build("wav2vec2", {**tiny_conf("wav2vec2"), "seed": 0}).identity()
    other = UPSTREAMS.build("wav2vec2", {**tiny_conf("wav2vec2"), "seed": 1}).identity()
    torch.manual_seed(123)  # random_init draws from its own seed, not the global generator
    again = UPSTREAMS.build("wav2vec2", {**tiny_conf("wav2vec2"), "seed": 0}).identity()
    assert first["weights"].startswith("random:") and first["weights"] != other["weights"]
    assert again == first


def test_building_the_registry_does_not_import_transformers():
    code = ("import sys; from framework.models.upstream import UPSTREAMS; "
            "assert 'wavlm' in UPSTREAMS.names() and 'ge2e' in UPSTREAMS.names(); "
            "assert 'transformers' not in sys.modules and 'resemblyzer' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# -- GE2E -------------------------------------------------------------------------------------

def needs_resemblyzer(test):
    """GE2E tests fail (never skip) without the weights: `make setup` installs them."""
    def run(*args, **kwargs):
        assert HAS_RESEMBLYZER, "resemblyzer's weights are missing: pip install --no-deps " \
                                "resemblyzer (make setup does)"
        return test(*args, **kwargs)
    return functools.wraps(test)(run)


def librosa_melspectrogram(wav: np.ndarray) -> np.ndarray:
    """librosa.feature.melspectrogram(y, sr=16000, n_fft=400, hop_length=160, n_mels=40).T in
    numpy, written from librosa's definitions (centred zero-padded frames, periodic Hann,
    Slaney mel filters with Slaney normalisation): resemblyzer's wav_to_mel_spectrogram."""
    n_fft, hop, n_mels, sr = 400, 160, 40, 16000
    y = np.pad(wav.astype(np.float64), n_fft // 2)
    frames = np.lib.stride_tricks.sliding_window_view(y, n_fft)[::hop]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2

    def hz_to_mel(f):
        f = np.asanyarray(f, dtype=float)
        return np.where(f >= 1000, 15 + np.log(np.maximum(f, 1e-10) / 1000) / (np.log(6.4) / 27),
                        f / (200 / 3))

    def mel_to_hz(m):
        return np.where(m >= 15, 1000 * np.exp(np.log(6.4) / 27 * (m - 15)), m * 200 / 3)

    mel_f = mel_to_hz(np.linspace(hz_to_mel(0.0), hz_to_mel(sr / 2), n_mels + 2))
    ramps = mel_f[:, None] - np.fft.rfftfreq(n_fft, 1 / sr)[None, :]
    fdiff = np.diff(mel_f)
    lower, upper = -ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0, np.minimum(lower, upper)) * (2 / (mel_f[2:] - mel_f[:-2]))[:, None]
    return (power @ weights.T).astype(np.float32)


@pytest.fixture(scope="module")
def voice_encoder():
    """resemblyzer's own VoiceEncoder (and its normalize_volume), imported with stand-ins for
    librosa and webrtcvad, which its audio module imports but these two do not use."""
    saved = dict(sys.modules)
    sys.modules.setdefault("librosa", types.ModuleType("librosa"))
    sys.modules.setdefault("webrtcvad", types.ModuleType("webrtcvad"))
    try:
        with warnings.catch_warnings():  # resemblyzer imports scipy.ndimage.morphology
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer.audio import normalize_volume
            from resemblyzer.voice_encoder import VoiceEncoder
        yield VoiceEncoder("cpu", verbose=False).eval(), normalize_volume
    finally:
        for name in set(sys.modules) - set(saved):
            del sys.modules[name]


@needs_resemblyzer
def test_ge2e_reads_the_real_weights_and_equals_resemblyzer(voice_encoder):
    reference, normalize_volume = voice_encoder
    ge2e = UPSTREAMS.build("ge2e").eval()
    assert ge2e.path.name == "pretrained.pt" and ge2e.path.stat().st_size > 16e6
    assert ge2e.hidden_sizes == [256] * 3 and ge2e.downsample_rate == 160
    quiet, loud = 0.05 * speechy(2.3, 120.0, seed=1), 3.0 * speechy(1.7, 210.0, seed=2)
    wavs = torch.zeros(2, len(quiet))
    wavs[0], wavs[1, :len(loud)] = quiet, loud
    with torch.no_grad():
        embeddings = ge2e.embed(wavs, torch.tensor([len(quiet), len(loud)]))
        for wav, mine in zip((quiet, loud), embeddings):
            raised = normalize_volume(wav.numpy(), -30, increase_only=True)
            mels = torch.from_numpy(librosa_melspectrogram(raised))[None]
            theirs = reference(mels)[0]
            assert mine.shape == (256,) and torch.allclose(mine.norm(), torch.tensor(1.0))
            assert torch.allclose(mine, theirs, atol=1e-5), (mine - theirs).abs().max()
        assert embeddings[0] @ embeddings[1] < 0.999  # two voices, two embeddings


@needs_resemblyzer
def test_ge2e_padding_never_changes_an_utterance():
    ge2e = UPSTREAMS.build("ge2e").eval()
    wavs, wav_lens, utts = padded([12000, 7000, 7000, 100], 12345)
    with torch.no_grad():
        hidden, lens = ge2e(wavs, wav_lens)
        check_shapes(ge2e, hidden, lens, wav_lens, 12345)
        assert lens.tolist() == [76, 44, 44, 1]  # 1 + samples // 160 (centred frames)
        embeddings = ge2e.embed(wavs, wav_lens)
        for i, utt in enumerate(utts):
            alone, _ = ge2e(utt[None], torch.tensor([len(utt)]))
            for h, a in zip(hidden, alone):
                assert torch.allclose(h[i, :lens[i]], a[0], atol=1e-5)
                assert not h[i, lens[i]:].any()
            assert torch.allclose(embeddings[i], ge2e.embed(utt[None], torch.tensor([len(utt)]))[0],
                                  atol=1e-5)


@needs_resemblyzer
def test_ge2e_checkpoint_errors_and_identity(tmp_path):
    with pytest.raises(ConfigError) as err:
        UPSTREAMS.build("ge2e", {"checkpoint": str(tmp_path / "pretrained.pt")})
    one_line_error(err, "no such file", "pretrained.pt")
    evil = tmp_path / "evil.pt"
    torch.save({"model_state": {}, "payload": Payload(str(tmp_path / "code-ran"))}, evil)
    with pytest.raises(CheckpointError) as err:
        UPSTREAMS.build("ge2e", {"checkpoint": str(evil)})
    one_line_error(err, "not a weights-only torch file")
    assert not (tmp_path / "code-ran").exists()
    torch.save({"model_state": {"linear.weight": torch.zeros(256, 256)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a resemblyzer VoiceEncoder state"):
        UPSTREAMS.build("ge2e", {"checkpoint": str(tmp_path / "other.pt")})
    packaged = UPSTREAMS.build("ge2e")
    shutil.copy(packaged.path, tmp_path / "copy.pt")
    copied = UPSTREAMS.build("ge2e", {"checkpoint": str(tmp_path / "copy.pt")})
    assert packaged.identity()["weights"] == copied.identity()["weights"]
    assert packaged.identity()["upstream"] == "ge2e"
    # LSTMs 40→256, 256→256, 256→256 and the linear 256→256: VoiceEncoder's parameters
    assert sum(p.numel() for p in packaged.parameters()) == 1_423_616
