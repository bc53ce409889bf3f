"""Distributed training on torch.distributed (gloo, CPU): N processes with batch b train like
one process with batch N·b, launched by hand (world_size/rank), by torchrun, or as two
"nodes" on localhost; a dead peer ends the run instead of hanging it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.conftest import corpus_overrides, free_port, launch

SETTINGS = ["num_workers=0", "train.total_steps=40", "train.eval_step=20", "train.save_step=20",
            "train.log_step=10", "build_optimizer.conf.lr=3e-3",
            "build_batch_sampler.test.batch_size=10", "build_dataset.train.max_secs=0.8"]
PER_RANK_BATCH = 8


def run_args(target_dir, corpus, batch_size: int) -> list[str]:
    roots = corpus_overrides(corpus)["prepare_data"]
    return ["run", "kws", f"target_dir={target_dir}", *SETTINGS,
            f"prepare_data.dataset_root={roots['dataset_root']}",
            f"prepare_data.test_root={roots['test_root']}",
            f"build_batch_sampler.train.batch_size={batch_size}"]


def assert_all_ok(results) -> None:
    for code, err in results:
        assert code == 0, err[-3000:]


def final_params(target_dir) -> dict:
    state = torch.load(target_dir / "train/checkpoints/step-00000040.pt", weights_only=True)
    return state["task"]


def outcome(target_dir) -> dict:
    history = json.loads((target_dir / "train/history.json").read_text())["valid"]
    test = json.loads((target_dir / "evaluate/valid_best/test/metrics.json").read_text())
    ids = pd.read_csv(target_dir / "evaluate/valid_best/test/predictions.csv")["id"].tolist()
    return {"history": history, "test": test, "ids": ids}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, corpus):
    """The reference: one process with the global batch 2·b."""
    target = tmp_path_factory.mktemp("one") / "run"
    command = [sys.executable, "-m", "framework", *run_args(target, corpus, 2 * PER_RANK_BATCH)]
    assert_all_ok(launch([command]))
    return target


def assert_same_training(reference, target) -> None:
    expected, got = final_params(reference), final_params(target)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)
    want, have = outcome(reference), outcome(target)
    assert have["ids"] == want["ids"]  # each test item once, in the one-process order
    assert [h["step"] for h in have["history"]] == [h["step"] for h in want["history"]]
    for a, b in zip(have["history"], want["history"]):
        assert a["accuracy"] == pytest.approx(b["accuracy"], abs=1e-9)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert have["test"]["accuracy"] == pytest.approx(want["test"]["accuracy"], abs=1e-9)


def test_explicit_world_size_and_rank_match_one_process(tmp_path, corpus, one_process):
    target = tmp_path / "two"
    args = run_args(target, corpus, PER_RANK_BATCH)
    commands = [[sys.executable, "-m", "framework", *args, "world_size=2", f"rank={rank}"]
                for rank in (0, 1)]
    assert_all_ok(launch(commands, env={"MASTER_ADDR": "127.0.0.1",
                                        "MASTER_PORT": str(free_port())}))
    assert_same_training(one_process, target)
    log = (target / "log.txt").read_text()
    assert "distributed run: 2 processes, backend gloo" in log and "[rank 1]" not in log


def test_torchrun_matches_one_process(tmp_path, corpus, one_process):
    target = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_port", str(free_port()), "-m", "framework",
               *run_args(target, corpus, PER_RANK_BATCH)]
    assert_all_ok(launch([command]))
    assert_same_training(one_process, target)
    saved = (target / "config.yaml").read_text()
    assert "world_size: 2" in saved  # the launcher's WORLD_SIZE is what the run records


def test_two_nodes_on_localhost(tmp_path, corpus, one_process):
    target, port = tmp_path / "nodes", free_port()
    commands = [[sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                 "--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_backend", "c10d",
                 "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "nodes-test", "-m",
                 "framework", *run_args(target, corpus, PER_RANK_BATCH)] for node in (0, 1)]
    assert_all_ok(launch(commands))
    assert_same_training(one_process, target)


def test_a_dead_peer_ends_the_run_with_a_message(tmp_path, corpus, one_process):
    target = tmp_path / "dead"
    args = run_args(target, corpus, PER_RANK_BATCH) + ["dist_timeout=60"]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    rank0 = [sys.executable, "-m", "framework", *args, "world_size=2", "rank=0"]
    rank1 = [sys.executable, "-m", "framework", *args, "world_size=2", "rank=1"]
    procs = [subprocess.Popen(rank0, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **env}),
             subprocess.Popen(rank1, stderr=subprocess.DEVNULL,
                              env={**os.environ, **env, "SPEECH_RECIPES_KILL_AT": "step@5"})]
    _, err = procs[0].communicate(timeout=120)
    procs[1].wait(timeout=60)
    assert procs[1].returncode == -9
    assert procs[0].returncode == 2, err[-2000:]
    assert "Another process probably died" in err


def test_a_missing_peer_fails_after_dist_timeout(tmp_path, corpus):
    args = run_args(tmp_path / "alone", corpus, PER_RANK_BATCH)
    command = [sys.executable, "-m", "framework", *args, "world_size=2", "rank=0",
               "dist_timeout=3"]
    [(code, err)] = launch([command], env={"MASTER_ADDR": "127.0.0.1",
                                           "MASTER_PORT": str(free_port())}, timeout=90)
    assert code == 2
    assert "could not join the process group" in err and "dist_timeout=3" in err


def test_torchrun_environment_contradicting_the_config_is_an_error(tmp_path, corpus):
    args = run_args(tmp_path / "x", corpus, PER_RANK_BATCH) + ["world_size=4", "rank=3"]
    env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    [(code, err)] = launch([[sys.executable, "-m", "framework", *args]], env=env, timeout=60)
    assert code == 2 and "contradict the launcher's WORLD_SIZE=2" in err


def test_a_distributed_run_killed_mid_step_resumes_exactly(tmp_path, corpus):
    def two_ranks(target, kill_rank1=None):
        args = run_args(target, corpus, PER_RANK_BATCH) + ["stop=train"]
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
        kill = {"SPEECH_RECIPES_KILL_AT": kill_rank1} if kill_rank1 else {}
        procs = [subprocess.Popen([sys.executable, "-m", "framework", *args, "world_size=2",
                                   f"rank={rank}"], stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, **env, **(kill if rank else {})})
                 for rank in (0, 1)]
        return [(proc.communicate(timeout=300)[1], proc.returncode) for proc in procs]

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert [code for _, code in two_ranks(straight)] == [0, 0]
    assert [code for _, code in two_ranks(killed, kill_rank1="step@30")] == [2, -9]
    resumed = two_ranks(killed)
    assert [code for _, code in resumed] == [0, 0], resumed[0][0][-2000:]
    assert "resumed from" in resumed[0][0] and "step-00000020.pt" in resumed[0][0]
    expected, got = final_params(straight), final_params(killed)
    assert all(torch.equal(expected[k], got[k]) for k in expected)
