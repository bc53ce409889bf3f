"""Speaker-verification (ASV) scoring and metrics over a trial list.

A *trial* pairs two utterances, given as row indices into one embedding matrix: trial ``t``
compares ``embeddings[index1[t]]`` with ``embeddings[index2[t]]``. Its ``label`` is 1 for a
*target* trial (same speaker) and 0 for a *non-target* trial (different speakers). A higher
score means "more likely the same speaker", and a system with threshold ``θ`` **accepts**
a trial (decides "same speaker") when ``score >= θ``. Every threshold this module returns
follows that convention and is finite.

Error rates at a threshold: ``P_miss`` = share of target trials rejected (false rejection
rate), ``P_fa`` = share of non-target trials accepted (false acceptance rate).

An evaluation's ``scores.csv`` has one row per trial and the columns ``id1, id2, label,
score`` (see :func:`load_scores`).

>>> scores = [0.9, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.0]
>>> labels = [1, 1, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0]
>>> eer(scores, labels)   # at θ = 0.6: 1 of 4 targets missed, 2 of 8 non-targets accepted
(0.25, 0.6)
>>> m = verification_metrics(scores, labels)
>>> m["n_trials"], m["n_target"], m["n_nontarget"], m["min_dcf_0.01"]
(12, 4, 8, 0.5)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn import metrics as skm

from framework.errors import UserError

SCORE_COLUMNS = ("id1", "id2", "label", "score")
P_TARGETS = (0.01, 0.05)  # the operating points of the VoxCeleb / NIST SRE evaluations
TRIAL_CHUNK = 8192  # trials gathered at once: 3 x 8192 x 512 float32 = 48 MB of temporaries
COHORT_CHUNK = 1024  # utterances scored against the cohort at once: 1024 x C scores


class TrialsError(UserError, ValueError):
    """Scores, labels or trial indices cannot be used; the message says which and why.

    A ``ValueError`` for callers of this module, a ``UserError`` so the CLI prints it plainly.
    """


# --- scoring --------------------------------------------------------------------------------


def cosine_scores(embeddings, index1, index2, chunk: int = TRIAL_CHUNK) -> np.ndarray:
    """Cosine similarity of every trial: ``(T,)`` array, float64 for float64 embeddings,
    else float32.

    ``embeddings``: ``(N, E)`` tensor or array, one row per utterance. ``index1``,
    ``index2``: ``(T,)`` integer row indices. Rows are L2-normalised once (a zero row scores
    0 against everything), then each chunk of ``chunk`` trials is one gather per side and
    one row-wise dot product, which bounds the temporaries at ``3 * chunk * E`` numbers.
    """
    unit = _unit_rows(_as_matrix(embeddings, "embeddings"))
    first, second = _trial_indices(index1, index2, len(unit))
    out = torch.empty(len(first), dtype=unit.dtype, device=unit.device)
    for start in range(0, len(first), chunk):
        part = slice(start, start + chunk)
        out[part] = (unit[first[part]] * unit[second[part]]).sum(dim=1)
    return out.cpu().numpy()


def as_norm(scores, embeddings, index1, index2, cohort, top_k: int = 300,
            chunk: int = COHORT_CHUNK) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm, Matejka et al., Interspeech 2017).

    For each side ``i`` of a trial, the utterance's embedding is scored (cosine) against
    every row of ``cohort`` (``(C, E)``: embeddings of speakers outside the trial list); of
    those, the ``top_k`` highest give a mean ``μ_i`` and a standard deviation ``σ_i``
    (population std, ``ddof=0``). The result is ``0.5 * ((s - μ1)/σ1 + (s - μ2)/σ2)``:
    ``(T,)`` float64. ``scores``, ``embeddings``, ``index1``, ``index2`` are as in
    :func:`cosine_scores` (``scores`` usually comes from it).

    The cohort statistics depend only on the utterance, so they are computed once per
    unique utterance of the trial list, not per trial. ``top_k`` above ``C`` uses the whole
    cohort. ``σ`` is floored at 1e-12, so a degenerate cohort cannot divide by zero.
    """
    if top_k < 2:
        raise TrialsError(f"as_norm: top_k must be at least 2 (σ needs two scores), "
                          f"got {top_k}")
    embeddings = _as_matrix(embeddings, "embeddings")
    cohort = _as_matrix(cohort, "cohort").to(embeddings)  # same dtype and device
    if cohort.shape[1] != embeddings.shape[1] or len(cohort) < 2:
        raise TrialsError(f"as_norm: cohort must be (C >= 2, {embeddings.shape[1]}), "
                          f"got {tuple(cohort.shape)}")
    first, second = _trial_indices(index1, index2, len(embeddings))
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != first.shape:
        raise TrialsError(f"as_norm: {scores.size} scores for {len(first)} trials")
    used, inverse = torch.unique(torch.cat([first, second]), return_inverse=True)
    inverse = inverse.numpy()
    mean, std = cohort_statistics(embeddings[used], cohort, min(top_k, len(cohort)), chunk)
    mean1, std1 = mean[inverse[:len(first)]], std[inverse[:len(first)]]
    mean2, std2 = mean[inverse[len(first):]], std[inverse[len(first):]]
    return 0.5 * ((scores - mean1) / std1 + (scores - mean2) / std2)


def cohort_statistics(embeddings, cohort, top_k: int,
                      chunk: int = COHORT_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population std of each row's ``top_k`` highest cosine scores against the
    cohort: two ``(N,)`` float64 arrays, std floored at 1e-12.

    ``embeddings`` ``(N, E)``, ``cohort`` ``(C, E)`` with ``2 <= top_k <= C``. Rows are
    scored ``chunk`` at a time, so memory stays at ``chunk * C`` scores.
    """
    unit = _unit_rows(_as_matrix(embeddings, "embeddings"))
    unit_cohort = _unit_rows(_as_matrix(cohort, "cohort").to(unit))
    means, stds = [], []
    for start in range(0, len(unit), chunk):
        # Unsorted top-k: mean and std do not need the order, and skipping the sort is cheaper.
        sims = unit[start:start + chunk] @ unit_cohort.T
        top = sims.topk(top_k, dim=1, sorted=False).values.double()
        means.append(top.mean(dim=1))
        stds.append(top.std(dim=1, correction=0))
    mean, std = torch.cat(means).cpu().numpy(), torch.cat(stds).cpu().numpy()
    return mean, np.maximum(std, 1e-12)


def _as_matrix(values, name: str) -> torch.Tensor:
    """``values`` as a floating ``(rows, columns)`` tensor without gradient tracking."""
    matrix = torch.as_tensor(values).detach()
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise TrialsError(f"{name} must be a non-empty (rows, dim) matrix, "
                          f"got shape {tuple(matrix.shape)}")
    if matrix.dtype not in (torch.float32, torch.float64):
        matrix = matrix.float()  # half precision or integers: score in float32
    return matrix


def _unit_rows(matrix: torch.Tensor) -> torch.Tensor:
    return F.normalize(matrix, p=2.0, dim=1)


def _trial_indices(index1, index2, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Both index arrays as 1-D ``long`` tensors of equal length, each in ``[0, n_rows)``."""
    first, second = (torch.tensor(np.asarray(index), dtype=torch.long).reshape(-1)
                     for index in (index1, index2))
    if len(first) != len(second) or len(first) == 0:
        raise TrialsError(f"index1 and index2 must have the same non-zero length, got "
                          f"{len(first)} and {len(second)}")
    low = min(int(first.min()), int(second.min()))
    high = max(int(first.max()), int(second.max()))
    if low < 0 or high >= n_rows:
        raise TrialsError(f"trial indices must lie in [0, {n_rows}) for {n_rows} "
                          f"embeddings, found {low if low < 0 else high}")
    return first, second


# --- metrics --------------------------------------------------------------------------------


def load_scores(csv_path: str | Path) -> pd.DataFrame:
    """Read a ``scores.csv`` (columns ``id1, id2, label, score``); ids stay strings.

    Raises ``TrialsError`` naming the file when a column is missing.
    """
    table = pd.read_csv(csv_path, dtype={"id1": str, "id2": str}, keep_default_na=False)
    missing = [name for name in SCORE_COLUMNS if name not in table.columns]
    if missing:
        raise TrialsError(f"{csv_path}: missing column(s) {', '.join(missing)}; "
                          f"a scores file has {', '.join(SCORE_COLUMNS)}")
    return table


def error_rates(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p_fa, p_miss, thresholds)`` at every distinct score, thresholds descending.

    The first point rejects every trial (threshold just above the highest score: p_fa 0,
    p_miss 1), the last accepts every trial (the lowest score: p_fa 1, p_miss 0). All
    thresholds are finite. ``labels``: 1 target, 0 non-target; both must occur.
    """
    scores, labels = check_trials(scores, labels)
    p_fa, p_hit, thresholds = skm.roc_curve(labels, scores, drop_intermediate=False)
    # scikit-learn puts +inf first; the next float above the top score rejects just as well
    # and survives JSON.
    thresholds[0] = np.nextafter(thresholds[1], np.inf)
    return p_fa, 1.0 - p_hit, thresholds


def check_trials(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """``scores`` as float64 and ``labels`` as int arrays, or ``TrialsError`` saying why not:
    lengths differ, no trials, a non-finite score, a label other than 0/1, one class only."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    if len(scores) != len(labels) or len(scores) == 0:
        raise TrialsError(f"need as many scores as labels (and at least one): got "
                          f"{len(scores)} scores and {len(labels)} labels")
    if not np.isfinite(scores).all():
        raise TrialsError(f"{int((~np.isfinite(scores)).sum())} score(s) are NaN or infinite")
    if not np.isin(labels, (0, 1)).all():
        raise TrialsError("labels must be 1 (target) or 0 (non-target), found "
                          f"{sorted(set(labels[~np.isin(labels, (0, 1))].tolist()))[:5]}")
    n_target = int(labels.sum())
    if n_target in (0, len(labels)):
        raise TrialsError(f"error rates need both target (label 1) and non-target (label 0) "
                          f"trials; got {n_target} target and {len(labels) - n_target} "
                          "non-target")
    return scores, labels.astype(np.int64)


def eer(scores, labels) -> tuple[float, float]:
    """Equal error rate (fraction 0-1) and its threshold.

    ``P_miss - P_fa`` never increases as the threshold falls. Between the last operating
    point where misses exceed false alarms and the first where they do not, both rates are
    interpolated linearly (in the fraction ``w`` at which ``P_miss - P_fa`` reaches zero);
    the EER is the common value there and the threshold is interpolated with the same
    ``w``. When a point has ``P_miss == P_fa`` exactly, that point is the answer.
    """
    return _eer_from_rates(*error_rates(scores, labels))


def _eer_from_rates(p_fa: np.ndarray, p_miss: np.ndarray,
                    thresholds: np.ndarray) -> tuple[float, float]:
    gap = p_miss - p_fa  # +1 at reject-all, -1 at accept-all
    i = int(np.argmax(gap <= 0))  # >= 1, since gap[0] = 1
    w = gap[i - 1] / (gap[i - 1] - gap[i])  # in (0, 1]; 1 when gap[i] == 0
    rate = p_fa[i - 1] + w * (p_fa[i] - p_fa[i - 1])
    threshold = thresholds[i - 1] + w * (thresholds[i] - thresholds[i - 1])
    return float(rate), float(threshold)


def min_dcf(scores, labels, p_target: float, c_miss: float = 1.0,
            c_fa: float = 1.0) -> tuple[float, float]:
    """Normalised minimum detection cost and the threshold reaching it.

    ``DCF(θ) = c_miss * P_miss(θ) * p_target + c_fa * P_fa(θ) * (1 - p_target)``, divided by
    ``min(c_miss * p_target, c_fa * (1 - p_target))`` (the cost of the better of
    accept-all and reject-all, so 1 means "no better than a fixed decision"), minimised over
    every threshold including accept-all and reject-all (the result is in ``[0, 1]``). Ties
    go to the highest threshold.
    """
    return _min_dcf_from_rates(*error_rates(scores, labels), p_target, c_miss, c_fa)


def _min_dcf_from_rates(p_fa: np.ndarray, p_miss: np.ndarray, thresholds: np.ndarray,
                        p_target: float, c_miss: float = 1.0,
                        c_fa: float = 1.0) -> tuple[float, float]:
    if not 0 < p_target < 1 or c_miss <= 0 or c_fa <= 0:
        raise TrialsError(f"min_dcf needs 0 < p_target < 1 and positive costs, got "
                          f"p_target={p_target}, c_miss={c_miss}, c_fa={c_fa}")
    cost = c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa
    best = int(np.argmin(cost))
    return (float(cost[best] / min(c_miss * p_target, c_fa * (1 - p_target))),
            float(thresholds[best]))


def verification_metrics(scores, labels, p_targets: Iterable[float] = P_TARGETS) -> dict:
    """Everything the report shows, as plain JSON-serialisable numbers.

    Keys: ``eer`` (fraction 0-1) and ``eer_threshold``; for each ``p`` in ``p_targets``
    (formatted with ``:g``, so 0.01 → ``"0.01"``) ``min_dcf_<p>`` and
    ``min_dcf_<p>_threshold`` (``c_miss = c_fa = 1``); ``n_trials``, ``n_target``,
    ``n_nontarget``. The ROC is computed once and shared.
    """
    scores, labels = check_trials(scores, labels)
    rates = error_rates(scores, labels)
    rate, threshold = _eer_from_rates(*rates)
    result = {"eer": rate, "eer_threshold": threshold}
    for p in p_targets:
        cost, at = _min_dcf_from_rates(*rates, p_target=p)
        result[f"min_dcf_{p:g}"], result[f"min_dcf_{p:g}_threshold"] = cost, at
    n_target = int(labels.sum())
    result.update(n_trials=int(len(labels)), n_target=n_target,
                  n_nontarget=int(len(labels) - n_target))
    return result


def det_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(p_fa, p_miss, thresholds)`` for a DET curve, from scikit-learn's ``det_curve``.

    Thresholds ascend; scikit-learn leaves out the points beyond the first zero of either
    rate, which a DET plot cannot show anyway (the normal deviate of 0 is -inf).
    """
    scores, labels = check_trials(scores, labels)
    return skm.det_curve(labels, scores)
