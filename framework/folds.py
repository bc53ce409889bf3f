"""Cross-validation: one command runs every fold, then one report over the folds.

A problem says which folds to run (``cross_validation_folds(cfg)``: the ``run()`` overrides
of each fold, such as ``{"prepare_data": {"fold": 2}}``; none means an ordinary run). Fold
``i`` then runs as an ordinary run in ``target_dir/fold<i>/``: its own stage records, log,
lock and report. Every fold gets the same ``cache_dir`` (the one given, else
``target_dir/cache``), so decoded waveforms and cached features are computed once for all
folds. The same command run again skips what each fold has finished (resumable, stage by
stage); ``force``, ``start`` and ``stop`` apply to every fold.

Once every fold has evaluated, ``target_dir/report/`` gets ``report.md`` and ``report.json``:
each fold's metrics (its ``valid_best`` checkpoint on its test split) and, per metric, the
mean ± the sample standard deviation over the folds (ddof 1), with the wall time each fold
took in this command. ``target_dir`` itself holds ``problem.json``, ``.lock`` (one
cross-validation command at a time), ``config.yaml``, ``runs/`` and ``log.txt``.
"""
from __future__ import annotations

import copy
import json
import logging
import math
import sys
import time
from pathlib import Path

from framework import distributed, workspace
from framework.files import atomic_write_text
from framework.stages import STAGES, stage_index

log = logging.getLogger(__name__)
#: the metrics the Markdown table shows when present (report.json has every one)
SHOWN = ("accuracy", "macro_f1", "top_5_accuracy", "loss")


def run(problem, run_one, config_files, dotlist, overrides: dict) -> dict:
    """``run_one(config_files, dotlist, **overrides)`` (``problem``'s ordinary run) when the
    problem plans no folds, else every fold and the aggregate report. Returns the stage
    records, or ``{"folds": {"fold<i>": records}, "report": {...paths}}``."""
    given = {k: v for k, v in overrides.items() if v is not None or k == "stop"}  # as run()
    cfg = problem.compose_config(config_files, dotlist, given)
    plan = problem.cross_validation_folds(cfg)
    if not plan:
        return run_one(config_files, dotlist, **overrides)
    problem.check_command(cfg)  # the whole command, before anything is written
    parent = Path(cfg.target_dir).resolve()
    cache = Path(cfg.cache_dir).resolve() if cfg.cache_dir else parent / "cache"
    main = distributed.resolve(cfg.world_size, cfg.rank).is_main
    lock = workspace.TargetLock(parent)
    if main:
        workspace.claim(parent, problem.problem_name())
        lock.acquire()
        workspace.record_invocation(parent, cfg)
    try:
        records, seconds = {}, {}
        for index, extra in enumerate(plan):
            name = f"fold{index}"
            _log_to(parent, main, "cross-validation: fold %d of %d in %s", index + 1,
                    len(plan), parent / name)
            began = time.monotonic()
            records[name] = type(problem)().run(config_files, dotlist, **merged(
                given, extra, target_dir=str(parent / name), cache_dir=str(cache)))
            seconds[name] = time.monotonic() - began
            _log_to(parent, main, "cross-validation: fold %d done in %.1f s", index + 1,
                    seconds[name])
        if stage_index(cfg.stop, len(STAGES) - 1) < STAGES.index("evaluate"):
            _log_to(parent, main, "cross-validation: no aggregate report, stop=%s comes "
                    "before evaluate", cfg.stop)
            return {"folds": records}
        paths = write_report(problem, parent, seconds) if main else {}
        return {"folds": records, "report": paths}
    finally:
        lock.release()


def merged(base: dict, extra: dict, **keys) -> dict:
    """``base`` with ``extra``'s nested sections merged in and run ``keys`` set (copies)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return {**out, **keys}


def _log_to(parent: Path, main: bool, message: str, *args) -> None:
    """Log to the console and ``parent/log.txt`` (each fold's run points logging at its own
    folder, so it is pointed back first)."""
    workspace.setup_logging(parent if main else None)
    log.info(message, *args)


def fold_result(problem_class, folder: Path) -> dict:
    """The headline evaluation of the run in ``folder``: ``valid_best`` on ``test`` if it
    was evaluated, else its first result."""
    results = problem_class().attach(folder).evaluation_results()
    return next((r for r in results if r["checkpoint"] == "valid_best"
                 and r["split"] == "test"), results[0])


def summary(values: list[float]) -> dict:
    """Mean and sample standard deviation (None for one value), min and max."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) \
        if len(values) > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values)}


def scalar_metrics(metrics: dict) -> dict[str, float]:
    """The finite real-valued figures of a metrics dict (no counts, lists or flags)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, float) and math.isfinite(v)}


def write_report(problem, parent: Path, seconds: dict[str, float]) -> dict[str, Path]:
    """``parent/report/report.{md,json}`` over the folds in ``seconds`` (name → wall time)."""
    folds = []
    for name, secs in seconds.items():
        result = fold_result(type(problem), parent / name)
        folds.append({"fold": name, "checkpoint": result["checkpoint"],
                      "split": result["split"], "step": result.get("step"),
                      "n": result["metrics"].get("n"), "seconds": round(secs, 1),
                      "report_md": f"{name}/report/report.md",
                      "metrics": scalar_metrics(result["metrics"])})
    names = [k for k in folds[0]["metrics"] if all(k in f["metrics"] for f in folds)]
    stats = {k: summary([f["metrics"][k] for f in folds]) for k in names}
    report = {"title": f"{type(problem).__name__}: {len(folds)}-fold cross-validation",
              "folds": folds, "summary": stats}
    out = parent / "report"
    out.mkdir(exist_ok=True)
    paths = {"report_md": out / "report.md", "report_json": out / "report.json"}
    atomic_write_text(paths["report_json"], json.dumps(report, indent=1))
    shown = [k for k in SHOWN if k in stats] or names
    atomic_write_text(paths["report_md"], render_markdown(report, shown))
    log.info("cross-validation report: %s", paths["report_md"])
    print(f"Cross-validation report: {paths['report_md']}", file=sys.stderr)
    return paths


def render_markdown(report: dict, names: list[str]) -> str:
    """The fold table (one row per fold, one column per metric in ``names``) and the
    mean ± std row."""
    head = ["fold", "test items", *names, "seconds (this command)"]
    rows = [[f"[{f['fold']}]({f['report_md']})", str(f["n"] or ""),
             *(f"{f['metrics'][k]:.4f}" for k in names), f"{f['seconds']:.1f}"]
            for f in report["folds"]]
    stats = report["summary"]
    rows.append(["**mean ± std**", "", *(f"**{stats[k]['mean']:.4f} ± "
                 f"{stats[k]['std'] or 0:.4f}**" for k in names), ""])
    lines = [f"# {report['title']}", "",
             "Each fold is an ordinary run in its own folder (its report is linked); the "
             "figures are its headline evaluation (`valid_best` on its test split). Mean ± "
             "sample standard deviation (ddof 1) over the folds.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
