"""What every report shows about the run itself: the training setup (config summary and
parameter counts) and the training curves, shared by the problem families.

``train/history.json`` is ``{"valid": [{"step", <metric>: value, ...}], "train": [{"step",
"loss", "lr"}]}``: one ``valid`` record per validation, one ``train`` record per
``train.log_step`` (``loss``: mean training loss since the previous record, ``None`` when every
update was skipped). Runs written before the training records existed hold only the list of
validation records; :func:`read_history` accepts both.

>>> quality_metrics({"n": 120, "accuracy": 0.9, "eer_threshold": 0.31, "n_trials": 400,
...                  "eer": 0.05, "loss": 0.4, "roc_auc_ovr_macro": None})
{'accuracy': 0.9, 'eer': 0.05, 'loss': 0.4}
>>> read_history_data([{"step": 10, "accuracy": 0.5}])   # the old form
{'valid': [{'step': 10, 'accuracy': 0.5}], 'train': []}
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from framework.config import to_plain
from framework.report.markdown import md_row, num

CURVES_PNG = "training_curves.png"
LAYER_WEIGHTS_PNG = "layer_weights.png"
PART_NAMES = {"upstream": "upstream", "featurizer": "featurizer", "downstream": "downstream",
              "task": "loss/task"}


def quality_metrics(metrics: dict) -> dict:
    """The entries of ``metrics`` worth a curve: floats that measure quality (accuracy, F1,
    EER, minDCF, loss, ...), not counts (``n``, ``n_*``, any int), thresholds (``*_threshold``)
    or undefined values (``None``)."""
    return {name: value for name, value in metrics.items()
            if isinstance(value, float) and name != "n" and not name.startswith("n_")
            and not name.endswith("_threshold")}


# --- history.json ---------------------------------------------------------------------------


def read_history(path: str | Path) -> dict:
    """``train/history.json`` as ``{"valid": [...], "train": [...]}`` (see the module
    docstring); a missing file gives empty lists."""
    path = Path(path)
    return read_history_data(json.loads(path.read_text()) if path.is_file() else [])


def read_history_data(data) -> dict:
    """Normalise a loaded ``history.json``: the old list form is the validation records."""
    if isinstance(data, list):
        return {"valid": data, "train": []}
    return {"valid": list(data.get("valid", [])), "train": list(data.get("train", []))}


# --- the config summary ---------------------------------------------------------------------


def training_summary(problem, loss: Callable[[dict], dict]) -> dict:
    """``{"config": config_summary(...), "history": read_history(...), "history_json"}`` of a
    problem whose train stage has run, from the config it was trained with (not today's).

    ``problem``: a :class:`framework.problem.Problem` (its ``trained_config``,
    ``build_model_and_task`` and ``artifact``). ``loss``: trained config (plain) →
    ``{"name", "conf"}`` of the training loss, which each family names its own way. The model
    is built only to count its parameters.
    """
    from framework.inference import TrainedModels

    task, _, trained = TrainedModels(problem).load(problem.artifact("train", "valid_best"))
    plain = to_plain(trained)
    history_json = Path(problem.artifact("train", "config")).parent / "history.json"
    return {"config": config_summary(plain, task, loss(plain)),
            "history": read_history(history_json), "history_json": str(history_json),
            "layer_weights": task.model.featurizer.layer_weights()}


def training_json(training: dict) -> dict:
    """The ``config`` and ``training`` sections of a report.json (both families)."""
    history = training["history"]
    out = {"curves_png": CURVES_PNG, "history_json": training["history_json"],
           "train_records": len(history["train"]), "validations": len(history["valid"])}
    if training.get("layer_weights"):
        out.update(layer_weights={str(k): v for k, v in training["layer_weights"].items()},
                   layer_weights_png=LAYER_WEIGHTS_PNG)
    return {"config": training["config"], "training": out}


def write_training_figures(training: dict, out_dir: Path, metrics: list[str],
                           best_step: int | None, title: str) -> dict[str, Path]:
    """``training_curves.png`` and, when the featurizer learned layer weights,
    ``layer_weights.png``; → their paths by name."""
    paths = {"training_curves": plot_training_curves(
        training["history"], out_dir / CURVES_PNG, metrics, best_step, f"{title}: training")}
    if training.get("layer_weights"):
        paths["layer_weights"] = plot_layer_weights(training["layer_weights"],
                                                    out_dir / LAYER_WEIGHTS_PNG, title)
    return paths


def config_summary(cfg: dict, task, loss: dict) -> dict:
    """The settings a reader compares runs by, from a plain trained config ``cfg`` and the
    task (``torch.nn.Module``) it builds.

    Keys: ``upstream``, ``featurizer``, ``downstream`` (their config sections: name, conf, ...),
    ``upstream_trainable``, ``loss`` (as given), ``optimizer`` (``{"name", "conf"}``), ``lr``
    (``build_optimizer.conf.lr``; ``None`` = the optimizer's default), ``scheduler``
    (``{"name", "conf", "stepped"}``; ``stepped`` = ``train.use_scheduler``), ``batch_size`` (per
    process and micro-batch), ``gradient_accumulate``, ``world_size``,
    ``effective_batch_size`` (their product), ``total_steps``, ``valid_metric``,
    ``valid_higher_better``, ``augmentation`` (:func:`augmentation_summary`) and
    ``parameters`` (:func:`parameter_counts`).
    """
    train, optimizer = cfg["train"], cfg["build_optimizer"]
    batch = cfg["build_batch_sampler"]["train"]["batch_size"]
    world = int(cfg.get("world_size") or 1)
    return {
        "upstream": cfg["build_upstream"], "featurizer": cfg["build_featurizer"],
        "downstream": cfg["build_downstream"],
        "upstream_trainable": bool(cfg["build_model"].get("upstream_trainable", False)),
        "loss": loss,
        "optimizer": {"name": optimizer["name"], "conf": optimizer.get("conf") or {}},
        "lr": (optimizer.get("conf") or {}).get("lr"),
        "scheduler": {"name": cfg["build_scheduler"]["name"],
                      "conf": cfg["build_scheduler"].get("conf") or {},
                      "stepped": bool(train.get("use_scheduler", False))
                      or steps_every_update(cfg["build_scheduler"]["name"])},
        "batch_size": batch, "gradient_accumulate": train["gradient_accumulate"],
        "world_size": world, "effective_batch_size": batch * train["gradient_accumulate"] * world,
        "total_steps": train["total_steps"], "valid_metric": train.get("valid_metric"),
        "valid_higher_better": train.get("valid_higher_better"),
        "augmentation": augmentation_summary(cfg.get("build_augmentation")),
        "parameters": parameter_counts(task)}


def augmentation_summary(section: dict | None) -> dict:
    """The parts of a ``build_augmentation`` section that are on (``{}``: none, or a problem
    without the section): ``spec_augment`` with masks, ``noise`` with a folder, ``speed``
    with factors, each with its settings."""
    section = section or {}
    spec, noise, speed = (section.get(k) or {} for k in ("spec_augment", "noise", "speed"))
    on = {"spec_augment": spec.get("time_masks") or spec.get("freq_masks"),
          "noise": noise.get("folder"), "speed": speed.get("factors")}
    return {name: section[name] for name, enabled in on.items() if enabled}


def steps_every_update(name: str) -> bool:
    """Whether the named schedule steps after every update whatever train.use_scheduler says
    (the framework's own schedules, e.g. ``warmup``)."""
    from framework.schedules import SCHEDULES

    return name in SCHEDULES.names() and getattr(SCHEDULES.get(name), "steps_every_update",
                                                 False)


def parameter_counts(task) -> dict:
    """``{"trainable", "total", "by_part": {part: {"trainable", "total"}}}`` (numbers of
    scalars). Parts: ``upstream``, ``featurizer``, ``downstream`` of ``task.model`` and
    ``task`` (what the task holds outside the model, e.g. a loss's class weights)."""
    parts = {name: getattr(task.model, name) for name in ("upstream", "featurizer",
                                                          "downstream")}
    in_model = {id(p) for p in task.model.parameters()}
    by_part = {name: _count(list(module.parameters())) for name, module in parts.items()}
    by_part["task"] = _count([p for p in task.parameters() if id(p) not in in_model])
    return {**_count(list(task.parameters())), "by_part": by_part}


def _count(params: list) -> dict:
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}


# --- report.md ------------------------------------------------------------------------------


def md_training(summary: dict, curves_png: str | None = CURVES_PNG) -> str:
    """The "Training" section: a settings table, then the curves PNG (when given) and a line
    on what the curves hold."""
    c = summary["config"]
    lines = ["## Training", "", "| Setting | Value |", "|---|---|"]
    lines += [md_row([name, value]) for name, value in _md_settings(c)]
    if curves_png:
        lines += ["", f"![Training loss, learning rate and validation curves]({curves_png})",
                  "", _md_history_line(summary["history"])]
    if summary.get("layer_weights"):
        weights = summary["layer_weights"]
        lines += ["", "Learned featurizer weights (softmax over the upstream's layers; the "
                  "checkpoint reported):", "", "| Layer | " + " | ".join(map(str, weights))
                  + " |", "|---|" + "---|" * len(weights),
                  "| Weight | " + " | ".join(f"{w:.3f}" for w in weights.values()) + " |", "",
                  f"![Learned layer weights]({LAYER_WEIGHTS_PNG})"]
    return "\n".join(lines)


def _md_settings(c: dict) -> list[tuple[str, str]]:
    p = c["parameters"]
    parts = ", ".join(f"{PART_NAMES[name]} {_n(v['trainable'])} / {_n(v['total'])}"
                      for name, v in p["by_part"].items() if v["total"])
    frozen = "fine-tuned" if c["upstream_trainable"] else "frozen"
    scheduler = c["scheduler"]
    stepped = "stepped every update" if scheduler["stepped"] else \
        "not stepped (train.use_scheduler=false)"
    return [
        ("Upstream", f"{_named(c['upstream'])}, {frozen}"),
        ("Featurizer", _kwargs(c["featurizer"])),
        ("Downstream", _named(c["downstream"])),
        ("Loss", _named(c["loss"])),
        ("Optimizer", _named(c["optimizer"]) + ("" if c["lr"] is not None
                                                else ", lr: the optimizer's default")),
        ("Scheduler", f"{_named(scheduler)}, {stepped}"),
        ("Batch", f"{c['batch_size']} per process × {c['world_size']} process(es) × "
                  f"{c['gradient_accumulate']} accumulated = {c['effective_batch_size']} "
                  f"per update"),
        ("Updates", _n(c["total_steps"])),
        ("Augmentation (training only)", "; ".join(
            f"{name} {_kwargs(conf)}" for name, conf in c.get("augmentation", {}).items())
         or "none"),
        ("Checkpoint choice", f"validation {c['valid_metric']} "
                              f"({'higher' if c['valid_higher_better'] else 'lower'} is better)"),
        ("Parameters (trainable / total)",
         f"{_n(p['trainable'])} / {_n(p['total'])}" + (f" ({parts})" if parts else "")),
    ]


def _md_history_line(history: dict) -> str:
    train, valid = history["train"], history["valid"]
    if not train and not valid:
        return "No training history was recorded."
    losses = [r for r in train if r.get("loss") is not None]
    last = (f"last training loss {num(losses[-1]['loss'])} at step {losses[-1]['step']}"
            if losses else "no training-loss records (run trained before they were kept)")
    return f"{len(train)} training records, {len(valid)} validations; {last}."


def _named(section: dict) -> str:
    """``name`` in code, then its ``conf`` and any other keys as ``key=value``."""
    rest = {k: v for k, v in section.items() if k not in ("name", "conf", "stepped")}
    return f"`{section['name']}` {_kwargs({**rest, **(section.get('conf') or {})})}"


def _kwargs(mapping: dict) -> str:
    """``key=value, ...`` with JSON values (``null``, ``[64, 64]``), or ``(defaults)``."""
    text = ", ".join(f"{k}={json.dumps(v)}" for k, v in mapping.items()).replace("|", "\\|")
    return f"`{text}`" if text else "(defaults)"


def _n(value: int) -> str:
    return f"{value:,}"


# --- training_curves.png --------------------------------------------------------------------


def plot_training_curves(history: dict, path: str | Path, metrics: list[str],
                         best_step: int | None = None, title: str = "") -> Path:
    """Save three panels as a PNG: loss against step (training records, and the validation
    ``loss`` when validations have one), the validation ``metrics`` that the records hold
    (a dashed line at ``best_step``), and the learning rate. A panel without data says so."""
    import matplotlib

    matplotlib.use("Agg")  # reports are written on headless machines; never open a window
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4), layout="constrained")
    _plot_loss(axes[0], history)
    _plot_valid(axes[1], history["valid"], metrics, best_step)
    _plot_series(axes[2], history["train"], "lr", "learning rate")
    axes[2].set_title("Learning rate")
    fig.suptitle(title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_layer_weights(weights: dict[int, float], path: str | Path, title: str = "") -> Path:
    """A bar chart of the featurizer's softmax weight per upstream layer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(weights) + 2), 3), layout="constrained")
    ax.bar([str(k) for k in weights], list(weights.values()), color="tab:blue")
    ax.axhline(1 / len(weights), color="0.5", ls="--", lw=1, label="uniform")
    ax.set_xlabel("upstream layer")
    ax.set_ylabel("weight")
    ax.set_title(f"{title}: learned layer weights" if title else "Learned layer weights")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _plot_loss(ax, history: dict) -> None:
    _plot_series(ax, history["train"], "loss", "training")
    if any("loss" in r for r in history["valid"]):
        _plot_series(ax, history["valid"], "loss", "validation", marker="o")
    ax.set_title("Loss")


def _plot_valid(ax, valid: list[dict], metrics: list[str], best_step: int | None) -> None:
    for name in [m for m in metrics if any(m in quality_metrics(r) for r in valid)]:
        _plot_series(ax, valid, name, name, marker="o")
    if best_step is not None and ax.lines:
        ax.axvline(best_step, color="0.5", ls="--", lw=1, label=f"chosen (step {best_step})")
        ax.legend(fontsize=8)
    ax.set_title("Validation")


def _plot_series(ax, records: list[dict], key: str, label: str, marker: str = "") -> None:
    points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
        ax.plot(*zip(*points), marker=marker, ms=4, lw=1.4, label=label)
        ax.legend(fontsize=8)
    elif not ax.lines:
        ax.text(0.5, 0.5, "no records", ha="center", va="center", transform=ax.transAxes,
                color="0.5")
    ax.set_xlabel("step")
    ax.grid(True, color="0.9")
