"""How well a model forgot: accuracies, membership inference, and the gap to retraining.

The gold standard is the model retrained from scratch without the forget set: an unlearning
method is judged by how close it lands to that model, not by the lowest forget accuracy.

Metrics (all fractions in [0, 1]):
    RA, FA, TA     accuracy on retain, forget and test rows (UA = 1 - FA).
    MIA            the simple attack of the NeurIPS 2023 unlearning challenge's starting kit:
                   logistic regression on per-row cross-entropy loss, forget rows (label 1)
                   against test rows (label 0), subsampled to equal size, accuracy over 10
                   stratified shuffle splits. About 0.5 when the forget rows look unseen.
    MIA-efficacy   (Jia et al. 2023): an RBF SVC on the true-class confidence, trained on retain
                   (member) against test (non-member) rows; the share of forget rows it calls
                   non-members. Compare to the retrained model's value.
    average gap    mean over {UA, MIA-efficacy, RA, TA} of |method - retrained|.
    LiRA           a per-example attack with shadow models (Carlini et al. 2022): Gaussians of
                   the logit-scaled confidence with and without each row; AUC of forget (member)
                   against test rows.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

_EPS = 1e-12


def accuracy(probas: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label.

    >>> accuracy(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
    0.5
    """
    return float(np.mean(probas.argmax(1) == labels)) if len(labels) else float("nan")


def losses(probas: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row cross-entropy, -log p(label)."""
    return -np.log(np.clip(probas[np.arange(len(labels)), labels], _EPS, None))


def confidence(probas: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-row probability of the true class."""
    return probas[np.arange(len(labels)), labels]


def logit_confidence(probas: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y - log sum_{j != y} p_j: the per-example statistic of LiRA, near-Gaussian.

    >>> float(logit_confidence(np.array([[0.5, 0.5]]), np.array([0]))[0])
    0.0
    """
    p = np.clip(confidence(probas, labels), _EPS, 1 - _EPS)
    return np.log(p) - np.log(np.clip(1 - p, _EPS, None))


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b))
    return rng.choice(a, n, replace=False), rng.choice(b, n, replace=False)


def simple_mia(forget_losses: np.ndarray, test_losses: np.ndarray, *, n_splits: int = 10,
               seed: int = 0) -> float:
    """Accuracy of the starting kit's attack: logistic regression on the loss, forget rows
    (members) against test rows, subsampled to equal size, over stratified shuffle splits.

    >>> rng = np.random.default_rng(0)
    >>> abs(simple_mia(rng.exponential(size=2000), rng.exponential(size=2000)) - 0.5) < 0.05
    True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit, cross_val_score

    rng = np.random.default_rng(seed)
    forget, test = _balanced(np.asarray(forget_losses), np.asarray(test_losses), rng)
    if len(forget) < 5:
        return float("nan")
    X = np.concatenate([forget, test]).reshape(-1, 1)
    members = np.concatenate([np.ones(len(forget)), np.zeros(len(test))])
    splits = StratifiedShuffleSplit(n_splits=n_splits, random_state=seed)
    return float(cross_val_score(LogisticRegression(), X, members, cv=splits, scoring="accuracy").mean())


def mia_efficacy(retain_conf: np.ndarray, test_conf: np.ndarray, forget_conf: np.ndarray, *,
                 seed: int = 0, max_rows: int = 5000) -> float:
    """Share of forget rows an RBF SVC, trained on retain (member) against test (non-member)
    true-class confidences, calls non-members. At most ``max_rows`` of each set train it."""
    from sklearn.svm import SVC

    rng = np.random.default_rng(seed)
    n = min(len(retain_conf), len(test_conf), max_rows)
    if n < 5 or not len(forget_conf):
        return float("nan")
    X = np.concatenate([rng.choice(retain_conf, n, replace=False),
                        rng.choice(test_conf, n, replace=False)]).reshape(-1, 1)
    members = np.concatenate([np.ones(n), np.zeros(n)])
    attack = SVC(C=3, gamma="auto", kernel="rbf").fit(X, members)
    return float(np.mean(attack.predict(np.asarray(forget_conf).reshape(-1, 1)) == 0))


def scores(probas: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
    """RA, FA, TA, UA, MIA accuracy and MIA-efficacy of one model, from its class
    probabilities on the ``retain``, ``forget`` and ``test`` rows. A model whose outputs are
    not finite (its weights diverged, as gradient ascent can) gets ``diverged`` and NaNs."""
    if not all(np.isfinite(p).all() for p in probas.values()):
        return {**{k: float("nan") for k in ("RA", "FA", "TA", "UA", "MIA", "MIA_efficacy")}, "diverged": True}
    out = {
        "RA": accuracy(probas["retain"], labels["retain"]),
        "FA": accuracy(probas["forget"], labels["forget"]),
        "TA": accuracy(probas["test"], labels["test"]),
    }
    out["UA"] = 1 - out["FA"]
    out["MIA"] = simple_mia(losses(probas["forget"], labels["forget"]),
                            losses(probas["test"], labels["test"]), seed=seed)
    out["MIA_efficacy"] = mia_efficacy(confidence(probas["retain"], labels["retain"]),
                                       confidence(probas["test"], labels["test"]),
                                       confidence(probas["forget"], labels["forget"]), seed=seed)
    return out


GAP_METRICS = ("UA", "MIA_efficacy", "RA", "TA")


def average_gap(row: dict[str, float], retrained: dict[str, float]) -> float:
    """Mean over UA, MIA-efficacy, RA and TA of |row - retrained|.

    >>> average_gap({"UA": .1, "MIA_efficacy": .2, "RA": .9, "TA": .8},
    ...             {"UA": .1, "MIA_efficacy": .2, "RA": .9, "TA": .8})
    0.0
    """
    return float(np.mean([abs(row[k] - retrained[k]) for k in GAP_METRICS]))


def lira(target: np.ndarray, shadow: np.ndarray, shadow_in: np.ndarray, members: np.ndarray,
         *, min_var: float = 1e-4) -> dict[str, float]:
    """A LiRA-style per-example attack (online, with shadow models).

    Args:
        target: (rows,) logit-scaled confidence of the attacked model on each candidate row.
        shadow: (models, rows) the same statistic from each shadow model.
        shadow_in: (models, rows) whether each shadow model trained on each row.
        members: (rows,) 1 for rows the attacker is asked to call members (forget rows),
            0 for non-members (test rows).

    Returns the AUC of the likelihood-ratio score and the true-positive rate at 1% false
    positives (about 0.5 and 0.01 when members look like non-members).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    shadow = np.asarray(shadow, dtype=np.float64)
    inside = np.asarray(shadow_in, dtype=bool)

    def fit(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        count = mask.sum(0)
        mean = np.where(count > 0, (shadow * mask).sum(0) / np.maximum(count, 1), np.nan)
        var = np.where(count > 1, ((shadow - mean) ** 2 * mask).sum(0) / np.maximum(count - 1, 1), np.nan)
        return mean, var

    mu_in, var_in = fit(inside)
    mu_out, var_out = fit(~inside)
    # one global variance where a row has too few shadow models on one side (small data)
    var_in = np.where(np.isnan(var_in), np.nanmean(var_in), var_in)
    var_out = np.where(np.isnan(var_out), np.nanmean(var_out), var_out)
    mu_in = np.where(np.isnan(mu_in), np.nanmean(mu_in), mu_in)
    mu_out = np.where(np.isnan(mu_out), np.nanmean(mu_out), mu_out)
    var_in, var_out = np.maximum(var_in, min_var), np.maximum(var_out, min_var)

    def logpdf(x, mu, var):
        return -0.5 * (np.log(2 * np.pi * var) + (x - mu) ** 2 / var)

    score = logpdf(target, mu_in, var_in) - logpdf(target, mu_out, var_out)
    members = np.asarray(members)
    fpr, tpr, _ = roc_curve(members, score)
    return {"auc": float(roc_auc_score(members, score)),
            "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr))}


def summarise(rows: Sequence[dict[str, Any]], retrained: Optional[dict[str, float]]) -> None:
    """Add ``gap`` (average gap to the retrained model) to every row that has the metrics."""
    if retrained is None:
        return
    for row in rows:
        if all(k in row for k in GAP_METRICS):
            row["gap"] = average_gap(row, retrained)
