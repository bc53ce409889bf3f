"""A training run killed with SIGKILL resumes from its last checkpoint to the same result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import torch

from tests.conftest import corpus_overrides


def train_command(target_dir, corpus) -> list[str]:
    roots = corpus_overrides(corpus)["prepare_data"]
    return [sys.executable, "-m", "framework", "run", "kws", f"target_dir={target_dir}",
            "stop=train", "num_workers=0", f"prepare_data.dataset_root={roots['dataset_root']}",
            f"prepare_data.test_root={roots['test_root']}", "train.total_steps=120",
            "train.save_step=20", "train.eval_step=40", "train.log_step=20",
            "build_optimizer.conf.lr=3e-3", "build_batch_sampler.train.batch_size=16",
            "build_dataset.train.max_secs=0.8"]  # random crops: their RNG must resume too


def checkpointed_steps(target_dir) -> list[int]:
    index = target_dir / "train" / "checkpoints" / "index.json"
    try:
        return [int(s) for s in json.loads(index.read_text())["steps"]]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def kill_after_checkpoint(command, target_dir, step: int) -> None:
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while step not in checkpointed_steps(target_dir) and time.time() < deadline:
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def final_state(target_dir) -> dict:
    return torch.load(target_dir / "train/checkpoints/step-00000120.pt", weights_only=True)


def test_killed_run_resumes_to_the_same_parameters_and_metrics(tmp_path, corpus):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(train_command(straight, corpus), check=True, capture_output=True)
    kill_after_checkpoint(train_command(killed, corpus), killed, step=40)
    assert 120 not in checkpointed_steps(killed)
    resumed = subprocess.run(train_command(killed, corpus), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr
    expected, got = final_state(straight), final_state(killed)
    assert expected["task"].keys() == got["task"].keys()
    for name, tensor in expected["task"].items():
        assert torch.equal(tensor, got["task"][name]), name
    assert expected["progress"]["history"] == got["progress"]["history"]
    assert expected["progress"]["best_step"] == got["progress"]["best_step"]
