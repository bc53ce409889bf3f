"""The report page of a classification problem: ``report.md``, ``report.json`` and PNGs.

Input is one result per (checkpoint, split), each with the metrics of
:func:`framework.metrics.classification.classification_metrics`. One of them is the
*headline* (usually the ``valid_best`` checkpoint on ``test``): the page opens with it and
shows its per-class table, confusion matrix and most frequent confusions. Optionally, the
items per class per split (:func:`class_counts`) and the training setup and curves
(:func:`framework.report.summary.training_summary`).

>>> import tempfile, pandas as pd
>>> from framework.metrics.classification import classification_metrics
>>> table = pd.DataFrame({"id": ["a", "b", "c"], "label": ["yes", "no", "no"],
...                       "predicted": ["yes", "no", "yes"],
...                       "score_yes": [0.9, 0.2, 0.6], "score_no": [0.1, 0.8, 0.4]})
>>> result = {"checkpoint": "valid_best", "split": "test", "step": 100,
...           "predictions_csv": "predictions.csv",
...           "metrics": classification_metrics(table, ["yes", "no"])}
>>> with tempfile.TemporaryDirectory() as out_dir:
...     paths = write_classification_report(out_dir, [result], ["yes", "no"], "Toy", None)
>>> sorted(paths)
['confusion_matrix', 'report_json', 'report_md']
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # reports are written on headless machines; never open a window
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from framework.audio.dataset import read_manifest  # noqa: E402
from framework.report.markdown import link, md_row, num, pct, text  # noqa: E402
from framework.report.summary import md_training, training_json, write_training_figures  # noqa: E402,E501

HEADLINE_CHECKPOINT, HEADLINE_SPLIT = "valid_best", "test"
CURVE_METRICS = ["accuracy", "macro_f1"]  # validation curves drawn (when recorded)
N_TOP_CONFUSIONS = 5
PNG_NAME = "confusion_matrix.png"


def write_classification_report(out_dir: str | Path, results: list[dict], classes: list[str],
                                title: str, best: dict | None = None,
                                training: dict | None = None,
                                counts: dict | None = None) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and ``confusion_matrix.png`` into ``out_dir``,
    and ``training_curves.png`` when ``training`` is given.

    ``results``: dicts with ``checkpoint`` (e.g. ``"valid_best"``, ``"step-1000"``), ``split``
    (``"test"``, ``"valid"``, …), ``step`` (int or ``None``), ``predictions_csv`` (path) and
    ``metrics`` (from ``classification_metrics`` over ``classes``). The results table keeps
    their order.

    ``best`` picks the headline: a result dict (with ``metrics``) or just
    ``{"checkpoint": ..., "split": ...}`` naming one of ``results``. ``None`` means
    ``valid_best`` on ``test`` if present, else the first result.

    ``training``: :func:`framework.report.summary.training_summary` of the run (a config
    summary and the training history); ``counts``: :func:`class_counts` of its manifests.
    Either adds its section to both files; ``None`` leaves it out.

    Returns ``{"report_json", "report_md", "confusion_matrix"}`` (+ ``"training_curves"``)
    → written paths. Raises ``ValueError`` when ``results`` is empty or ``best`` names no
    result.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    headline = pick_headline(results, best)
    paths = {"report_json": out_dir / "report.json", "report_md": out_dir / "report.md",
             "confusion_matrix": out_dir / PNG_NAME}
    plot_confusion_matrix(headline["metrics"], classes, paths["confusion_matrix"],
                          title=f"{title}: {_result_name(headline)}")
    if training is not None:
        paths.update(write_training_figures(training, out_dir, CURVE_METRICS,
                                            headline.get("step"), title))
    report = {**_report_json(results, classes, title, headline), **_extra_json(training, counts)}
    paths["report_json"].write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    paths["report_md"].write_text(render_markdown(results, classes, title, headline, out_dir,
                                                  training, counts))
    return paths


def pick_headline(results: list[dict], best: dict | None) -> dict:
    """The result the page opens with; see :func:`write_classification_report`."""
    if not results:
        raise ValueError("no results to report: evaluate at least one checkpoint first")
    if best is not None and "metrics" in best:
        return best
    wanted = best or {"checkpoint": HEADLINE_CHECKPOINT, "split": HEADLINE_SPLIT}
    for result in results:
        if all(result.get(key) == value for key, value in wanted.items()):
            return result
    if best is None:
        return results[0]
    names = ", ".join(_result_name(result) for result in results)
    raise ValueError(f"best {wanted} matches no result; results are: {names}")


def _report_json(results: list[dict], classes: list[str], title: str, headline: dict) -> dict:
    """Everything the page shows, machine-readable; paths become strings."""
    def plain(result: dict) -> dict:
        return {**result, "predictions_csv": str(result.get("predictions_csv", ""))}

    return {"title": title, "classes": list(classes), "headline": plain(headline),
            "confusion_matrix_recall": row_normalized(
                headline["metrics"]["confusion_matrix"]).tolist(),
            "results": [plain(result) for result in results]}


def _extra_json(training: dict | None, counts: dict | None) -> dict:
    """The optional sections of ``report.json``: ``config`` and ``training`` (curves PNG,
    history file and record counts), ``class_counts`` (split → class → items)."""
    extra = training_json(training) if training is not None else {}
    if counts is not None:
        extra["class_counts"] = counts
    return extra


def class_counts(manifests: dict, classes: list[str]) -> dict[str, dict[str, int]]:
    """Items per class per split: ``{split: {class: n}}`` from each manifest's ``label``
    column (``manifests``: split → CSV path, in the order to report). Every split lists
    ``classes`` in order (0 when absent), then any other label it holds, sorted."""
    counts = {}
    for split, csv in manifests.items():
        labels = read_manifest(csv)["label"].value_counts()
        extra = sorted(set(labels.index) - set(classes))
        counts[split] = {name: int(labels.get(name, 0)) for name in [*classes, *extra]}
    return counts


# --- report.md ------------------------------------------------------------------------------


def render_markdown(results: list[dict], classes: list[str], title: str, headline: dict,
                    out_dir: Path, training: dict | None = None,
                    counts: dict | None = None) -> str:
    """The text of ``report.md``; links are relative to ``out_dir``."""
    sections = [
        f"# {title}",
        _md_headline(headline),
        _md_results_table(results, headline, out_dir),
        _md_per_class(headline["metrics"], classes),
        _md_confusion(headline["metrics"], classes),
        _md_top_confusions(headline["metrics"], classes),
        _md_class_counts(counts) if counts is not None else None,
        md_training(training) if training is not None else None,
        _md_predictions(results, out_dir),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _md_headline(headline: dict) -> str:
    m = headline["metrics"]
    rows = [("Items", str(m["n"])), ("Accuracy", pct(m["accuracy"])),
            ("Macro-F1", num(m["macro_f1"])), ("Weighted-F1", num(m["weighted_f1"])),
            ("Cohen's kappa", num(m["cohen_kappa"])),
            ("ROC AUC (one-vs-rest, macro)", num(m["roc_auc_ovr_macro"]))]
    rows += [(f"Top-{k} accuracy", pct(m[f"top_{k}_accuracy"])) for k in _top_ks(m) if k > 1]
    lines = [f"## Headline: {_result_name(headline)}", "", "| Metric | Value |", "|---|---:|"]
    lines += [f"| {name} | {value} |" for name, value in rows]
    if m.get("roc_auc_ovr_reason"):
        lines += ["", f"ROC AUC note: {m['roc_auc_ovr_reason']}."]
    return "\n".join(lines)


def _md_results_table(results: list[dict], headline: dict, out_dir: Path) -> str:
    ks = sorted({k for result in results for k in _top_ks(result["metrics"]) if k > 1})
    header = (["Checkpoint", "Step", "Split", "Items", "Accuracy", "Macro-F1", "Kappa",
               "ROC AUC"] + [f"Top-{k}" for k in ks] + ["Predictions"])
    lines = ["## All results", "", md_row(header), md_row(["---"] * 3 + ["---:"] * (
        len(header) - 4) + ["---"])]
    for result in results:
        m = result["metrics"]
        star = " ★" if result is headline else ""
        cells = [f"`{result['checkpoint']}`{star}", text(result.get("step")),
                 f"`{result['split']}`", str(m["n"]), pct(m["accuracy"]), num(m["macro_f1"]),
                 num(m["cohen_kappa"]), num(m["roc_auc_ovr_macro"])]
        cells += [pct(m.get(f"top_{k}_accuracy")) for k in ks]
        cells.append(link(result.get("predictions_csv"), out_dir, text="csv"))
        lines.append(md_row(cells))
    return "\n".join(lines + ["", "★ = headline."])


def _md_per_class(metrics: dict, classes: list[str]) -> str:
    lines = ["## Per class (headline)", "",
             "| Class | Precision | Recall | F1 | Support |", "|---|---:|---:|---:|---:|"]
    for name in classes:
        c = metrics["per_class"][name]
        lines.append(md_row([_md_name(name), num(c["precision"]), num(c["recall"]),
                              num(c["f1"]), str(c["support"])]))
    return "\n".join(lines)


def _md_confusion(metrics: dict, classes: list[str]) -> str:
    """The PNG, then its counts as a table (rows = true class, columns = predicted)."""
    lines = ["## Confusion matrix (headline)", "",
             f"![Confusion matrix: counts and recall (share of each true class)]({PNG_NAME})",
             "",
             "Counts; rows are the true class, columns the predicted class; "
             "the diagonal (bold) is correct.", "",
             md_row(["true \\ predicted"] + [_md_name(name) for name in classes]),
             md_row(["---"] + ["---:"] * len(classes))]
    for i, (name, row) in enumerate(zip(classes, metrics["confusion_matrix"])):
        # Bold diagonal: the correct predictions, so a reader's eye finds the errors around it.
        cells = [f"**{count}**" if j == i else str(count) for j, count in enumerate(row)]
        lines.append(md_row([_md_name(name)] + cells))
    return "\n".join(lines)


def _md_top_confusions(metrics: dict, classes: list[str]) -> str:
    pairs = top_confusions(metrics["confusion_matrix"], classes)
    lines = [f"## Most frequent confusions (headline, top {N_TOP_CONFUSIONS})", ""]
    if not pairs:
        return "\n".join(lines + ["No confusions: every item was predicted correctly."])
    for true, predicted, count in pairs:
        support = metrics["per_class"][true]["support"]
        lines.append(f"1. {_md_name(true)} → {_md_name(predicted)}: {count} "
                     f"({pct(count / support)} of {_md_name(true)})")
    return "\n".join(lines)


def _md_class_counts(counts: dict) -> str:
    """Items per class (rows) and split (columns), with a total row."""
    splits = list(counts)
    names = list(dict.fromkeys(name for split in splits for name in counts[split]))
    lines = ["## Items per class and split", "", md_row(["Class"] + [f"`{s}`" for s in splits]),
             md_row(["---"] + ["---:"] * len(splits))]
    for name in names:
        lines.append(md_row([_md_name(name)] + [str(counts[s].get(name, 0)) for s in splits]))
    lines.append(md_row(["**total**"] + [f"**{sum(counts[s].values())}**" for s in splits]))
    return "\n".join(lines)


def _md_predictions(results: list[dict], out_dir: Path) -> str:
    lines = ["## Predictions files", ""]
    for result in results:
        lines.append(f"- {_result_name(result)}: "
                     f"{link(result.get('predictions_csv'), out_dir)}")
    return "\n".join(lines)


def top_confusions(confusion: list[list[int]], classes: list[str],
                   n: int = N_TOP_CONFUSIONS) -> list[tuple[str, str, int]]:
    """The ``n`` largest off-diagonal cells as ``(true, predicted, count)``, largest first.

    Ties keep class order (stable sort), so the list is deterministic.

    >>> top_confusions([[5, 2, 0], [1, 4, 3], [0, 0, 6]], ["a", "b", "c"], n=2)
    [('b', 'c', 3), ('a', 'b', 2)]
    """
    cells = [(classes[i], classes[j], int(count))
             for i, row in enumerate(confusion) for j, count in enumerate(row)
             if i != j and count > 0]
    return sorted(cells, key=lambda cell: -cell[2])[:n]


# --- confusion_matrix.png -------------------------------------------------------------------


def plot_confusion_matrix(metrics: dict, classes: list[str], path: str | Path,
                          title: str = "") -> Path:
    """Save counts (left) and the row-normalised matrix in % (right: each true class's items
    spread over the predictions, so the diagonal is the recall) side by side as a PNG.

    Cell size and fonts shrink with the number of classes (but not below legible sizes), so
    12 classes look roomy and 35 still have non-overlapping labels; the figure grows instead.
    Empty cells are zeros; leaving them blank keeps the confusions easy to spot.
    """
    counts = np.asarray(metrics["confusion_matrix"], dtype=float)
    recall = row_normalized(metrics["confusion_matrix"])
    sizes = _figure_sizes(len(classes))
    fig, axes = plt.subplots(1, 2, figsize=sizes["figsize"], layout="constrained")
    _draw_matrix(axes[0], counts, classes, sizes, "Blues", lambda v: f"{v:.0f}")
    axes[0].set_title("Counts", fontsize=sizes["title"])
    _draw_matrix(axes[1], recall * 100, classes, sizes, "Oranges", _format_percent)
    axes[1].set_title("Share of each true class (%; diagonal = recall)",
                      fontsize=sizes["title"])
    fig.suptitle(f"{title}  (n = {metrics['n']}; empty cell = 0)",
                 fontsize=sizes["title"] + 1)
    fig.savefig(path, dpi=110, bbox_inches="tight", pad_inches=0.2)
    plt.close(fig)
    return Path(path)


def row_normalized(confusion) -> np.ndarray:
    """Each row of a confusion matrix (true class) divided by its sum: row ``i`` is how class
    ``i``'s items were predicted, so the diagonal is the per-class recall. A class with no
    items keeps a row of zeros.

    >>> row_normalized([[3, 1], [0, 0]]).tolist()
    [[0.75, 0.25], [0.0, 0.0]]
    """
    counts = np.asarray(confusion, dtype=float)
    totals = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def _figure_sizes(n_classes: int) -> dict:
    """Figure size (inches) and font sizes (points) for an ``n_classes`` matrix.

    A cell is 0.6 in for up to 12 classes, shrinking to 0.32 in (enough for a 4-character
    number at 6.5 pt and a tick label every 23 pt) for larger sets.
    """
    cell = float(np.clip(7.2 / n_classes, 0.32, 0.6))
    label_room = 1.6  # inches for rotated class names like "_unknown_"
    side = cell * n_classes + label_room
    return {"figsize": (2 * side + 0.4, side + 0.6),
            "cell_font": float(np.clip(cell * 72 * 0.28, 6.0, 10.0)),
            "tick_font": float(np.clip(cell * 72 * 0.38, 8.0, 10.0)),
            "title": 12.0}


def _draw_matrix(ax, values: np.ndarray, classes: list[str], sizes: dict, cmap: str,
                 fmt) -> None:
    """One heat map with class names on both axes and the value written in each cell."""
    # A square-root colour scale keeps the few off-diagonal confusions visible next to a
    # diagonal that holds most of the items.
    norm = PowerNorm(gamma=0.5, vmin=0, vmax=max(values.max(), 1e-12))
    ax.imshow(values, cmap=cmap, norm=norm)
    ticks = np.arange(len(classes))
    ax.set_xticks(ticks, classes, rotation=90, fontsize=sizes["tick_font"])
    ax.set_yticks(ticks, classes, fontsize=sizes["tick_font"])
    ax.set_xlabel("Predicted", fontsize=sizes["tick_font"] + 1)
    ax.set_ylabel("True", fontsize=sizes["tick_font"] + 1)
    for (i, j), value in np.ndenumerate(values):
        if value > 0:
            colour = "white" if norm(value) > 0.6 else "black"
            ax.text(j, i, fmt(value), ha="center", va="center", color=colour,
                    fontsize=sizes["cell_font"])


def _format_percent(value: float) -> str:
    """Up to 4 characters: ``42``, ``8.3``, ``.05``, ``<.01``."""
    if value >= 9.95:
        return f"{value:.0f}"
    if value >= 0.995:
        return f"{value:.1f}"
    return f"{value:.2f}".lstrip("0") if value >= 0.005 else "<.01"


# --- small formatting helpers ---------------------------------------------------------------


def _result_name(result: dict) -> str:
    step = result.get("step")
    at_step = f" (step {step})" if step is not None else ""
    return f"{result['checkpoint']} on {result['split']}{at_step}"


def _top_ks(metrics: dict) -> list[int]:
    """The k of every ``top_<k>_accuracy`` key, ascending."""
    return sorted(int(key.split("_")[1]) for key in metrics
                  if key.startswith("top_") and key.endswith("_accuracy"))


def _md_name(name: str) -> str:
    """A class name as inline code, so ``_silence_`` is not rendered in italics."""
    return "`" + str(name).replace("|", "\\|") + "`"

