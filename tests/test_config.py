"""The config contract: defaults < --config files < dotlist, strict keys and types."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from framework.config import yaml_comments
from framework.errors import ConfigError
from recipes.kws import KWS

REQUIRED = ["target_dir=/tmp/x", "prepare_data.dataset_root=/data/sc"]


def compose(*dotlist, files=(), **overrides):
    return KWS.compose_config(config_files=files, dotlist=[*REQUIRED, *dotlist],
                              overrides=overrides)


def test_merge_order_defaults_then_files_then_dotlist_then_keywords(tmp_path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text("build_optimizer:\n  conf:\n    lr: 0.5\ntrain:\n  seed: 1\n")
    second.write_text("train:\n  seed: 2\n  log_step: 7\n")
    cfg = compose("train.log_step=9", files=[first, second])
    assert cfg.build_optimizer.conf.lr == 0.5 and cfg.train.seed == 2
    assert cfg.train.log_step == 9
    assert cfg.train.total_steps == 200000  # untouched default
    assert compose(train={"log_step": 11}).train.log_step == 11


def test_unknown_key_names_the_nearest_valid_key():
    with pytest.raises(ConfigError, match="unknown key 'build_optimzer'; did you mean "
                                          "'build_optimizer'"):
        compose("build_optimzer.conf.lr=1")
    with pytest.raises(ConfigError, match="unknown key 'train.totl_steps'; did you mean "
                                          "'total_steps'"):
        compose("train.totl_steps=3")


def test_unknown_key_in_a_config_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("trian:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"--config .*bad.yaml: unknown key 'trian'"):
        compose(files=[bad])


def test_wrong_type_fails():
    with pytest.raises(ConfigError, match="train.total_steps expects an integer, got 'ten'"):
        compose("train.total_steps=ten")
    with pytest.raises(ConfigError, match="train.auto_resume expects true/false"):
        compose("train.auto_resume=3")
    assert compose("build_optimizer.conf.lr=1e-3").build_optimizer.conf.lr == 1e-3
    assert compose("build_dataset.train.max_secs=2").build_dataset.train.max_secs == 2


def test_unset_required_key_fails_naming_it_and_what_to_set():
    with pytest.raises(ConfigError) as err:
        KWS.compose_config(dotlist=["target_dir=/tmp/x"])
    assert "prepare_data.dataset_root=..." in str(err.value)
    assert "speech_commands_v0.01" in str(err.value)  # the hint from the YAML comment


def test_unset_key_fails_before_stage_zero_runs(tmp_path):
    with pytest.raises(ConfigError):
        KWS().run(target_dir=str(tmp_path / "exp"))
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize("override, message", [
    ("build_upstream.name=fbnk", "unknown upstream 'fbnk'; did you mean 'fbank'"),
    ("build_upstream.conf.num_mel_bin=40", "build_upstream.conf.num_mel_bin: not an argument"
                                           " of Fbank; did you mean 'num_mel_bins'"),
    ("build_downstream.conf.hiden_size=3", "did you mean 'hidden_size'"),
    ("build_optimizer.name=Adamm", "'Adamm' is not a class in torch.optim"),
    ("build_optimizer.conf.betas2=1", "build_optimizer.conf.betas2: not an argument of Adam"),
])
def test_named_building_blocks_are_checked_before_any_stage(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        KWS().run(dotlist=[f"target_dir={tmp_path}/exp", "prepare_data.dataset_root=/x",
                           override])
    assert not (tmp_path / "exp").exists()


def test_every_default_key_has_a_comment():
    for path in KWS.config_files():
        comments = yaml_comments(path.read_text())
        keys = leaf_and_section_keys(yaml.safe_load(path.read_text()))
        assert not [k for k in keys if k not in comments], path


def leaf_and_section_keys(tree, prefix=""):
    for key, value in tree.items():
        yield f"{prefix}{key}"
        if isinstance(value, dict) and key != "conf":
            yield from leaf_and_section_keys(value, f"{prefix}{key}.")


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "framework", *args], capture_output=True,
                          text=True)


def test_cli_config_prints_the_commented_defaults_and_list_names_everything():
    printed = run_cli("config", "kws")
    assert printed.returncode == 0
    assert "dataset_root: ???" in printed.stdout and "# folder of" in printed.stdout
    listed = run_cli("list").stdout
    for name in ("kws", "fbank", "mfcc", "mel", "mean_linear"):
        assert f"  {name} " in listed


def test_cli_accepts_config_files_between_overrides(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("train:\n  totl_steps: 3\n")
    done = run_cli("run", "kws", "--config", str(extra), f"target_dir={tmp_path}",
                   "prepare_data.dataset_root=/x")
    assert f"error: --config {extra}: unknown key 'train.totl_steps'" in done.stderr
    assert run_cli("run", "kws", "--bogus").returncode == 2


def test_cli_reports_config_errors_without_traceback(tmp_path):
    done = run_cli("run", "kws", f"target_dir={tmp_path}", "build_optimzer.lr=1")
    assert done.returncode == 2
    assert done.stderr.startswith("error: command line: unknown key 'build_optimzer'")
    assert "Traceback" not in done.stderr
    assert run_cli("run", "kwss").stderr.startswith("error: unknown problem 'kwss'; did you "
                                                     "mean 'kws'")
