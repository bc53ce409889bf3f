"""A rejected command changes nothing; finished training runs are kept per configuration."""
from __future__ import annotations

import pickle

import pytest
import torch

from framework.errors import ConfigError, UserError
from framework.stages import STAGES
from recipes.kws import KWS
from tests.conftest import FAST, corpus_overrides, merge

# (dotlist item, the key the one-line message must name)
BAD_VALUES = [
    ("build_batch_sampler.train.batch_size=0", "build_batch_sampler.train.batch_size=0"),
    ("build_batch_sampler.test.batch_size=-3", "build_batch_sampler.test.batch_size=-3"),
    ("train.log_step=0", "train.log_step=0"),
    ("train.eval_step=0", "train.eval_step=0"),
    ("train.save_step=0", "train.save_step=0"),
    ("train.total_steps=0", "train.total_steps=0"),
    ("train.gradient_accumulate=0", "train.gradient_accumulate=0"),
    ("world_size=0", "world_size=0"),
    ("build_optimizer.conf.lr=0", "build_optimizer.conf.lr=0"),
    ("build_optimizer.conf.lr=-1e-3", "build_optimizer.conf.lr=-0.001"),
    ("build_optimizer.conf.lr=nan", "build_optimizer.conf.lr=nan: must be a finite number"),
    ("build_optimizer.conf.lr=inf", "build_optimizer.conf.lr=inf: must be a finite number"),
    ("train.gradient_clipping=nan", "train.gradient_clipping"),
    ("train.gradient_clipping=.inf", "train.gradient_clipping=inf: must be a finite"),
    ("build_dataset.train.max_secs=-1", "build_dataset.train.max_secs=-1"),
    ("build_dataset.train.max_secs=0", "build_dataset.train.max_secs=0"),
    ("build_dataset.train.min_secs=0", "build_dataset.train.min_secs=0"),
    ("build_dataset.sample_rate=0", "build_dataset.sample_rate=0"),
    ("train.keep_num_ckpts=0", "train.keep_num_ckpts=0"),
    ("build_upstream.conf=[1,2]", "build_upstream.conf: expected a mapping"),
    ("target_dir=", "target_dir=null: must be non-empty"),
    ("target_dir=' '", "target_dir=' '"),
    ("start=4", "start=4 comes after stop=1"),
    ("evaluate.splits=[tset]", "evaluate.splits: no manifest ['tset']; stage 0 writes valid, "
                               "test"),
    ("prepare_data.dataset_root=/no/such/corpus", "prepare_data.dataset_root=/no/such/corpus "
                                                  "does not exist"),
    ("build_upstream.name=wavlm", "needs either checkpoint=PATH"),
]


def command(target, corpus, *extra) -> list[str]:
    roots = corpus_overrides(corpus)["prepare_data"]
    return [f"target_dir={target}", f"prepare_data.dataset_root={roots['dataset_root']}",
            f"prepare_data.test_root={roots['test_root']}", *extra]


def tree(folder) -> dict:
    """Every path under ``folder`` with its size and mtime (what a command may change)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("item,named", BAD_VALUES, ids=[b for b, _ in BAD_VALUES])
def test_each_bad_value_is_refused_before_anything_is_written(item, named, tmp_path, corpus):
    target = tmp_path / "run"
    dotlist = command(target, corpus, "stop=1" if item.startswith("start=") else "stop=4",
                      item)
    with pytest.raises(UserError) as caught:
        KWS().run(dotlist=dotlist)
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not target.exists()


def test_a_missing_pretrained_checkpoint_is_refused_before_stage_0(tmp_path, corpus):
    target = tmp_path / "run"
    with pytest.raises(UserError) as caught:
        KWS().run(dotlist=command(target, corpus, "build_upstream.name=hubert",
                                  f"build_upstream.conf={{checkpoint: {tmp_path}/no-model}}"))
    assert "build_upstream.conf.checkpoint=" in str(caught.value)
    assert "no such folder" in str(caught.value) and not target.exists()


@pytest.fixture(scope="module")
def finished(tmp_path_factory, corpus):
    target = tmp_path_factory.mktemp("finished") / "run"
    KWS().run(target_dir=str(target), **merge(FAST, corpus_overrides(corpus)))
    return target


def run_logged(caplog, target, corpus, **overrides) -> dict:
    if caplog is not None:
        caplog.clear()
    return KWS().run(target_dir=str(target), **merge(merge(FAST, corpus_overrides(corpus)),
                                                     overrides))


def test_bad_commands_after_a_finished_run_change_nothing(finished, corpus, caplog):
    before = {k: v for k, v in tree(finished).items() if not k.startswith(("runs", "log.txt"))}
    for bad in ({"build_optimizer": {"conf": {"lr": 0}}},
                {"build_batch_sampler": {"train": {"batch_size": 0}}},
                {"build_dataset": {"train": {"max_secs": float("nan")}}}):
        with pytest.raises(ConfigError):
            run_logged(caplog, finished, corpus, **bad)
    assert {k: v for k, v in tree(finished).items()
            if not k.startswith(("runs", "log.txt"))} == before
    run_logged(caplog, finished, corpus)
    assert caplog.text.count("up to date, skipped") == len(STAGES)
    assert not (finished / "train.runs").exists()
    assert not list(finished.glob("train.previous*"))


def test_going_back_to_a_finished_configuration_finds_its_run(finished, corpus, caplog,
                                                               tmp_path):
    import shutil

    target = shutil.copytree(finished, tmp_path / "run")
    best = target / "train/checkpoints/valid_best.pt"
    first_weights = best.read_bytes()
    run_logged(caplog, target, corpus, stop="train", build_optimizer={"conf": {"lr": 1e-2}})
    assert "training config changed: the previous training run" in caplog.text
    assert "step 40" in caplog.text  # the other configuration really trained
    assert best.read_bytes() != first_weights
    run_logged(caplog, target, corpus)
    assert "found this configuration's earlier training run" in caplog.text
    assert "step 10 " not in caplog.text  # nothing was retrained
    assert best.read_bytes() == first_weights
    kept = list((target / "train.runs").iterdir())
    assert len(kept) == 1 and (kept[0] / "checkpoints/valid_best.pt").is_file()
    assert f"another training run of this target_dir is kept in {kept[0]}" in caplog.text


def test_force_retrains_from_scratch_and_keeps_the_old_run(finished, corpus, caplog,
                                                           tmp_path):
    import shutil

    target = shutil.copytree(finished, tmp_path / "run")
    run_logged(caplog, target, corpus, start="train", stop="train", force=True)
    assert "resumed from" not in caplog.text
    assert "step 10 " in caplog.text and "step 40 " in caplog.text
    replaced = list((target / "train.runs").glob("*-replaced-*"))
    assert len(replaced) == 1 and (replaced[0] / "checkpoints/valid_best.pt").is_file()


def test_target_dir_that_is_a_file_or_unwritable_is_refused(tmp_path, corpus):
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    with pytest.raises(UserError, match="is a file, not a folder"):
        KWS().run(dotlist=command(a_file, corpus))
    with pytest.raises(UserError, match="not writable|cannot be created"):
        KWS().run(dotlist=command("/proc/speech-recipes-test/run", corpus))
    assert a_file.read_text() == "not a folder"


def test_damaged_files_are_named_in_one_line(finished, corpus, tmp_path):
    import shutil

    for damaged, named in (("encoder.json", "label encoder"),
                           ("train/checkpoints/index.json", "list of finished checkpoints"),
                           ("stages/2-train.json", "stage train's record")):
        target = shutil.copytree(finished, tmp_path / damaged.replace("/", "_"))
        (target / damaged).write_text('{"classes": [')
        with pytest.raises(UserError) as caught:
            run_logged(None, target, corpus, start="evaluate", test_ckpt_steps=[20])
        message = str(caught.value)
        assert str(target / damaged) in message and named in message and "\n" not in message


class Payload:
    def __reduce__(self):
        return (print, ("pickle code ran",))


def test_a_pickled_checkpoint_is_refused_without_suggesting_weights_only_false(
        finished, corpus, tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "task": Payload()}, evil, pickle_module=pickle)
    with pytest.raises(UserError) as caught:
        run_logged(None, finished, corpus, start="evaluate", test_ckpt_dir=str(evil))
    assert "weights_only" not in str(caught.value) and str(evil) in str(caught.value)
