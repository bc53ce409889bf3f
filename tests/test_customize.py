"""Changing a piece: a section override (YAML/dotlist) or a subclass overriding one build_*."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import torch
from torch import nn

from framework.models.upstream import masked_mean
from recipes.kws import KWS
from tests.conftest import corpus_overrides


def trained_state(target_dir) -> dict:
    return torch.load(target_dir / "train/checkpoints/valid_best.pt", weights_only=True)


def test_section_overrides_change_the_built_model(tmp_path, run_kws):
    run_kws(tmp_path, stop="train", dotlist=["build_upstream.conf.num_mel_bins=40",
                                             "build_downstream.conf.hidden_size=8"])
    weights = trained_state(tmp_path)["task"]["model.downstream.project.0.weight"]
    assert weights.shape == (8, 40)


class MaxPoolHead(nn.Module):
    """Max over frames, then linear."""

    def __init__(self, input_size, output_size):
        super().__init__()
        self.linear = nn.Linear(input_size, output_size)

    def forward(self, features, lens):
        return self.linear(features.max(1).values - masked_mean(features, lens))


class MaxPoolKWS(KWS):
    def build_downstream(self, build_downstream, downstream_input_size,
                         downstream_output_size, downstream_input_stride):
        return MaxPoolHead(downstream_input_size, downstream_output_size)


def test_subclass_overriding_one_build_method(tmp_path, run_kws):
    records = run_kws(tmp_path, problem=MaxPoolKWS)
    state = trained_state(tmp_path)
    assert state["problem"] == "tests.test_customize:MaxPoolKWS"
    assert set(k for k in state["task"] if "downstream" in k) == {
        "model.downstream.linear.weight", "model.downstream.linear.bias"}
    assert records["report"] is not None


USER_MODULE = '''
from recipes.kws import KWS


class MyKWS(KWS):
    """A user's keyword spotter with its own defaults."""

    config_file = "my_kws.yaml"
'''


def test_user_subclass_with_layered_yaml_runs_from_the_cli(tmp_path, corpus):
    package = tmp_path / "my_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "my_mod.py").write_text(USER_MODULE)
    (package / "my_kws.yaml").write_text(textwrap.dedent("""\
        # my overrides of configs/kws.yaml
        build_upstream:
          name: mfcc               # MFCCs instead of fbank
        """))
    roots = corpus_overrides(corpus)["prepare_data"]
    command = [sys.executable, "-m", "framework", "run", "my_pkg.my_mod:MyKWS",
               f"target_dir={tmp_path / 'exp'}", "stop=train", "num_workers=0",
               f"prepare_data.dataset_root={roots['dataset_root']}",
               f"prepare_data.test_root={roots['test_root']}", "train.total_steps=4",
               "train.eval_step=4", "train.log_step=2"]
    env = {"PYTHONPATH": f"{tmp_path}:{sys.path[0]}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    saved = (tmp_path / "exp" / "train" / "config.yaml").read_text()
    assert "name: mfcc" in saved
    weights = trained_state(tmp_path / "exp")["task"]["model.downstream.project.0.weight"]
    assert weights.shape[1] == 40  # 40 MFCCs, not 80 filterbank bins
