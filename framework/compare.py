"""Comparisons: one table of many runs, the best marked by validation, never by test.

``python -m framework compare exp/a exp/b ...`` or ``compare exp/lr`` (a sweep folder: its
points, in ``sweep.json``'s order, then any other run folder in it). Each row is one
target_dir, read from its own files only:

- state: ``finished``, or the first stage whose record is missing or stale (with the last
  checkpoint's step while training); a run not yet evaluated is shown, never ranked;
- upstream, head, learning rate and steps from the config the model was trained with
  (``train/config.yaml``); parameters from ``report/report.json``;
- metrics of the evaluated checkpoint (``valid_best`` when evaluated) from
  ``evaluate/results.json``: its validation figure of ``train.valid_metric`` (the ``valid``
  split's record, else the training validation at that checkpoint's step in
  ``train/history.json``) and, per test split, the key metrics (:data:`KEY_METRICS` and
  the valid metric);
- wall time: what the stages of the current records took (:func:`wall_seconds`);
- every other setting whose value differs between the runs, one column each.

The best row is the best validation figure in the run's own direction
(``train.valid_higher_better``), among runs of one problem and one valid metric; runs of
several problems or metrics may share a table, with the best marked within each group and a
note saying the figures are not comparable across groups.
"""
from __future__ import annotations

import csv
import datetime
import io
import json
from pathlib import Path

from omegaconf import OmegaConf

from framework import config as cfglib
from framework.checkpoint import CheckpointDir
from framework.errors import UserError
from framework.files import atomic_write_text, read_json
from framework.problem import MODEL_SECTIONS, checkpoint_step
from framework.report.markdown import md_row, num, text
from framework.stages import STAGES, StageBook
from framework.sweep import read_sweep

KEY_METRICS = ("accuracy", "macro_f1", "eer", "min_dcf_0.01")
#: run keys that say where and how a run ran, not what it computed
NOT_SETTINGS = ("target_dir", "cache_dir", "start", "stop", "force", "num_workers", "device",
                "rank", "dist_backend", "dist_timeout")
#: settings with a column of their own
SHOWN = {"upstream": "build_upstream.name", "head": "build_downstream.name",
         "lr": "build_optimizer.conf.lr", "steps": "train.total_steps"}
VALID = "valid"
BEST_MARK = "★"
MARKDOWN, CSV = "compare.md", "compare.csv"


# --- which runs -----------------------------------------------------------------------------


def run_folders(paths) -> list[tuple[str, Path]]:
    """(label, target_dir) of each path: a run's target_dir (it holds ``problem.json``) as
    given, or every run of a sweep folder labelled by its point name."""
    runs = []
    for given in paths:
        folder = Path(given)
        if (folder / "problem.json").is_file():
            runs.append((str(given), folder.resolve()))
        elif folder.is_dir() and (points := sweep_points(folder)):
            runs.extend((name, (folder / name).resolve()) for name in points)
        else:
            raise UserError(f"{given} is neither a run's target_dir (no problem.json) nor a "
                            "sweep folder holding runs; give target_dirs or sweep folders")
    return runs


def sweep_points(folder: Path) -> list[str]:
    """A sweep folder's runs: its ``sweep.json`` points, then other run folders, sorted."""
    planned = [p["target_dir"] for p in (read_sweep(folder) or {}).get("points", [])]
    present = sorted(p.name for p in folder.iterdir() if (p / "problem.json").is_file())
    return [n for n in planned if n in present] + [n for n in present if n not in planned]


# --- one run --------------------------------------------------------------------------------


def summarize(label: str, target_dir: Path) -> dict:
    """One row: every figure of the module docstring for one target_dir (``None`` where the
    run has not produced it yet), plus ``settings`` (flat trained config) for the table."""
    book = StageBook(target_dir)
    done, state = stages_done(book)
    settings = run_settings(target_dir)
    row = {"run": label, "state": state,
           "problem": read_json(target_dir / "problem.json", "the owner record")["problem"],
           **{column: settings.get(key) for column, key in SHOWN.items()},
           "upstream_trainable": settings.get("build_model.upstream_trainable"),
           "valid_metric": settings.get("train.valid_metric"),
           "higher_better": settings.get("train.valid_higher_better", True),
           "checkpoint": None, "step": None, "valid": None, "tests": {},
           "parameters": None, "parameters_total": None,
           "wall_s": wall_seconds(target_dir, book), "settings": settings,
           "target_dir": str(target_dir)}
    if done == STAGES.index("train"):
        row["state"] += training_progress(target_dir, settings)
    if done > STAGES.index("evaluate"):
        row.update(evaluated(book, target_dir, row["valid_metric"]))
    if done > STAGES.index("report"):
        parameters = read_json(book.resolve(book.read("report")["outputs"]["report_json"]),
                               "the report")["config"]["parameters"]
        row.update(parameters=parameters["trainable"], parameters_total=parameters["total"])
    return row


def stages_done(book: StageBook) -> tuple[int, str]:
    """(number of leading stages whose records are complete and chain, the run's state)."""
    for index, stage in enumerate(STAGES):
        try:
            book.require(stage)
        except UserError:
            what = "not done" if book.read(stage) is None else "stale or incomplete"
            return index, f"unfinished: stage {index} {stage} {what}"
    return len(STAGES), "finished"


def training_progress(target_dir: Path, settings: dict) -> str:
    latest = CheckpointDir(target_dir / "train" / "checkpoints").latest()
    if latest is None:
        return ""
    return f" (checkpoint step {checkpoint_step(latest)} of {settings.get('train.total_steps')})"


def run_settings(target_dir: Path) -> dict:
    """The run's flat config (dotted key → value): its last invocation's, with the sections
    that decide the model taken from the config it was trained with."""
    config = {}
    for path in (target_dir / "config.yaml", target_dir / "train" / "config.yaml"):
        if path.is_file():
            loaded = cfglib.to_plain(OmegaConf.load(path))
            config.update(loaded if not config else
                          {k: v for k, v in loaded.items() if k in MODEL_SECTIONS})
    return dict(flatten(config))


def flatten(mapping: dict, prefix: str = ""):
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def evaluated(book: StageBook, target_dir: Path, metric: str) -> dict:
    """The evaluated checkpoint (``valid_best`` when it was evaluated), its validation
    figure and its test metrics (split → metric → value)."""
    results = read_json(book.resolve(book.read("evaluate")["outputs"]["results"]),
                        "stage 3's results")
    if not results:
        return {}
    names = [r["checkpoint"] for r in results]
    chosen = "valid_best" if "valid_best" in names else names[0]
    mine = [r for r in results if r["checkpoint"] == chosen]
    step = mine[0].get("step")
    valid = next((r["metrics"].get(metric) for r in mine if r["split"] == VALID), None)
    if valid is None:
        history = read_json(target_dir / "train" / "history.json", "the training history")
        records = history["valid"] if isinstance(history, dict) else history
        valid = next((r.get(metric) for r in records if r["step"] == step), None)
    wanted = [metric, *(m for m in KEY_METRICS if m != metric)]
    tests = {r["split"]: {m: r["metrics"][m] for m in wanted
                          if isinstance(r["metrics"].get(m), (int, float))}
             for r in mine if r["split"] != VALID}
    return {"checkpoint": chosen, "step": step, "valid": valid, "tests": tests}


def wall_seconds(target_dir: Path, book: StageBook) -> float | None:
    """Seconds the stages of the current records took: for each stage, from the later of
    the previous stage's end and the start of the invocation that wrote its record (the
    newest ``runs/<time>`` before it) to its record's write. Idle time between invocations
    is not counted, nor the part of an interrupted stage done before its last start."""
    starts = sorted(invocation_start(p) for p in (target_dir / "runs").glob("*-*-*")
                    if invocation_start(p))
    total, previous = 0.0, None
    for stage in STAGES:
        record = book.read(stage)
        if record is None or not starts:
            break
        end = record_time(book.path(stage), record)
        began = max((s for s in starts if s <= end), default=starts[0])
        total += max(0.0, (end - max(began, previous or began)).total_seconds())
        previous = end
    return round(total, 1) if previous else None


def invocation_start(folder: Path) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(folder.name, "%Y%m%d-%H%M%S-%f")
    except ValueError:
        return None


def record_time(path: Path, record: dict) -> datetime.datetime:
    """When a stage record was written: its file's time (to the microsecond), unless the
    file was copied since (then it disagrees with the record's own ``finished``)."""
    written = datetime.datetime.fromtimestamp(path.stat().st_mtime)
    finished = datetime.datetime.fromisoformat(record["finished"])
    return written if abs((written - finished).total_seconds()) < 2 else finished


# --- the table ------------------------------------------------------------------------------


def compare(paths) -> dict:
    """``{"rows", "test_columns", "setting_columns", "notes"}`` of the runs that ``paths``
    name (see :func:`run_folders`), the best of each group marked (``row["best"]``)."""
    rows = [summarize(label, folder) for label, folder in run_folders(paths)]
    groups = {}
    for row in rows:
        row["best"] = False
        if row["valid"] is not None:
            groups.setdefault(group_of(row), []).append(row)
    for members in groups.values():
        sign = 1 if members[0]["higher_better"] else -1
        top = max(sign * r["valid"] for r in members)
        for row in members:
            row["best"] = sign * row["valid"] == top
    test_columns = list(dict.fromkeys((split, m) for row in rows
                                      for split, metrics in row["tests"].items()
                                      for m in metrics))
    return {"rows": rows, "test_columns": test_columns,
            "setting_columns": differing_settings(rows), "notes": notes(rows, groups)}


def group_of(row: dict) -> tuple:
    return row["problem"], row["valid_metric"], bool(row["higher_better"])


def differing_settings(rows: list[dict]) -> list[str]:
    """Settings (dotted keys) whose values differ between runs of one problem, other than
    those with a column of their own; none when the runs are of several problems. A key
    that only some runs have (a section added since) counts as differing."""
    if len({row["problem"] for row in rows}) > 1:
        return []
    rows = [row for row in rows if row["settings"]]  # a run with no config yet says nothing
    keys = dict.fromkeys(k for row in rows for k in row["settings"])
    ignored = {*SHOWN.values(), "train.valid_metric", "train.valid_higher_better"}
    return [k for k in keys if k not in ignored and k.split(".")[0] not in NOT_SETTINGS
            and len({json.dumps(row["settings"].get(k), sort_keys=True) for row in rows}) > 1]


def notes(rows: list[dict], groups: dict) -> list[str]:
    """The table's footnotes: how the best is chosen, and what the table mixes."""
    ways = sorted({f"{'highest' if higher else 'lowest'} validation {metric}"
                   for _, metric, higher in groups})
    lines = [f"{BEST_MARK} best: {' / '.join(ways) or 'none yet'} (each run's "
             "train.valid_metric, at its evaluated checkpoint). Test figures are never used "
             "to choose: picking the best run on test overstates how well it does."]
    if len(groups) > 1:
        kinds = ", ".join(f"{problem.split(':')[-1]} by {metric}" for problem, metric, _
                          in groups)
        lines.append(f"These runs are of different problems or validation metrics ({kinds}): "
                     "figures are not comparable across them; the best is marked within each.")
    unranked = [row["run"] for row in rows if row["valid"] is None]
    if unranked:
        lines.append(f"Not ranked (no evaluated checkpoint yet): {', '.join(unranked)}.")
    lines.append("Wall time: what the stages of each run's current records took, from their "
                 "records and the start of the invocation that wrote them.")
    return lines


# --- output ---------------------------------------------------------------------------------


def csv_text(table: dict) -> str:
    """The table as CSV: full-precision numbers, one column per test metric and setting."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    tests, settings = table["test_columns"], table["setting_columns"]
    head = ["run", "best", "state", "problem", "upstream", "upstream_trainable", "head", "lr",
            "steps", "checkpoint", "step", "parameters", "parameters_total", "wall_s",
            "valid_metric", "valid"]
    writer.writerow(head + [f"{split} {metric}" for split, metric in tests] + settings
                    + ["target_dir"])
    for row in table["rows"]:
        writer.writerow([cell(row[k]) for k in head]
                        + [cell(row["tests"].get(s, {}).get(m)) for s, m in tests]
                        + [cell(row["settings"].get(k)) for k in settings]
                        + [row["target_dir"]])
    return out.getvalue()


def cell(value) -> str:
    """A CSV cell: empty for None, JSON for lists and mappings, ``repr`` for floats."""
    if value is None:
        return ""
    if isinstance(value, (list, dict, bool)):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def markdown(table: dict) -> str:
    """The table as Markdown (figures to 4 decimals), then its notes as a list."""
    rows, tests, settings = table["rows"], table["test_columns"], table["setting_columns"]
    metrics = {row["valid_metric"] for row in rows if row["valid_metric"]}
    one_metric = next(iter(metrics)) if len(metrics) == 1 else None
    several = len({row["problem"] for row in rows}) > 1
    head = ["run", "state", *(["problem"] if several else []), "upstream", "head", "lr",
            "steps", "parameters", "wall time", f"valid {one_metric}" if one_metric else "valid",
            *(f"{split} {metric}" for split, metric in tests), *settings]
    lines = [md_row(head), "|" + "---|" * len(head)]
    for row in rows:
        valid = num(row["valid"]) if one_metric else \
            f"{text(row['valid_metric'])} {num(row['valid'])}"
        cells = [f"**{BEST_MARK} {row['run']}**" if row["best"] else row["run"], row["state"],
                 *([row["problem"].split(":")[-1]] if several else []), *setup_cells(row),
                 duration(row["wall_s"]), valid,
                 *(num(row["tests"].get(s, {}).get(m)) for s, m in tests),
                 *(json.dumps(row["settings"].get(k)) for k in settings)]
        lines.append(md_row([c.replace("|", "\\|") for c in cells]))
    return "\n".join(lines + [""] + [f"- {line}" for line in table["notes"]]) + "\n"


def setup_cells(row: dict) -> list[str]:
    """Upstream, head, lr, steps and parameters as the Markdown table shows them."""
    if not row["settings"]:  # no config written yet
        return ["—"] * 5
    upstream = text(row["upstream"]) + (" (fine-tuned)" if row["upstream_trainable"] else "")
    return [upstream, text(row["head"]), "default" if row["lr"] is None else f"{row['lr']:g}",
            text(row["steps"]), "—" if row["parameters"] is None else f"{row['parameters']:,}"]


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def write(table: dict, out_dir: Path) -> dict[str, Path]:
    """``compare.md`` and ``compare.csv`` in ``out_dir`` (made if missing), atomically."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; give a folder for compare.md and "
                        "compare.csv")
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / MARKDOWN, "csv": out_dir / CSV}
    atomic_write_text(paths["markdown"], markdown(table))
    atomic_write_text(paths["csv"], csv_text(table))
    return paths


def default_out(paths) -> Path | None:
    """Where the files go without ``--out``: the sweep folder when one sweep folder is
    compared; otherwise nowhere (the table is only printed)."""
    if len(paths) == 1 and not (Path(paths[0]) / "problem.json").is_file() \
            and Path(paths[0]).is_dir():
        return Path(paths[0])
    return None
