"""The pretrained GE2E speaker encoder (upstream ``ge2e``, resemblyzer's ``pretrained.pt``)
on a synthesized VoxCeleb1: its weights mean something for speakers it never heard.

What is asserted, and what is not (measured on 2 shared cores, 3 seeds, native AVX-512 and
``ATEN_CPU_CAPABILITY=avx2`` / ``=default``; the figures are next to each assertion):

- Through the recipe (``ASV().run``, stages 0-4, test EER from evaluate/results.json), frozen
  GE2E with its pretrained weights beats the same network with untrained weights by a wide
  margin under the same small x-vector, loss and 60 steps; its training features come from
  the frozen-feature cache.
- With no training at all, the mean and standard deviation over time of GE2E's lower LSTM
  layers separate the test speakers about twice as well as those of fbank.
- NOT asserted: that frozen GE2E beats fbank through the recipe. It does on average (test
  EER 12.8 % against 14.8 % at this budget) but not on every seed and CPU (9.9-21.9 % against
  10.9-16.7 %; 16.9 % against 21.2 % without featurizer normalisation, 16.6 % against 20.0 %
  at 120 steps, 21.2 % against 29.2 % at 20 steps, always overlapping; with 4 training
  speakers instead of 12, fbank wins: 20.7 % against 25.2 %). The synthetic voices differ by
  stationary spectral colour, pitch and formant scale, which an x-vector learns from fbank in a
  few dozen steps; GE2E's top layer, trained on real voices, barely encodes them (with no
  training, pooled over time it scores 23 % test EER and GE2E's own embedding 22-23 %,
  against pooled fbank's 29 %).

If resemblyzer's weights are missing, every test here fails saying how to install them (CI
installs them: ``make setup`` runs ``pip install --no-deps resemblyzer``); nothing is skipped.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from corpora.synthesize import synthesize_voxceleb1
from framework.audio.dataset import AudioDataset, read_manifest
from framework.errors import ConfigError
from framework.feature_cache import FeatureStore, entries_for
from framework.metrics.verification import cosine_scores, eer
from framework.models.ge2e import packaged_weights
from framework.models.upstream import UPSTREAMS
from framework.verification import trial_rows
from recipes.asv import ASV
from tests.conftest import merge

# tiny tensors on 2 shared cores: one torch thread (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")

# The same downstream, loss, optimizer and steps for every upstream compared: a small x-vector
# and 60 steps. Featurizer layer normalisation (s3prl's default) is applied to every run alike:
# mean test EER GE2E 12.8 % with it, 16.9 % without; fbank 14.8 % and 21.2 %.
BUDGET = {
    "num_workers": 0,
    "prepare_data": {"valid_speakers": 4, "valid_trials": 100},
    "build_dataset": {"train": {"min_secs": 1.0, "max_secs": 2.0}},
    "build_batch_sampler": {"train": {"batch_size": 16}},
    "build_featurizer": {"normalize": True},
    "build_downstream": {"embedding_size": 64,
                         "conf": {"hidden_size": 64, "channels": [64, 64, 64, 64, 128]}},
    "train": {"total_steps": 60, "eval_step": 60, "save_step": 60, "log_step": 20,
              "gradient_accumulate": 1},
    "build_optimizer": {"conf": {"lr": 3e-3}},
}
TEST_LIST = "veri_test2"


@pytest.fixture(scope="module")
def ge2e_weights() -> Path:
    """resemblyzer's pretrained.pt; a missing file fails the test (never a skip)."""
    try:
        return packaged_weights()
    except ConfigError as err:
        missing = str(err)
    pytest.fail(f"the GE2E tests need resemblyzer's pretrained weights: {missing}",
                pytrace=False)


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory) -> Path:
    """A state dict shaped like resemblyzer's VoiceEncoder (3-layer LSTM 40→256, linear
    256→256) with torch's own initialisation, seeded: the same network, untrained."""
    path = tmp_path_factory.mktemp("untrained") / "voice_encoder.pt"
    with torch.random.fork_rng():
        torch.manual_seed(0)
        encoder = nn.Module()
        encoder.lstm = nn.LSTM(40, 256, num_layers=3, batch_first=True)
        encoder.linear = nn.Linear(256, 256)
    torch.save(encoder.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ge2e_weights, untrained_weights) -> dict[str, Path]:
    """Target dirs of the recipe (stages 0-4) over frozen GE2E, pretrained and untrained,
    sharing one cache_dir (the feature cache keys its folders by the weights)."""
    home = tmp_path_factory.mktemp("ge2e_asv")
    corpus = synthesize_voxceleb1(home / "corpus", min_secs=1.5, max_secs=3.0)
    settings = merge(BUDGET, {"prepare_data": {k: str(v) for k, v in corpus.items()},
                              "cache_dir": str(home / "cache")})
    targets = {}
    for name, weights in (("pretrained", ge2e_weights), ("untrained", untrained_weights)):
        targets[name] = home / name
        ASV().run(target_dir=str(targets[name]), **merge(settings, {"build_upstream": {
            "name": "ge2e", "conf": {"checkpoint": str(weights)}}}))
    return targets


def recipe_eer(target: Path) -> float:
    """The test EER stage 3 wrote to evaluate/results.json (its one checkpoint)."""
    [record] = [r for r in json.loads((target / "evaluate/results.json").read_text())
                if r["split"] == TEST_LIST]
    return record["metrics"]["eer"]


def test_frozen_pretrained_ge2e_beats_its_untrained_network_through_the_recipe(runs):
    pretrained, untrained = recipe_eer(runs["pretrained"]), recipe_eer(runs["untrained"])
    # Test EER, seeds 1337/1/2 (train.seed), 60 steps, one thread, measured on a loaded 2-core
    # Xeon (load 6-9):
    #   pretrained  AVX-512 10.4/12.5/10.9 %  avx2 13.0/9.9/12.5 %  default 10.4/21.9/14.1 %
    #   untrained   AVX-512 32.8/35.4/38.0 %  avx2 27.6/38.5/31.8 %  default 34.4/37.0/32.3 %
    #   (fbank, same settings: AVX-512 15.6/14.1/15.1 %  avx2 15.6/16.1/15.1 %
    #    default 10.9/13.5/16.7 %; chance 50 %)
    # The gap is 14.6-28.6 points (mean 21.4); asserted: more than 7. Each recipe run takes
    # 13-25 s there (10-14 s of CPU; the first run of a process 25-47 s), the whole file
    # 50-80 s.
    assert pretrained < untrained - 0.07, (pretrained, untrained)


def test_ge2e_training_features_come_from_the_feature_cache(runs):
    cache = runs["pretrained"].parent / "cache"
    train = AudioDataset(read_manifest(runs["pretrained"] / "data/train.csv"))
    ge2e = UPSTREAMS.build("ge2e").eval()
    store = FeatureStore(cache, ge2e.identity(), [0, 1, 2])
    # one folder per weight file (pretrained, untrained), each with every training clip once
    folders = sorted(cache.glob("features/*/upstream.json"))
    assert len(folders) == 2 and store.folder / "upstream.json" in folders
    assert all(len(list(f.parent.glob("*/*.npy"))) == len(train) == 144 for f in folders)
    entries = entries_for(store, train)
    assert all(entry.is_file() for entry in entries)
    log = (runs["pretrained"] / "log.txt").read_text()
    assert f"feature cache: extracting {len(train)} utterances" in log
    # an entry is the whole clip's three LSTM layers in fp16, as a live forward pass gives them
    cached = FeatureStore.read(entries[0])
    wav = train.window(0, None, None)
    with torch.no_grad():
        hidden, lens = ge2e(wav[None], torch.tensor([len(wav)]))
    assert cached.dtype == np.float16 and cached.shape == (3, int(lens[0]), 256)
    np.testing.assert_allclose(cached.astype(np.float32), torch.stack(hidden)[:, 0].numpy(),
                               atol=2e-3)


def pooled(upstream, manifest_csv: Path) -> np.ndarray:
    """(layers, utterances, 2 D): per layer, the mean and std over time of the frozen
    upstream's hidden states of each utterance of a manifest; no head, no training."""
    audio, rows = AudioDataset(read_manifest(manifest_csv)), []
    with torch.no_grad():
        for index in range(len(audio)):
            wav = audio.window(index, None, None)
            hidden, _ = upstream(wav[None], torch.tensor([len(wav)]))
            rows.append(torch.stack([torch.cat([h[0].mean(0), h[0].std(0)]) for h in hidden]))
    return torch.stack(rows, 1).double().numpy()


def pooled_eers(upstream, target: Path) -> list[float]:
    """Per layer, the test EER of cosine scores between pooled vectors centred on the mean
    of the training utterances' (the trial lists and manifests are the run's stage 0)."""
    data = target / "data"
    test, train = pooled(upstream, data / f"{TEST_LIST}_utts.csv"), pooled(
        upstream, data / "train.csv")
    index1, index2 = trial_rows(data / f"{TEST_LIST}.csv", data / f"{TEST_LIST}_utts.csv")
    labels = read_manifest(data / f"{TEST_LIST}.csv")["label"].astype(int).to_numpy()
    return [eer(cosine_scores(t - r.mean(0), index1, index2), labels)[0]
            for t, r in zip(test, train)]


def test_pooled_pretrained_ge2e_layers_separate_speakers_better_than_fbank(runs):
    """No training: the speaker knowledge is in the pretrained weights, not a trained head."""
    [fbank] = pooled_eers(UPSTREAMS.build("fbank", {"mean_norm": False}).eval(),  # keep
                          runs["pretrained"])  # the mean log-mel: the voices' colour
    ge2e = pooled_eers(UPSTREAMS.build("ge2e").eval(), runs["pretrained"])
    # Test EER with no training, the same on AVX-512, avx2 and default (no seed involved):
    #   GE2E pretrained: layer 0 13.5 %, layer 1 15.1 %, layer 2 23.4 %
    #   GE2E untrained (the same network): 39.1 %, 35.4 %, 36.5 %;  fbank (no CMN) 28.6 %
    # Asserted: both lower layers more than 8 points below fbank (measured 15.1 and 13.6
    # below); the top layer is only 5 points below, and not asserted. This test takes 8-12 s.
    assert ge2e[0] < fbank - 0.08 and ge2e[1] < fbank - 0.08, (ge2e, fbank)
