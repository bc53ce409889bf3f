"""Sweeps: the grid of every list-valued override, one target_dir per point, run in turn.

``python -m framework sweep kws target_dir=exp/lr 'build_optimizer.conf.lr=[1e-2,1e-3]' ...``
turns each override whose value is a list into an *axis* and runs the product of the axes,
one :meth:`Problem.run` per point, in this process, one after another. A key whose own
default is a list (``evaluate.splits``) takes a list as its plain value: it is an axis only
when given a list of lists (``'evaluate.splits=[[test],[test,valid]]'``). A list of lists is
always an axis of lists, which is also how a key that takes a list but defaults to null
(``test_ckpt_steps``, ``build_featurizer.layer_selections``) gets one list value for every
point: ``'test_ckpt_steps=[[1000,2000]]'`` (a list of one value is a plain override).

The sweep folder (``target_dir``) holds one target_dir per point, named from the axes
(``lr=0.01``, ``lr=0.01,hidden_size=64``), ``sweep.json`` (the axes and points, each with its
status), ``log.txt``, and the comparison table (:mod:`framework.compare`). Every point runs
with one ``cache_dir`` (the user's, else ``<target_dir>/cache``), so the waveform and
frozen-feature caches are computed once for the whole grid.

Every point's config goes through the problem's own checks before the first point runs, so a
bad override is refused with nothing written. Rerunning the same command skips the finished
points (their stage records are up to date) and resumes an interrupted one from its last
checkpoint. A point that fails with a :class:`UserError` (say, training stopped by
non-finite losses) is recorded as failed and the sweep goes on with the next point.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import ListConfig, OmegaConf

from framework import config as cfglib
from framework import workspace
from framework.errors import ConfigError, UserError
from framework.files import atomic_write_text, read_json
from framework.interrupts import Interrupted

log = logging.getLogger("framework.sweep")

SWEEP_JSON = "sweep.json"
NOT_AXES = ("target_dir", "cache_dir")  # the sweep decides them for every point
NAME_CHARS = re.compile(r"[^A-Za-z0-9._+=,-]")
MAX_NAME = 120  # characters of a point's folder name before it is shortened with a digest


@dataclass
class Point:
    """One configuration of the grid: its folder name and its values of the axes."""

    name: str
    values: dict  # axis key → value

    def dotlist(self) -> list[str]:
        """The point's overrides as dotlist items (JSON is YAML: it reads back the same)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.values.items()]


@dataclass
class Plan:
    """A checked sweep: what runs where. Made by :func:`plan_sweep`."""

    problem: type
    config_files: list[str]
    fixed: list[str]          # the overrides every point shares
    axes: dict                # key → list of values, in command-line order
    points: list[Point]
    sweep_dir: Path
    cache_dir: Path
    statuses: dict = field(default_factory=dict)  # point name → "pending", "done", ...

    def point_dir(self, point: Point) -> Path:
        return self.sweep_dir / point.name

    def run_keywords(self, point: Point) -> dict:
        return {"target_dir": str(self.point_dir(point)), "cache_dir": str(self.cache_dir)}


def split_axes(problem, dotlist) -> tuple[list[str], dict]:
    """(fixed overrides, axes: key → values) of a sweep command's dotlist (see the module
    docstring for which lists are axes)."""
    defaults, fixed, axes = problem.default_config(), [], {}
    for item in dotlist:
        key = item.partition("=")[0]
        value = OmegaConf.select(cfglib.parse_dotlist([item]), key)
        own_default = OmegaConf.select(defaults, key, default=None)
        values = OmegaConf.to_container(value) if isinstance(value, ListConfig) else None
        if values is None or (isinstance(own_default, ListConfig)
                              and not all(isinstance(v, list) for v in values)):
            fixed.append(item)
            continue
        check_axis(key, values, axes)
        if len(values) == 1:  # one value does not vary: a plain override of every point
            fixed.append(f"{key}={json.dumps(values[0])}")
        else:
            axes[key] = values
    if not axes:
        raise ConfigError("sweep: no axis; give at least one override a list of two or more "
                          "values, e.g. 'build_optimizer.conf.lr=[1e-3,1e-4]' (to run one "
                          "configuration, use `run`)")
    return fixed, axes


def check_axis(key: str, values: list, axes: dict) -> None:
    if key in NOT_AXES:
        raise ConfigError(f"sweep: {key} cannot be an axis: the sweep puts every point in "
                          f"its own folder under target_dir and shares one cache_dir")
    if key in axes:
        raise ConfigError(f"sweep: {key} is given twice; give its values once, as one list")
    if not values:
        raise ConfigError(f"sweep: {key}=[] has no values; an axis needs at least one")
    shown = [json.dumps(v) for v in values]
    repeated = sorted({s for s in shown if shown.count(s) > 1})
    if repeated:
        raise ConfigError(f"sweep: {key} lists {', '.join(repeated)} more than once")


def grid(axes: dict) -> list[Point]:
    """Every combination of the axes' values (the last axis varies fastest), named."""
    labels = axis_labels(list(axes))
    points = []
    for combination in itertools.product(*axes.values()):
        values = dict(zip(axes, combination))
        name = ",".join(f"{labels[key]}={value_text(value)}" for key, value in values.items())
        points.append(Point(folder_name(name), values))
    names = [p.name for p in points]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(f"sweep: values that differ give the same folder name "
                          f"{', '.join(clashes[:3])} (only letters, digits and ._+=,- are kept); "
                          "give values that differ in those characters")
    return points


def axis_labels(keys: list[str]) -> dict[str, str]:
    """Each key's shortest dotted suffix that no other axis ends with: ``lr`` for
    ``build_optimizer.conf.lr``, unless another axis also ends in ``lr``."""
    labels = {}
    for key in keys:
        parts = key.split(".")
        for size in range(1, len(parts) + 1):
            label = ".".join(parts[-size:])
            if not any(other != key and (other == label or other.endswith("." + label))
                       for other in keys):
                break
        labels[key] = label
    return labels


def value_text(value) -> str:
    """A value as a folder name shows it: ``0.001``, ``true``, ``test+valid``, ``gamma=0.9``."""
    if isinstance(value, list):
        return "+".join(value_text(v) for v in value)
    if isinstance(value, dict):
        return "+".join(f"{k}={value_text(v)}" for k, v in value.items())
    if isinstance(value, str):
        return value
    return json.dumps(value)  # numbers as Python writes them (repr), true/false/null


def folder_name(text: str) -> str:
    """``text`` with unsafe characters replaced by ``_``; a long one is cut and given a
    digest of the whole, so names stay unique and within file-system limits."""
    safe = NAME_CHARS.sub("_", text)
    if len(safe) <= MAX_NAME:
        return safe
    return f"{safe[:MAX_NAME - 9]}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"


def plan_sweep(problem, config_files=(), dotlist=()) -> Plan:
    """The sweep of ``problem`` (a Problem class) that the command describes, every point's
    config composed and checked by the problem's own checks; nothing is written."""
    config_files, dotlist = list(config_files), list(dotlist)
    fixed, axes = split_axes(problem, dotlist)
    points = grid(axes)
    first = checked(points[0], lambda: problem.compose_config(config_files,
                                                                fixed + points[0].dotlist()))
    sweep_dir = Path(first.target_dir).resolve()
    cache_dir = Path(first.cache_dir).resolve() if first.cache_dir else sweep_dir / "cache"
    plan = Plan(problem, config_files, fixed, axes, points, sweep_dir, cache_dir)
    check_sweep_dir(plan, first)
    for point in points:
        checked(point, lambda: problem().check_command(problem.compose_config(
            config_files, fixed + point.dotlist(), plan.run_keywords(point))))
    return plan


def checked(point: Point, check):
    """``check()``, its error prefixed with the point it was found in."""
    try:
        return check()
    except UserError as err:
        kind = ConfigError if isinstance(err, ConfigError) else UserError
        raise kind(f"sweep point {point.name}: {err}") from err


def check_sweep_dir(plan: Plan, cfg) -> None:
    """The sweep folder is writable, not a run's target_dir, and holds no other problem's
    sweep; the sweep runs in one process."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 or cfg.world_size > 1:
        raise ConfigError("sweep runs its points one after another in one process; run it "
                          "without torchrun and world_size (each point can be run "
                          "distributed on its own with `run`)")
    name = plan.problem.problem_name()
    workspace.check_target_dir(plan.sweep_dir, name)
    if (plan.sweep_dir / "problem.json").is_file():
        raise UserError(f"target_dir {plan.sweep_dir} is a run's folder, not a sweep folder; "
                        "give the sweep a folder of its own (each point gets a subfolder)")
    earlier = read_sweep(plan.sweep_dir)
    if earlier and earlier.get("problem") != name:
        raise UserError(f"target_dir {plan.sweep_dir} holds a sweep of problem "
                        f"'{earlier.get('problem')}', not '{name}'; choose another target_dir")


def read_sweep(sweep_dir: Path) -> dict | None:
    """The ``sweep.json`` of a folder, or None."""
    path = Path(sweep_dir) / SWEEP_JSON
    return read_json(path, "the sweep's plan") if path.is_file() else None


def write_sweep(plan: Plan) -> None:
    points = [{"name": p.name, "target_dir": p.name, "values": p.values,
               "status": plan.statuses.get(p.name, "pending")} for p in plan.points]
    record = {"problem": plan.problem.problem_name(), "command": workspace.command_line(),
              "config_files": plan.config_files, "overrides": plan.fixed,
              "axes": [{"key": k, "values": v} for k, v in plan.axes.items()],
              "cache_dir": str(plan.cache_dir), "points": points}
    atomic_write_text(plan.sweep_dir / SWEEP_JSON, json.dumps(record, indent=1) + "\n")


def run_sweep(plan: Plan) -> Plan:
    """Run every point of a checked plan in turn; ``plan.statuses`` says how each ended
    (``done``, or ``failed: <message>``). One sweep at a time per folder (its ``.lock``)."""
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    lock = workspace.TargetLock(plan.sweep_dir).acquire()
    try:
        workspace.setup_logging(plan.sweep_dir)
        workspace.log_header(log)
        log.info("sweep: %d points over %s; cache_dir %s", len(plan.points),
                 ", ".join(f"{k} ({len(v)})" for k, v in plan.axes.items()), plan.cache_dir)
        write_sweep(plan)
        for number, point in enumerate(plan.points, 1):
            run_point(plan, point, f"{number}/{len(plan.points)}")
    finally:
        lock.release()
    return plan


def run_point(plan: Plan, point: Point, position: str) -> None:
    log.info("sweep point %s: %s", position, point.name)
    status = "stopped: interrupted or crashed (see its log.txt); rerun the sweep to resume"
    try:
        plan.problem().run(plan.config_files, plan.fixed + point.dotlist(),
                           **plan.run_keywords(point))
        status = "done"
    except Interrupted:
        raise
    except UserError as err:  # this point's failure; the others may still run
        status = f"failed: {err}"
    finally:
        plan.statuses[point.name] = status
        workspace.setup_logging(plan.sweep_dir)  # the point's run logged to its own folder
        if status != "done":
            log.error("sweep point %s: %s", point.name, status)
        write_sweep(plan)


def failures(plan: Plan) -> dict[str, str]:
    """Point name → status of every point that did not end well."""
    return {name: status for name, status in plan.statuses.items() if status != "done"}
