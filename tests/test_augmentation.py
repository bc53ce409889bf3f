"""Training-time augmentation (build_augmentation): the SNR of added noise, the lengths and
pitch of speed perturbation, per-item SpecAugment masks, nothing at evaluation, bad noise
folders refused before stage 0, the feature cache left out of augmented training, every
augmentation learning in a KWS run, and a killed augmented run resuming bitwise."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from framework.errors import ConfigError
from framework.models import augment
from framework.models.downstream import DOWNSTREAMS
from framework.models.featurizer import Featurizer
from framework.models.model import UpstreamDownstreamModel
from framework.models.upstream import UPSTREAMS

OFF = {"spec_augment": {"time_masks": 0, "time_mask_frames": 20, "freq_masks": 0,
                        "freq_mask_bins": 10},
       "noise": {"folder": None, "probability": 1.0, "min_snr_db": 5.0, "max_snr_db": 20.0},
       "speed": {"factors": []}}


def section(**changes) -> dict:
    """The build_augmentation section with ``changes`` ({"noise": {...}, ...}) over OFF."""
    return {key: {**value, **changes.get(key, {})} for key, value in OFF.items()}


def tones(freq: float, lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch of 16 kHz sines of ``freq`` Hz, one per length, amplitude 0.5."""
    batch = torch.zeros(len(lens), max(lens))
    for row, n in enumerate(lens):
        batch[row, :n] = 0.5 * torch.sin(2 * math.pi * freq * torch.arange(n) / 16000)
    return batch, torch.tensor(lens)


@pytest.fixture(scope="module")
def noise_folder(corpus):
    """Speech Commands' _background_noise_ of the synthesized corpus (white, pink, brown
    noise and mains hum, 8 s each)."""
    return corpus["v0.01"] / "_background_noise_"


def measured_snr(clean: torch.Tensor, noisy: torch.Tensor, n: int) -> float:
    added = noisy[:n] - clean[:n]
    return 10 * math.log10(clean[:n].square().sum() / added.square().sum())


@pytest.mark.parametrize("snr", [0.0, 12.5])
def test_noise_is_added_at_the_drawn_snr_and_never_into_padding(snr, noise_folder):
    noise = augment.Noise(16000, str(noise_folder), 1.0, snr, snr)
    clean, lens = tones(440, [16000, 9000, 4000])
    torch.manual_seed(0)
    noisy = noise(clean, lens)
    for row, n in enumerate(lens.tolist()):
        assert measured_snr(clean[row], noisy[row], n) == pytest.approx(snr, abs=0.01)
        assert not noisy[row, n:].any()  # padding stays silent


def test_noise_snrs_spread_over_the_range_and_probability_holds(noise_folder):
    noise = augment.Noise(16000, str(noise_folder), 0.5, 5.0, 20.0)
    clean, lens = tones(300, [8000] * 200)
    torch.manual_seed(0)
    noisy = noise(clean, lens)
    changed = [row for row in range(200) if not torch.equal(noisy[row], clean[row])]
    assert 70 <= len(changed) <= 130  # binomial(200, 0.5): 100 +- 3.5 sigma
    snrs = [measured_snr(clean[row], noisy[row], 8000) for row in changed]
    assert 5.0 - 0.01 <= min(snrs) < 7.0 and 18.0 < max(snrs) <= 20.0 + 0.01


def test_noise_files_are_resampled_to_the_models_rate(noise_folder):
    files = augment.noise_files(noise_folder)
    at_8k = augment.Noise(8000, str(noise_folder)).clips()
    at_16k = augment.Noise(16000, str(noise_folder)).clips()
    assert len(files) == len(at_8k) == 4
    assert [len(c) for c in at_8k] == [len(c) // 2 for c in at_16k]


def dominant_hz(wave: torch.Tensor, rate: int = 16000) -> float:
    spectrum = torch.fft.rfft(wave).abs()
    return float(spectrum.argmax()) * rate / len(wave)


@pytest.mark.parametrize("factor, freq", [(1.25, 1250.0), (0.8, 800.0)])
def test_speed_changes_length_and_pitch_by_the_factor(factor, freq):
    speed = augment.Speed([factor])
    wavs, lens = tones(1000, [16000, 8000])
    out, new_lens = speed(wavs, lens)
    assert new_lens.tolist() == [math.ceil(16000 / factor), math.ceil(8000 / factor)]
    assert out.shape == (2, int(new_lens.max()))
    assert not out[1, new_lens[1]:].any()
    for row in range(2):
        assert dominant_hz(out[row, : new_lens[row]]) == pytest.approx(freq, abs=3)


def test_speed_draws_one_factor_per_item():
    speed = augment.Speed([0.9, 1.0, 1.1])
    wavs, lens = tones(500, [9900] * 60)
    torch.manual_seed(0)
    out, new_lens = speed(wavs, lens)
    assert set(new_lens.tolist()) == {11000, 9900, 9000}
    same = [row for row in range(60) if new_lens[row] == 9900]
    assert all(torch.equal(out[row, :9900], wavs[row]) for row in same)  # 1.0 is untouched


def test_spec_augment_masks_whole_frames_and_bins_per_item():
    spec = augment.SpecAugment(time_masks=2, time_mask_frames=30, freq_masks=2,
                               freq_mask_bins=12)
    torch.manual_seed(0)
    out = spec(torch.ones(16, 100, 40), torch.full((16,), 100))
    zero = out == 0
    frames, bins = zero.all(2), zero.all(1)  # (B, T) masked frames, (B, D) masked bins
    assert torch.equal(zero, frames[:, :, None] | bins[:, None, :])  # nothing else masked
    counts = frames.sum(1)
    assert counts.max() > 0 and len(set(counts.tolist())) > 3  # widths drawn per item
    assert 0 < bins.sum(1).float().mean() <= 24



def test_frequency_masks_cover_at_most_half_the_bins_and_spare_a_waveform():
    spec = augment.SpecAugment(freq_masks=4, freq_mask_bins=10)
    torch.manual_seed(0)
    narrow = spec(torch.ones(32, 50, 6), torch.full((32,), 50))
    assert ((narrow == 0).all(1).sum(1) <= 4 * 3).all()  # each mask at most 6 // 2 bins
    # one dimension (the waveform upstream): a mask would erase the whole input
    assert torch.equal(spec(torch.ones(8, 400, 1), torch.full((8,), 400)), torch.ones(8, 400, 1))

def kws_model(conf: dict, sample_rate: int = 16000) -> UpstreamDownstreamModel:
    upstream = UPSTREAMS.build("fbank")
    torch.manual_seed(0)
    head = DOWNSTREAMS.build("mean_linear", {"hidden_size": 16}, input_size=80, output_size=4,
                             input_stride=160)
    return UpstreamDownstreamModel(upstream, Featurizer(upstream), head,
                                   augmentation=augment.build(conf, sample_rate))


def test_augmentation_acts_in_training_mode_only(noise_folder):
    everything = section(spec_augment={"time_masks": 2, "freq_masks": 2},
                         noise={"folder": str(noise_folder)}, speed={"factors": [0.9, 1.1]})
    model, plain = kws_model(everything), kws_model(None)
    assert plain.augmentation is None and kws_model(section()).augmentation is None
    assert model.augmentation.changes_waveform
    assert model.state_dict().keys() == plain.state_dict().keys()  # checkpoints unchanged
    wavs, lens = tones(700, [16000, 12000])
    batch = {"wav": wavs, "wav_len": lens}
    reference = plain.eval()(batch)
    assert torch.equal(model.eval()(batch), reference)
    assert torch.equal(plain.train()(batch), reference)  # the head has no dropout
    assert not torch.allclose(model.train()(batch), reference, atol=1e-3)


@pytest.mark.parametrize("make, message", [
    (lambda tmp, noise: {"noise": {"folder": str(tmp / "missing")}},
     r"build_augmentation\.noise\.folder: no such folder .*missing"),
    (lambda tmp, noise: {"noise": {"folder": str(tmp)}},
     r"build_augmentation\.noise\.folder: no \.wav file under"),
    (lambda tmp, noise: {"noise": {"folder": str(noise), "min_snr_db": 30.0}},
     r"build_augmentation\.noise\.min_snr_db=30.0 is above .*max_snr_db=20.0"),
    (lambda tmp, noise: {"speed": {"factors": [0.9, 3]}},
     r"build_augmentation\.speed\.factors: 3 must be between 0\.5 and 2"),
])
def test_bad_augmentation_settings_are_refused_before_stage_0(make, message, tmp_path, run_kws,
                                                              noise_folder):
    (tmp_path / "notes.txt").write_text("not audio")
    target = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        run_kws(target, build_augmentation=make(tmp_path, noise_folder))
    assert not target.exists()  # a rejected command writes nothing


def history(target) -> dict:
    return json.loads((target / "train" / "history.json").read_text())


def accuracy(target) -> float:
    report = json.loads((target / "report" / "report.json").read_text())
    return report["headline"]["metrics"]["accuracy"]


@pytest.mark.parametrize("name", ["spec_augment", "noise", "speed"])
def test_each_augmentation_trains_in_a_kws_run(name, tmp_path, run_kws, noise_folder):
    chosen = {"spec_augment": {"spec_augment": {"time_masks": 2, "freq_masks": 2}},
              "noise": {"noise": {"folder": str(noise_folder), "min_snr_db": 0.0}},
              "speed": {"speed": {"factors": [0.8, 0.9, 1.1, 1.2]}}}[name]
    target = tmp_path / name
    run_kws(target, build_augmentation=chosen)
    losses = [h["loss"] for h in history(target)["train"]]
    # measured last/first loss 0.13-0.45 (speed 0.8-1.2 the hardest) and accuracy >= 0.83 over
    # seeds; chance accuracy 1/12: bounds far from both the runs and an untrained model
    assert losses[-1] < 0.7 * losses[0], losses
    assert accuracy(target) > 0.5


def test_waveform_augmentation_keeps_training_off_the_feature_cache(tmp_path, run_kws,
                                                                    noise_folder):
    import pandas as pd

    tiny = {"random_init": True, "config": {
        "num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2,
        "intermediate_size": 32, "conv_dim": [16, 16, 16], "conv_kernel": [10, 8, 4],
        "conv_stride": [5, 8, 8], "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4}}
    target, cache = tmp_path / "run", tmp_path / "cache"
    run_kws(target, cache_dir=str(cache), stop="train",
            build_upstream={"name": "wav2vec2", "conf": tiny, "cache_features": True},
            build_augmentation={"speed": {"factors": [0.9, 1.1]}},
            train={"total_steps": 4, "eval_step": 4, "save_step": 4, "log_step": 2})
    assert "training runs the upstream live, not from the feature cache" in \
        (target / "log.txt").read_text()
    valid = len(pd.read_csv(target / "data" / "valid.csv"))
    # validation still reads the cache: its utterances are the only entries
    assert len(list((cache / "features").rglob("*.npy"))) == valid
    assert all(math.isfinite(h["loss"]) for h in history(target)["train"])


def test_an_augmented_run_killed_mid_step_resumes_bitwise(tmp_path, run_kws, corpus,
                                                          noise_folder):
    import yaml

    from tests.conftest import FAST, corpus_overrides, merge

    settings = {"build_augmentation": {
        "spec_augment": {"time_masks": 2, "freq_masks": 1},
        "noise": {"folder": str(noise_folder), "probability": 0.5},
        "speed": {"factors": [0.9, 1.0, 1.1]}},
        "train": {"total_steps": 30, "save_step": 10, "eval_step": 30, "log_step": 10}}
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_kws(straight, stop="train", **settings)
    config = tmp_path / "augmented.yaml"
    config.write_text(yaml.safe_dump(merge(merge(FAST, corpus_overrides(corpus)), settings)))
    command = [sys.executable, "-m", "framework", "run", "kws", "--config", str(config),
               f"target_dir={killed}", "stop=train"]
    env = {**os.environ, "SPEECH_RECIPES_KILL_AT": "step@15"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_kws(killed, stop="train", **settings)  # the same command again
    assert "resumed from" in (killed / "log.txt").read_text()
    expected, got = (torch.load(d / "train/checkpoints/step-00000030.pt", weights_only=True)
                     for d in (straight, killed))
    for name, tensor in expected["task"].items():
        assert torch.equal(tensor, got["task"][name]), name
    assert expected["progress"]["train_history"] == got["progress"]["train_history"]


def test_the_report_says_which_augmentation_trained_the_model(tmp_path, run_kws):
    import json

    target = tmp_path / "run"
    run_kws(target, build_augmentation={"spec_augment": {"time_masks": 2}},
            train={"total_steps": 10, "eval_step": 10, "save_step": 10, "log_step": 5})
    rows = [line for line in (target / "report" / "report.md").read_text().splitlines()
            if line.startswith("| Augmentation (training only) |")]
    assert len(rows) == 1 and "spec_augment" in rows[0] and "time_masks=2" in rows[0], rows
    assert "noise" not in rows[0] and "speed" not in rows[0]
    summary = json.loads((target / "report" / "report.json").read_text())["config"]
    assert summary["augmentation"]["spec_augment"]["time_masks"] == 2
