"""The library installs as a wheel: in a fresh virtual environment, with no source tree and no
editable install in sight, the CLI finds the default YAML configs that ship inside the package.

The wheel is built (``pip wheel --no-deps --no-build-isolation``) from a copy of the packaging
files, so the working tree gets no ``build/`` folder. The new environment has no pip and no
packages of its own: the wheel is installed into it with this pip (``--python``, nothing
uninstalled, nothing fetched), and only then is this environment's site-packages appended to
its path by a ``.pth`` file, for torch and the other dependencies. A path line in a ``.pth``
file adds a folder but runs none of the ``.pth`` files inside it, so the editable install's
finder (``__editable__*.pth``) never loads there; each command runs from an empty folder
without PYTHONPATH, and the test checks that ``framework`` and ``configs`` are imported from
the new environment."""
from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGING = ("pyproject.toml", "setup.cfg", "setup.py", "MANIFEST.in", "README.md", "LICENSE")
PACKAGES = ("framework", "recipes", "corpora", "configs")  # setup.cfg [options.packages.find]
# The steps' processes may use this much CPU time (user + system; ~12 s measured on the 2-core
# Xeon, of which two torch imports and pip are most). CPU time, not wall time: on a loaded
# machine the same work took 90 s of wall time, and a wall-clock limit would fail there.
CPU_BUDGET_SECS = 60
HANG_SECS = 600  # wall-clock guard against a hung step, for the whole test


class Steps:
    """Runs each command in ``cwd`` with ``env``; keeps what each took for the messages."""

    def __init__(self, cwd: Path, env: dict):
        self.cwd, self.env, self.deadline = cwd, env, time.monotonic() + HANG_SECS
        self.took: list[str] = []  # "<wall> s  <command>" of each finished step
        self.cpu_at_start = self.children_cpu()

    @staticmethod
    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def cpu(self) -> float:
        return self.children_cpu() - self.cpu_at_start

    def report(self) -> str:
        return "\n".join([*self.took, f"CPU time of all steps: {self.cpu():.1f} s"])

    def __call__(self, *cmd) -> str:
        line = " ".join(map(str, cmd))
        start = time.monotonic()
        try:
            out = subprocess.run([str(c) for c in cmd], cwd=self.cwd, env=self.env,
                                 capture_output=True, text=True,
                                 timeout=max(self.deadline - start, 1))
        except subprocess.TimeoutExpired:
            pytest.fail(f"hung: over {HANG_SECS} s of wall time in: {line}\n{self.report()}")
        self.took.append(f"{time.monotonic() - start:5.1f} s  {line[:120]}")
        assert out.returncode == 0, f"{line}\n{out.stdout}\n{out.stderr}"
        return out.stdout


def copy_sources(dest: Path) -> Path:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGING:
        if (ROOT / name).is_file():
            shutil.copy2(ROOT / name, dest / name)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest


def test_wheel_installs_and_runs_with_its_shipped_configs(tmp_path, corpus):
    work = tmp_path / "work"  # the commands' cwd: nothing importable in it
    for folder in ("src", "dist", "work"):
        (tmp_path / folder).mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               SPEECH_RECIPES_PROGRESS="off")
    step = Steps(work, env)

    step(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", tmp_path / "dist", copy_sources(tmp_path / "src"))
    [wheel] = (tmp_path / "dist").glob("speech_recipes-*.whl")

    venv = tmp_path / "venv"
    step(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    # --python: this pip installs into the new environment; --ignore-installed: nothing is
    # uninstalled anywhere (the editable install stays untouched); PIP_NO_INDEX: no download
    step(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
         "--ignore-installed", wheel)
    site = Path(step(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))")
                .strip())
    deps = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (site / "_project_dependencies.pth").write_text("".join(f"{p}\n" for p in sorted(deps)))

    where = json.loads(step(python, "-c", (
        "import json, configs, corpora, framework, recipes, importlib.metadata as m; "
        "print(json.dumps({'modules': [configs.__file__, corpora.__file__, framework.__file__,"
        " recipes.__file__], 'dist': str(m.distribution('speech-recipes').locate_file('')),"
        " 'requires': m.requires('speech-recipes')}))")))
    for module in where["modules"]:
        assert Path(module).is_relative_to(site), where  # the wheel's, not the source tree's
    assert Path(where["dist"]).resolve() == site.resolve(), where
    assert (site / "configs/kws.yaml").is_file() and (site / "configs/problem.yaml").is_file()
    torch_pins = [r for r in where["requires"] if re.match(r"(torch|torchaudio)\s*==", r)]
    assert not torch_pins, "an exact pin would replace a user's (CUDA) torch: " + str(torch_pins)

    printed = step(python, "-m", "framework", "config", "kws")
    assert "# ---- problem.yaml ----" in printed and "# ---- kws.yaml ----" in printed
    assert "\nprepare_data:" in printed and "\ntrain:" in printed

    step(venv / "bin" / "speech-recipes", "run", "kws", f"target_dir={work / 'run'}",  # the
         "stop=prepare_data", f"prepare_data.dataset_root={corpus['v0.01']}",  # console script
         f"prepare_data.test_root={corpus['test_v0.01']}")
    assert json.loads((work / "run/stages/0-prepare_data.json").read_text())["finished"]
    assert "target_dir:" in (work / "run/config.yaml").read_text()
    print(step.report())  # shown with -s
    assert step.cpu() < CPU_BUDGET_SECS, step.report()
