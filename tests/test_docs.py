"""The docs run: docs/config.md is current, every tutorial's code runs as written, and every
``python -m framework`` command in README.md and docs/ parses and composes a valid config.

Tutorials (docs/tutorials/*.md) are run block by block, in order, in an empty folder, as a
reader would: a ```python or ```yaml block whose first line is ``# file: NAME`` is written to
NAME; any other ```python block runs as a script (``python block.py``); a ```sh block runs in
bash (``-euo pipefail``) with this venv's ``python`` first on PATH. Other blocks (```text,
```mermaid) are shown, not run. README.md's "A five-minute tour" section runs the same way,
with its scratch folder ``/tmp/tour`` replaced by the test's temporary folder.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from framework import config_reference
from framework.cli import load_problem, parser
from framework import config as cfglib
from framework import sweep
from framework.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
TUTORIALS = sorted((DOCS / "tutorials").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.M | re.S)
FILE_MARK = re.compile(r"^# file: (\S+)")


# -- the config reference -------------------------------------------------------------------

def test_config_reference_is_current():
    fresh = config_reference.render()
    committed = (DOCS / "config.md").read_text() if (DOCS / "config.md").is_file() else ""
    assert committed == fresh, ("docs/config.md is stale: regenerate it with "
                                f"`{config_reference.COMMAND}`")


def test_config_reference_rows_come_from_the_yaml_comments(tmp_path):
    """A problem's every key is a row: its merged default, its comment without the rule, the
    rule as its allowed values; a registered name lists the registry."""
    (tmp_path / "doc_problem.yaml").write_text(
        "# a problem of this test\n"
        "prepare_data:\n"
        "  dataset_root: ???        # where the clips are (must be non-empty)\n"
        "  ratio: 0.5               # share held out | for validation (must be > 0 and < 1)\n"
        "build_batch_sampler:\n"
        "  train:\n"
        "    batch_size: 3          # overridden here\n")
    from recipes.kws import KWS

    class DocProblem(KWS):
        """A problem made by the docs test."""

        config_file = str(tmp_path / "doc_problem.yaml")

    page = config_reference.render({"doc_problem": DocProblem})
    assert "## doc_problem\n\nA problem made by the docs test." in page
    assert "| `dataset_root` | `???` | where the clips are | must be `non-empty` |" in page
    assert "| `ratio` | `0.5` | share held out \\| for validation | must be `> 0 and < 1` |" \
        in page
    # the recipe's comment has no rule: the family's rule still applies, and is shown
    assert "| `train.batch_size` | `3` | overridden here | must be `>= 1` |" in page
    assert "| `train.name` | `balanced` |" in page and "balanced, duration, fixed" in page
    # every key of the merged defaults has its row, in every section
    defaults = config_reference.plain_defaults(DocProblem)
    for section, node in defaults.items():
        if isinstance(node, dict):
            for key in leaves(node):
                assert f"| `{key}` |" in page, f"{section}.{key} has no row"


def leaves(node: dict, prefix: str = "") -> list[str]:
    out = []
    for key, value in node.items():
        out.append(f"{prefix}{key}")
        if isinstance(value, dict) and value:
            out += leaves(value, f"{prefix}{key}.")
    return out


def test_config_reference_write_and_check(tmp_path, capsys):
    page = tmp_path / "config.md"
    page.write_text("# old\n")
    assert config_reference.main(["--check", str(page)]) == 1
    assert capsys.readouterr().err.strip() == (f"{page} is stale; regenerate it: "
                                               f"{config_reference.COMMAND}")
    assert config_reference.main(["--write", str(page)]) == 0
    assert page.read_text() == config_reference.render()
    assert config_reference.main(["--check", str(page)]) == 0


# -- tutorials --------------------------------------------------------------------------------

def code_blocks(markdown: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block, in order."""
    return [(m[1], m[2]) for m in FENCE.finditer(markdown)]


def run_tutorial(page: Path, folder: Path) -> str:
    """Run ``page``'s blocks in ``folder`` (see the module docstring); return their output.
    A failing block fails the test with its code and output."""
    return run_blocks(page.read_text(), folder, page.name)


def run_blocks(markdown: str, folder: Path, where: str) -> str:
    """Run the blocks of ``markdown`` in ``folder``; ``where`` names them in a failure."""
    # one thread: on 2 shared cores, torch's two threads ran these tiny steps 30x slower
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "SPEECH_RECIPES_PROGRESS": "off", "OMP_NUM_THREADS": "1"}
    output = []
    for number, (language, code) in enumerate(code_blocks(markdown), 1):
        marked = FILE_MARK.match(code)
        if marked and language in ("python", "yaml"):
            (folder / marked[1]).write_text(code)
            continue
        if language == "python":
            script = folder / f".block{number}.py"
            script.write_text(code)
            command = [sys.executable, str(script)]
        elif language == "sh":
            command = ["bash", "-euo", "pipefail", "-c", code]
        else:
            continue
        done = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                              timeout=300)
        output.append(done.stdout + done.stderr)
        assert done.returncode == 0, (f"{where}, block {number} ({language}) exited "
                                      f"{done.returncode}:\n{code}\n--- output ---\n"
                                      f"{done.stdout}{done.stderr[-3000:]}")
    return "\n".join(output)


def test_there_are_four_tutorials():
    assert {p.stem for p in TUTORIALS} >= {"add-a-corpus", "add-an-upstream",
                                           "subclass-a-problem", "run-a-sweep"}


def test_tutorial_add_a_corpus(tmp_path):
    output = run_tutorial(DOCS / "tutorials" / "add-a-corpus.md", tmp_path)
    run = tmp_path / "exp" / "tones"
    train = pd.read_csv(run / "data" / "train.csv")
    assert set(train.columns) >= {"id", "wav_path", "label", "speaker", "duration"}
    assert sorted(train.speaker.unique()) == ["s0", "s1", "s2", "s3"]
    assert set(pd.read_csv(run / "data" / "test.csv").speaker) == {"s5"}
    assert (run / "report" / "report.md").is_file()
    assert "valid_best test accuracy" in output


def test_tutorial_add_an_upstream(tmp_path):
    output = run_tutorial(DOCS / "tutorials" / "add-an-upstream.md", tmp_path)
    assert "padding never changes the second clip's frames" in output
    run = tmp_path / "exp" / "spectrum"
    trained = (run / "train" / "config.yaml").read_text()
    assert "name: log_spectrum" in trained and "n_fft: 512" in trained
    assert (run / "report" / "report.md").is_file()
    predictions = [json.loads(line) for line in output.splitlines() if line.startswith('{"file"')]
    tested = sorted((tmp_path / "corpus" / "speech_commands_test_set_v0.01" / "yes").glob("*.wav"))
    assert len(predictions) == len(tested) > 0
    assert all(len(p["predictions"]) == 2 for p in predictions)


def test_tutorial_subclass_a_problem(tmp_path):
    output = run_tutorial(DOCS / "tutorials" / "subclass-a-problem.md", tmp_path)
    state = torch.load(tmp_path / "exp" / "gru" / "train" / "checkpoints" / "valid_best.pt",
                       weights_only=True)
    assert state["problem"] == "gru_kws:GRUKWS"
    assert state["task"]["model.downstream.gru.weight_hh_l0"].shape == (3 * 32, 32)
    # the Python run with the same settings found every stage up to date
    assert output.count("up to date, skipped") == 5


def test_tutorial_run_a_sweep(tmp_path):
    output = run_tutorial(DOCS / "tutorials" / "run-a-sweep.md", tmp_path)
    sweep_dir = tmp_path / "exp" / "lr"
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert [(p["name"], p["status"]) for p in plan["points"]] == [("lr=0.01", "done"),
                                                                 ("lr=0.001", "done")]
    table = pd.read_csv(tmp_path / "exp" / "tables" / "compare.csv")
    assert sorted(table.lr) == [0.001, 0.01] and table.best.sum() == 1
    assert "★" in output


# -- README's five-minute tour ----------------------------------------------------------------

TOUR_FOLDER = "/tmp/tour"


def readme_section(title: str) -> str:
    """The text of README.md's ``## title`` section, up to the next ``## `` heading."""
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"README.md has no section '## {title}'"
    return match[1]


def test_readme_tour(tmp_path):
    """The tour's commands run as written, in a temporary folder, and do what it says."""
    tour = readme_section("A five-minute tour")
    assert TOUR_FOLDER in tour and "```sh" in tour
    output = run_blocks(tour.replace(TOUR_FOLDER, str(tmp_path)), tmp_path, "README.md tour")
    run = tmp_path / "exp" / "kws"
    for path in ("data/train.csv", "encoder.json", "train/checkpoints/valid_best.pt",
                 "evaluate/valid_best/test/predictions.csv", "report/report.md",
                 "report/confusion_matrix.png", "report/training_curves.png",
                 "stages/4-report.json"):
        assert (run / path).exists(), path
    assert "# KWS" in output and "Headline" in output  # the head of report.md
    # the rerun skipped all five stages; the lr change reran training and kept the old run
    assert output.count("up to date, skipped") >= 5 + 2
    assert "config section build_optimizer changed" in output
    kept = list((run / "train.runs").iterdir())
    assert len(kept) == 1 and (kept[0] / "checkpoints" / "valid_best.pt").is_file()
    predictions = [json.loads(line) for line in output.splitlines() if line.startswith('{"file"')]
    assert len(predictions) == 2 and all(len(p["predictions"]) == 3 for p in predictions)
    table = [line for line in output.splitlines() if "exp/kws" in line and line.startswith("|")]
    assert len(table) == 2 and sum("★" in line for line in table) == 1
    assert any("mfcc" in line for line in table)


# -- every command shown in README.md and docs/ -----------------------------------------------

def shown_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after ``-m framework``) of every ``python -m framework`` (or ``torchrun
    ... -m framework``) command in the ```sh blocks of README.md and docs/, continuation
    lines joined, comments dropped, ``...`` (elided arguments) dropped and ``key=...`` (a
    path of the reader's) given a placeholder value."""
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]:
        for language, code in code_blocks(page.read_text()):
            if language != "sh":
                continue
            for line in code.replace("\\\n", " ").splitlines():
                words = []
                for word in shell_words(line):
                    if word in SHELL_OPERATORS:
                        break  # `| tail`, `> file`, `&`: the rest is not the command's
                    if word != "...":
                        words.append(word.replace("=...", "=placeholder", 1)
                                     if word.endswith("=...") else word)
                for i in range(len(words) - 1):
                    if words[i:i + 2] == ["-m", "framework"]:
                        found.append((f"{page.relative_to(ROOT)}: {line.strip()[:90]}",
                                      words[i + 2:]))
                        break
    return found


SHELL_OPERATORS = {"|", "||", "&", "&&", ";", ">", ">>", "<"}


def shell_words(line: str) -> list[str]:
    """``line``'s words as the shell splits them (quotes, ``#`` comments, operators)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


COMMANDS = shown_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) > 30  # the extraction found them (README alone shows over 30)


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_shown_command_parses_and_composes(where, argv):
    """The CLI's parser takes the command; a ``run`` or ``sweep`` of a registered problem
    composes a valid config from it (each sweep point's), with the builders checked. Keys the
    command leaves ``???`` (real data paths, elided with ``...``) get a placeholder, and
    ``--config`` files that do not exist (``my.yaml``) are left out."""
    args, extra = parser().parse_known_args(argv)
    unknown = [item for item in extra if args.command not in ("run", "sweep") or "=" not in item]
    assert not unknown, f"{where}: unrecognized arguments {unknown}"
    if args.command not in ("run", "sweep") or ":" in args.problem:
        return  # module:Class names the reader's own problem
    problem = load_problem(args.problem)
    dotlist = [*args.overrides, *extra]
    configs = [c for c in args.config if (ROOT / c).is_file()]
    given = {item.partition("=")[0] for item in dotlist}
    placeholders = [f"{key}=placeholder" for key in cfglib.missing_keys(
        problem.default_config()) if key not in given]
    if args.command == "sweep":
        fixed, axes = sweep.split_axes(problem, dotlist)
        point_dotlists = [fixed + point.dotlist() for point in sweep.grid(axes)]
    else:
        point_dotlists = [dotlist]
    for items in point_dotlists:
        cfg = problem.compose_config([ROOT / c for c in configs], placeholders + items)
        try:
            problem().check_builders(cfg)
        except ConfigError as err:  # acceptable only when it looked for the reader's data
            absent = [value for _, _, value in map(lambda i: i.partition("="), items)
                      if value.startswith("/") and not Path(value).exists()]
            # or the reader's pretrained model (a folder or a Hub id, from the command or a
            # --config file), which this machine's Hugging Face cache need not hold
            checkpoint = OmegaConf.select(cfg, "build_upstream.conf.checkpoint")
            if checkpoint and not Path(str(checkpoint)).exists():
                absent.append(str(checkpoint))
            assert any(path in str(err) for path in absent), f"{where}: {err}"


def test_readme_python_runs_compose(monkeypatch):
    """README's Python blocks compile; those calling ``run()`` pass a valid config to it."""
    from framework.problem import Problem

    calls = []

    def composing_run(self, config_files=(), dotlist=(), **overrides):
        cfg = type(self).compose_config(config_files, dotlist, overrides)
        self.check_builders(cfg)
        calls.append(cfg)
        return {}

    monkeypatch.setattr(Problem, "run", composing_run)
    blocks = [code for language, code in code_blocks((ROOT / "README.md").read_text())
              if language == "python"]
    assert blocks
    for code in blocks:
        compiled = compile(code, "README.md", "exec")
        if ".run(" in code:
            exec(compiled, {})
    assert calls and calls[0].train.total_steps == 5000
