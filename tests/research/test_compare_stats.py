"""``sisa compare``'s arithmetic, without training: each model against its own reference,
mean and sd over seeds x draws, the null MIA, and the chance arithmetic behind the warnings."""

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from sisa.research.compare import (
    DRAW_METRICS,
    SEED_METRICS,
    ForgetSet,
    ModelRun,
    Sets,
    _notes,
    _row,
    aggregate,
    draw_seed,
    format_table,
    score_runs,
)
from sisa.research.evaluation import (
    accuracies,
    attack_scores,
    average_gap,
    chance_sd,
    losses,
    null_mia,
    simple_mia,
    small_sample_warnings,
    summary,
)
from sisa.training.jobs import DataSpec

N = {"retain": 200, "forget": 60, "test": 200}


def fake_sets() -> Sets:
    rng = np.random.default_rng(0)
    y = {k: rng.integers(0, 3, n) for k, n in N.items()}
    chosen = ForgetSet("random:60", np.zeros(1, dtype=bool), np.zeros(N["test"], dtype=bool))
    return Sets(forget=chosen, data=DataSpec((4,), "float32", 1.0, 3), X={k: np.zeros((n, 4)) for k, n in N.items()},
                y=y, raw=y)


def fake_probas(sets: Sets, seed: int, sharp: float = 1.0) -> dict[str, np.ndarray]:
    """Class probabilities that favour the label (more with ``sharp``), different per seed."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, labels in sets.y.items():
        logits = rng.normal(0, 1, (len(labels), 3))
        logits[np.arange(len(labels)), labels] += sharp
        out[k] = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return out


def fake_runs(sets: Sets, seeds=(0, 1)) -> list[ModelRun]:
    runs = []
    for seed in seeds:
        sisa_retrained = fake_probas(sets, 100 + seed)
        runs += [ModelRun("original", "monolithic", seed, fake_probas(sets, 10 + seed, 3.0), 2.0),
                 ModelRun("retrained", "monolithic", seed, fake_probas(sets, 20 + seed), 1.0 + seed),
                 ModelRun("ft", "monolithic", seed, fake_probas(sets, 30 + seed, 2.0), 0.25),
                 ModelRun("sisa-original", "sisa", seed, fake_probas(sets, 40 + seed, 2.5), 3.0),
                 ModelRun("sisa-delete", "sisa", seed, {k: v.copy() for k, v in sisa_retrained.items()}, 0.5,
                          {"identical": True}),
                 ModelRun("sisa-retrained", "sisa", seed, sisa_retrained, 3.0)]
    return runs


@pytest.fixture(scope="module")
def scored():
    sets = fake_sets()
    runs = fake_runs(sets)
    return sets, runs, score_runs(runs, sets, draws=2)


def test_each_model_is_scored_against_its_own_reference(scored):
    sets, runs, values = scored
    by = {(r.name, r.seed): r for r in runs}
    for name in ("retrained", "sisa-retrained", "sisa-delete"):  # a reference, or a model equal to it
        assert values[name]["gap_own_ref"] == [0.0] * 4, name
    assert values["retrained"]["gap_mono_retrain"] == [0.0] * 4
    # monolithic methods: the own reference is the monolithic retrained model
    assert values["ft"]["gap_own_ref"] == values["ft"]["gap_mono_retrain"]
    assert values["original"]["gap_own_ref"] == values["original"]["gap_mono_retrain"]
    # sisa rows: against sisa-retrained, paired draw by draw, and against retrained beside it
    for metric, reference in (("gap_own_ref", "sisa-retrained"), ("gap_mono_retrain", "retrained")):
        expected = []
        for seed in (0, 1):
            model, ref = by["sisa-original", seed], by[reference, seed]
            for d in range(2):
                def scores(run, s=draw_seed(seed, d)):
                    return {**accuracies(run.probas, sets.y), **attack_scores(run.probas, sets.y, seed=s)}
                expected.append(average_gap(scores(model), scores(ref)))
        assert values["sisa-original"][metric] == pytest.approx(expected), metric
    assert min(values["sisa-delete"]["gap_mono_retrain"]) > 0  # SISA is not the monolithic model


def test_values_per_seed_and_per_draw(scored):
    sets, runs, values = scored
    for metric in SEED_METRICS:
        assert len(values["ft"][metric]) == 2, metric
    for metric in DRAW_METRICS:
        assert len(values["ft"][metric]) == 4, metric
    ft = [r for r in runs if r.name == "ft"]
    assert values["ft"]["TA"] == [accuracies(r.probas, sets.y)["TA"] for r in ft]
    assert values["ft"]["MIA"][2:] == [attack_scores(ft[1].probas, sets.y, seed=draw_seed(1, d))["MIA"]
                                       for d in range(2)]
    # speedup against the monolithic retraining of the same seed; SISA's own against sisa-retrained
    assert values["ft"]["speedup"] == [1.0 / 0.25, 2.0 / 0.25]
    assert values["sisa-delete"]["speedup"] == [1.0 / 0.5, 2.0 / 0.5]
    assert values["sisa-delete"]["speedup_own_ref"] == [3.0 / 0.5, 3.0 / 0.5]
    assert all(np.isnan(values["original"]["speedup"]))


def test_aggregate_gives_mean_sd_and_count():
    row = aggregate({"MIA": [0.5, 0.7, 0.6, float("nan")], "TA": [0.9], "FA": [float("nan")]})
    assert row["MIA"] == pytest.approx(0.6) and row["sd"]["MIA"] == pytest.approx(0.1) and row["n"]["MIA"] == 3
    assert row["TA"] == 0.9 and row["sd"]["TA"] is None and row["n"]["TA"] == 1
    assert np.isnan(row["FA"]) and row["n"]["FA"] == 0
    values = [0.52, 0.48, 0.55, 0.50, 0.45]
    assert summary(values) == {"mean": pytest.approx(np.mean(values)), "sd": pytest.approx(np.std(values, ddof=1)),
                               "n": 5}


def test_rows_and_table_from_seeds_and_draws(scored):
    _, runs, values = scored
    rows = [_row(name, runs, values[name]) for name in dict.fromkeys(r.name for r in runs)]
    by = {r["method"]: r for r in rows}
    assert by["ft"]["reference"] == "retrained" and by["sisa-delete"]["reference"] == "sisa-retrained"
    assert by["ft"]["MIA"] == pytest.approx(np.mean(values["ft"]["MIA"]))
    assert by["ft"]["sd"]["MIA"] == pytest.approx(np.std(values["ft"]["MIA"], ddof=1))
    assert by["ft"]["n"] == {**{m: 2 for m in SEED_METRICS if m not in ("LiRA_auc", "LiRA_tpr_at_1pct_fpr")},
                             "LiRA_auc": 0, "LiRA_tpr_at_1pct_fpr": 0, **{m: 4 for m in DRAW_METRICS}}
    assert by["sisa-delete"]["identical"] is True and by["sisa-delete"]["identical_seeds"] == "2/2"
    assert by["original"]["speedup"] is None and by["ft"]["LiRA_auc"] is None
    table = format_table({"rows": rows, "seeds": [0, 1]}).splitlines()
    assert table[0].split()[:4] == ["method", "RA", "FA", "TA"] and "LiRA" not in table[0]
    ft = table[[line.split()[0] for line in table].index("ft")]
    assert f"{by['ft']['MIA']:.3f}±{by['ft']['sd']['MIA']:.3f}" in ft
    assert "yes 2/2" in table[[line.split()[0] for line in table].index("sisa-delete")]


def test_null_mia_is_chance_where_the_mia_is_not():
    """Members with near-zero loss are easy to tell from test rows; two halves of the test
    rows are not, whatever the model."""
    rng = np.random.default_rng(1)
    test_losses = rng.exponential(1.0, 400)
    member_losses = rng.exponential(0.05, 150)
    draws = range(30)
    with threadpool_limits(limits=1, user_api="blas"):
        mia = [simple_mia(member_losses, test_losses, seed=s) for s in draws]
        null = [null_mia(test_losses, size=150, seed=s) for s in draws]
    assert np.mean(mia) > 0.85
    assert abs(np.mean(null) - 0.5) < 0.03
    sd = chance_sd("MIA", n_forget=150, n_test=400)
    assert 0.7 * sd < np.std(null, ddof=1) < 1.6 * sd


def test_simple_mia_with_probabilities_is_the_kits_attack():
    """attack_scores feeds the per-row cross-entropy, forget as members, to the kit's attack."""
    sets = fake_sets()
    probas = fake_probas(sets, 5)
    got = attack_scores(probas, sets.y, seed=7)
    assert got["MIA"] == simple_mia(losses(probas["forget"], sets.y["forget"]),
                                    losses(probas["test"], sets.y["test"]), seed=7)
    assert got["MIA_null"] == null_mia(losses(probas["test"], sets.y["test"]), size=N["forget"], seed=7)


def test_chance_sd_matches_simulation():
    from scipy.stats import rankdata

    rng = np.random.default_rng(0)
    # the MIA's arithmetic is a lower bound: the fitted threshold varies too
    with threadpool_limits(limits=1, user_api="blas"):
        null = [simple_mia(rng.exponential(size=60), rng.exponential(size=60), seed=s) for s in range(120)]
    sd = chance_sd("MIA", n_forget=60, n_test=500)
    assert sd <= np.std(null, ddof=1) < 1.35 * sd
    # AUC of 20 members against 300 non-members on scores that do not tell them apart
    ranks = rankdata(rng.normal(size=(4000, 320)), axis=1)[:, :20]
    aucs = (ranks.sum(1) - 20 * 21 / 2) / (20 * 300)
    assert np.std(aucs) == pytest.approx(chance_sd("LiRA_auc", n_forget=20, n_test=300), rel=0.05)
    shares = (rng.random((4000, 80)) < 0.5).mean(1)
    assert np.std(shares) == pytest.approx(chance_sd("MIA_efficacy", n_forget=80, n_test=300), rel=0.05)


def test_small_sample_warnings_follow_the_rule():
    assert small_sample_warnings(144, 359) == []  # digits, random:0.1
    three = small_sample_warnings(3, 359)
    assert [w.split(":")[0] for w in three] == ["MIA accuracy", "MIA-efficacy", "LiRA AUC"]
    assert "0.168" in three[2]  # 3 rows: a LiRA AUC of 0.87 is within about 2 sd of chance
    # the threshold: a chance sd above 0.05
    assert small_sample_warnings(99, 10_000, metrics=["MIA_efficacy"]) and \
        not small_sample_warnings(100, 10_000, metrics=["MIA_efficacy"])


def test_a_note_where_the_mia_cannot_tell_a_model_from_its_reference():
    def row(name, family, mia):
        return {"method": name, "family": family, "MIA": mia}

    n = {"forget": 145, "test": 346}  # chance sd 0.040
    rows = [row("original", "monolithic", 0.62), row("retrained", "monolithic", 0.53),
            row("sisa-original", "sisa", 0.56), row("sisa-delete", "sisa", 0.55), row("sisa-retrained", "sisa", 0.55)]
    notes = _notes(rows, n)
    assert len(notes) == 1 and notes[0].startswith("sisa-original: MIA 0.560 against 0.550 for sisa-retrained")
    assert "the evidence that SISA forgot is the checkpoint identity" in notes[0]
    rows[0]["MIA"] = 0.55
    assert [note.split(":")[0] for note in _notes(rows, n)] == ["original", "sisa-original"]
