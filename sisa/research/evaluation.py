"""How well a model forgot: accuracies, membership inference, and the gap to retraining.

The gold standard is the model retrained from scratch without the forget set: an unlearning
method is judged by how close it lands to that model, not by the lowest forget accuracy. Each
method is judged against the retrained model *of its own kind*: a monolithic method against
the monolithic model retrained without the forget set, SISA against SISA trained without it.

Metrics (all fractions in [0, 1]):
    RA, FA, TA     accuracy on retain, forget and test rows (UA = 1 - FA).
    MIA            the simple attack of the NeurIPS 2023 unlearning challenge's starting kit:
                   logistic regression on per-row cross-entropy loss, forget rows (label 1)
                   against test rows (label 0), subsampled to equal size, accuracy over 10
                   stratified shuffle splits. About 0.5 when the forget rows look unseen.
    MIA null       the same attack between two disjoint random halves of the test rows (both
                   unseen), on as many rows as the MIA uses: what chance alone gives.
    MIA-efficacy   (Jia et al. 2023): an RBF SVC on the true-class confidence, trained on retain
                   (member) against test (non-member) rows; the share of forget rows it calls
                   non-members. Compare to the retrained model's value.
    average gap    mean over {UA, MIA-efficacy, RA, TA} of |method - reference|.
    LiRA           a per-example attack with shadow models (Carlini et al. 2022): Gaussians of
                   the logit-scaled confidence with and without each row; AUC of forget (member)
                   against test rows.

The attacks draw random subsamples and splits: :func:`attack_scores` takes a ``seed`` (one
*draw*); a score is reported over many draws (and training seeds) by :func:`summary`.
:func:`chance_sd` gives each score's spread under chance from the number of rows alone, and
:func:`small_sample_warnings` says when that spread is too large for the score to mean much.
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


_LOGIT_FLOOR = 1e-45
"""Smallest probability :func:`logit_confidence` takes the log of (LiRA's reference code adds it)."""


def logit_confidence(probas: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """log p_y - log sum_{j != y} p_j: the per-example statistic of LiRA and of the unlearning
    challenge's forgetting quality, near-Gaussian over models.

    The other classes' probabilities are summed, not taken as 1 - p_y: a confident model's
    p_y rounds to 1 and 1 - p_y to 0 (or to a few ulps), which would make every confident
    model tie, while the sum keeps its precision down to the smallest float. Both terms are
    clipped at 1e-45, as LiRA's reference code does (Carlini et al. 2022), so the statistic
    stays finite (within +-103.6).

    >>> float(logit_confidence(np.array([[0.5, 0.5]]), np.array([0]))[0])
    0.0
    >>> round(float(logit_confidence(np.array([[1.0, 1e-20]]), np.array([0]))[0]), 2)  # log(1e20)
    46.05
    """
    probas = np.array(probas, dtype=np.float64)  # a copy: the label's column is zeroed below
    rows = np.arange(len(labels))
    p = probas[rows, labels]
    probas[rows, labels] = 0.0
    others = probas.sum(1)
    return np.log(np.clip(p, _LOGIT_FLOOR, None)) - np.log(np.clip(others, _LOGIT_FLOOR, None))


def _balanced(a: np.ndarray, b: np.ndarray, rng: np.random.Generator,
              size: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    n = min(len(a), len(b), size if size is not None else len(a))
    return rng.choice(a, n, replace=False), rng.choice(b, n, replace=False)


MIA_SPLITS = 10
"""Stratified shuffle splits of the simple MIA (the starting kit's), each testing 10% of the rows."""


def simple_mia(forget_losses: np.ndarray, test_losses: np.ndarray, *, n_splits: int = MIA_SPLITS,
               seed: int = 0, size: Optional[int] = None) -> float:
    """Accuracy of the starting kit's attack: logistic regression on the loss, forget rows
    (members) against test rows, subsampled to equal size (at most ``size`` of each), over
    stratified shuffle splits. NaN with fewer than 5 rows a side.

    The splits and fits are sklearn's, as ``cross_val_score`` runs them (the same numbers),
    without its per-call overhead: the attack is run for every model and every draw.

    >>> rng = np.random.default_rng(0)
    >>> abs(simple_mia(rng.exponential(size=2000), rng.exponential(size=2000)) - 0.5) < 0.05
    True
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedShuffleSplit

    rng = np.random.default_rng(seed)
    forget, test = _balanced(np.asarray(forget_losses), np.asarray(test_losses), rng, size)
    if len(forget) < 5:
        return float("nan")
    X = np.concatenate([forget, test]).reshape(-1, 1)
    members = np.concatenate([np.ones(len(forget)), np.zeros(len(test))])
    splits = StratifiedShuffleSplit(n_splits=n_splits, random_state=seed)
    accuracies = [np.mean(LogisticRegression().fit(X[fit], members[fit]).predict(X[held]) == members[held])
                  for fit, held in splits.split(X, members)]
    return float(np.mean(accuracies))


def null_mia(test_losses: np.ndarray, *, size: int, seed: int = 0, n_splits: int = MIA_SPLITS) -> float:
    """The simple MIA between two disjoint random halves of the test rows, at most ``size``
    rows each (give the MIA's own size: the forget rows): both halves are unseen, so the
    answer is chance, and its spread over draws is the attack's noise on that many rows.

    >>> rng = np.random.default_rng(0)
    >>> bool(abs(np.mean([null_mia(rng.exponential(size=400), size=200, seed=s) for s in range(10)]) - 0.5) < 0.03)
    True
    """
    losses_ = np.asarray(test_losses)
    order = np.random.default_rng([seed, 1]).permutation(len(losses_))
    half = len(losses_) // 2
    return simple_mia(losses_[order[:half]], losses_[order[half:2 * half]], n_splits=n_splits, seed=seed,
                      size=size)


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


ACCURACY_METRICS = ("RA", "FA", "TA", "UA")
ATTACK_METRICS = ("MIA", "MIA_null", "MIA_efficacy")


def diverged(probas: dict[str, np.ndarray]) -> bool:
    """Whether a model's outputs are not all finite (its weights diverged, as gradient ascent can)."""
    return not all(np.isfinite(p).all() for p in probas.values())


def accuracies(probas: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, float]:
    """RA, FA, TA and UA of one model from its class probabilities on the ``retain``,
    ``forget`` and ``test`` rows (they use no random draw)."""
    out = {"RA": accuracy(probas["retain"], labels["retain"]),
           "FA": accuracy(probas["forget"], labels["forget"]),
           "TA": accuracy(probas["test"], labels["test"])}
    out["UA"] = 1 - out["FA"]
    return out


def attack_scores(probas: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, seed: int) -> dict[str, float]:
    """MIA accuracy, its null and MIA-efficacy of one model for one draw ``seed`` (the
    attacks' subsamples and splits). Two models scored with one seed on rows of the same sizes
    get the same subsamples: their difference is paired."""
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    forget_losses = losses(probas["forget"], labels["forget"])
    test_losses = losses(probas["test"], labels["test"])
    # one BLAS thread: these fits are tiny, and threads fighting over busy cores made them 4x slower
    with threadpool_limits(limits=1, user_api="blas"):
        return {"MIA": simple_mia(forget_losses, test_losses, seed=seed),
                "MIA_null": null_mia(test_losses, size=len(forget_losses), seed=seed),
                "MIA_efficacy": mia_efficacy(confidence(probas["retain"], labels["retain"]),
                                             confidence(probas["test"], labels["test"]),
                                             confidence(probas["forget"], labels["forget"]), seed=seed)}


def scores(probas: dict[str, np.ndarray], labels: dict[str, np.ndarray], *, seed: int = 0) -> dict[str, float]:
    """RA, FA, TA, UA, MIA accuracy, MIA null and MIA-efficacy of one model (one draw), from
    its class probabilities on the ``retain``, ``forget`` and ``test`` rows. A model whose
    outputs are not finite gets ``diverged`` and NaNs."""
    if diverged(probas):
        return {**{k: float("nan") for k in ACCURACY_METRICS + ATTACK_METRICS}, "diverged": True}
    return {**accuracies(probas, labels), **attack_scores(probas, labels, seed=seed)}


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (ddof 1; None for fewer than two values) and count of
    the finite ``values`` (a diverged model's NaNs are left out, and counted out).

    >>> summary([0.5, 0.7, 0.6, float("nan")])
    {'mean': 0.6, 'sd': 0.1, 'n': 3}
    """
    finite = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=np.float64)
    if not len(finite):
        return {"mean": float("nan"), "sd": None, "n": 0}
    sd = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return {"mean": round(float(np.mean(finite)), 12), "sd": None if sd is None else round(sd, 12),
            "n": int(len(finite))}


# -- what chance alone gives on n rows

SMALL_SAMPLE_SD = 0.05
"""A score whose standard deviation under chance exceeds this is flagged: two rows (or a row
and 0.5) then differ by 0.1, two such sds, from chance alone about one time in twenty."""


def chance_sd(metric: str, *, n_forget: int, n_test: int) -> float:
    """Standard deviation of a score under chance (members indistinguishable from
    non-members), from the number of rows alone:

    - ``MIA``: the kit's attack on m = min(forget, test) rows a side. Each of its 10 splits
      tests 10% of the 2m rows, so a row is tested k ~ Binomial(10, 0.1) times and the mean
      accuracy has variance 0.25 * E[k^2] / (2m) = 0.25 * 1.9 / (2m). A lower bound: the
      fitted threshold varies too (measured about 8% more; the MIA null column shows it).
    - ``MIA_efficacy``: a share of the forget rows, at most 0.5 / sqrt(forget).
    - ``LiRA_auc``: the AUC of forget against test rows, sqrt((n1 + n0 + 1) / (12 n1 n0))
      (the exact null variance of the Mann-Whitney statistic; Hanley and McNeil 1982).

    >>> round(chance_sd("MIA", n_forget=144, n_test=359), 3), round(chance_sd("LiRA_auc", n_forget=3, n_test=359), 3)
    (0.041, 0.168)
    """
    if metric == "MIA":
        m = min(n_forget, n_test)
        k2 = MIA_SPLITS * 0.1 * 0.9 + (MIA_SPLITS * 0.1) ** 2
        return float(np.sqrt(0.25 * k2 / (2 * m))) if m else float("inf")
    if metric == "MIA_efficacy":
        return 0.5 / np.sqrt(n_forget) if n_forget else float("inf")
    if metric == "LiRA_auc":
        n1, n0 = n_forget, n_test
        return float(np.sqrt((n1 + n0 + 1) / (12 * n1 * n0))) if n1 and n0 else float("inf")
    raise ValueError(f"no chance sd for {metric!r}")


CHANCE_NAMES = {"MIA": "MIA accuracy", "MIA_efficacy": "MIA-efficacy", "LiRA_auc": "LiRA AUC"}


def small_sample_warnings(n_forget: int, n_test: int, *, metrics: Sequence[str] = tuple(CHANCE_NAMES),
                          limit: float = SMALL_SAMPLE_SD) -> list[str]:
    """One line per score whose :func:`chance_sd` on these rows exceeds ``limit``.

    >>> small_sample_warnings(144, 359)
    []
    >>> small_sample_warnings(3, 359, metrics=["LiRA_auc"])[0][:60]
    'LiRA AUC: 3 forget rows against 359 test rows give it a sd o'
    """
    out = []
    for metric in metrics:
        sd = chance_sd(metric, n_forget=n_forget, n_test=n_test)
        if sd > limit:
            out.append(f"{CHANCE_NAMES[metric]}: {n_forget} forget rows against {n_test} test rows give it a sd of "
                       f"{sd:.3f} from chance alone (above {limit}): a difference under {2 * sd:.2f}, between rows "
                       f"or from 0.5, can be chance")
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


# -- the unlearning challenge's forgetting quality: many unlearned models against many retrained ones

FQ_DELTA = 1e-5
"""The delta of (epsilon, delta)-unlearning at which the forgetting quality's epsilons are estimated."""
FQ_BIN_WIDTH = 0.5
FQ_BINS = 13
"""The challenge's bins of epsilon: [0, 0.5), [0.5, 1), ..., [5.5, 6) and [6, inf], scored 1 down to 2^-12."""


def threshold_epsilons(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = FQ_DELTA) -> np.ndarray:
    """Per forget row, the epsilon the best threshold attack shows between unlearned and retrained
    models: the forgetting quality of the NeurIPS 2023 unlearning challenge (Triantafillou et
    al., arXiv 2406.09073) before its bins.

    Args:
        unlearned: (models, rows) a statistic of each unlearned model on each forget row (the
            logit-scaled confidence, :func:`logit_confidence`), finite.
        retrained: (models, rows) the same of each retrained model; the counts may differ.
        delta: the delta of (epsilon, delta)-unlearning.

    For each row, every observed value t is a threshold, and each threshold gives two attacks:
    call a model *unlearned* when its value is above t, or when it is at or below t. An attack
    has a false positive rate (FPR: share of the retrained models called unlearned) and a false
    negative rate (FNR: share of the unlearned models called retrained), and shows

        epsilon = max(log((1 - delta - FPR) / FNR), log((1 - delta - FNR) / FPR)),

    a term with a negative numerator left out. Rates estimated from finitely many models follow
    the challenge's scoring code (``compute_epsilon_s``):

    - FPR = FNR = 0, a perfect attack (the two sets of values do not overlap): epsilon = inf;
    - exactly one rate 0: the attack is left out (a zero rate out of N models is no evidence
      of an infinite epsilon);
    - both terms left out (both rates above 1 - delta: an attack wrong about every model, whose
      reverse is perfect): epsilon = inf.

    The row's epsilon is the largest its attacks show, and 0 when none shows more.

    One difference from the challenge's code: its threshold attack only called values *above*
    t unlearned, so where the unlearned models were *less* confident than the retrained ones
    (forgetting overshot) it saw only complete separation (through the last rule); with one
    model overlapping it can show 0 where both directions show log(N (1 - delta) - 1). Here both
    directions are attacks: the epsilon is the larger of that code's on (unlearned, retrained)
    and on (retrained, unlearned), and swapping the two sets, or negating the statistic, gives
    the same epsilons.

    With N models a side the rates are multiples of 1/N, so the largest finite epsilon is
    log(N (1 - delta) - 1) (:func:`max_finite_epsilon`): 2.71 for N = 16, and the last bin
    (epsilon >= 6) is reached short of perfect separation only from N = 405 models (the
    challenge used 512).

    >>> threshold_epsilons(np.array([[5., 6., 7., .5]]).T, np.array([[1., 2., 3., 4.]]).T).round(4)
    array([1.0986])
    """
    u = np.asarray(unlearned, dtype=np.float64)
    r = np.asarray(retrained, dtype=np.float64)
    if u.ndim != 2 or r.ndim != 2 or u.shape[1] != r.shape[1] or not len(u) or not len(r):
        raise ValueError(f"unlearned and retrained must be (models, rows) arrays with the same rows and at least "
                         f"one model each, got shapes {u.shape} and {r.shape}")
    if not (np.isfinite(u).all() and np.isfinite(r).all()):
        raise ValueError("the statistics must be finite (leave diverged models out)")
    n_u, n_r = len(u), len(r)
    values = np.concatenate([u, r])
    order = np.argsort(values, axis=0, kind="stable")
    ordered = np.take_along_axis(values, order, 0)
    is_u = (order < n_u).astype(np.int64)
    u_below = np.cumsum(is_u, 0)            # unlearned values at or below each threshold
    r_below = np.cumsum(1 - is_u, 0)        # retrained ones
    # a threshold is a value: the count must include every value equal to it, so only the last
    # position of a run of equal values is a threshold
    threshold = np.ones(ordered.shape, dtype=bool)
    threshold[:-1] = ordered[1:] != ordered[:-1]
    epsilons = np.zeros(u.shape[1])
    for fpr, fnr in (((n_r - r_below) / n_r, u_below / n_u),      # unlearned when above t
                     (r_below / n_r, (n_u - u_below) / n_u)):     # unlearned when at or below t
        shown = np.where(threshold, _attack_epsilons(fpr, fnr, delta), -np.inf)
        epsilons = np.maximum(epsilons, shown.max(0))
    return epsilons


def _attack_epsilons(fpr: np.ndarray, fnr: np.ndarray, delta: float) -> np.ndarray:
    """The epsilon each attack shows (``compute_epsilon_s``'s rules); -inf for one left out."""
    with np.errstate(divide="ignore", invalid="ignore"):
        one = np.log(1 - delta - fpr) - np.log(fnr)
        two = np.log(1 - delta - fnr) - np.log(fpr)
    shown = np.fmax(one, two)  # a NaN term (negative numerator) is left out
    shown = np.where(np.isnan(one) & np.isnan(two), np.inf, shown)
    shown = np.where((fpr == 0) != (fnr == 0), -np.inf, shown)
    return np.where((fpr == 0) & (fnr == 0), np.inf, shown)


def max_finite_epsilon(n_unlearned: int, n_retrained: Optional[int] = None, *, delta: float = FQ_DELTA) -> float:
    """The largest finite epsilon :func:`threshold_epsilons` can show with these numbers of
    models: rates of one model out of each set, FPR = 1/n_retrained and FNR = 1/n_unlearned
    (a smaller rate is 0, which is a perfect attack or none). Beyond it there is only inf.

    >>> [round(max_finite_epsilon(n), 3) for n in (2, 3, 4, 16, 512)]
    [0.0, 0.693, 1.099, 2.708, 6.236]
    """
    n_u, n_r = n_unlearned, n_retrained if n_retrained is not None else n_unlearned
    best = max(np.log(n_u * (1 - delta - 1 / n_r)), np.log(n_r * (1 - delta - 1 / n_u)))
    return float(max(best, 0.0))


def epsilon_scores(epsilons: np.ndarray, *, bin_width: float = FQ_BIN_WIDTH, bins: int = FQ_BINS) -> np.ndarray:
    """Each row's score from its epsilon: 2 / 2^n with n the challenge's bin index,
    ``np.digitize(epsilon, [0, 0.5, ..., 6])``: n = 1 for epsilon in [0, 0.5), 2 for [0.5, 1),
    ..., 13 for epsilon >= 6 (inf included). So the score is 2^-min(floor(epsilon / 0.5), 12):
    1, 1/2, 1/4, ..., 1/4096.

    >>> epsilon_scores(np.array([0, 0.49, 0.5, 1.0, 5.99, 6.0, np.inf])).tolist()
    [1.0, 1.0, 0.5, 0.25, 0.00048828125, 0.000244140625, 0.000244140625]
    """
    index = np.digitize(np.asarray(epsilons, dtype=np.float64), np.arange(bins) * bin_width)
    return 2.0 / 2.0 ** index


def forgetting_quality(unlearned: np.ndarray, retrained: np.ndarray, *, delta: float = FQ_DELTA) -> float:
    """The challenge's forgetting quality F in [0, 1]: the mean over forget rows of
    :func:`epsilon_scores` of :func:`threshold_epsilons`. 1 when no threshold on any row tells
    the unlearned models from the retrained ones by epsilon >= 0.5.

    >>> same = np.random.default_rng(0).normal(size=(8, 20))
    >>> forgetting_quality(same, same)
    1.0
    """
    return float(np.mean(epsilon_scores(threshold_epsilons(unlearned, retrained, delta=delta))))


def challenge_score(unlearned: np.ndarray, retrained: np.ndarray, *, ra: Sequence[float], ra_ref: Sequence[float],
                    ta: Sequence[float], ta_ref: Sequence[float], delta: float = FQ_DELTA) -> dict[str, Any]:
    """The challenge's final score, F x (RA / RA_ref) x (TA / TA_ref): the forgetting quality
    (:func:`forgetting_quality`) times the retain and test accuracies of the unlearned models
    (``ra``, ``ta``: one per model, averaged) as shares of the retrained models' (``ra_ref``,
    ``ta_ref``). The ratios are not capped: a method more accurate than retraining gains.

    Returns ``F``, ``score``, ``RA_ratio``, ``TA_ratio``, the number of ``models`` and
    ``reference_models``, ``max_finite_epsilon`` for those numbers and ``epsilon_bins``: how
    many forget rows fell in each of the 13 bins (scores 1, 1/2, ..., 1/4096).

    >>> same = np.zeros((4, 3))
    >>> challenge_score(same, same, ra=[.9, .9], ra_ref=[1.], ta=[.8], ta_ref=[.8])["score"]
    0.9
    """
    epsilons = threshold_epsilons(unlearned, retrained, delta=delta)
    F = float(np.mean(epsilon_scores(epsilons)))
    ra_ratio = float(np.mean(ra) / np.mean(ra_ref))
    ta_ratio = float(np.mean(ta) / np.mean(ta_ref))
    bins = np.digitize(epsilons, np.arange(FQ_BINS) * FQ_BIN_WIDTH)
    n_u, n_r = len(unlearned), len(retrained)
    return {"F": F, "score": F * ra_ratio * ta_ratio, "RA_ratio": ra_ratio, "TA_ratio": ta_ratio,
            "models": n_u, "reference_models": n_r, "max_finite_epsilon": max_finite_epsilon(n_u, n_r, delta=delta),
            "epsilon_bins": np.bincount(bins - 1, minlength=FQ_BINS).tolist()}


def null_forgetting_quality(n_unlearned: int, n_retrained: Optional[int] = None, *, delta: float = FQ_DELTA,
                            rows: int = 20000, seed: int = 0) -> dict[str, float]:
    """What F two sets of models with the same distribution get by chance: ``mean`` and the
    ``sd`` of one row's score (F over m rows independent of each other would have sd about
    sd / sqrt(m); a forget set's rows share their models, so they vary together more).

    A threshold attack sees only the order of the values, so under the null (continuous values,
    exchangeable models) the answer depends on the numbers of models alone; it is simulated on
    ``rows`` rows of normal values. Identical models (as SISA after ``sisa delete`` and SISA
    retrained) are not a sample of the null: they tie on every row and get F = 1.

    >>> null = null_forgetting_quality(2)  # 2 of the 6 orders of 2 + 2 values separate them
    >>> round(null["mean"], 2), round(4 / 6 + 2 / 6 / 4096, 2)
    (0.67, 0.67)
    """
    n_r = n_retrained if n_retrained is not None else n_unlearned
    rng = np.random.default_rng(seed)
    scores_ = np.concatenate([epsilon_scores(threshold_epsilons(rng.normal(size=(n_unlearned, k)),
                                                                rng.normal(size=(n_r, k)), delta=delta))
                              for k in np.diff(np.r_[0:rows:2000, rows])])
    return {"mean": float(np.mean(scores_)), "sd": float(np.std(scores_, ddof=1))}
