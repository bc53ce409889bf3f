"""Speaker-verification scoring and metrics against hand-computed values and independent
brute-force implementations."""
from __future__ import annotations

import doctest
import json

import numpy as np
import pytest
import torch

import framework.metrics.verification as verification_module
from framework.metrics.verification import (TrialsError, as_norm, cosine_scores, det_points,
                                            eer, load_scores, min_dcf, verification_metrics)


def trials(targets, nontargets):
    """``(scores, labels)`` with the target scores first."""
    return (np.array(targets + nontargets, dtype=float),
            np.array([1] * len(targets) + [0] * len(nontargets)))


# --- EER and minDCF, worked out by hand ------------------------------------------------------


def test_eer_at_an_exact_operating_point():
    # 4 targets, 8 non-targets. Accept when score >= θ. At θ = 0.6 the accepted trials are
    # 0.9T 0.8T 0.75N 0.7T 0.6N: 1 of 4 targets missed (0.2), 2 of 8 non-targets accepted
    # (0.75, 0.6), so P_miss = P_fa = 1/4 exactly. One point earlier (θ = 0.7) P_fa is 1/8.
    scores, labels = trials([0.9, 0.8, 0.7, 0.2], [0.75, 0.6, 0.5, 0.4, 0.3, 0.1, 0.05, 0.0])
    assert eer(scores, labels) == (0.25, pytest.approx(0.6))


def test_eer_interpolated_between_two_points():
    # 4 targets, 6 non-targets, no ties:
    #   θ = 0.6: P_miss = 1/4 (0.3 rejected), P_fa = 1/6  → P_miss - P_fa = +1/12
    #   θ = 0.5: P_miss = 1/4,               P_fa = 2/6  → P_miss - P_fa = -1/12
    # The difference reaches 0 halfway (w = 1/2): EER = 1/6 + 1/2 * 1/6 = 1/4 (P_miss is flat
    # there, so both rates agree), threshold = 0.6 + 1/2 * (0.5 - 0.6) = 0.55.
    scores, labels = trials([0.9, 0.8, 0.7, 0.3], [0.6, 0.5, 0.4, 0.2, 0.1, 0.05])
    rate, threshold = eer(scores, labels)
    assert rate == pytest.approx(0.25)
    assert threshold == pytest.approx(0.55)


def test_eer_interpolated_across_a_tie_moves_both_rates():
    # A target and a non-target share the score 0.5, so one step changes both rates:
    #   θ = 0.7: P_miss = 2/4, P_fa = 1/6  → difference +1/3
    #   θ = 0.5: P_miss = 1/4, P_fa = 2/6  → difference -1/12
    # w = (1/3) / (1/3 + 1/12) = 4/5; P_fa = 1/6 + 4/5 * 1/6 = 3/10;
    # P_miss = 1/2 - 4/5 * 1/4 = 3/10 (the same, as it must be); θ = 0.7 - 4/5 * 0.2 = 0.54.
    scores, labels = trials([0.9, 0.8, 0.5, 0.2], [0.7, 0.5, 0.4, 0.3, 0.1, 0.0])
    rate, threshold = eer(scores, labels)
    assert rate == pytest.approx(0.3)
    assert threshold == pytest.approx(0.54)


def test_min_dcf_at_both_operating_points():
    # 2 targets (0.9, 0.5) and 40 non-targets, one of them (0.6) above the second target.
    # Normalised cost = P_miss + (1 - p) / p * P_fa (the normaliser is p for p < 0.5):
    #   p = 0.05: θ = 0.9 → 1/2 + 19 * 0     = 0.5
    #             θ = 0.5 → 0   + 19 * 1/40  = 0.475   ← minimum
    #   p = 0.01: θ = 0.9 → 0.5                        ← minimum
    #             θ = 0.5 → 99 / 40 = 2.475
    # Reject-all costs 1 and accept-all 19 or 99, so neither wins.
    scores, labels = trials([0.9, 0.5], [0.6] + [0.3 - 0.001 * i for i in range(39)])
    assert min_dcf(scores, labels, 0.05) == (pytest.approx(0.475), 0.5)
    assert min_dcf(scores, labels, 0.01) == (pytest.approx(0.5), 0.9)
    # c_miss = 10, p = 0.01: normaliser min(0.1, 0.99) = 0.1; cost = P_miss + 9.9 * P_fa,
    # so θ = 0.5 costs 9.9 / 40 = 0.2475 and beats θ = 0.9 (0.5).
    assert min_dcf(scores, labels, 0.01, c_miss=10) == (pytest.approx(0.2475), 0.5)


def test_min_dcf_on_the_interpolation_example():
    # Same trials as test_eer_interpolated_between_two_points: any accepted non-target costs
    # at least 99/6 (p = 0.01) or 19/6 (p = 0.05), more than reject-all; so the best is
    # θ = 0.7 (3 targets, no non-target accepted): P_miss = 1/4 at both points.
    scores, labels = trials([0.9, 0.8, 0.7, 0.3], [0.6, 0.5, 0.4, 0.2, 0.1, 0.05])
    m = verification_metrics(scores, labels)
    assert m["min_dcf_0.01"] == pytest.approx(0.25)
    assert m["min_dcf_0.05"] == pytest.approx(0.25)
    assert m["min_dcf_0.01_threshold"] == m["min_dcf_0.05_threshold"] == 0.7


def test_perfect_separation_costs_nothing():
    scores, labels = trials([0.9, 0.8, 0.7], [0.3, 0.2, 0.1, 0.0])
    assert eer(scores, labels) == (0.0, 0.7)  # the lowest target still accepted
    assert min_dcf(scores, labels, 0.01) == (0.0, 0.7)
    assert min_dcf(scores, labels, 0.05)[0] == 0.0


def test_reversed_scores_are_always_wrong():
    # Every non-target above every target: P_miss and P_fa only meet at 1.
    scores, labels = trials([0.3, 0.2, 0.1, 0.0], [0.9, 0.8, 0.7])
    assert eer(scores, labels)[0] == 1.0
    # The best fixed decision (reject all) is optimal: normalised cost 1, and its threshold
    # is finite, just above the highest score.
    cost, threshold = min_dcf(scores, labels, 0.01)
    assert cost == 1.0 and 0.9 < threshold < 0.9 + 1e-12


def test_identical_scores_give_chance():
    assert eer([0.5] * 6, [1, 0, 1, 0, 1, 0])[0] == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0]])
def test_one_class_is_an_error(labels):
    for metric in (eer, verification_metrics, det_points,
                   lambda s, y: min_dcf(s, y, 0.01)):
        with pytest.raises(ValueError, match="both target .* and non-target"):
            metric([0.1, 0.2, 0.3], labels)


@pytest.mark.parametrize("scores, labels, message", [
    ([0.1, float("nan")], [1, 0], "NaN or infinite"),
    ([0.1, 0.2], [1, 2], "labels must be 1"),
    ([0.1, 0.2, 0.3], [1, 0], "as many scores as labels"),
    ([], [], "as many scores as labels")])
def test_bad_trials_are_value_errors(scores, labels, message):
    with pytest.raises(TrialsError, match=message):
        eer(scores, labels)


def test_min_dcf_rejects_impossible_priors():
    with pytest.raises(ValueError, match="0 < p_target < 1"):
        min_dcf([0.1, 0.9], [0, 1], 1.0)


# --- against brute force on a larger random set ----------------------------------------------


def brute_force_rates(scores, labels):
    """(P_fa, P_miss, θ) at θ = every distinct score (descending) after a reject-all θ = +inf,
    counted directly: accept when score >= θ."""
    thresholds = np.concatenate([[np.inf], np.unique(scores)[::-1]])
    accepted = scores[None, :] >= thresholds[:, None]  # (thresholds, trials)
    target = labels == 1
    p_fa = accepted[:, ~target].mean(axis=1)
    p_miss = 1 - accepted[:, target].mean(axis=1)
    return p_fa, p_miss, thresholds


def test_eer_and_min_dcf_match_a_brute_force_sweep():
    rng = np.random.default_rng(0)
    labels = (rng.random(5000) < 0.3).astype(int)
    scores = rng.normal(size=5000) + 1.5 * labels
    p_fa, p_miss, thresholds = brute_force_rates(scores, labels)
    # EER: first threshold where P_miss <= P_fa, interpolated with the previous one.
    i = int(np.flatnonzero(p_miss <= p_fa)[0])
    d0, d1 = p_miss[i - 1] - p_fa[i - 1], p_miss[i] - p_fa[i]
    w = d0 / (d0 - d1)
    rate, threshold = eer(scores, labels)
    assert rate == pytest.approx(p_fa[i - 1] + w * (p_fa[i] - p_fa[i - 1]))
    assert threshold == pytest.approx(thresholds[i - 1] + w * (thresholds[i] - thresholds[i - 1]))
    # Whatever the interpolation, the EER lies within one trial of the best max(P_fa, P_miss).
    resolution = 1 / min(labels.sum(), (1 - labels).sum())
    assert abs(rate - np.min(np.maximum(p_fa, p_miss))) <= resolution
    for p in (0.01, 0.05):
        cost = (p * p_miss + (1 - p) * p_fa) / min(p, 1 - p)
        assert min_dcf(scores, labels, p)[0] == pytest.approx(cost.min())


def test_metrics_dict_is_plain_and_complete():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    m = verification_metrics(rng.normal(size=300) + labels, labels)
    assert set(m) == {"eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.01_threshold",
                      "min_dcf_0.05", "min_dcf_0.05_threshold", "n_trials", "n_target",
                      "n_nontarget"}
    assert m["n_trials"] == 300 and m["n_target"] + m["n_nontarget"] == 300
    assert all(type(value) in (int, float) for value in m.values())
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert 0 < m["eer"] < 0.5 and m["min_dcf_0.01"] <= 1


def test_det_points_cross_at_the_eer():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 2000)
    scores = rng.normal(size=2000) + 2 * labels
    p_fa, p_miss, thresholds = det_points(scores, labels)
    assert np.all(np.diff(thresholds) > 0) and np.all(np.diff(p_fa) <= 0)
    assert np.all(np.diff(p_miss) >= 0)
    closest = np.argmin(np.abs(p_fa - p_miss))
    assert p_fa[closest] == pytest.approx(eer(scores, labels)[0], abs=2 / 1000)


def test_load_scores_names_a_missing_column(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("id1,id2,score\na,b,0.5\n")
    with pytest.raises(TrialsError, match="missing column.*label"):
        load_scores(path)
    path.write_text("id1,id2,label,score\nNA,null,1,0.5\n")
    assert load_scores(path)[["id1", "id2"]].values.tolist() == [["NA", "null"]]


# --- cosine scoring and AS-norm --------------------------------------------------------------


def random_trials(seed=0, n=60, dim=16, t=400):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, dim)), rng.integers(0, n, t), rng.integers(0, n, t), rng)


def loop_cosine(embeddings, index1, index2):
    return np.array([a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
                     for a, b in zip(embeddings[index1], embeddings[index2])])


def test_cosine_scores_equal_a_per_trial_loop():
    embeddings, index1, index2, _ = random_trials()
    expected = loop_cosine(embeddings, index1, index2)
    scores = cosine_scores(embeddings, index1, index2, chunk=7)  # chunks that do not divide T
    assert scores.dtype == np.float64 and scores.shape == (400,)
    np.testing.assert_allclose(scores, expected, rtol=1e-12, atol=1e-12)
    as_tensor = cosine_scores(torch.from_numpy(embeddings).float(), torch.from_numpy(index1),
                              index2.tolist())
    assert as_tensor.dtype == np.float32
    np.testing.assert_allclose(as_tensor, expected, atol=1e-6)


def test_cosine_scores_ignore_the_length_of_each_embedding():
    embeddings, index1, index2, rng = random_trials(seed=1)
    scaled = embeddings * rng.uniform(0.01, 100, size=(len(embeddings), 1))
    np.testing.assert_allclose(cosine_scores(scaled, index1, index2),
                               cosine_scores(embeddings, index1, index2), atol=1e-12)


def test_cosine_scores_check_indices():
    embeddings, index1, index2, _ = random_trials()
    with pytest.raises(TrialsError, match=r"\[0, 60\)"):
        cosine_scores(embeddings, index1, np.append(index2[:-1], 60))
    with pytest.raises(TrialsError, match="same non-zero length"):
        cosine_scores(embeddings, index1, index2[:-1])


def loop_as_norm(scores, embeddings, index1, index2, cohort, top_k):
    """AS-norm trial by trial: each side's top-k cohort cosines, their mean and std."""
    def stats(embedding):
        cohort_scores = np.array([embedding @ c / (np.linalg.norm(embedding) * np.linalg.norm(c))
                                  for c in cohort])
        top = np.sort(cohort_scores)[::-1][:top_k]
        return top.mean(), top.std()

    out = []
    for score, i, j in zip(scores, index1, index2):
        (m1, s1), (m2, s2) = stats(embeddings[i]), stats(embeddings[j])
        out.append(0.5 * ((score - m1) / s1 + (score - m2) / s2))
    return np.array(out)


@pytest.mark.parametrize("top_k", [5, 25, 1000])  # 1000 > cohort size 25: the whole cohort
def test_as_norm_equals_a_per_trial_loop(top_k):
    embeddings, index1, index2, rng = random_trials(seed=3, t=120)
    cohort = rng.normal(size=(25, embeddings.shape[1]))
    scores = cosine_scores(embeddings, index1, index2)
    expected = loop_as_norm(scores, embeddings, index1, index2, cohort, top_k)
    normed = as_norm(scores, embeddings, index1, index2, cohort, top_k=top_k, chunk=7)
    assert normed.shape == (120,)
    np.testing.assert_allclose(normed, expected, rtol=1e-10, atol=1e-10)


def test_as_norm_top_k_beyond_cohort_is_the_whole_cohort():
    embeddings, index1, index2, rng = random_trials(seed=4, t=50)
    cohort = torch.from_numpy(rng.normal(size=(10, embeddings.shape[1])))
    scores = cosine_scores(embeddings, index1, index2)
    np.testing.assert_array_equal(as_norm(scores, embeddings, index1, index2, cohort, 300),
                                  as_norm(scores, embeddings, index1, index2, cohort, 10))


def test_as_norm_checks_its_inputs():
    embeddings, index1, index2, rng = random_trials(t=20)
    scores = cosine_scores(embeddings, index1, index2)
    with pytest.raises(TrialsError, match="cohort must be"):
        as_norm(scores, embeddings, index1, index2, rng.normal(size=(10, 3)))
    with pytest.raises(TrialsError, match="19 scores for 20 trials"):
        as_norm(scores[:-1], embeddings, index1, index2, rng.normal(size=(10, 16)))
    with pytest.raises(TrialsError, match="top_k must be at least 2"):
        as_norm(scores, embeddings, index1, index2, rng.normal(size=(10, 16)), top_k=1)


def test_docstring_examples():
    assert doctest.testmod(verification_module).failed == 0
