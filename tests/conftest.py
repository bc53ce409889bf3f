"""Shared fixtures: a small synthesized Speech Commands corpus in the real layout, and a
helper running the KWS recipe on it with settings small enough for CPU tests."""
from __future__ import annotations

import contextlib
import copy
import os
import random
import shutil
import socket
import subprocess

import pytest

from corpora.synthesize import synthesize_speech_commands
from recipes.kws import KWS

# A few seconds per full run on 2 cores; learning still shows (the corpus is easy).
FAST = {
    "num_workers": 0,
    "train": {"total_steps": 40, "eval_step": 20, "save_step": 20, "log_step": 10},
    "build_optimizer": {"conf": {"lr": 3e-3}},
    # test batches of 10 leave a short last batch: each item must still be scored once
    "build_batch_sampler": {"train": {"batch_size": 16}, "test": {"batch_size": 10}},
}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    tiny tensors on 2 shared cores, where threads cost more than they save."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Roots of a synthesized v0.01 corpus and its test set (8 speakers)."""
    return synthesize_speech_commands(tmp_path_factory.mktemp("corpus"), speakers=8, seed=0)


def merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def corpus_overrides(corpus) -> dict:
    return {"prepare_data": {"dataset_root": str(corpus["v0.01"]),
                             "test_root": str(corpus["test_v0.01"])}}


@pytest.fixture
def run_kws(corpus):
    """``run_kws(target_dir, problem=KWS, dotlist=(), **overrides)`` → stage records."""
    def run(target_dir, problem=KWS, dotlist=(), **overrides):
        settings = merge(merge(FAST, corpus_overrides(corpus)), overrides)
        return problem().run(dotlist=list(dotlist), target_dir=str(target_dir), **settings)
    return run


def free_port() -> int:
    """A free TCP port below Linux's ephemeral range (32768-60999). A port inside it can be
    handed to a client connecting to it before the server listens, which then connects to
    itself (TCP self-connect) and waits forever: a torchrun rendezvous hang seen in CI."""
    rng = random.Random()
    for _ in range(100):
        port = rng.randrange(20000, 32000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port in 20000-32000")


def launch(commands: list[list[str]], env: dict | None = None, timeout: float = 300):
    """Start every command at once (the processes of one distributed run); wait for all;
    return ``[(returncode, stderr), ...]``."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, **(env or {})}) for cmd in commands]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append((proc.returncode, err))
    return results


@contextlib.contextmanager
def small_disk(folder, size: str):
    """A tmpfs of ``size`` mounted at ``folder`` for the block: a real full disk. Where
    mounting is not permitted (it needs root) the test skips saying why, except under
    ``.ci/run`` (``SPEECH_RECIPES_CI=1``), where it fails."""
    folder.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if done.returncode:
        reason = f"cannot mount a small tmpfs here ({done.stderr.strip()})"
        if os.environ.get("SPEECH_RECIPES_CI"):  # .ci/run sets it: there this path must run
            pytest.fail(f"{reason}; CI runs as root and must test the full-disk path")
        pytest.skip(f"{reason}: the full-disk path is checked in CI, which runs as root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)
        shutil.rmtree(folder, ignore_errors=True)
