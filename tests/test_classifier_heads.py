"""The tutorials' heads (m5 over the waveform upstream, resnet18, mlp_probe): padding never
changes an item's logits, and each one learns keyword spotting through KWS().run."""
from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from framework.audio.io import read_audio
from framework.models.downstream import DOWNSTREAMS
from framework.models.upstream import UPSTREAMS

# (head, its conf, upstream, upstream conf): the pairings the tutorials use
HEADS = {
    "m5": ({}, "waveform", {}),
    "resnet18": ({"width": 8}, "mel", {"n_mels": 64}),
    "mlp_probe": ({"hidden_size": 64}, "fbank", {}),
}


@pytest.fixture(scope="module")
def clips(corpus):
    """Four real clips of the synthesized corpus, cut to different lengths, as a padded
    batch. 3200 samples are shorter than M5's receptive field; 10592 give 64 mel frames, 32
    after resnet18's stem: an even count, so its max-pool reaches past the last valid frame."""
    files = sorted(corpus["v0.01"].glob("[a-z]*/*.wav"))[:4]
    waves = [read_audio(f)[:n] for f, n in zip(files, (16000, 10592, 7000, 3200))]
    lens = torch.tensor([len(w) for w in waves])
    batch = torch.zeros(len(waves), int(lens.max()))
    for row, wave in enumerate(waves):
        batch[row, : len(wave)] = wave
    return batch, lens


def head_and_upstream(name: str):
    conf, upstream_name, upstream_conf = HEADS[name]
    upstream = UPSTREAMS.build(upstream_name, upstream_conf)
    torch.manual_seed(0)
    head = DOWNSTREAMS.build(name, conf, input_size=upstream.hidden_sizes[0], output_size=12,
                             input_stride=upstream.downsample_rate)
    return head, upstream


@pytest.mark.parametrize("name", sorted(HEADS))
def test_padding_never_changes_an_items_logits(name, clips):
    head, upstream = head_and_upstream(name)
    wavs, lens = clips
    head.train()
    for _ in range(3):  # batch-norm running statistics move off their initial values
        [feats], frames = upstream(wavs, lens)
        head(feats, frames)
    head.eval()
    [feats], frames = upstream(wavs, lens)
    batch = head(feats, frames)
    assert batch.shape == (4, 12) and torch.isfinite(batch).all()
    for row in range(4):
        [alone], alone_frames = upstream(wavs[row:row + 1, : lens[row]], lens[row:row + 1])
        assert alone_frames.item() == frames[row].item()
        torch.testing.assert_close(head(alone, alone_frames)[0], batch[row], atol=2e-5,
                                   rtol=1e-4)
    # training mode: batch-norm statistics come from valid positions only, so more padding
    # (garbage features past each length) changes nothing either
    head.train()
    longer = torch.cat([feats, 50 * torch.randn(4, 37, feats.shape[2])], 1)
    outputs = []
    for features in (feats, longer):
        torch.manual_seed(1)  # the same dropout masks for mlp_probe
        outputs.append(head(features, frames))
    torch.testing.assert_close(outputs[0], outputs[1], atol=2e-5, rtol=1e-4)


def test_masked_batch_norm_is_batch_norm_on_unpadded_input():
    from framework.models.classifiers import masked_batch_norm

    torch.manual_seed(0)
    ours, theirs = torch.nn.BatchNorm2d(4), torch.nn.BatchNorm2d(4)
    for norm in (ours, theirs):
        norm.weight.data = torch.linspace(0.5, 2, 4)
    for _ in range(3):
        x = 3 * torch.randn(3, 4, 7, 5) + 1
        torch.testing.assert_close(masked_batch_norm(ours, x, torch.ones(3, 1, 7, 1)),
                                   theirs(x))
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)
    torch.testing.assert_close(ours.running_var, theirs.running_var)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 4, 6, 5)
    torch.testing.assert_close(masked_batch_norm(ours, x, torch.ones(2, 1, 6, 1)), theirs(x))


def test_heads_mirror_their_recipes_shapes():
    m5 = DOWNSTREAMS.build("m5", {}, input_size=1, output_size=35, input_stride=1)
    # the tutorial's M5(n_input=1, n_output=35): 4 convs of 32, 32, 64, 64 channels
    assert [c.out_channels for c in m5.convs] == [32, 32, 64, 64]
    assert (m5.convs[0].kernel_size, m5.convs[0].stride) == ((80,), (16,))
    assert m5.min_samples == 6848  # the shortest input leaving one frame after the 4 pools
    resnet = DOWNSTREAMS.build("resnet18", {"width": 64}, input_size=64, output_size=1000,
                               input_stride=160)
    # torchvision's resnet18 has 11,689,512 parameters; its 3-channel 7x7 stem of 64 has
    # 64 * 2 * 49 = 6,272 weights more than this 1-channel one
    assert sum(p.numel() for p in resnet.parameters()) == 11_689_512 - 6_272
    probe = DOWNSTREAMS.build("mlp_probe", {"num_layers": 0}, input_size=80, output_size=10,
                              input_stride=160)
    assert [m.in_features for m in probe.mlp] == [160]  # a linear probe on mean + std


def history(target) -> dict:
    return json.loads((target / "train" / "history.json").read_text())


# Measured (train.seed 1337, 2, 3; 1 and 2 threads; test accuracy over 24 items, chance 1/12;
# the ratio is the last logged training loss over the first):
#   m5, 80 steps: ratio 0.10-0.16, accuracy 0.375-0.875 (its batch-norm running statistics
#     lag the fast-moving weights this early, so test accuracy swings between seeds)
#   resnet18 (width 8), 40 steps: ratio 0.11-0.14, accuracy 0.75-0.92
#   mlp_probe (hidden 64), 40 steps: ratio 0.36-0.43, accuracy 0.875-1.0
# Each bound sits 1.6x or more from the worst ratio and 4+ items below the worst accuracy,
# and at least 2.4x chance.
def test_m5_learns_on_raw_waveforms(tmp_path, run_kws):
    target = tmp_path / "m5"
    run_kws(target, dotlist=["build_downstream.name=m5", "build_downstream.conf={}"],
            build_upstream={"name": "waveform"}, build_optimizer={"conf": {"lr": 0.01}},
            train={"total_steps": 80, "eval_step": 40, "save_step": 40})
    assert_learned(target, "m5", max_loss_ratio=0.35, min_accuracy=0.2)


@pytest.mark.parametrize("name, max_loss_ratio, min_accuracy", [("resnet18", 0.4, 0.4),
                                                                ("mlp_probe", 0.7, 0.5)])
def test_feature_heads_learn(name, max_loss_ratio, min_accuracy, tmp_path, run_kws):
    conf, upstream, upstream_conf = HEADS[name]
    target = tmp_path / name
    run_kws(target, dotlist=[f"build_downstream.name={name}",
                             f"build_downstream.conf={json.dumps(conf)}"],
            build_upstream={"name": upstream, "conf": upstream_conf})
    assert_learned(target, name, max_loss_ratio, min_accuracy)


def assert_learned(target, name: str, max_loss_ratio: float, min_accuracy: float) -> None:
    losses = [h["loss"] for h in history(target)["train"]]
    report = json.loads((target / "report" / "report.json").read_text())
    assert report["config"]["downstream"]["name"] == name
    accuracy = report["headline"]["metrics"]["accuracy"]
    assert losses[-1] < max_loss_ratio * losses[0], losses
    assert accuracy > min_accuracy, accuracy
    predictions = pd.read_csv(target / "evaluate" / "valid_best" / "test" / "predictions.csv")
    assert len(predictions) == len(pd.read_csv(target / "data" / "test.csv"))
