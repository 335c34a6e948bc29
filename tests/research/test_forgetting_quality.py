"""The NeurIPS 2023 unlearning challenge's forgetting quality: known answers worked by hand, a
literal one-model-at-a-time reference for the vectorised epsilons, and compare's rows."""

import itertools
import math

import numpy as np
import pytest

from sisa.research.compare import REFERENCE, FQRun, forgetting_rows, forgetting_summary
from sisa.research.evaluation import (
    challenge_score,
    epsilon_scores,
    forgetting_quality,
    max_finite_epsilon,
    null_forgetting_quality,
    threshold_epsilons,
)

DELTA = 1e-5
LOWEST = 2.0 ** -12  # the score of the last bin, epsilon >= 6 or inf


def reference_epsilon(u, r, delta=DELTA, *, both_directions=True) -> float:
    """The definition read literally, one row: every observed value is a threshold; each
    attack's rates are counted model by model; the challenge's rules for zero rates."""
    shown = [0.0]
    for t in sorted(set(u) | set(r)):
        rules = [lambda x: x > t] + ([lambda x: x <= t] if both_directions else [])
        for called_unlearned in rules:
            fpr = sum(called_unlearned(x) for x in r) / len(r)
            fnr = sum(not called_unlearned(x) for x in u) / len(u)
            if fpr == 0 and fnr == 0:
                shown.append(math.inf)
            elif fpr == 0 or fnr == 0:
                continue
            else:
                terms = [math.log(a / b) if a > 0 else -math.inf
                         for a, b in ((1 - delta - fpr, fnr), (1 - delta - fnr, fpr)) if a >= 0]
                shown.append(max(terms) if terms else math.inf)
    return max(shown)


def columns(*rows):
    """(models, rows) from one list of model values per row."""
    return np.array(rows, dtype=np.float64).T


# -- known answers

def test_identical_distributions_show_no_epsilon():
    rng = np.random.default_rng(0)
    same = rng.normal(size=(16, 50))
    assert np.array_equal(threshold_epsilons(same, same), np.zeros(50))
    assert forgetting_quality(same, same) == 1.0
    # the same values from other models (a permutation of the models): the same distribution
    assert forgetting_quality(same, same[rng.permutation(16)]) == 1.0
    ties = np.ones((5, 3))  # every model equal: no threshold separates anything
    assert forgetting_quality(ties, ties) == 1.0


def test_separated_distributions_show_infinite_epsilon_either_way():
    """A model that memorised the forget rows against models that never saw them: every
    unlearned value above every retrained one. Any N: the perfect attack, epsilon = inf, the
    lowest score 2^-12. Reversed (forgetting overshot) the same."""
    r = columns([1.0, 2.0, 3.0, 4.0])
    for u in (r + 10, r - 10):
        assert threshold_epsilons(u, r).tolist() == [math.inf]
        assert forgetting_quality(u, r) == LOWEST


def test_one_overlap_in_four_models_shows_the_largest_finite_epsilon():
    """u = 0.5, 5, 6, 7 against r = 1, 2, 3, 4. The threshold 3: r = 4 is above it (FPR = 1/4),
    u = 0.5 is not (FNR = 1/4): epsilon = log((1 - delta - 1/4) / (1/4)) = log(3 - 4 delta) =
    1.0986, the most 4 models can show short of separation (the threshold 4 has FPR 0 and
    FNR 1/4: one zero rate, left out). Bin floor(1.0986 / 0.5) = 2: score 2^-2."""
    u, r = columns([0.5, 5, 6, 7]), columns([1, 2, 3, 4])
    expected = math.log(3 - 4 * DELTA)
    assert threshold_epsilons(u, r)[0] == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(max_finite_epsilon(4), rel=1e-12)
    assert forgetting_quality(u, r) == 0.25
    # mirrored (unlearned below retrained) the same; the challenge's one-direction attack showed 0
    assert threshold_epsilons(-u, -r)[0] == pytest.approx(expected, rel=1e-12)
    assert reference_epsilon([-0.5, -5, -6, -7], [-1, -2, -3, -4], both_directions=False) == 0.0
    # three rows: identical, one overlap, separated
    u3 = columns([1, 2, 3, 4], [0.5, 5, 6, 7], [11, 12, 13, 14])
    r3 = columns([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    assert forgetting_quality(u3, r3) == pytest.approx((1 + 0.25 + LOWEST) / 3, abs=1e-15)


def test_largest_finite_epsilon_by_number_of_models():
    assert max_finite_epsilon(2) == 0.0  # FPR = FNR = 1/2: log(1 - 2 delta) < 0
    assert max_finite_epsilon(3) == pytest.approx(math.log(2 - 3 * DELTA))
    assert max_finite_epsilon(16) == pytest.approx(math.log(15 - 16 * DELTA))
    assert max_finite_epsilon(4, 2) == pytest.approx(math.log(4 * (0.5 - DELTA)))
    assert max_finite_epsilon(512, delta=0.01) == pytest.approx(math.log(512 * 0.99 - 1))
    rng = np.random.default_rng(1)
    for n_u, n_r in ((2, 2), (3, 5), (16, 16)):
        eps = threshold_epsilons(rng.normal(size=(n_u, 400)), rng.normal(0.7, size=(n_r, 400)))
        finite = eps[np.isfinite(eps)]
        assert finite.max() <= max_finite_epsilon(n_u, n_r) + 1e-12
        assert np.isin(eps[~np.isfinite(eps)], [np.inf]).all()


def test_bins_are_half_wide_and_score_two_over_two_to_the_index():
    # np.digitize(eps, [0, 0.5, ..., 6]): index 1 for [0, 0.5), 2 for [0.5, 1), ..., 13 for >= 6
    eps = np.array([0, 0.25, 0.4999, 0.5, 0.999, 1.0, 2.5, 5.5, 5.999, 6.0, 7.0, np.inf])
    expected = [1, 1, 1, 1 / 2, 1 / 2, 1 / 4, 1 / 32, 2**-11, 2**-11, 2**-12, 2**-12, 2**-12]
    assert epsilon_scores(eps).tolist() == expected
    assert epsilon_scores(eps).tolist() == [2.0 ** -min(math.floor(min(e, 99) / 0.5), 12) for e in eps]


def test_final_score_multiplies_the_accuracy_ratios():
    same = np.zeros((4, 10))
    result = challenge_score(same, same, ra=[0.9, 0.7], ra_ref=[1.0, 1.0], ta=[0.6], ta_ref=[0.8, 0.8])
    assert result["F"] == 1.0 and result["RA_ratio"] == pytest.approx(0.8) and result["TA_ratio"] == pytest.approx(0.75)
    assert result["score"] == pytest.approx(0.6)
    # not capped: more accurate than retraining gains
    assert challenge_score(same, same, ra=[1.0], ra_ref=[0.8], ta=[1], ta_ref=[1])["score"] == pytest.approx(1.25)
    u3 = columns([1, 2, 3, 4], [0.5, 5, 6, 7], [11, 12, 13, 14])
    r3 = columns([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    result = challenge_score(u3, r3, ra=[0.5], ra_ref=[1.0], ta=[1.0], ta_ref=[1.0])
    assert result["score"] == pytest.approx(0.5 * (1 + 0.25 + LOWEST) / 3)
    assert result["epsilon_bins"] == [1, 0, 1] + [0] * 9 + [1]
    assert result["models"] == result["reference_models"] == 4


def test_symmetric_in_the_two_sets_and_the_sign():
    rng = np.random.default_rng(2)
    u, r = rng.normal(0.3, 1, (7, 300)), rng.normal(0, 1.5, (5, 300))
    eps = threshold_epsilons(u, r)
    assert np.array_equal(eps, threshold_epsilons(r, u))
    assert np.array_equal(eps, threshold_epsilons(-u, -r))
    assert np.array_equal(eps, threshold_epsilons(u[::-1], r[::-1]))  # the models' order does not matter


@pytest.mark.parametrize("n_u, n_r, delta", [(2, 2, DELTA), (4, 4, DELTA), (5, 3, DELTA), (8, 8, 0.01),
                                             (16, 16, DELTA), (6, 6, 0.2)])
def test_vectorised_epsilons_match_the_literal_definition(n_u, n_r, delta):
    rng = np.random.default_rng(n_u * 100 + n_r)
    # rounded values: ties within and across the sets; offsets: rows from equal to separated
    offsets = rng.uniform(-3, 3, 120)
    u = np.round(rng.normal(offsets, 1, (n_u, 120)), 1)
    r = np.round(rng.normal(0, 1, (n_r, 120)), 1)
    fast = threshold_epsilons(u, r, delta=delta)
    slow = [reference_epsilon(u[:, j].tolist(), r[:, j].tolist(), delta) for j in range(120)]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    # both directions: the larger of the challenge's one-direction attack on (u, r) and on (r, u)
    kit = [max(reference_epsilon(u[:, j].tolist(), r[:, j].tolist(), delta, both_directions=False),
               reference_epsilon(r[:, j].tolist(), u[:, j].tolist(), delta, both_directions=False))
           for j in range(120)]
    np.testing.assert_allclose(fast, kit, rtol=1e-12)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="same rows"):
        threshold_epsilons(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="finite"):
        threshold_epsilons(np.full((3, 4), np.nan), np.zeros((3, 4)))


# -- chance

def test_null_is_the_average_over_every_order_of_the_values():
    """Under the null only the order of the 2N values matters, each of the C(2N, N) orders
    equally likely: enumerate them for N = 3 and compare with the simulation."""
    n = 3
    orders = [c for c in itertools.combinations(range(2 * n), n)]
    u = np.array([list(c) for c in orders], dtype=float).T
    r = np.array([[v for v in range(2 * n) if v not in c] for c in orders], dtype=float).T
    exact = float(np.mean(epsilon_scores(threshold_epsilons(u, r))))
    null = null_forgetting_quality(n)
    assert null["mean"] == pytest.approx(exact, abs=4 * null["sd"] / math.sqrt(20000))
    # N = 2: 2 of the 6 orders separate the sets (inf), the other 4 show nothing
    assert null_forgetting_quality(2)["mean"] == pytest.approx(4 / 6 + 2 / 6 * LOWEST, abs=0.015)
    # and it stays far below 1 as N grows: the best of many thresholds finds chance differences
    assert 0.15 < null_forgetting_quality(16, rows=4000)["mean"] < 0.35


# -- compare's rows

def fq_runs(n_models=4, rows=30, diverged=()):
    rng = np.random.default_rng(0)
    out = []
    for seed in range(n_models):
        retrained = rng.normal(0, 1, rows)
        sisa_retrained = rng.normal(0, 1, rows)
        values = {"original": rng.normal(3, 1, rows), "retrained": retrained, "ft": rng.normal(0, 1, rows),
                  "sisa-original": rng.normal(2, 1, rows), "sisa-delete": sisa_retrained.copy(),
                  "sisa-retrained": sisa_retrained}
        for name, v in values.items():
            family = "sisa" if name.startswith("sisa") else "monolithic"
            gone = (name, seed) in diverged
            out.append(FQRun(name, family, seed, None if gone else v, float("nan") if gone else 0.9,
                             float("nan") if gone else 0.8))
    return out


def test_each_row_faces_its_own_reference():
    rows = forgetting_rows(fq_runs())
    assert set(rows) == {"original", "ft", "sisa-original", "sisa-delete"}  # no reference against itself
    assert {name: row["reference"] for name, row in rows.items()} == {
        "original": REFERENCE["monolithic"], "ft": "retrained", "sisa-original": "sisa-retrained",
        "sisa-delete": "sisa-retrained"}
    # sisa after 'sisa delete' is sisa retrained, model for model: F is exactly 1
    assert rows["sisa-delete"]["F"] == 1.0 and rows["sisa-delete"]["score"] == 1.0
    assert rows["original"]["F"] < rows["ft"]["F"] and rows["original"]["models"] == 4
    assert rows["ft"]["RA_ratio"] == 1.0 and rows["ft"]["diverged"] == 0


def test_diverged_models_are_left_out_and_counted():
    rows = forgetting_rows(fq_runs(diverged={("ft", 0)}))
    assert rows["ft"]["models"] == 3 and rows["ft"]["reference_models"] == 4 and rows["ft"]["diverged"] == 1
    assert np.isfinite(rows["ft"]["F"])
    rows = forgetting_rows(fq_runs(diverged={("ft", 0), ("ft", 1), ("ft", 2)}))
    assert np.isnan(rows["ft"]["F"]) and rows["ft"]["models"] == 1


def test_summary_says_what_the_number_of_models_can_show():
    summary = forgetting_summary(fq_runs(), 4, 30, sisa_identical=[True] * 4)
    assert summary["seeds"] == [0, 1, 2, 3] and summary["max_finite_epsilon"] == pytest.approx(math.log(3 - 4e-5))
    assert 0.3 < summary["null"] < 0.45 and summary["sisa_identical_seeds"] == 4
    assert summary["sisa_identical_checkpoints"] is True
    assert forgetting_summary(fq_runs(), 4, 30)["sisa_identical_checkpoints"] is None
