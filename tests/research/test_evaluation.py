"""Privacy evaluation: the attacks say about 0.5 when the forget rows were never trained on,
and clearly more for an over-fitted model that trained on them."""

import numpy as np
import pytest

from sisa.data.sources import load
from sisa.research.compare import train_model
from sisa.research.evaluation import (
    average_gap,
    confidence,
    lira,
    logit_confidence,
    losses,
    mia_efficacy,
    scores,
    simple_mia,
)
from sisa.settings import Settings
from sisa.training.jobs import DataSpec
from sisa.training.slices import predict_probas

pytestmark = pytest.mark.numerics  # .ci/run runs these again under ATEN_CPU_CAPABILITY=default
SEEDS = range(5)


@pytest.fixture(scope="module")
def digits_models():
    """Models trained on the first half of digits' training rows: the second half was never
    seen (non-members like the test rows); the over-fitted one memorised wrong labels."""
    digits = load("digits")
    X, y = digits.train.X, digits.train.y.astype(np.int64)
    half = len(y) // 2
    data = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, 10)
    out = {"digits": digits, "data": data, "half": half}
    for seed in SEEDS:
        settings = Settings(shards=1, slices=1, epochs=20, seed=seed)
        model, _, _ = train_model(settings, data, X[:half], y[:half])
        out[seed] = (settings, model)
    return out


def probas_of(model, X, settings, data):
    return predict_probas(model.state_dict(), X, settings=settings, data=data)


def test_simple_mia_is_about_half_when_the_forget_rows_were_never_trained_on(digits_models):
    digits, data, half = digits_models["digits"], digits_models["data"], digits_models["half"]
    unseen_X, unseen_y = digits.train.X[half:], digits.train.y[half:].astype(np.int64)
    test_y = digits.test.y.astype(np.int64)
    results = []
    for seed in SEEDS:
        settings, model = digits_models[seed]
        forget = losses(probas_of(model, unseen_X, settings, data), unseen_y)
        test = losses(probas_of(model, digits.test.X, settings, data), test_y)
        results.append(simple_mia(forget, test, seed=seed))
    assert all(abs(r - 0.5) <= 0.05 for r in results), results


def test_attacks_see_an_overfitted_model_that_trained_on_the_forget_rows():
    digits = load("digits")
    X, y = digits.train.X[:400], digits.train.y[:400].astype(np.int64).copy()
    rng = np.random.default_rng(0)
    forget = np.zeros(400, dtype=bool)
    forget[rng.choice(400, 80, replace=False)] = True
    y[forget] = (y[forget] + rng.integers(1, 10, int(forget.sum()))) % 10  # memorised only
    data = DataSpec(tuple(digits.shape), str(X.dtype), digits.scale, 10)
    settings = Settings(shards=1, slices=1, epochs=150)
    model, _, _ = train_model(settings, data, X, y)
    probas = {"retain": probas_of(model, X[~forget], settings, data),
              "forget": probas_of(model, X[forget], settings, data),
              "test": probas_of(model, digits.test.X, settings, data)}
    # test rows with random wrong labels too, so forget and test differ only by membership
    test_y = (digits.test.y.astype(np.int64) + rng.integers(1, 10, len(digits.test.y))) % 10
    result = scores(probas, {"retain": y[~forget], "forget": y[forget], "test": test_y})
    assert result["FA"] == 1.0 and result["MIA"] > 0.9
    retrained, _, _ = train_model(settings, data, X[~forget], y[~forget])
    unseen = simple_mia(losses(probas_of(retrained, X[forget], settings, data), y[forget]),
                        losses(probas_of(retrained, digits.test.X, settings, data), test_y))
    assert abs(unseen - 0.5) <= 0.1


def test_simple_mia_is_the_kits_cross_val_score():
    """The fast loop gives the numbers of the starting kit's cross_val_score call."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(3)
    forget, test = rng.exponential(0.7, 90), rng.exponential(1.0, 300)
    with threadpool_limits(limits=1, user_api="blas"):  # tiny fits: threads would only contend
        for seed in range(4):
            pick = np.random.default_rng(seed)
            f, t = pick.choice(forget, 90, replace=False), pick.choice(test, 90, replace=False)
            X, members = np.r_[f, t].reshape(-1, 1), np.r_[np.ones(90), np.zeros(90)]
            kit = cross_val_score(LogisticRegression(), X, members,
                                  cv=StratifiedShuffleSplit(n_splits=10, random_state=seed), scoring="accuracy").mean()
            assert simple_mia(forget, test, seed=seed) == pytest.approx(kit, abs=1e-12)
        # size caps the rows a side; under 5 a side there is no score
        assert simple_mia(forget, test, seed=0, size=40) != simple_mia(forget, test, seed=0)
        assert np.isnan(simple_mia(forget[:4], test))


def test_mia_efficacy_counts_forget_rows_that_look_unseen():
    rng = np.random.default_rng(0)
    retain = rng.uniform(0.9, 1.0, 2000)   # members: confident
    test = rng.uniform(0.0, 0.6, 2000)     # non-members: not
    assert mia_efficacy(retain, test, rng.uniform(0.9, 1.0, 500)) < 0.05
    assert mia_efficacy(retain, test, rng.uniform(0.0, 0.6, 500)) > 0.95


def test_lira_separates_members_only_when_they_differ():
    rng = np.random.default_rng(0)
    models, rows = 16, 400
    inside = rng.random((models, rows)) < 0.5
    offsets = rng.normal(0, 2, rows)                 # per-example difficulty
    shadow = offsets + 1.5 * inside + rng.normal(0, 0.3, (models, rows))
    members = np.arange(rows) < rows // 2
    trained_on_members = offsets + 1.5 * members + rng.normal(0, 0.3, rows)
    seen = lira(trained_on_members, shadow, inside, members)
    assert seen["auc"] > 0.95 and seen["tpr_at_1pct_fpr"] > 0.3
    trained_on_none = offsets + rng.normal(0, 0.3, rows)
    assert abs(lira(trained_on_none, shadow, inside, members)["auc"] - 0.5) < 0.1


def test_metric_helpers():
    probas = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1])
    np.testing.assert_allclose(confidence(probas, labels), [0.7, 0.1])
    np.testing.assert_allclose(losses(probas, labels), -np.log([0.7, 0.1]))
    np.testing.assert_allclose(logit_confidence(probas, labels), np.log([0.7 / 0.3, 0.1 / 0.9]))
    row = {"UA": 0.1, "MIA_efficacy": 0.3, "RA": 0.9, "TA": 0.8}
    assert average_gap(row, {"UA": 0.2, "MIA_efficacy": 0.3, "RA": 0.9, "TA": 0.6}) == pytest.approx(0.075)


def test_logit_confidence_keeps_its_precision_for_confident_models():
    """The other classes' probabilities are summed, not taken as 1 - p_y: p_y = 1 - 1e-20
    rounds to 1, yet the statistic is log(1e20), and two confident models do not tie."""
    probas = np.array([[1.0, 1e-20, 0.0], [1.0, 3e-18, 1e-18], [0.0, 1.0, 0.0]])
    stat = logit_confidence(probas, np.array([0, 0, 0]))
    np.testing.assert_allclose(stat[:2], [np.log(1e20), np.log(1 / 4e-18)], rtol=1e-12)
    assert stat[2] == pytest.approx(np.log(1e-45))  # clipped at 1e-45, as LiRA's reference code
    assert np.isfinite(logit_confidence(np.array([[1.0, 0.0]]), np.array([0]))).all()

