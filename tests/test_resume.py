"""A training run killed with SIGKILL at any point resumes to the result of an unbroken run:
bitwise-equal parameters, validation history and best checkpoint (CPU, fixed seed)."""
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
            "build_optimizer.conf.lr=3e-3", "build_batch_sampler.train.batch_size=8",
            "build_dataset.train.max_secs=0.8",  # random crops: their RNG must resume too
            "train.gradient_accumulate=2",  # the accumulation phase must resume too
            "train.use_scheduler=true", "build_scheduler.conf.gamma=0.995"]  # and the schedule


def checkpointed_steps(target_dir) -> list[int]:
    index = target_dir / "train" / "checkpoints" / "index.json"
    try:
        return [int(s) for s in json.loads(index.read_text())["steps"]]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


# Where the injected kills land (framework/faults.py), in the order the chained run meets them.
KILL_POINTS = (
    ("step@50", 40),                      # mid-step: after backward, before the update
    ("validation@80", 60),                # mid-validation: metrics computed, nothing recorded
    ("checkpoint@step-00000100.pt", 80),  # mid-write: temp file on disk, not yet renamed
)


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


def run_killed_at(command, point: str) -> None:
    env = {**os.environ, "SPEECH_RECIPES_KILL_AT": point}
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_killed_runs_resume_to_the_same_parameters_and_metrics(tmp_path, corpus):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(train_command(straight, corpus), check=True, capture_output=True)
    command = train_command(killed, corpus)
    kill_after_checkpoint(command, killed, step=40)  # a kill from outside, at any moment
    for point, resumes_from in KILL_POINTS:
        run_killed_at(command, point)
        assert max(checkpointed_steps(killed)) == resumes_from, point
    leftovers = list((killed / "train/checkpoints").glob(".step-00000100.pt.tmp*"))
    assert leftovers, "the mid-write kill should leave its temp file behind"
    resumed = subprocess.run(command, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stderr and "step-00000080.pt" in resumed.stderr
    expected, got = final_state(straight), final_state(killed)
    assert expected["task"].keys() == got["task"].keys()
    for name, tensor in expected["task"].items():
        assert torch.equal(tensor, got["task"][name]), name
    assert expected["progress"]["history"] == got["progress"]["history"]
    assert expected["progress"]["best_step"] == got["progress"]["best_step"]
    best = [torch.load(d / "train/checkpoints/valid_best.pt", weights_only=True)["task"]
            for d in (straight, killed)]
    assert all(torch.equal(best[0][k], best[1][k]) for k in best[0])


def test_rng_states_of_earlier_checkpoints_still_restore():
    from framework.trainer import rng_state, set_rng_state

    state = rng_state()
    expected = torch.rand(3)
    del state["numpy"]  # checkpoints of earlier versions hold python and torch states only
    set_rng_state(state)
    assert torch.equal(torch.rand(3), expected)
