"""Classification metrics over an evaluation stage's ``predictions.csv``.

The CSV has one row per test item and the columns::

    id, label, predicted, score_<class 0>, score_<class 1>, ...

``label`` and ``predicted`` are class names; the ``score_*`` columns are softmax
probabilities in class-index order (the label encoder's order). Every number is computed by
scikit-learn; this module only validates the table, arranges the inputs and makes the result
JSON-serialisable (NaN becomes ``None``).

>>> import pandas as pd
>>> table = pd.DataFrame({"id": ["a", "b", "c"], "label": ["yes", "no", "no"],
...                       "predicted": ["yes", "no", "yes"],
...                       "score_yes": [0.9, 0.2, 0.6], "score_no": [0.1, 0.8, 0.4]})
>>> m = classification_metrics(table, ["yes", "no"])
>>> m["n"], round(m["accuracy"], 3), m["confusion_matrix"]
(3, 0.667, [[1, 0], [1, 1]])
"""
from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.exceptions import UndefinedMetricWarning

from framework.errors import UserError

SCORE_PREFIX = "score_"
BASE_COLUMNS = ("id", "label", "predicted")


class PredictionsError(UserError, ValueError):
    """A predictions table cannot be scored; the message names the column or label at fault.

    A ``ValueError`` for callers of this module, a ``UserError`` so the CLI prints it plainly.
    """


def score_columns(classes: Iterable[str]) -> list[str]:
    """Names of the score columns for ``classes``, in the same order.

    >>> score_columns(["yes", "_silence_"])
    ['score_yes', 'score__silence_']
    """
    return [f"{SCORE_PREFIX}{name}" for name in classes]


def load_predictions(csv_path: str | Path) -> pd.DataFrame:
    """Read a ``predictions.csv``; ``id``, ``label`` and ``predicted`` stay strings.

    ``keep_default_na=False`` because a class or an id may legitimately be called ``NA``,
    ``None`` or ``null``, which pandas would otherwise turn into NaN.
    """
    text_columns = {name: str for name in BASE_COLUMNS}
    return pd.read_csv(csv_path, dtype=text_columns, keep_default_na=False)


def validate_predictions(predictions: pd.DataFrame, classes: list[str]) -> None:
    """Raise ``PredictionsError`` unless ``predictions`` can be scored against ``classes``.

    Checks: classes are unique and non-empty; the table has rows and every required column;
    every ``label`` and ``predicted`` value is one of ``classes``; scores are finite numbers.
    """
    _check_classes(classes)
    if len(predictions) == 0:
        raise PredictionsError("predictions table has no rows")
    required = [*BASE_COLUMNS, *score_columns(classes)]
    missing = [name for name in required if name not in predictions.columns]
    if missing:
        raise PredictionsError(f"predictions table is missing column(s): {', '.join(missing)}")
    for column in ("label", "predicted"):
        _check_known(predictions[column], classes, column)
    _check_scores(predictions[score_columns(classes)])


def _check_classes(classes: list[str]) -> None:
    if len(classes) < 2:
        raise PredictionsError(f"need at least 2 classes, got {list(classes)}")
    repeated = sorted({name for name in classes if list(classes).count(name) > 1})
    if repeated:
        raise PredictionsError(f"class names repeat: {', '.join(repeated)}")


def _check_known(values: pd.Series, classes: list[str], column: str) -> None:
    unknown = sorted(set(values.astype(str)) - set(classes))
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:10])
        raise PredictionsError(f"column '{column}' has value(s) not in classes: {shown}; "
                               f"classes are: {', '.join(classes)}")


def _check_scores(scores: pd.DataFrame) -> None:
    values = scores.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    bad_per_column = (~np.isfinite(values)).sum(axis=0)
    if bad_per_column.any():
        first = int(np.flatnonzero(bad_per_column)[0])
        raise PredictionsError(f"column '{scores.columns[first]}' has {bad_per_column[first]} "
                               "missing or non-numeric score(s)")


def classification_metrics(predictions: pd.DataFrame, classes: list[str],
                           top_k: Iterable[int] = (1, 5)) -> dict:
    """Every metric the report shows, as a JSON-serialisable dict.

    ``classes`` lists the class names in index order (the score-column order). Keys:

    - ``n``: number of rows; ``classes``: the class list as given.
    - ``accuracy``, ``hamming_loss``, ``cohen_kappa`` (``None`` when undefined, e.g. a single
      class in both columns), ``macro_f1`` and ``weighted_f1`` (averaged over the classes that
      occur in ``label`` or ``predicted``, scikit-learn's default, so a class absent from this
      test set does not count as an F1 of 0).
    - ``roc_auc_ovr_macro``, ``roc_auc_ovr_excluded``, ``roc_auc_ovr_reason``: see
      :func:`roc_auc_ovr`.
    - ``top_<k>_accuracy`` for every ``k`` in ``top_k`` smaller than ``len(classes)``, from the
      score columns (so ``top_1_accuracy`` is the argmax accuracy).
    - ``per_class``: ``{class: {precision, recall, f1, support}}`` for every class, 0 where
      undefined.
    - ``confusion_matrix`` (counts) and ``confusion_matrix_normalized`` (fractions of all rows):
      lists of rows, row = true class, column = predicted class, both in ``classes`` order.

    Raises ``PredictionsError`` (a ``ValueError``) for the cases in
    :func:`validate_predictions`.
    """
    validate_predictions(predictions, classes)
    y_true = predictions["label"].astype(str).to_numpy()
    y_pred = predictions["predicted"].astype(str).to_numpy()
    scores = predictions[score_columns(classes)].to_numpy(dtype=float)
    result = {"n": int(len(predictions)), "classes": list(classes)}
    result.update(_label_metrics(y_true, y_pred, classes))
    result.update(roc_auc_ovr(y_true, scores, classes))
    result.update(top_k_accuracies(y_true, scores, classes, top_k))
    result["per_class"] = per_class_metrics(y_true, y_pred, classes)
    result.update(_confusion_matrices(y_true, y_pred, classes))
    return result


def _label_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Metrics that only need the ``label`` and ``predicted`` columns."""
    with warnings.catch_warnings():
        # An undefined kappa is reported as None below; the warning would only repeat that.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        kappa = skm.cohen_kappa_score(y_true, y_pred, labels=classes)
    return {
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "macro_f1": float(skm.f1_score(y_true, y_pred, average="macro", zero_division=0)),
        "weighted_f1": float(skm.f1_score(y_true, y_pred, average="weighted", zero_division=0)),
        "cohen_kappa": _finite_or_none(kappa),
        "hamming_loss": float(skm.hamming_loss(y_true, y_pred)),
    }


def roc_auc_ovr(y_true: np.ndarray, scores: np.ndarray, classes: list[str]) -> dict:
    """One-vs-rest ROC AUC, macro-averaged over the classes present in ``y_true``.

    Each present class ``c`` is scored as the binary problem "``label == c``" ranked by
    ``score_c``; the macro average is their mean, which is what scikit-learn's
    ``roc_auc_score(multi_class="ovr", average="macro")`` returns when every class occurs.
    Doing it class by class lets absent classes (no positives, AUC undefined) be skipped
    instead of failing the whole evaluation.

    Returns ``roc_auc_ovr_macro`` (float or ``None``), ``roc_auc_ovr_excluded`` (absent classes
    left out, in ``classes`` order) and ``roc_auc_ovr_reason`` (``None`` when nothing was left
    out, else why).
    """
    present = [i for i, name in enumerate(classes) if np.any(y_true == name)]
    excluded = [name for i, name in enumerate(classes) if i not in present]
    if len(present) < 2:
        reason = (f"undefined: only {len(present)} class present in the labels "
                  f"({', '.join(classes[i] for i in present)}); need at least 2")
        return {"roc_auc_ovr_macro": None, "roc_auc_ovr_excluded": excluded,
                "roc_auc_ovr_reason": reason}
    per_class = [skm.roc_auc_score(y_true == classes[i], scores[:, i]) for i in present]
    reason = None
    if excluded:
        reason = (f"averaged over the {len(present)} of {len(classes)} classes present in the "
                  f"labels; never in the labels: {', '.join(excluded)}")
    return {"roc_auc_ovr_macro": float(np.mean(per_class)), "roc_auc_ovr_excluded": excluded,
            "roc_auc_ovr_reason": reason}


def top_k_accuracies(y_true: np.ndarray, scores: np.ndarray, classes: list[str],
                     top_k: Iterable[int]) -> dict:
    """``{"top_<k>_accuracy": value}`` for each ``k`` in ``top_k`` with ``k < len(classes)``.

    Labels go to scikit-learn as class indices: it requires ``labels`` to be sorted, and the
    encoder's order (``yes``, ``no``, …, ``_silence_``) is not.
    """
    index = {name: i for i, name in enumerate(classes)}
    y_index = np.array([index[name] for name in y_true])
    # With two classes scikit-learn expects only the score of the second ("positive") class.
    y_score = scores[:, 1] if len(classes) == 2 else scores
    labels = np.arange(len(classes))
    return {f"top_{k}_accuracy": float(skm.top_k_accuracy_score(y_index, y_score, k=k,
                                                                 labels=labels))
            for k in sorted(set(top_k)) if 1 <= k < len(classes)}


def per_class_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """``{class: {"precision", "recall", "f1", "support"}}`` for every class, in order.

    ``zero_division=0``: a class never predicted has precision 0, one never in the labels
    has recall 0 and support 0.
    """
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=classes, zero_division=0)
    return {name: {"precision": float(precision[i]), "recall": float(recall[i]),
                   "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)}


def _confusion_matrices(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    counts = skm.confusion_matrix(y_true, y_pred, labels=classes)
    shares = skm.confusion_matrix(y_true, y_pred, labels=classes, normalize="all")
    return {"confusion_matrix": counts.astype(int).tolist(),
            "confusion_matrix_normalized": shares.astype(float).tolist()}


def _finite_or_none(value) -> float | None:
    """``float(value)``, or ``None`` for NaN/inf, which JSON cannot hold."""
    value = float(value)
    return value if math.isfinite(value) else None
