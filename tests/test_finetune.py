"""Fine-tuning (issue 9 §5): a trainable SSL upstream with its own learning rate and a frozen
CNN feature encoder, warmup-then-decay schedules, ``train.precision`` (bf16 on real KWS runs,
fp16's loss scaler on a toy trainer), exact resume under bf16, and what is refused before
stage 0."""
from __future__ import annotations

import doctest
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from framework import schedules
from framework.checkpoint import CheckpointDir
from framework.errors import ConfigError
from framework.models.upstream import UPSTREAMS
from framework.tasks.base import Task
from framework.trainer import Trainer, TrainConfig, seed_everything
from recipes.kws import KWS
from tests.conftest import FAST, corpus_overrides, merge

# tiny tensors on 2 shared cores: one torch thread (conftest)
pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny random-init wav2vec2: 2 transformer layers of 32, a 3-layer CNN, 320x downsampling
# (LayerDrop is off by default: a fine-tuned forward returns every layer)
TINY_SSL = {"name": "wav2vec2", "conf": {"random_init": True, "config": {
    "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
    "intermediate_size": 64, "conv_dim": [32, 32, 32], "conv_kernel": [10, 8, 4],
    "conv_stride": [5, 8, 8], "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4}}}
LR, UPSTREAM_LR, TOTAL, WARMUP = 3e-3, 1e-3, 20, 5  # FAST's lr; warmup_ratio 0.25 of 20
SETTINGS = {
    "build_upstream": TINY_SSL, "build_downstream": {"conf": {"hidden_size": 32}},
    "build_model": {"upstream_trainable": True, "freeze_feature_encoder": True},
    "build_optimizer": {"upstream_lr": UPSTREAM_LR},
    "build_batch_sampler": {"train": {"batch_size": 8}},
    "train": {"total_steps": TOTAL, "save_step": 10, "eval_step": TOTAL, "log_step": 5,
              "precision": "bf16"}}
# an open mapping switched to another class is replaced on the command line (not merged)
WARMUP_DOTLIST = ["build_scheduler.name=warmup",
                  "build_scheduler.conf={warmup_ratio: 0.25, decay: linear}"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, corpus):
    """Stages 0-4 of KWS with the tiny upstream fine-tuned (bf16, warmup, frozen CNN)."""
    target = tmp_path_factory.mktemp("finetune") / "exp"
    settings = merge(merge(FAST, corpus_overrides(corpus)), SETTINGS)
    records = KWS().run(dotlist=WARMUP_DOTLIST, target_dir=str(target), **settings)
    return target, records


def step_checkpoint(target, step: int) -> dict:
    return torch.load(target / f"train/checkpoints/step-{step:08d}.pt", weights_only=True)


def expected_lr(step: int, base: float) -> float:
    return base * schedules.warmup_factor(step, TOTAL, WARMUP, "linear")


def test_fine_tuning_trains_the_transformer_not_the_frozen_cnn(finetuned):
    target, records = finetuned
    assert all(records[name] for name in records) and (target / "report/report.md").is_file()
    trained = step_checkpoint(target, TOTAL)["task"]
    seed_everything(1337)  # train.seed: the upstream is built first (and seeds itself)
    initial = UPSTREAMS.build(TINY_SSL["name"], TINY_SSL["conf"]).state_dict()
    cnn = [k for k in initial if k.startswith("model.feature_extractor.")]
    layers = [k for k in initial if k.startswith("model.encoder.layers.")]
    assert cnn and layers
    for key in cnn:
        assert torch.equal(trained[f"model.upstream.{key}"], initial[key]), key
    for key in layers:
        assert not torch.equal(trained[f"model.upstream.{key}"], initial[key]), key


def test_the_upstream_group_has_its_own_learning_rate_on_the_warmup_schedule(finetuned):
    target, _ = finetuned
    groups = step_checkpoint(target, 10)["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["others", "upstream"]
    assert [g["initial_lr"] for g in groups] == [LR, UPSTREAM_LR]
    for group, base in zip(groups, (LR, UPSTREAM_LR)):
        assert math.isclose(group["lr"], expected_lr(10, base)), group["name"]
    # the logged lr (the first group's) at steps 5 (end of warmup), 10, 15, 20 (end: 0)
    state = step_checkpoint(target, TOTAL)
    logged = {r["step"]: r["lr"] for r in state["progress"]["train_history"]}
    assert logged[WARMUP] == pytest.approx(LR) and logged[TOTAL] == 0.0
    assert all(math.isclose(lr, expected_lr(s, LR), abs_tol=1e-12) for s, lr in logged.items())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(target / "train/tensorboard"))
    events.Reload()
    board = {e.step: e.value for e in events.Scalars("train/lr")}
    assert board == pytest.approx(logged, abs=1e-9)


def test_warmup_schedules_follow_the_formula_and_transformers():
    from transformers import (get_constant_schedule_with_warmup,
                              get_cosine_schedule_with_warmup,
                              get_linear_schedule_with_warmup)

    theirs = {"linear": get_linear_schedule_with_warmup,
              "cosine": get_cosine_schedule_with_warmup,
              "constant": lambda opt, w, t: get_constant_schedule_with_warmup(opt, w)}
    total = 50
    for decay in schedules.DECAYS:
        for conf, warmup in (({"warmup_ratio": 0.1}, 5), ({"warmup_steps": 7}, 7), ({}, 0)):
            ours, ref = (torch.optim.SGD([{"params": [torch.nn.Parameter(torch.zeros(1))]},
                                          {"params": [torch.nn.Parameter(torch.zeros(1))],
                                           "lr": 1.0}], lr=5e-5) for _ in range(2))
            sched = schedules.build("warmup", {**conf, "decay": decay}, ours, total)
            other = theirs[decay](ref, warmup, total)
            lrs = []
            for _ in range(total + 1):
                lrs.append([g["lr"] for g in ours.param_groups])
                assert lrs[-1] == pytest.approx([g["lr"] for g in ref.param_groups])
                ours.step(), sched.step(), ref.step(), other.step()
            end = 1.0 if decay == "constant" else 0.0
            assert lrs[0] == ([0.0, 0.0] if warmup else [5e-5, 1.0])
            assert lrs[warmup] == pytest.approx([5e-5, 1.0])
            assert lrs[total] == pytest.approx([5e-5 * end, end])
    assert doctest.testmod(schedules).failed == 0


def test_the_frozen_feature_encoder_gets_no_gradient():
    from framework.models.downstream import DOWNSTREAMS
    from framework.models.featurizer import Featurizer
    from framework.models.model import UpstreamDownstreamModel

    upstream = UPSTREAMS.build(TINY_SSL["name"], TINY_SSL["conf"])
    head = DOWNSTREAMS.build("mean_linear", {"hidden_size": 8}, input_size=32, output_size=3,
                             input_stride=upstream.downsample_rate)
    model = UpstreamDownstreamModel(upstream, Featurizer(upstream), head,
                                    upstream_trainable=True, freeze_feature_encoder=True)
    model.train()
    model({"wav": torch.randn(2, 8000), "wav_len": torch.tensor([8000, 6000])}).sum().backward()
    params = dict(upstream.named_parameters())
    cnn = [p for n, p in params.items() if n.startswith("model.feature_extractor.")]
    layers = [p for n, p in params.items() if n.startswith("model.encoder.layers.")]
    assert cnn and all(not p.requires_grad and p.grad is None for p in cnn)
    assert layers and all(p.requires_grad and p.grad is not None for p in layers)


# bf16 on CPU is deterministic; the loader has a generator of its own, so creating an
# iterator after a resume does not shift the upstream's dropout/SpecAugment masks
def test_bf16_training_killed_mid_step_resumes_to_the_same_parameters(finetuned, corpus,
                                                                       tmp_path, run_kws):
    import yaml

    straight, killed = finetuned[0], tmp_path / "killed"
    config = tmp_path / "finetune.yaml"
    config.write_text(yaml.safe_dump(merge(merge(FAST, corpus_overrides(corpus)), SETTINGS)))
    command = [sys.executable, "-m", "framework", "run", "kws", "--config", str(config),
               f"target_dir={killed}", "stop=train", *WARMUP_DOTLIST]
    env = {**os.environ, "SPEECH_RECIPES_KILL_AT": "step@15", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_kws(killed, dotlist=WARMUP_DOTLIST, stop="train", **SETTINGS)  # the same command
    assert "step-00000010.pt at step 10" in (killed / "log.txt").read_text()
    expected, got = step_checkpoint(straight, TOTAL), step_checkpoint(killed, TOTAL)
    assert expected["task"].keys() == got["task"].keys()
    for name, tensor in expected["task"].items():
        assert torch.equal(tensor, got["task"][name]), name
    assert expected["progress"]["train_history"] == got["progress"]["train_history"]
    assert expected["scheduler"] == got["scheduler"]


@pytest.mark.parametrize("dotlist, message", [
    (WARMUP_DOTLIST[:1] + ["build_scheduler.conf={warmup_ratio: 1.5}"],
     r"build_scheduler.conf.warmup_ratio=1.5: must be >= 0 and <= 1"),
    (WARMUP_DOTLIST[:1] + ["build_scheduler.conf={warmup_steps: 300}", "train.total_steps=200"],
     r"build_scheduler.conf.warmup_steps=300: must be an integer >= 0 and <= "
     r"train.total_steps \(200\)"),
    (WARMUP_DOTLIST[:1] + ["build_scheduler.conf={warmup_steps: 10, warmup_ratio: 0.1}"],
     "set warmup_steps or warmup_ratio, not both"),
    (WARMUP_DOTLIST[:1] + ["build_scheduler.conf={decay: exponential}"],
     "build_scheduler.conf.decay=exponential: must be one of linear, cosine, constant"),
    (WARMUP_DOTLIST[:1] + ["build_scheduler.conf={warmup_epochs: 1}"],
     "build_scheduler.conf.warmup_epochs: not an argument of WarmupSchedule"),
    (["build_scheduler.name=warmpu"], r"'warmpu' is neither a schedule here \(warmup\) nor"),
    (["build_scheduler.conf.gama=1"], "build_scheduler.conf.gama: not an argument of "
                                      "ExponentialLR"),
    (["train.precision=fp8"], "train.precision=fp8: must be one of fp32, bf16, fp16"),
    (["train.precision=fp16", "device=cpu"], "train.precision=fp16 needs a CUDA device.*bf16"),
    (["build_optimizer.upstream_lr=0"], "build_optimizer.upstream_lr=0: must be > 0 or null"),
    (["build_model.upstream_trainable=true", "build_model.freeze_feature_encoder=true"],
     "build_model.freeze_feature_encoder=true: upstream 'fbank' has no CNN feature encoder"),
])
def test_bad_fine_tuning_settings_are_refused_before_stage_0(tmp_path, dotlist, message):
    with pytest.raises(ConfigError, match=message):
        KWS().run(dotlist=[f"target_dir={tmp_path}/exp", "prepare_data.dataset_root=/x",
                           *dotlist])
    assert not (tmp_path / "exp").exists()


# -- fp16's loss scaler, on a toy trainer (the config refuses fp16 on CPU; the code is
#    CUDA's, and torch's GradScaler runs on CPU too) ------------------------------------------
class Regression(Task):
    def __init__(self):
        super().__init__(torch.nn.Linear(4, 1))

    def train_step(self, batch):
        return torch.nn.functional.mse_loss(self.model(batch["x"]).squeeze(1), batch["y"])


class Batches:
    """A loader of fixed batches with the batch sampler's resume interface."""

    dataset = None

    def __init__(self, batches):
        self.batches, self.start, self.batch_sampler = batches, 0, self

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.start = start_batch

    def __iter__(self):
        return iter(self.batches[self.start:])


def toy_trainer(folder, total_steps: int) -> Trainer:
    torch.manual_seed(0)
    task = Regression()
    gen = torch.Generator().manual_seed(1)
    batches = [{"id": [f"{i}-{j}" for j in range(8)],
                "x": torch.randn(8, 4, generator=gen) * (1e3 if i == 0 else 0.1),
                "y": torch.randn(8, generator=gen) * 0.1} for i in range(6)]
    optimizer = torch.optim.SGD(task.parameters(), lr=0.05)
    scheduler = schedules.build("warmup", {"warmup_steps": 2}, optimizer, 6)
    conf = TrainConfig(total_steps=total_steps, save_step=3, eval_step=100, log_step=100,
                       precision="fp16")
    return Trainer(conf, task, optimizer, scheduler, Batches(batches), dict,
                   CheckpointDir(folder), torch.device("cpu"), {"problem": "toy"})


def test_fp16_overflow_skips_the_update_and_the_scaler_state_resumes(tmp_path):
    whole = toy_trainer(tmp_path / "whole", 6)
    whole.fit()
    state = torch.load(tmp_path / "whole/step-00000006.pt", weights_only=True)
    # batch 0 (inputs ~1e3) overflows float16 at the initial scale 2^16: skipped, scale halved
    assert state["progress"]["skipped_steps"] == 1 and state["scaler"]["scale"] == 2.0 ** 15
    assert state["scheduler"]["last_epoch"] == 5  # the skipped update did not advance it
    toy_trainer(tmp_path / "split", 3).fit()  # stops after its step-3 checkpoint
    resumed = toy_trainer(tmp_path / "split", 6)
    resumed.fit()
    assert resumed.scaler.state_dict() == whole.scaler.state_dict()
    for (name, a), b in zip(whole.task.state_dict().items(), resumed.task.state_dict().values()):
        assert torch.equal(a, b), name
