"""The command line a user meets first: version, help, pipes, imports, full disks."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import corpus_overrides, small_disk


def run_cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "framework", *args], capture_output=True,
                          text=True, **kwargs)


def test_version_names_the_package_and_commit():
    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.startswith("speech-recipes 0.1.0")


def test_run_help_lists_the_run_keys_and_an_example():
    text = run_cli("run", "--help").stdout
    for key in ("target_dir=???", "start=0", "stop=null", "force=false", "world_size=1"):
        assert key in text
    assert "python -m framework run kws target_dir=" in text
    assert "SPEECH_RECIPES_PROGRESS" in text


def test_a_closed_pipe_is_not_a_traceback():
    done = subprocess.run(f"{sys.executable} -m framework config kws | head -1", shell=True,
                          capture_output=True, text=True)
    assert done.stdout.startswith("# ---- problem.yaml")
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


def test_an_unimportable_module_says_it_must_be_importable(tmp_path):
    done = run_cli("run", "no_such_pkg.mod:MyKWS", f"target_dir={tmp_path}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "must be importable: on PYTHONPATH" in done.stderr


def test_score_imports_only_registered_problems_unless_named(tmp_path):
    marker = tmp_path / "imported"
    (tmp_path / "evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    target = tmp_path / "run"
    target.mkdir()
    (target / "problem.json").write_text(json.dumps({"problem": "evil_mod:Problem"}))
    done = run_cli("score", str(target), "a.wav", "b.wav", cwd=tmp_path,
                   env={"PYTHONPATH": f"{tmp_path}:{sys.path[0]}", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2 and not marker.exists()
    assert "not a registered problem" in done.stderr and "--problem evil_mod:Problem" in \
        done.stderr


def test_a_full_disk_is_one_line_naming_the_free_space(tmp_path, corpus):
    roots = corpus_overrides(corpus)["prepare_data"]
    with small_disk(tmp_path / "small_disk", "400k") as disk:
        done = run_cli("run", "kws", f"target_dir={disk / 'run'}",
                       f"prepare_data.dataset_root={roots['dataset_root']}",
                       f"prepare_data.test_root={roots['test_root']}", "num_workers=0",
                       "train.total_steps=20", "train.eval_step=20", "train.save_step=10",
                       f"cache_dir={tmp_path / 'cache'}")
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: disk full") and "GiB free" in last
    assert "run the same command to resume" in last


def test_a_waveform_cache_the_disk_cannot_hold_is_refused_before_it_starts(tmp_path, corpus):
    roots = corpus_overrides(corpus)["prepare_data"]
    with small_disk(tmp_path / "small_cache", "100k") as disk:
        done = run_cli("run", "kws", f"target_dir={tmp_path / 'run'}", f"cache_dir={disk}",
                       f"prepare_data.dataset_root={roots['dataset_root']}",
                       f"prepare_data.test_root={roots['test_root']}", "stop=train")
        assert list(disk.iterdir()) in ([], [disk / "waveforms"])
    assert done.returncode == 2 and "Traceback" not in done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the waveform cache needs about") and \
        "build_dataset.cache_waveforms=false" in last
