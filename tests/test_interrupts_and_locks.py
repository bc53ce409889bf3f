"""Real CLI processes: one run per target_dir at a time, Ctrl-C and SIGTERM end with one line
and resume, every invocation's log opens with a header and keeps its fatal error."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from framework.checkpoint import CheckpointDir
from tests.conftest import corpus_overrides


def kws_command(target, corpus, *extra) -> list[str]:
    roots = corpus_overrides(corpus)["prepare_data"]
    return [sys.executable, "-m", "framework", "run", "kws", f"target_dir={target}",
            f"prepare_data.dataset_root={roots['dataset_root']}",
            f"prepare_data.test_root={roots['test_root']}", "num_workers=0",
            "build_batch_sampler.train.batch_size=8", "train.log_step=5", "train.save_step=20",
            "train.eval_step=1000", "build_optimizer.conf.lr=3e-3", *extra]


def start(command, **env) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **env})


def wait_for_log(target, pattern: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    log = target / "log.txt"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if log.is_file() and re.search(pattern, log.read_text()):
            return
        assert proc.poll() is None, f"run ended early: {proc.communicate()[1][-2000:]}"
        time.sleep(0.05)
    raise AssertionError(f"'{pattern}' never appeared in {log}")


def finish(proc, timeout: float = 180) -> tuple[int, str]:
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def test_a_second_run_on_a_busy_target_dir_stops_at_once(tmp_path, corpus):
    target = tmp_path / "run"
    first = start(kws_command(target, corpus, "stop=train", "train.total_steps=100000"))
    try:
        wait_for_log(target, r"step 5 ", first)
        started = time.time()
        code, err = finish(start(kws_command(target, corpus, "build_optimizer.conf.lr=1e-2")))
        assert time.time() - started < 60
        assert code == 2 and "Traceback" not in err
        assert f"in use by another run (pid {first.pid}" in err
        assert not (target / "train.runs").exists()  # the busy run was not moved aside
    finally:
        first.send_signal(signal.SIGINT)
        finish(first)


def test_ctrl_c_ends_with_one_line_and_the_same_command_resumes(tmp_path, corpus):
    target = tmp_path / "run"
    command = kws_command(target, corpus, "stop=train", "train.total_steps=100000")
    proc = start(command)
    wait_for_log(target, r"step 25 ", proc)  # after the step-20 checkpoint
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(r"interrupted \(SIGINT\) in stage 2 train at step \d+; last checkpoint "
                        r"step \d+; run the same command to resume", lines[-1])
    assert lines[-1] in (target / "log.txt").read_text()
    saved = CheckpointDir(target / "train/checkpoints").steps()[-1]
    assert f"last checkpoint step {saved};" in lines[-1]
    resumed = start(command[:-1] + ["train.total_steps=100000"])
    wait_for_log(target, rf"resumed from .*step-{saved:08d}\.pt at step {saved}", resumed)
    resumed.send_signal(signal.SIGINT)
    finish(resumed)


def test_sigterm_checkpoints_at_the_next_step_then_stops(tmp_path, corpus):
    target = tmp_path / "run"
    proc = start(kws_command(target, corpus, "stop=train", "train.total_steps=100000"))
    wait_for_log(target, r"step 25 ", proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143 and "Traceback" not in err, err[-3000:]
    line = [line for line in err.splitlines() if "interrupted" in line][-1]
    step = int(re.search(r"at step (\d+)", line)[1])
    assert step > 25 and f"last checkpoint step {step};" in line  # nothing lost
    assert CheckpointDir(target / "train/checkpoints").steps()[-1] == step


def test_a_killed_runs_lock_is_taken_over_and_each_invocation_logs_a_header(tmp_path,
                                                                            corpus):
    target = tmp_path / "run"
    command = kws_command(target, corpus, "stop=train", "train.total_steps=40")
    killed = start(command, SPEECH_RECIPES_KILL_AT="step@12")
    assert finish(killed)[0] == -signal.SIGKILL
    assert f"pid {killed.pid}" in (target / ".lock").read_text()
    code, err = finish(start(command))
    assert code == 0, err[-3000:]
    log = (target / "log.txt").read_text()
    assert f"took over the lock of a run that stopped without releasing it (pid {killed.pid}" \
        in log
    headers = re.findall(r"==== \S+ \S+  .*framework run kws .*\[speech-recipes \S+", log)
    assert len(headers) == 2
    assert (target / ".lock").read_text() == ""  # released at the end


def test_a_fatal_error_is_written_to_the_log_too(tmp_path, corpus):
    target = tmp_path / "run"
    assert finish(start(kws_command(target, corpus, "stop=train", "train.total_steps=20")))[0] \
        == 0
    code, err = finish(start(kws_command(target, corpus, "start=evaluate",
                                         "train.total_steps=20", "test_ckpt_steps=[30]")))
    assert code == 2 and "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith("error: test_ckpt_steps: no checkpoint for steps [30]")
    assert message in (target / "log.txt").read_text()


def test_leftovers_of_killed_writes_are_removed(tmp_path, corpus):
    target, cache = tmp_path / "run", tmp_path / "cache"
    (target / "train/checkpoints").mkdir(parents=True)
    dead = 2**22 + 12345  # above pid_max's default: no such process
    leftover_file = target / "train/checkpoints" / f".step-00000020.pt.tmp{dead}"
    leftover_file.write_bytes(b"half a checkpoint")
    leftover_dir = cache / f".waveforms-abc.tmp{dead}"
    leftover_dir.mkdir(parents=True)
    (leftover_dir / "data.bin").write_bytes(bytes(4096))
    mine = cache / f".busy.tmp{os.getpid()}"  # a live process's write is left alone
    mine.write_bytes(b"in progress")
    code, err = finish(start(kws_command(target, corpus, "stop=prepare_data",
                                         f"cache_dir={cache}")))
    assert code == 0, err[-3000:]
    assert not leftover_file.exists() and not leftover_dir.exists() and mine.exists()
    log = (target / "log.txt").read_text()
    assert f"removed a leftover of an interrupted write: {leftover_dir}" in log


def test_progress_is_plain_lines_when_not_a_terminal_and_can_be_turned_off(tmp_path, corpus):
    target = tmp_path / "run"
    command = kws_command(target, corpus, "stop=train", "train.total_steps=30")
    code, err = finish(start(command))
    assert code == 0 and "\r" not in err and "\x1b[" not in err
    assert re.search(r"^train: +\d+%.*30/30", err, re.M)
    code, err = finish(start(command + ["force=true"], SPEECH_RECIPES_PROGRESS="off"))
    assert code == 0 and not re.search(r"^(train|check \w+ audio):", err, re.M)


@pytest.mark.parametrize("mode", ["TQDM_DISABLE", "SPEECH_RECIPES_PROGRESS"])
def test_the_switch_turns_bars_off_in_the_library_too(mode, monkeypatch, capsys):
    from framework.progress import progress

    monkeypatch.setenv(mode, "1" if mode == "TQDM_DISABLE" else "off")
    for _ in progress(range(3), desc="loop"):
        pass
    assert "loop" not in capsys.readouterr().err
